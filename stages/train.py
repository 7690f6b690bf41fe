"""Stage `train`: fine-tune the pretrained model on the train subset with the Hugging Face `Trainer`.

Params: `model.*`, `data.num_labels`, `train.*`. Input: `<subset>/train.parquet`,
`<subset>/eval.parquet`, `<subset>/meta.json`. Outputs: `<model-out>/` (the final model as
safetensors, with its tokenizer) and `<history-out>` (a CSV row per epoch: eval loss and accuracy,
as the tutorial reports them).

Accuracy is computed through the `evaluate` library from the metric module shipped in
`stages/metric_modules/accuracy`, so it loads with no network.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import evaluate
import numpy as np
import pandas as pd
import torch
from transformers import (
    AutoModelForSequenceClassification,
    EvalPrediction,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from stages import hub
from stages.cli import UserError, run_main
from stages.examples import TokenizedExamples, make_collator, read_meta
from stages.outputs import atomic_dir, atomic_file
from stages.params import ModelParams, TrainParams, load_params
from stages.tokenize import load_tokenizer

log = logging.getLogger(__name__)

METRIC_MODULES = Path(__file__).parent / "metric_modules"


def load_pretrained(model: ModelParams, num_labels: int) -> PreTrainedModel:
    """The pretrained encoder with a fresh `num_labels`-way classification head (safetensors only)."""
    model_dir = hub.resolve_model(model.name, model.revision)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            num_labels=num_labels,
            use_safetensors=True,
            trust_remote_code=model.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise UserError(f"model.name = {model.name!r}: cannot load safetensors weights from {model_dir}: {first_line}") from None


def accuracy_metric() -> evaluate.EvaluationModule:
    return evaluate.load(str(METRIC_MODULES / "accuracy"))


def run(
    model: ModelParams,
    num_labels: int,
    params: TrainParams,
    subset_dir: Path,
    model_out: Path,
    history_out: Path,
) -> pd.DataFrame:
    """Fine-tune, write the final model and the per-epoch history; return that history."""
    meta = read_meta(subset_dir)
    if meta["model"] != model.name or meta["model_revision"] != model.revision:
        raise UserError(
            f"{subset_dir} was tokenized for model {meta['model']!r}, but model.name is {model.name!r}; "
            "rerun the pipeline (dvc repro) so tokenize uses the same model"
        )
    train_examples = TokenizedExamples(subset_dir / "train.parquet")
    eval_examples = TokenizedExamples(subset_dir / "eval.parquet")
    # Seed before the classification head is initialised, so its weights are reproducible.
    set_seed(params.seed)
    classifier = load_pretrained(model, num_labels)
    tokenizer = load_tokenizer(model)
    accuracy = accuracy_metric()

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        return accuracy.compute(predictions=np.argmax(prediction.predictions, axis=-1), references=prediction.label_ids)

    with tempfile.TemporaryDirectory(prefix="trainer-") as work_dir:
        trainer = Trainer(
            model=classifier,
            args=training_arguments(params, Path(work_dir)),
            train_dataset=train_examples,
            eval_dataset=eval_examples,
            data_collator=make_collator(tokenizer, meta),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
        )
        trainer.train()
    history = epoch_history(trainer.state.log_history)
    with atomic_dir(model_out) as tmp:
        classifier.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    with atomic_file(history_out) as tmp:
        history.to_csv(tmp, index=False)
    return history


def training_arguments(params: TrainParams, work_dir: Path) -> TrainingArguments:
    """`TrainingArguments` from section `train:`; evaluation (and accuracy) after every epoch."""
    return TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps if params.max_steps is not None else -1,
        learning_rate=params.learning_rate,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.eval_batch_size,
        weight_decay=params.weight_decay,
        warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        seed=params.seed,
        data_seed=params.seed,
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
        eval_strategy="epoch",
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        save_strategy="no",
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
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
    args = parser.parse_args()
    params = load_params(args.params)
    started = time.perf_counter()
    history = run(params.model, params.data.num_labels, params.train, args.subset, args.model_out, args.history_out)
    for row in history.itertuples():
        log.info("epoch %.2f (step %d): eval_loss %.4f, eval_accuracy %.4f", row.epoch, row.step, row.eval_loss, row.eval_accuracy)
    log.info("trained %s in %.1fs", args.model_out, time.perf_counter() - started)


if __name__ == "__main__":
    run_main(main)
