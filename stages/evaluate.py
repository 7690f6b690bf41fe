"""Stage `evaluate`: predict the eval subset with the trained model and write the metrics.

Params: `evaluate.*`. Inputs: `<model>/` (from train), `<subset>/eval.parquet` and `meta.json`.
Outputs:
- `<metrics-out>` (`metrics.json`): accuracy, macro_f1, eval_loss, n_eval; deterministic numbers
  only, so `dvc metrics diff` shows real change;
- `<predictions-out>`: a CSV row per eval example (its `idx` in the test split, `label`,
  `prediction`, `confidence`, `loss`), which `dvc.yaml` also draws as the confusion matrix and the
  gate uses for paired tests;
- `<info-out>`: what the metrics were computed on (a fingerprint of the eval examples, the profile),
  so the gate never compares runs on different data;
- `<per-class-out>` (`reports/per_class.csv`): precision, recall, F1 and support per label, drawn by
  `dvc plots show` as a bar chart (the mean of its F1 column is `macro_f1`);
- `<errors-out>` (`reports/errors.csv`): the most confident wrong predictions, with their text, read
  by `idx` from `<prepared>/test.parquet` (checked against the hash the tokenize stage recorded);
- `<card-out>` (`reports/model_card.md`): the model card: base model, data, params, metrics with
  95% intervals, the training environment (`<environment>`, written by train) and how to load it.

Every output is deterministic (no timestamps, a seeded bootstrap), so `dvc repro --force` rewrites
the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import statistics
import time
from pathlib import Path

import evaluate
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import yaml
from sklearn.metrics import precision_recall_fscore_support
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stages.cli import UserError, run_main
from stages.examples import TokenizedExamples, make_collator, read_meta
from stages.outputs import atomic_file, write_json
from stages.params import EvaluateParams, load_params
from stages.tokenize import ContentDigest
from stages.train import METRIC_MODULES, TRAINING_PARAMS_FILE, accuracy_metric

log = logging.getLogger(__name__)

ERRORS_TOP = 20  # wrong predictions listed in the errors report, most confident first
TEXT_CHARS = 300  # characters of each review shown there
CONFIDENCE = 0.95  # of the intervals in the model card
BOOTSTRAP_SAMPLES = 2000  # resamples of the eval examples for macro-F1's interval
BOOTSTRAP_SEED = 0  # fixed, so the same predictions always give the same card


def run(
    params: EvaluateParams,
    model_dir: Path,
    subset_dir: Path,
    metrics_out: Path,
    predictions_out: Path,
    info_out: Path,
    *,
    per_class_out: Path | None = None,
    prepared_dir: Path | None = None,
    errors_out: Path | None = None,
    card_out: Path | None = None,
    environment: Path | None = None,
) -> dict[str, float]:
    """Predict `subset_dir`'s eval examples with `model_dir`; write metrics and predictions.

    Optionally also the reports: per-class scores (`per_class_out`), the most confident errors with
    their text from `prepared_dir` (`errors_out`), and the model card (`card_out`, which needs
    `all_params`; `environment` is train's record of the software it ran on, if there is one).
    """
    if errors_out is not None and prepared_dir is None:
        raise ValueError("errors_out needs prepared_dir (the texts of the eval examples)")
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: no trained model here; run the train stage first (dvc repro train)")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = TokenizedExamples(subset_dir / "eval.parquet")
    meta = read_meta(subset_dir)
    logits = predict(model, examples, make_collator(tokenizer, meta), params.batch_size)

    labels = np.asarray(examples.labels)
    log_probs = torch.log_softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
    predictions = log_probs.argmax(axis=-1)
    losses = -log_probs[np.arange(len(labels)), labels]
    num_labels = model.config.num_labels
    f1 = evaluate.load(str(METRIC_MODULES / "f1"))
    metrics = {
        "accuracy": accuracy_metric().compute(predictions=predictions, references=labels)["accuracy"],
        "macro_f1": f1.compute(predictions=predictions, references=labels, labels=list(range(num_labels)))["f1"],
        "eval_loss": float(losses.mean()),
        "n_eval": len(labels),
    }
    # Rounded so that last-bit float noise never shows up as a change in `dvc metrics diff`.
    metrics = {key: round(float(value), 6) if key != "n_eval" else value for key, value in metrics.items()}
    write_json(metrics_out, metrics)
    table = pd.DataFrame(
        {
            "idx": examples.idx,
            "label": labels,
            "prediction": predictions,
            "confidence": np.exp(log_probs.max(axis=-1)).round(6),
            "loss": losses.round(6),
        }
    )
    with atomic_file(predictions_out) as tmp:
        table.to_csv(tmp, index=False)
    info = eval_info(params, meta, examples)
    write_json(info_out, info)

    per_class = per_class_scores(labels, predictions, num_labels)
    if per_class_out is not None:
        write_csv(per_class_out, per_class)
    if errors_out is not None:
        write_csv(errors_out, confident_errors(table, read_texts(prepared_dir, meta), ERRORS_TOP))
    if card_out is not None:
        card = model_card(
            model_dir=model_dir,
            model=model,
            params=card_params(meta, model_dir, params),
            meta=meta,
            info=info,
            metrics=metrics,
            intervals=metric_intervals(labels, predictions, num_labels),
            per_class=per_class,
            environment=json.loads(environment.read_text()) if environment and environment.is_file() else None,
        )
        with atomic_file(card_out) as tmp:
            tmp.write_text(card)
    return metrics


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)


def per_class_scores(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> pd.DataFrame:
    """Precision, recall, F1 and support of every label (0 where a label is never predicted).

    Computed as the F1 metric module computes macro-F1 (scikit-learn, `zero_division=0`, every label
    listed), so the mean of the `f1` column is `macro_f1`.
    """
    classes = list(range(num_labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    return pd.DataFrame(
        {
            "label": classes,
            "precision": np.round(precision, 6),
            "recall": np.round(recall, 6),
            "f1": np.round(f1, 6),
            "support": support.astype(int),
        }
    )


def read_texts(prepared_dir: Path, meta: dict) -> list[str]:
    """The test split's texts, in row order: the order the tokenize stage wrote, so `idx` indexes it.

    Checked against the content hash the tokenize stage recorded (the same digest of texts and
    labels), so a `data/prepared` that is not the one the eval subset came from is refused rather
    than quoted against the wrong predictions.
    """
    source = prepared_dir / "test.parquet"
    if not source.is_file():
        raise UserError(f"{source}: not found; run the prepare stage first (dvc repro prepare)")
    table = pq.read_table(source, columns=["text", "label"])
    texts = table.column("text").to_pylist()
    content = ContentDigest()
    content.update(texts, table.column("label").to_numpy())
    if content.hexdigest() != meta["content_sha256"]["test"]:
        raise UserError(
            f"{source} is not the test split the eval subset was tokenized from (its content hash differs "
            "from the one in the subset's meta.json); rerun the pipeline (dvc repro)"
        )
    return texts


def confident_errors(table: pd.DataFrame, texts: list[str], top: int) -> pd.DataFrame:
    """The `top` wrong predictions the model was most sure of (ties: lowest idx first), with their text."""
    wrong = table[table["label"] != table["prediction"]]
    wrong = wrong.sort_values(["confidence", "idx"], ascending=[False, True], kind="stable").head(top)
    shown = [_truncate(texts[i], TEXT_CHARS) for i in wrong["idx"]]
    return wrong[["idx", "label", "prediction", "confidence"]].assign(text=shown).reset_index(drop=True)


def _truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line per review in the CSV
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (accuracy: correct out of n_eval)."""
    if n == 0:
        return (0.0, 1.0)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bounds are exactly 0 and 1; say so rather than leave float noise.
    low = 0.0 if successes == 0 else max(0.0, float(centre - half))
    high = 1.0 if successes == n else min(1.0, float(centre + half))
    return (low, high)


def bootstrap_macro_f1(
    labels: np.ndarray, predictions: np.ndarray, num_labels: int,
    samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of macro-F1 over resamples of the eval examples.

    Macro-F1 depends on the examples only through the confusion matrix, and resampling n examples
    with replacement draws that matrix from a multinomial over its cells, so each resample costs
    num_labels² numbers, not n: cheap for any eval size.
    """
    n = len(labels)
    cells = np.bincount(labels * num_labels + predictions, minlength=num_labels**2)
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=samples).reshape(samples, num_labels, num_labels)
    tp = np.diagonal(draws, axis1=1, axis2=2)
    fp = draws.sum(axis=1) - tp  # predicted as the class, labelled otherwise
    fn = draws.sum(axis=2) - tp
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0).mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(f1, [alpha, 1 - alpha])
    return (float(low), float(high))


def metric_intervals(
    labels: np.ndarray, predictions: np.ndarray, num_labels: int
) -> dict[str, tuple[float, float, str]]:
    """95% intervals of accuracy and macro-F1 over the eval examples: (low, high, method)."""
    correct = int((labels == predictions).sum())
    return {
        "accuracy": (*wilson_interval(correct, len(labels)), "Wilson score interval"),
        "macro_f1": (
            *bootstrap_macro_f1(labels, predictions, num_labels),
            f"bootstrap over eval examples ({BOOTSTRAP_SAMPLES:,} resamples, seed {BOOTSTRAP_SEED})",
        ),
    }


def model_card(
    *,
    model_dir: Path,
    model: torch.nn.Module,
    params: dict[str, dict],
    meta: dict,
    info: dict,
    metrics: dict,
    intervals: dict[str, tuple[float, float, str]],
    per_class: pd.DataFrame,
    environment: dict | None,
) -> str:
    """The model card as Markdown: what the model is, what it was trained on, how well it does."""
    config = model.config
    n_parameters = sum(p.numel() for p in model.parameters())
    revision = lambda value: f"`{value}`" if value else "default branch (not pinned)"  # noqa: E731
    percent = int(round(CONFIDENCE * 100))
    lines = [
        f"# Model card: `{model_dir}`",
        "",
        f"`{config.architectures[0] if config.architectures else type(model).__name__}` fine-tuned for "
        f"{config.num_labels}-way review-star classification (label 0 = 1 star, ..., "
        f"label {config.num_labels - 1} = {config.num_labels} stars). Written by the `evaluate` stage from "
        "the run that produced the model; `dvc.lock` pins every input.",
        "",
        "## Model",
        "",
        f"- Base model: `{params['model']['name']}`, revision {revision(params['model']['revision'])}",
        f"- Parameters: {n_parameters / 1e6:.1f}M ({n_parameters:,}), {config.num_labels} labels",
        f"- Tokenized to at most {meta['max_length']} tokens, padding `{meta['padding']}`",
        "",
        "## Data",
        "",
        f"- Dataset: `{params['data']['dataset']}`, revision {revision(params['data']['revision'])}",
        f"- Trained on {params['subset']['train_size']:,} examples of the train split, evaluated on "
        f"{metrics['n_eval']:,} of the test split (seeded selection, `subset.seed` {params['subset']['seed']})",
        f"- Eval profile `{info['profile']}`, eval fingerprint `{info['eval_fingerprint'][:16]}`",
        "",
        f"## Metrics (eval subset, n = {metrics['n_eval']:,}, {percent}% intervals)",
        "",
        "| metric | value | interval | method |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("accuracy", "macro_f1", "eval_loss"):
        if name in intervals:
            low, high, method = intervals[name]
            lines.append(f"| {name} | {metrics[name]:.4f} | {low:.4f} – {high:.4f} | {method} |")
        else:
            lines.append(f"| {name} | {metrics[name]:.4f} | | mean cross-entropy |")
    lines += [
        "",
        "The intervals cover the choice of eval examples only, not the training seed; see the README's",
        "multi-seed baseline for that.",
        "",
        "Per label:",
        "",
        "| label | precision | recall | f1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {row.label} | {row.precision:.4f} | {row.recall:.4f} | {row.f1:.4f} | {row.support} |"
        for row in per_class.itertuples()
    ]
    sections = params
    lines += [
        "",
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump(sections, sort_keys=False).rstrip(),
        "```",
        "",
        "## Training environment",
        "",
    ]
    if environment:
        lines += ["| | |", "| --- | --- |"] + [f"| {key} | `{value}` |" for key, value in sorted(environment.items())]
    else:
        lines.append("Not recorded (the train stage writes `reports/environment.json`).")
    lines += [
        "",
        "## How to load it",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f'model = AutoModelForSequenceClassification.from_pretrained("{model_dir}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{model_dir}")',
        f'inputs = tokenizer(["The food was great."], truncation=True, max_length={meta["max_length"]},',
        '                   return_tensors="pt")',
        "stars = model(**inputs).logits.argmax(-1) + 1  # label 0 is 1 star",
        "```",
        "",
        f"On a fresh clone, `dvc pull {model_dir}` fetches the model from the DVC remote first.",
        "",
    ]
    return "\n".join(lines)


def card_params(meta: dict, model_dir: Path, evaluate_params: EvaluateParams) -> dict[str, dict]:
    """The params of the run, as each stage recorded its own section: data, model, tokenize and
    subset in the subset's meta.json, train beside the model, and ours. No stage reads another's
    section of params.yaml, and the card cannot show a value the outputs were not made with."""
    training = json.loads((model_dir / TRAINING_PARAMS_FILE).read_text()) if (model_dir / TRAINING_PARAMS_FILE).is_file() else {}
    recorded = {**meta.get("params", {}), "train": training.get("train", "not recorded")}
    missing = [name for name in ("data", "model", "tokenize", "subset") if name not in recorded]
    if missing:
        raise UserError(f"{', '.join(missing)} params not recorded in the subset's meta.json; rerun the pipeline (dvc repro)")
    return {**{name: recorded[name] for name in ("data", "model", "tokenize", "subset", "train")},
            "evaluate": dataclasses.asdict(evaluate_params)}


def eval_info(params: EvaluateParams, meta: dict, examples: TokenizedExamples) -> dict:
    """What the metrics were computed on: the same fingerprint means the same eval examples."""
    digest = hashlib.sha256(meta["content_sha256"]["test"].encode())
    digest.update(np.asarray(examples.idx, dtype="<i8").tobytes())
    digest.update(np.asarray(examples.labels, dtype="<i8").tobytes())
    return {
        "profile": params.profile,
        "n_eval": len(examples),
        "eval_fingerprint": digest.hexdigest(),
        "test_split_sha256": meta["content_sha256"]["test"],
        "model": meta["model"],
    }


@torch.inference_mode()
def predict(model: torch.nn.Module, examples: TokenizedExamples, collator, batch_size: int) -> np.ndarray:
    """Logits for every example, in the examples' order.

    Batches are formed from examples sorted by length, so dynamic padding adds little; the order is
    restored before returning.
    """
    model.eval()
    order = np.argsort([len(ids) for ids in examples.input_ids], kind="stable")
    logits = np.zeros((len(examples), model.config.num_labels), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc="predict", unit="batch"):
        rows = order[start : start + batch_size]
        batch = collator([{"input_ids": examples.input_ids[i]} for i in rows])
        logits[rows] = model(**batch).logits.float().numpy()
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, required=True, help="trained model folder (models/model)")
    parser.add_argument("--subset", type=Path, required=True, help="input folder (data/subset)")
    parser.add_argument("--metrics-out", type=Path, required=True, help="metrics file (metrics.json)")
    parser.add_argument("--predictions-out", type=Path, required=True, help="per-example CSV")
    parser.add_argument("--info-out", type=Path, required=True, help="eval fingerprint (JSON)")
    parser.add_argument("--per-class-out", type=Path, help="per-label precision, recall, F1 (CSV)")
    parser.add_argument("--prepared", type=Path, help="prepared data (data/prepared), for the texts of the errors")
    parser.add_argument("--errors-out", type=Path, help="most confident wrong predictions with their text (CSV)")
    parser.add_argument("--environment", type=Path, help="train's environment record (reports/environment.json)")
    parser.add_argument("--card-out", type=Path, help="model card (Markdown)")
    args = parser.parse_args()
    if args.errors_out is not None and args.prepared is None:
        parser.error("--errors-out needs --prepared (the texts of the eval examples)")
    params = load_params(args.params)
    started = time.perf_counter()
    metrics = run(
        params.evaluate, args.model, args.subset, args.metrics_out, args.predictions_out, args.info_out,
        per_class_out=args.per_class_out,
        prepared_dir=args.prepared,
        errors_out=args.errors_out,
        card_out=args.card_out,
        environment=args.environment,
    )
    written = [
        args.metrics_out, args.predictions_out, args.info_out, args.per_class_out, args.errors_out, args.card_out
    ]
    log.info(
        "evaluated %d examples in %.1fs: accuracy %.4f, macro_f1 %.4f, eval_loss %.4f -> %s",
        metrics["n_eval"], time.perf_counter() - started,
        metrics["accuracy"], metrics["macro_f1"], metrics["eval_loss"],
        ", ".join(str(path) for path in written if path is not None),
    )


if __name__ == "__main__":
    run_main(main)
