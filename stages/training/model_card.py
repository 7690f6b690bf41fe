"""The model card: `README.md` in the model folder, as on the Hugging Face Hub, so a model's facts travel with it.

`model_card(model_path=..., model=..., params=..., meta=..., scores=..., ...)` returns the Markdown: a Hub header
(`model-index`: the eval results), base model and data with the Hub commits they resolved to, every stage's params,
metrics with intervals (`stages/metrics/scoring.py`), environment, how to load it.
"""

from __future__ import annotations

import pandas as pd
import torch
import yaml

from stages.metrics.scoring import CONFIDENCE, Scores

FILE_NAME = "README.md"


def _revision(value: str | None, commit: str | None) -> str:
    pinned = f"`{value}`" if value else "default branch (not pinned)"
    return f"{pinned}, Hub commit `{commit}`" if commit and commit != value else pinned


def card_header(model_path: str, params: dict[str, dict], meta: dict, metrics: dict[str, float]) -> str:
    """The card's YAML header, built with `huggingface_hub.ModelCardData`: the Hub shows its
    `model-index` (the eval results) on the model's page. Hub ids only for what came from the Hub."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset, from_hub = params["data"]["dataset"], "dataset_commit" in meta
    evaluated_on = {
        "task_type": "text-classification",
        "dataset_type": dataset,
        "dataset_name": dataset,
        "dataset_split": "test",
        "dataset_revision": meta.get("dataset_commit"),
    }
    results = [
        EvalResult(**evaluated_on, metric_type="accuracy", metric_name="Accuracy", metric_value=metrics["accuracy"]),
        EvalResult(
            **evaluated_on,
            metric_type="f1",
            metric_name="Macro F1",
            metric_config="macro",
            metric_value=metrics["macro_f1"],
        ),
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        base_model=params["model"]["name"] if "model_commit" in meta else None,
        datasets=[dataset] if from_hub else None,
        metrics=["accuracy", "f1"],
        model_name=model_path,
        eval_results=results,
    )
    return f"---\n{data.to_yaml()}\n---"


def model_card(
    *,
    model_path: str,
    model: torch.nn.Module,
    params: dict[str, dict],
    meta: dict,
    scores: Scores,
    history: pd.DataFrame,
    environment: dict[str, str],
) -> str:
    """The card as Markdown. `model_path` is where users find the folder (`models/model`); `params`
    holds each stage's section as that stage recorded it; `history` is the per-epoch evaluation."""
    config = model.config
    n_parameters = sum(p.numel() for p in model.parameters())
    metrics, percent = scores.metrics, int(round(CONFIDENCE * 100))
    architecture = type(model).__name__  # the fine-tuned class; config.architectures still names the base's
    data, subset = params["data"], params["subset"]
    # No timestamps or machine-local paths: a forced rerun rewrites the same bytes.
    lines = [
        card_header(model_path, params, meta, {name: float(metrics[name]) for name in ("accuracy", "macro_f1")}),
        "",
        f"# Model card: `{model_path}`",
        "",
        f"`{architecture}` fine-tuned for {config.num_labels}-way review-star classification (label 0 = 1 star, "
        f"..., label {config.num_labels - 1} = {config.num_labels} stars). Written by the `train` stage of the "
        "pipeline that produced the model; `dvc.lock` pins every input.",
        "",
        "## Model",
        "",
        f"- Base model: `{params['model']['name']}`, revision {_revision(params['model']['revision'], meta.get('model_commit'))}",
        f"- Parameters: {n_parameters / 1e6:.1f}M ({n_parameters:,}), {config.num_labels} labels",
        f"- Tokenized to at most {meta['max_length']} tokens, padding `{meta['padding']}`",
        "",
        "## Data",
        "",
        f"- Dataset: `{data['dataset']}`, revision {_revision(data['revision'], meta.get('dataset_commit'))}",
        f"- Test split content hash (texts and labels): `{meta['content_sha256']['test'][:16]}`",
        f"- Trained on {subset['train_size']:,} examples of the train split, evaluated on {metrics['n_eval']:,} "
        f"of the test split (seeded selection, `subset.seed` {subset['seed']})",
        "",
        f"## Metrics (eval subset, n = {metrics['n_eval']:,}, {percent}% intervals)",
        "",
        "| metric | value | interval | method |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("accuracy", "macro_f1", "eval_loss"):
        if name in scores.intervals:
            low, high, method = scores.intervals[name]
            lines.append(f"| {name} | {metrics[name]:.4f} | {low:.4f} – {high:.4f} | {method} |")
        else:
            lines.append(f"| {name} | {metrics[name]:.4f} | | mean cross-entropy |")
    lines += [
        "",
        f"The final model's predictions on the eval subset, computed in {environment['precision']}: the same numbers as "
        "`metrics.json` from the `evaluate` stage (which computes in fp32, so mixed-precision runs can differ "
        "in the last digits). The intervals cover the choice of eval examples only, not the training seed; "
        "see the README's multi-seed baseline for that.",
        "",
        "Per label:",
        "",
        "| label | precision | recall | f1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {row.label} | {row.precision:.4f} | {row.recall:.4f} | {row.f1:.4f} | {row.support} |"
        for row in scores.per_class.itertuples()
    ]
    lines += ["", "After each epoch:", "", "| epoch | step | eval_loss | eval_accuracy |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {row.epoch:g} | {row.step} | {row.eval_loss:.4f} | {row.eval_accuracy:.4f} |"
        for row in history.itertuples()
    ]
    lines += [
        "",
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump(params, sort_keys=False).rstrip(),
        "```",
        "",
        "## Training environment",
        "",
        "| | |",
        "| --- | --- |",
    ]
    lines += [f"| {key} | `{value}` |" for key, value in sorted(environment.items())]
    lines += [
        "",
        "## How to load it",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f'model = AutoModelForSequenceClassification.from_pretrained("{model_path}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{model_path}")',
        f'inputs = tokenizer(["The food was great."], truncation=True, max_length={meta["max_length"]},',
        '                   return_tensors="pt")',
        "stars = model(**inputs).logits.argmax(-1) + 1  # label 0 is 1 star",
        "```",
        "",
        f"On a fresh clone, `dvc pull {model_path}` fetches the model from the DVC remote first.",
        "",
    ]
    return "\n".join(lines)
