"""Stage `train`: fine-tune the pretrained model on the train subset with the Hugging Face `Trainer`.

Params: `model.*`, `data.num_labels`, `train.*`. Input: `<subset>/{train,eval}.parquet` and `meta.json`.
Outputs: `<model-out>/` (the final model as safetensors, its tokenizer, the params it was trained with and its
model card, `README.md`) and `<history-out>` (a CSV row per epoch: eval loss and accuracy, as the tutorial
reports them); optionally `--checkpoints DIR`, `--environment-out FILE` and `--live DIR` (DVCLive).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    EvalPrediction,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from stages.common import hub
from stages.common.atomic import atomic_outputs, json_text
from stages.common.errors import UserError, run_main
from stages.common.params import ModelParams, TrainParams, load_params
from stages.data.tokenized import TokenizedExamples, make_collator, read_meta
from stages.data.tokenizer import load_tokenizer
from stages.metrics import scoring
from stages.training import attention, checkpoints, distributed, model_card
from stages.training.devices import Device, device_arguments
from stages.training.dvclive_callback import LiveMetrics
from stages.training.environment import environment_record, precision_name

log = logging.getLogger(__name__)

# What model configs call the dropout on attention weights: BERT and its kin, then DistilBERT and others.
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


def load_pretrained(model: ModelParams, num_labels: int, attention_dropout: float | None = None) -> PreTrainedModel:
    """The pretrained encoder with a fresh `num_labels`-way classification head (safetensors only).

    `attention_dropout`, unless None, replaces the model config's dropout on attention weights.
    """
    model_dir = hub.model_dir(model)
    try:
        config = AutoConfig.from_pretrained(model_dir, num_labels=num_labels, trust_remote_code=model.trust_remote_code)
        if attention_dropout is not None:
            key = next((key for key in ATTENTION_DROPOUT_KEYS if hasattr(config, key)), None)
            if key is None:
                raise UserError(
                    f"train.attention_dropout = {attention_dropout}: the config of model {model.name!r} ({config.model_type}) "
                    f"has no attention dropout ({' or '.join(ATTENTION_DROPOUT_KEYS)}); expected null for this model"
                )
            setattr(config, key, attention_dropout)
        classifier, loading = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            config=config,
            use_safetensors=True,
            trust_remote_code=model.trust_remote_code,
            ignore_mismatched_sizes=True,  # a head of another size is refused below, with its shapes
            output_loading_info=True,
        )
    except UserError:
        raise
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise UserError(
            f"model.name = {model.name!r}: cannot load safetensors weights from {model_dir}: {first_line}"
        ) from None
    # A head already there is refused whether it fits `num_labels` (it would be reused, not fresh) or not.
    _refuse_existing_head(classifier, loading, model.name, num_labels)
    return classifier


def _refuse_existing_head(classifier: PreTrainedModel, loading: dict, name: str, num_labels: int) -> None:
    """Stop when the checkpoint brought its own classification head instead of leaving it fresh."""
    advice = "train fine-tunes a pretrained encoder with a fresh head: point model.name at the base model"
    if loading["mismatched_keys"]:
        key, saved, _ = sorted(loading["mismatched_keys"])[0]
        raise UserError(
            f"model.name = {name!r} already has a classification head that does not fit data.num_labels = "
            f"{num_labels} ({key}: {list(saved)} in the checkpoint); {advice}"
        )
    base = classifier.base_model_prefix
    head = {key for key in classifier.state_dict() if not key.startswith(f"{base}.")}
    if head and not head & set(loading["missing_keys"]):
        raise UserError(
            f"model.name = {name!r} already has a {num_labels}-label classification head, which training would "
            f"reuse; {advice}"
        )


TRAINING_PARAMS_FILE = "training_params.json"


def run(
    model: ModelParams,
    num_labels: int,
    params: TrainParams,
    subset_dir: Path,
    model_out: Path,
    history_out: Path,
    checkpoint_dir: Path | None = None,
    environment_out: Path | None = None,
    live_dir: Path | None = None,
) -> pd.DataFrame:
    """Fine-tune, write the final model and the per-epoch history; return that history.

    With `checkpoint_dir`, checkpoints go there and a matching interrupted run is resumed.
    """
    device = Device.detect()
    device_args = device_arguments(params, device)  # a setting this machine lacks stops us here
    if distributed.is_main_process():
        log.info(
            "training on %s: precision %s, optimizer %s", device.name, precision_name(device_args), device_args["optim"]
        )
    meta = read_meta(subset_dir)
    if meta["model"] != model.name or meta["model_revision"] != model.revision:
        raise UserError(
            f"{subset_dir} was tokenized for model {meta['model']!r}, but model.name is {model.name!r}; "
            "rerun the pipeline (dvc repro) so tokenize uses the same model"
        )
    # A null revision follows the Hub's default branch, which may have moved since tokenize resolved it.
    commit = hub.snapshot_commit(hub.model_dir(model))
    if commit != meta.get("model_commit"):
        raise UserError(
            f"model {model.name!r} resolves to Hub commit {commit} now, but {subset_dir} was tokenized with commit "
            f"{meta.get('model_commit')}; pin model.revision, or tokenize again: dvc repro -f -s tokenize && dvc repro"
        )
    recorded = meta.get("params", {})
    missing = [name for name in ("data", "model", "tokenize", "subset") if name not in recorded]
    if missing:
        raise UserError(
            f"{subset_dir / 'meta.json'}: {', '.join(missing)} params not recorded; rerun the pipeline (dvc repro)"
        )
    train_examples = TokenizedExamples(subset_dir / "train.parquet")
    eval_examples = TokenizedExamples(subset_dir / "eval.parquet")
    # Seed before the classification head is initialised, so its weights are reproducible.
    set_seed(params.seed)
    classifier = load_pretrained(model, num_labels, params.attention_dropout)
    # On a CPU, torch's attention dropout mask costs more than the attention itself (stages/training/attention.py).
    if attention.kernel(params.attention_dropout_kernel, device) == "fast" and not attention.use_fast_mask(classifier):
        log.info("model %r has no attention interface: torch's own attention dropout", model.name)
    tokenizer = load_tokenizer(model)
    accuracy = scoring.accuracy_metric()  # the module shipped in stages/metrics/modules/accuracy: no network
    # Evaluation goes through the examples in length order, so each batch is padded to a length close
    # to all of its reviews' (BENCHMARKS.md section 1); the logits are put back in the examples' order,
    # the order `evaluate` scores them in.
    eval_order = eval_examples.length_order()
    eval_in_length_order = torch.utils.data.Subset(eval_examples, eval_order.tolist())
    examples_order = np.argsort(eval_order)
    last_eval: dict = {}  # the latest evaluation's step, logits and labels: the model card's source

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        last_eval.update(
            step=trainer.state.global_step,
            logits=prediction.predictions[examples_order],
            labels=prediction.label_ids[examples_order],
        )
        return accuracy.compute(predictions=np.argmax(prediction.predictions, axis=-1), references=prediction.label_ids)

    resume_from = None
    # Resumed only by a rerun with the same params, data and code (stages/training/checkpoints.py).
    if checkpoint_dir is not None:
        expected = checkpoint_fingerprint(model, num_labels, params, subset_dir, device_args)
        if distributed.launched():  # the launcher prepared the folder; each process only reads it
            resume_from = checkpoints.resume_point(checkpoint_dir, expected)
        else:
            resume_from = checkpoints.prepare(checkpoint_dir, expected)
        if resume_from is not None and distributed.is_main_process():
            step, total = checkpoints.step_of(resume_from)
            log.info("resuming from %s (step %d of %d)", resume_from, step, total)

    with tempfile.TemporaryDirectory(prefix="trainer-") as scratch:
        trainer = SequentialEvalTrainer(
            model=classifier,
            args=training_arguments(params, checkpoint_dir or Path(scratch), checkpoint_dir is not None, device_args),
            train_dataset=train_examples,
            eval_dataset=eval_in_length_order,
            # 8 suits GPU tensor cores, and bounds the number of shapes `torch.compile` sees.
            data_collator=make_collator(tokenizer, meta, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=[checkpoints.MarkComplete()] + ([LiveMetrics(live_dir)] if live_dir else []),
        )
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        if distributed.is_main_process():
            log.info(
                "trained on %d examples, %d steps in %.1fs (%.2f samples/s, final training loss %.4f)",
                len(train_examples),
                trainer.state.global_step,
                result.metrics["train_runtime"],
                result.metrics["train_samples_per_second"],
                result.training_loss,
            )
        # The evaluation after the last epoch is of the final model; a run resumed from its very
        # last checkpoint evaluated nothing in this process, so it predicts once more.
        if last_eval.get("step") != trainer.state.global_step:
            output = trainer.predict(eval_in_length_order)
            last_eval.update(logits=output.predictions[examples_order], labels=output.label_ids[examples_order])
    history = epoch_history(trainer.state.log_history)
    if not distributed.is_main_process():
        return history
    # Scored as the evaluate stage scores metrics.json (stages/metrics/scoring.py): the model card's metrics.
    scores = scoring.score(last_eval["logits"], last_eval["labels"], num_labels)
    environment = environment_record(device_args)
    card = model_card.model_card(
        model_path=str(model_out),
        model=classifier,
        params={**{name: recorded[name] for name in ("data", "model", "tokenize", "subset")}, "train": asdict(params)},
        meta=meta,
        scores=scores,
        history=history,
        environment=environment,
    )
    # One commit for the model and its reports, so a kill never leaves one run's model beside another's history.
    written = [history_out] + ([environment_out] if environment_out is not None else [])
    with atomic_outputs(dirs=[model_out], files=written) as staged:
        tmp = staged[model_out]
        classifier.save_pretrained(tmp, safe_serialization=True)
        # The loader records whether the Hub was offline (HF_HUB_OFFLINE); it says nothing about the
        # tokenizer, and would make the model folder's hash depend on the shell it was trained in.
        tokenizer.init_kwargs.pop("local_files_only", None)
        tokenizer.save_pretrained(tmp)
        # What the model was trained with and how well it does, inside the folder so they travel with it.
        (tmp / TRAINING_PARAMS_FILE).write_text(json_text({"num_labels": num_labels, "train": asdict(params)}))
        (tmp / model_card.FILE_NAME).write_text(card)
        history.to_csv(staged[history_out], index=False)
        if environment_out is not None:
            staged[environment_out].write_text(json_text(environment))
    if checkpoint_dir is not None:
        checkpoints.finish(checkpoint_dir)
    return history


class SequentialEvalTrainer(Trainer):
    """A `Trainer` that evaluates its eval dataset in the dataset's own order (ours: length order)."""

    def _get_eval_sampler(self, eval_dataset: torch.utils.data.Dataset) -> torch.utils.data.Sampler:
        # The stock sampler, with `group_by_length`, sorts eval batches only within random groups of
        # `min(n // (4 * batch), 50)` batches, so each is padded nearly to the longest review. In order, the
        # logits map back to the examples; with several processes the Trainer gathers batches back in order.
        return torch.utils.data.SequentialSampler(eval_dataset)


def checkpoint_fingerprint(
    model: ModelParams, num_labels: int, params: TrainParams, subset_dir: Path, device_args: dict
) -> dict[str, str]:
    """What this run's checkpoints depend on: params and the device settings they resolved to (a CPU
    checkpoint is not resumed in bf16 on a GPU), training data, code and library versions."""
    return checkpoints.fingerprint(
        params={"model": asdict(model), "num_labels": num_labels, "train": asdict(params), "device": device_args},
        data_files=[subset_dir / "train.parquet", subset_dir / "eval.parquet", subset_dir / "meta.json"],
        code_files=checkpoints.stage_code_files("train"),  # dvc.yaml's code deps of train
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
    )


def training_arguments(
    params: TrainParams, output_dir: Path, save: bool = False, device_args: dict | None = None
) -> TrainingArguments:
    """`TrainingArguments` from section `train:`; evaluation (and accuracy) after every epoch.

    With `save`, a checkpoint every `train.save_steps` steps (or each epoch) goes to `output_dir`.
    """
    # Two checkpoints kept, so a complete one survives a kill during the next save.
    if not save:
        save_args = {"save_strategy": "no"}
    elif params.save_steps is None:
        save_args = {"save_strategy": "epoch", "save_total_limit": 2}
    else:
        save_args = {"save_strategy": "steps", "save_steps": params.save_steps, "save_total_limit": 2}
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps if params.max_steps is not None else -1,
        learning_rate=params.learning_rate,
        per_device_train_batch_size=distributed.per_process_batch_size(params),
        per_device_eval_batch_size=params.eval_batch_size,
        weight_decay=params.weight_decay,
        warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        seed=params.seed,
        data_seed=params.seed,
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
        average_tokens_across_devices=True,  # the logged loss is over all processes' tokens
        eval_strategy="epoch",
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        **save_args,
        **(device_args if device_args is not None else device_arguments(params, Device.detect())),
        report_to="none",
    )


def epoch_history(log_history: list[dict]) -> pd.DataFrame:
    """One row per evaluation: epoch, step, eval loss and accuracy."""
    rows = [
        {
            "epoch": round(entry["epoch"], 4),
            "step": entry["step"],
            "eval_loss": round(entry["eval_loss"], 6),
            "eval_accuracy": round(entry["eval_accuracy"], 6),
        }
        for entry in log_history
        if "eval_accuracy" in entry
    ]
    return pd.DataFrame(rows, columns=["epoch", "step", "eval_loss", "eval_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--subset", type=Path, required=True, help="input folder (data/subset)")
    parser.add_argument("--model-out", type=Path, required=True, help="output folder (models/model)")
    parser.add_argument("--history-out", type=Path, required=True, help="per-epoch CSV (reports/train_epochs.csv)")
    parser.add_argument("--checkpoints", type=Path, help="checkpoint folder, to resume an interrupted run")
    parser.add_argument(
        "--environment-out", type=Path, help="JSON of the software environment (reports/environment.json)"
    )
    parser.add_argument("--live", type=Path, help="DVCLive folder for live training metrics (dvclive)")
    args = parser.parse_args()
    params = load_params(args.params)
    started = time.perf_counter()
    # More than one process: relaunch this stage under torchrun (stages/training/distributed.py).
    if distributed.world_size(params.train) > 1 and not distributed.launched():
        # Checked once here rather than in every process: settings, the batch split, the checkpoints.
        device_args = device_arguments(params.train, Device.detect())
        distributed.per_process_batch_size(params.train)
        if args.checkpoints is not None:
            expected = checkpoint_fingerprint(
                params.model, params.data.num_labels, params.train, args.subset, device_args
            )
            checkpoints.prepare(args.checkpoints, expected)
        log.info("launching %d training processes with torchrun", distributed.world_size(params.train))
        status = distributed.launch(params.train, "stages.train", sys.argv[1:])
        if status != 0:
            raise UserError(f"training failed in a torchrun process (exit status {status}); its error is above")
        log.info("trained %s in %.1fs", args.model_out, time.perf_counter() - started)
        return
    history = run(
        params.model,
        params.data.num_labels,
        params.train,
        args.subset,
        args.model_out,
        args.history_out,
        args.checkpoints,
        args.environment_out,
        args.live,
    )
    if not distributed.is_main_process():
        return
    for row in history.itertuples():
        log.info(
            "epoch %.2f (step %d): eval_loss %.4f, eval_accuracy %.4f",
            row.epoch,
            row.step,
            row.eval_loss,
            row.eval_accuracy,
        )
    log.info("trained %s in %.1fs", args.model_out, time.perf_counter() - started)


if __name__ == "__main__":
    run_main(main)
