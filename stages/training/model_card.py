"""The model card: `README.md` in the model folder, as on the Hugging Face Hub, so a model's facts travel with it.

`model_card(model_path=..., model=..., params=..., meta=..., scores=..., ...)` returns the Markdown: base model,
data, every stage's params, metrics with intervals (`stages/metrics/scoring.py`), environment, how to load it.
"""

from __future__ import annotations

import pandas as pd
import torch
import yaml

from stages.metrics.scoring import CONFIDENCE, Scores

FILE_NAME = "README.md"


def _revision(value: str | None) -> str:
    return f"`{value}`" if value else "default branch (not pinned)"


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
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "---",
        "",
        f"# Model card: `{model_path}`",
        "",
        f"`{architecture}` fine-tuned for {config.num_labels}-way review-star classification (label 0 = 1 star, "
        f"..., label {config.num_labels - 1} = {config.num_labels} stars). Written by the `train` stage of the "
        "pipeline that produced the model; `dvc.lock` pins every input.",
        "",
        "## Model",
        "",
        f"- Base model: `{params['model']['name']}`, revision {_revision(params['model']['revision'])}",
        f"- Parameters: {n_parameters / 1e6:.1f}M ({n_parameters:,}), {config.num_labels} labels",
        f"- Tokenized to at most {meta['max_length']} tokens, padding `{meta['padding']}`",
        "",
        "## Data",
        "",
        f"- Dataset: `{data['dataset']}`, revision {_revision(data['revision'])}",
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
