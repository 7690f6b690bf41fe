"""Scores of a model's predictions on the eval subset, the same for `train` (model card) and `evaluate`.

`score(logits, labels, num_labels)` returns `Scores`: accuracy and macro-F1 (the `evaluate` metric modules in
`stages/metrics/modules`, which load with no network), mean cross-entropy, per-label scores and intervals.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import evaluate
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_fscore_support

METRIC_MODULES = Path(__file__).parent / "modules"
CONFIDENCE = 0.95  # of the intervals
BOOTSTRAP_SAMPLES = 2000  # resamples of the eval examples for macro-F1's interval
BOOTSTRAP_SEED = 0  # fixed, so the same predictions always get the same interval


def accuracy_metric() -> evaluate.EvaluationModule:
    return evaluate.load(str(METRIC_MODULES / "accuracy"))


@dataclass
class Scores:
    predictions: np.ndarray  # predicted label of each example
    confidence: np.ndarray  # the probability the model gave its prediction
    losses: np.ndarray  # cross-entropy of each example's true label
    metrics: dict[str, float]  # accuracy, macro_f1, eval_loss (rounded to 6 digits), n_eval
    per_class: pd.DataFrame  # label, precision, recall, f1, support
    intervals: dict[str, tuple[float, float, str]]  # metric -> (low, high, method)


def score(logits: np.ndarray, labels: np.ndarray, num_labels: int) -> Scores:
    """Everything we report about predictions `logits` (n x num_labels) of examples labelled `labels`."""
    labels = np.asarray(labels)
    log_probs = torch.log_softmax(torch.from_numpy(np.asarray(logits)).double(), dim=-1).numpy()
    predictions = log_probs.argmax(axis=-1)
    losses = -log_probs[np.arange(len(labels)), labels]
    f1 = evaluate.load(str(METRIC_MODULES / "f1"))
    metrics = {
        "accuracy": accuracy_metric().compute(predictions=predictions, references=labels)["accuracy"],
        "macro_f1": f1.compute(predictions=predictions, references=labels, labels=list(range(num_labels)))["f1"],
        "eval_loss": float(losses.mean()),
    }
    # Rounded so that last-bit float noise never shows up as a change in `dvc metrics diff`.
    metrics = {key: round(float(value), 6) for key, value in metrics.items()}
    return Scores(
        predictions=predictions,
        confidence=np.exp(log_probs.max(axis=-1)),
        losses=losses,
        metrics={**metrics, "n_eval": len(labels)},
        per_class=per_class_scores(labels, predictions, num_labels),
        intervals=metric_intervals(labels, predictions, num_labels),
    )


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
    labels: np.ndarray,
    predictions: np.ndarray,
    num_labels: int,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of macro-F1 over resamples of the eval examples."""
    n = len(labels)
    # Macro-F1 needs only the confusion matrix, and a resample of n examples draws it from a multinomial
    # over its cells: num_labels² numbers per resample, not n, so cheap for any eval size.
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
