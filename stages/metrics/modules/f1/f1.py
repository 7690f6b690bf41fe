"""F1 as an `evaluate` metric module, shipped with the project so it loads offline.

Load it by path (`evaluate.load("stages/metrics/modules/f1")`); `average="macro"` weighs every
class equally, which is what a 5-star classifier should be judged on.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    """F1 score of integer class predictions, averaged as asked (macro by default)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Harmonic mean of precision and recall, averaged over classes.",
            citation="",
            inputs_description=(
                "predictions: list of int labels; references: list of int labels; "
                "average: 'macro' (default), 'micro' or 'weighted'; labels: classes to include."
            ),
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(
        self,
        predictions: list[int],
        references: list[int],
        average: str = "macro",
        labels: list[int] | None = None,
    ) -> dict[str, float]:
        score = f1_score(references, predictions, average=average, labels=labels, zero_division=0)
        return {"f1": float(score)}
