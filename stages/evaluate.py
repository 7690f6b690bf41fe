"""Stage `evaluate`: predict the eval subset with the trained model and write the metrics.

Params: `evaluate.*`. Inputs: `<model>/` (from train), `<subset>/eval.parquet` and `meta.json`.
Outputs:
- `<metrics-out>` (`metrics.json`): accuracy, macro_f1, eval_loss, n_eval; deterministic numbers
  only, so `dvc metrics diff` shows real change;
- `<predictions-out>`: a CSV row per eval example (its `idx` in the test split, `label`,
  `prediction`, `confidence`, `loss`), which `dvc.yaml` also draws as the confusion matrix and the
  gate uses for paired tests;
- `<info-out>`: what the metrics were computed on (a fingerprint of the eval examples, the profile),
  so the gate never compares runs on different data.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path

import evaluate
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stages.cli import UserError, run_main
from stages.examples import TokenizedExamples, make_collator, read_meta
from stages.outputs import atomic_file, write_json
from stages.params import EvaluateParams, load_params
from stages.train import METRIC_MODULES, accuracy_metric

log = logging.getLogger(__name__)


def run(
    params: EvaluateParams,
    model_dir: Path,
    subset_dir: Path,
    metrics_out: Path,
    predictions_out: Path,
    info_out: Path,
) -> dict[str, float]:
    """Predict `subset_dir`'s eval examples with `model_dir`; write metrics and predictions."""
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
    write_json(info_out, eval_info(params, meta, examples))
    return metrics


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
    args = parser.parse_args()
    params = load_params(args.params)
    started = time.perf_counter()
    metrics = run(
        params.evaluate, args.model, args.subset, args.metrics_out, args.predictions_out, args.info_out
    )
    log.info(
        "evaluated %d examples in %.1fs: accuracy %.4f, macro_f1 %.4f, eval_loss %.4f -> %s",
        metrics["n_eval"], time.perf_counter() - started,
        metrics["accuracy"], metrics["macro_f1"], metrics["eval_loss"], args.metrics_out,
    )


if __name__ == "__main__":
    run_main(main)
