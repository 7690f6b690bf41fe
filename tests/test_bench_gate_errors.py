"""The gate error-rate benchmark's own logic: label flips, and the check's decision on stored runs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import gate_errors
from stages.common.params import load_params, read_yaml
from tests.helpers import REPO_ROOT

N = 500


def stored_run(correct: np.ndarray, labels: np.ndarray) -> dict:
    prediction = np.where(correct, labels, (labels + 1) % 5)
    return {
        "metrics": {
            "accuracy": float(correct.mean()),
            "macro_f1": float(correct.mean()),
            "eval_loss": float(np.where(correct, 0.5, 1.5).mean()),
            "n_eval": N,
        },
        "prediction": prediction.tolist(),
        "loss": np.where(correct, 0.5, 1.5).tolist(),
        "wall_s": {"train": 1.0, "evaluate": 1.0},
    }


@pytest.mark.slow
def test_the_simulated_check_passes_seed_noise_and_fails_a_large_drop() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=N)
    # Eight base seeds at about 0.6 accuracy, each right on its own random examples; a variant that
    # keeps those seeds but loses a third of each one's right answers (a drop of 0.2).
    base, hurt = {}, {}
    for seed in range(8):
        correct = rng.random(N) < 0.6
        base[str(seed)] = stored_run(correct, labels)
        worse = correct.copy()
        worse[np.flatnonzero(correct)[: int(correct.sum() // 3)]] = False
        hurt[str(seed)] = stored_run(worse, labels)
    stored = {
        "runs": {"base": base, "hurt": hurt},
        "eval": {
            "idx": list(range(N)),
            "label": labels.tolist(),
            "info": {"profile": "smoke", "n_eval": N, "eval_fingerprint": "f" * 64},
        },
        "params": read_yaml((REPO_ROOT / "params.yaml").read_text(), "params.yaml"),
    }
    rules = load_params(REPO_ROOT / "params.yaml").gate
    rows = {row["change"]: row for row in gate_errors.simulate(stored, 1, np.random.default_rng(0), rules, caps=(3, 4))}
    noise, drop = rows["another seed"], rows["hurt"]
    # Two independent seeds differ by 0.6 * 0.4 per example on 500 examples: the single pair flags
    # nearly every one, and the seed pairs must clear them (3 more pairs: 6 of the 7 other seeds).
    assert noise["trials"] == 8 * 7
    assert noise["paired_seeds_3_fail_rate"] <= 0.1, noise
    # Where the single pair found the head worse, the seeds ran (2 runs a pair), but at most 3 more pairs.
    assert 2 < noise["paired_seeds_3_runs"] <= 8, noise
    assert noise["paired_seeds_4_fail_rate"] is None  # 8 other seeds needed, 6 stored
    assert drop["paired_seeds_3_fail_rate"] == 1.0 and drop["true_drop"] > 0.19, drop
    assert drop["paired_seeds_4_fail_rate"] == 1.0, drop


def test_flip_labels_moves_exactly_the_share_to_other_labels(tmp_path) -> None:
    labels = np.arange(1000) % 5
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2]] * 1000, "label": pa.array(labels, pa.int64())}), path)
    gate_errors.flip_labels(path, 0.1, num_labels=5)
    flipped = np.array(pq.read_table(path).column("label").to_pylist())
    assert (flipped != labels).sum() == 100
    assert set(flipped) <= set(range(5))
    assert pq.read_table(path).column("input_ids").to_pylist() == [[1, 2]] * 1000
