"""The multi-seed summary over `dvc exp show --json` (the structure DVC 3 prints)."""

from __future__ import annotations

import pytest

from stages.gate.seeds import summarize


def rev(seed: int, accuracy: float, lr: float = 5e-5) -> dict:
    return {
        "data": {
            "params": {"params.yaml": {"data": {"train": {"seed": seed, "learning_rate": lr}}}},
            "metrics": {"metrics.json": {"data": {"accuracy": accuracy, "n_eval": 1000}}},
        }
    }


def exp_show(*experiments: dict) -> list[dict]:
    head = {"rev": "abc123", **rev(42, 0.60)}
    head["experiments"] = [{"name": f"exp-{i}", "revs": [e]} for i, e in enumerate(experiments)]
    return [{"rev": "workspace", **rev(42, 0.60)}, head]


def test_summary_over_seed_variants_only() -> None:
    shown = exp_show(rev(1, 0.58), rev(2, 0.62), rev(3, 0.5, lr=1e-3))  # the last is another recipe
    summary = summarize(shown)
    assert summary["seeds"] == [1, 2, 42]
    accuracy = summary["metrics"]["accuracy"]
    assert accuracy["n"] == 3 and accuracy["mean"] == pytest.approx(0.6)
    assert accuracy["std"] == pytest.approx(0.02)


def test_one_seed_is_not_a_spread() -> None:
    with pytest.raises(ValueError, match=r"found 1 run\(s\) of this recipe; queue more seeds"):
        summarize(exp_show(rev(3, 0.5, lr=1e-3)))
