"""Accuracy as an `evaluate` metric module, shipped with the project so it loads offline.

`evaluate.load("accuracy")` fetches this module from the Hugging Face Hub; loading it by path
(`evaluate.load("stages/metrics/modules/accuracy")`) needs no network.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score


class Accuracy(evaluate.Metric):
    """Fraction of predictions equal to their reference label."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Proportion of predictions that equal the reference label.",
            citation="",
            inputs_description="predictions: list of int labels; references: list of int labels.",
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {"accuracy": float(accuracy_score(references, predictions))}
