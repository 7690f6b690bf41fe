"""Stage `evaluate`: predict the eval subset with the trained model and write the metrics.

Params: `evaluate.*`. Inputs: `<model>/` (from train), `<subset>/eval.parquet` and `meta.json`, and for the
errors report `<prepared>/test.parquet`. Outputs: `<metrics-out>` (`metrics.json`: accuracy, macro_f1,
eval_loss, n_eval), `<predictions-out>` (a CSV row per eval example), `<info-out>` (what the metrics were
computed on), `<per-class-out>` (`reports/per_class.csv`) and `<errors-out>` (`reports/errors.csv`).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stages.common.atomic import atomic_outputs, json_text
from stages.common.errors import UserError, run_main
from stages.common.params import EvaluateParams, load_params
from stages.data.digest import ContentDigest
from stages.data.tokenized import TokenizedExamples, make_collator, read_meta
from stages.metrics.scoring import score

log = logging.getLogger(__name__)

ERRORS_TOP = 20  # wrong predictions listed in the errors report, most confident first
TEXT_CHARS = 300  # characters of each review shown there


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
) -> dict[str, float]:
    """Predict `subset_dir`'s eval examples with `model_dir`; write metrics and predictions.

    Optionally also the reports: per-class scores (`per_class_out`) and the most confident errors
    with their text from `prepared_dir` (`errors_out`).
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
    # The code train scores its model card with (stages/metrics/scoring.py), so the card and metrics.json agree.
    scores = score(logits, labels, model.config.num_labels)
    metrics = scores.metrics
    # Per example: dvc.yaml draws it as the confusion matrix, and the gate's paired tests read it.
    table = pd.DataFrame(
        {
            "idx": examples.idx,
            "label": labels,
            "prediction": scores.predictions,
            "confidence": scores.confidence.round(6),
            "loss": scores.losses.round(6),
        }
    )
    # Every output is deterministic (no timestamps, a seeded bootstrap): `dvc repro --force` rewrites the same bytes.
    metrics_text, predictions_text = json_text(metrics), table.to_csv(index=False)
    # So the gate never compares runs on different data, nor pairs metrics with another run's predictions.
    info = eval_info(params, meta, examples) | {"outputs_sha256": outputs_digest(metrics_text, predictions_text)}
    reports = {info_out: json_text(info), predictions_out: predictions_text}
    if per_class_out is not None:
        reports[per_class_out] = scores.per_class.to_csv(index=False)
    if errors_out is not None:
        reports[errors_out] = confident_errors(table, read_texts(prepared_dir, meta), ERRORS_TOP).to_csv(index=False)
    # One commit for all outputs, metrics.json (what `dvc metrics diff` and the gate read) renamed in last.
    with atomic_outputs(files=[*reports, metrics_out]) as staged:
        for path, text in (reports | {metrics_out: metrics_text}).items():
            staged[path].write_text(text, encoding="utf-8")
    return metrics


def outputs_digest(metrics_text: str, predictions_text: str) -> dict[str, str]:
    """The sha256 of the metrics and predictions files' text, which `eval_info.json` records beside them."""
    return {
        "metrics": hashlib.sha256(metrics_text.encode()).hexdigest(),
        "predictions": hashlib.sha256(predictions_text.encode()).hexdigest(),
    }


def read_texts(prepared_dir: Path, meta: dict) -> list[str]:
    """The test split's texts, in row order: the order the tokenize stage wrote, so `idx` indexes it.

    A split whose content hash differs from the one tokenize recorded is a `UserError`.
    """
    source = prepared_dir / "test.parquet"
    if not source.is_file():
        raise UserError(f"{source}: not found; run the prepare stage first (dvc repro prepare)")
    table = pq.read_table(source, columns=["text", "label"])
    texts = table.column("text").to_pylist()
    content = ContentDigest()
    content.update(texts, table.column("label").to_numpy())
    # Another data/prepared than the eval subset's would quote texts against the wrong predictions.
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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # fp32 on either
    model.eval().to(device)
    order = examples.length_order()
    logits = np.zeros((len(examples), model.config.num_labels), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc="predict", unit="batch"):
        rows = order[start : start + batch_size]
        batch = collator([{"input_ids": examples.input_ids[i]} for i in rows]).to(device)
        logits[rows] = model(**batch).logits.float().cpu().numpy()
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
    args = parser.parse_args()
    if args.errors_out is not None and args.prepared is None:
        parser.error("--errors-out needs --prepared (the texts of the eval examples)")
    params = load_params(args.params)
    started = time.perf_counter()
    metrics = run(
        params.evaluate,
        args.model,
        args.subset,
        args.metrics_out,
        args.predictions_out,
        args.info_out,
        per_class_out=args.per_class_out,
        prepared_dir=args.prepared,
        errors_out=args.errors_out,
    )
    written = [args.metrics_out, args.predictions_out, args.info_out, args.per_class_out, args.errors_out]
    log.info(
        "evaluated %d examples in %.1fs: accuracy %.4f, macro_f1 %.4f, eval_loss %.4f -> %s",
        metrics["n_eval"],
        time.perf_counter() - started,
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["eval_loss"],
        ", ".join(str(path) for path in written if path is not None),
    )


if __name__ == "__main__":
    run_main(main)
