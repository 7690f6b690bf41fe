"""The metric gate on fixture runs: regressions fail, noise passes, incomparable runs never pass."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stages.common.params import load_params
from stages.gate import compare
from tests.helpers import REPO_ROOT, run_cmd

N = 1000
GATE = load_params(REPO_ROOT / "params.yaml").gate


def write_run(
    folder: Path,
    correct: np.ndarray,
    *,
    profile: str = "full",
    fingerprint: str = "f" * 64,
    params: str | None = None,
    with_predictions: bool = True,
) -> Path:
    """A run's outputs as evaluate writes them: `correct[i]` says whether example i was right."""
    labels = np.random.default_rng(0).integers(0, 5, size=len(correct))
    predictions = np.where(correct, labels, (labels + 1) % 5)
    loss = np.where(correct, 0.5, 1.5)
    (folder / "reports").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {"idx": np.arange(len(correct)), "label": labels, "prediction": predictions, "confidence": 0.5, "loss": loss}
    )
    if with_predictions:
        frame.to_csv(folder / "reports" / "predictions.csv", index=False)
    from sklearn.metrics import f1_score

    metrics = {
        "accuracy": float(correct.mean()),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
        "eval_loss": float(loss.mean()),
        "n_eval": len(correct),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "reports" / "eval_info.json").write_text(
        json.dumps({"profile": profile, "n_eval": len(correct), "eval_fingerprint": fingerprint})
    )
    (folder / "params.yaml").write_text(params or (REPO_ROOT / "params.yaml").read_text())
    return folder


def base_correct() -> np.ndarray:
    correct = np.zeros(N, dtype=bool)
    correct[:600] = True
    return correct


def flipped(correct: np.ndarray, to_wrong: int, to_right: int) -> np.ndarray:
    """`correct` with `to_wrong` right answers made wrong and `to_right` wrong ones made right."""
    out = correct.copy()
    out[np.flatnonzero(correct)[:to_wrong]] = False
    out[np.flatnonzero(~correct)[:to_right]] = True
    return out


def judge(tmp_path: Path, candidate: np.ndarray, **kwargs) -> tuple[int, str]:
    base = write_run(tmp_path / "base", base_correct())
    cand = write_run(tmp_path / "cand", candidate, **kwargs)
    status, _, report = compare.judge(GATE, None, base, cand)
    return status, report


def test_clear_regression_fails(tmp_path: Path) -> None:
    status, report = judge(tmp_path, flipped(base_correct(), to_wrong=150, to_right=0))
    assert status == compare.REGRESSION
    assert "## Metric gate: FAIL: regression" in report
    assert "| accuracy | 0.6000 | 0.4500 | -0.1500 |" in report
    assert "McNemar p=" in report and "**regression**" in report


def test_drop_within_noise_passes_and_says_so(tmp_path: Path) -> None:
    # 15 fewer right answers out of 1,000, with 119 examples changing: beyond the 0.01 tolerance,
    # but the paired interval includes zero.
    status, report = judge(tmp_path, flipped(base_correct(), to_wrong=67, to_right=52))
    assert status == compare.PASS, report
    assert "| accuracy | 0.6000 | 0.5850 | -0.0150 |" in report
    assert "pass (within noise)" in report
    assert "within the noise (not significant)" in report


def test_same_drop_with_few_changed_examples_is_significant(tmp_path: Path) -> None:
    # The same -0.015, but every change goes one way: the paired test sees it is real.
    status, report = judge(tmp_path, flipped(base_correct(), to_wrong=15, to_right=0))
    assert status == compare.REGRESSION, report


def test_the_report_states_the_smallest_drop_the_test_catches(tmp_path: Path) -> None:
    # Accuracy 0.6 on 1,000 examples each side, no predictions: binomial standard error of the
    # difference sqrt(2 * 0.6 * 0.4 / 1000) = 0.0219; caught 80% of the time from (1.96 + 0.84) * 0.0219.
    base = write_run(tmp_path / "base", base_correct(), with_predictions=False)
    cand = write_run(tmp_path / "cand", base_correct(), with_predictions=False)
    status, _, report = compare.judge(GATE, None, base, cand)
    assert status == compare.PASS
    row = next(line for line in report.splitlines() if line.startswith("| accuracy |"))
    assert row.endswith("| pass | 0.0614 |"), row
    assert "| drop caught 80% of the time |" in report
    # With the seed spread as the noise, Student's t over n - 1 degrees of freedom.
    noise = tmp_path / "seeds.json"
    noise.write_text(json.dumps({"metrics": {"accuracy": {"mean": 0.6, "std": 0.02, "n": 4}}}))
    _, _, report = compare.judge(GATE, None, base, cand, seed_noise_file=noise)
    row = next(line for line in report.splitlines() if line.startswith("| accuracy |"))
    expected = (stats.t.ppf(0.975, 3) + stats.t.ppf(0.8, 3)) * 0.02 * np.sqrt(2)
    assert row.endswith(f"| {expected:.4f} |"), (row, expected)


def test_improvement_passes(tmp_path: Path) -> None:
    status, report = judge(tmp_path, flipped(base_correct(), to_wrong=0, to_right=80))
    assert status == compare.PASS
    assert "| accuracy | 0.6000 | 0.6800 | +0.0800 |" in report
    assert "Pass: no metric dropped beyond its tolerance." in report


def test_without_predictions_accuracy_gets_a_binomial_interval(tmp_path: Path) -> None:
    status, report = judge(tmp_path, flipped(base_correct(), to_wrong=20, to_right=0), with_predictions=False)
    # -0.02 over 1,000 unpaired examples is within the binomial noise (about +-0.043) ...
    assert status == compare.PASS, report
    assert "binomial" in report
    # ... but a metric with no interval fails once it drops beyond its tolerance.
    status, report = judge(tmp_path, flipped(base_correct(), to_wrong=100, to_right=0), with_predictions=False)
    assert status == compare.REGRESSION


@pytest.mark.parametrize(
    ("metrics_text", "reason"),
    [
        ("{}", "metrics.json holds no metrics ('{}')"),
        ("not json", "metrics.json is not valid JSON"),
        (None, "metrics.json is missing"),
    ],
)
def test_missing_or_empty_metrics_cannot_compare(tmp_path: Path, metrics_text: str | None, reason: str) -> None:
    base = write_run(tmp_path / "base", base_correct())
    cand = write_run(tmp_path / "cand", base_correct())
    if metrics_text is None:
        (base / "metrics.json").unlink()
    else:
        (base / "metrics.json").write_text(metrics_text)
    status, _, report = compare.judge(GATE, None, base, cand)
    assert status == compare.CANNOT_COMPARE
    assert f"**Could not compare:** {base}: {reason}" in report


@pytest.mark.parametrize("side", ["base", "cand"])
def test_a_nan_metric_cannot_compare_never_passes(tmp_path: Path, side: str) -> None:
    runs = {"base": write_run(tmp_path / "base", base_correct()), "cand": write_run(tmp_path / "cand", base_correct())}
    metrics = json.loads((runs[side] / "metrics.json").read_text())
    (runs[side] / "metrics.json").write_text(json.dumps({**metrics, "eval_loss": float("nan")}))  # as json writes NaN
    status, _, report = compare.judge(GATE, None, runs["base"], runs["cand"])
    assert status == compare.CANNOT_COMPARE
    assert f"{runs[side]}: metrics.json has eval_loss = nan, not a finite number (the run diverged)" in report


def test_different_eval_data_or_profile_cannot_compare(tmp_path: Path) -> None:
    status, report = judge(tmp_path, base_correct(), fingerprint="0" * 64)
    assert status == compare.CANNOT_COMPARE
    assert "the runs used different eval examples (eval_fingerprint: base 'fff" in report
    status, report = judge(tmp_path, base_correct(), profile="smoke")
    assert status == compare.CANNOT_COMPARE
    assert "the runs used different profiles (profile: base 'full', candidate 'smoke')" in report


def test_report_lists_changed_params(tmp_path: Path) -> None:
    params = (REPO_ROOT / "params.yaml").read_text().replace("learning_rate: 5.0e-05", "learning_rate: 3.0e-05")
    _, report = judge(tmp_path, base_correct(), params=params)
    assert "| `train.learning_rate` | 5e-05 | 3e-05 |" in report


def test_seed_spread_replaces_the_binomial_noise(tmp_path: Path) -> None:
    noise = tmp_path / "seeds.json"
    noise.write_text(json.dumps({"metrics": {"accuracy": {"mean": 0.6, "std": 0.002, "n": 5}}}))
    base = write_run(tmp_path / "base", base_correct())
    cand = write_run(tmp_path / "cand", flipped(base_correct(), to_wrong=20, to_right=0), with_predictions=False)
    status, _, report = compare.judge(GATE, None, base, cand, seed_noise_file=noise)
    # With seeds agreeing to +-0.002, a 0.02 drop is far outside the noise.
    assert status == compare.REGRESSION, report
    assert "seed spread (n=5)" in report


def seed_pairs(base_accuracy: list[float], drops: list[float]) -> list[tuple[dict, dict]]:
    """Seed pairs (base metrics, candidate metrics) with the candidate's accuracy and macro-F1 lower by
    `drops` and its loss higher by as much."""

    def metrics(accuracy: float, loss: float) -> dict[str, float]:
        return {"accuracy": accuracy, "macro_f1": accuracy, "eval_loss": loss}

    return [(metrics(a, 1.3), metrics(a - d, 1.3 + d)) for a, d in zip(base_accuracy, drops, strict=True)]


def test_over_seeds_a_steady_drop_fails_and_noise_passes() -> None:
    base = [0.43, 0.45, 0.41, 0.44, 0.42]
    # A drop of 0.05 that every seed shows within +-0.01: no look before the third pair, and after the
    # fourth its mean is clear of the noise.
    steady = seed_pairs(base, [0.05, 0.06, 0.04, 0.05, 0.05])
    assert compare.sequential_status(GATE, steady[:2], max_pairs=6) == (None, [])
    status, results = compare.sequential_status(GATE, steady[:4], max_pairs=6)
    assert status == compare.REGRESSION
    accuracy = results[0]
    assert accuracy.method == "4 seed pairs, t" and accuracy.verdict == "regression"
    assert accuracy.delta == pytest.approx(-0.05)
    # Each of 4 looks (pairs 3 to 6) and 3 metrics gets its share: a two-sided interval at 1 - 2 * 0.05 / 12.
    q = stats.t.ppf(1 - 0.05 / 12, 3)
    se = np.std([0.05, 0.06, 0.04, 0.05], ddof=1) / np.sqrt(4)
    assert accuracy.interval == pytest.approx((-0.05 - q * se, -0.05 + q * se))
    assert accuracy.detectable == pytest.approx((q + stats.t.ppf(0.8, 3)) * se)
    # The same mean drop, but seeds that disagree: within the noise, so another pair is asked for ...
    noisy = seed_pairs(base, [0.15, -0.06, 0.09, -0.03, 0.1])
    status, results = compare.sequential_status(GATE, noisy[:4], max_pairs=6)
    assert status is None and results[0].verdict == "pass (within noise)"
    # ... and at the last pair the verdict is final.
    status, _ = compare.sequential_status(GATE, noisy, max_pairs=5)
    assert status == compare.PASS


def test_over_seeds_it_stops_early_once_every_metric_is_within_its_tolerance() -> None:
    base = [0.43, 0.45, 0.41]
    same = seed_pairs(base, [0.0, 0.001, -0.001])
    status, _ = compare.sequential_status(GATE, same, max_pairs=9)
    assert status == compare.PASS
    status, _ = compare.sequential_status(GATE, seed_pairs(base, [0.0, 0.02, -0.02]), max_pairs=9)
    assert status is None
    with pytest.raises(ValueError, match="at least two pairs"):
        compare.compare_over_seeds(GATE, same[:1])


@pytest.mark.slow
def test_base_from_a_git_revision_and_the_cli_exit_codes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_run(repo, base_correct())
    run_cmd(["git", "init", "-q", "-b", "main"], repo)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "baseline"], repo)
    # The candidate loses 0.15 accuracy and loosens its own tolerances to let that through.
    loosened = (REPO_ROOT / "params.yaml").read_text().replace("tolerance: 0.01}", "tolerance: 1.0}")
    loosened = loosened.replace("tolerance: 0.02}", "tolerance: 1.0}").replace("tolerance: 0.05}", "tolerance: 1.0}")
    write_run(repo, flipped(base_correct(), to_wrong=150, to_right=0), params=loosened)

    command = [sys.executable, "-m", "stages.gate", "--base", "main"]
    result = subprocess.run([*command, "--report", str(tmp_path / "r.md")], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr  # main's rules judge, not the workspace's
    assert "Base: `main (" in result.stdout and "| accuracy | 0.6000 | 0.4500 |" in result.stdout
    assert re.search(r"Gate rules from `main \(\w{10}\):params.yaml`", result.stdout), result.stdout
    assert (tmp_path / "r.md").read_text().strip() == result.stdout.strip()

    # Other rules only when asked for by name.
    asked = subprocess.run([*command, "--rules", "params.yaml"], cwd=repo, capture_output=True, text=True)
    assert asked.returncode == 0, asked.stdout
    assert "Gate rules from `params.yaml`" in asked.stdout

    # A base whose rules cannot be read cannot be compared: the candidate's are never the fallback.
    (repo / "params.yaml").write_text("gate: {confidence: 2.0}\n")
    run_cmd(["git", "commit", "-qam", "broken rules"], repo)
    write_run(repo, flipped(base_correct(), to_wrong=150, to_right=0), params=loosened)
    broken = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    assert broken.returncode == 2
    assert "error: the base's gate rules cannot be read (main (" in broken.stderr, broken.stderr
    assert "the candidate's rules are never used instead" in broken.stderr

    result = subprocess.run([*command[:4], "no-such-rev"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 2
    assert "base revision 'no-such-rev' is not a commit in this repository" in result.stderr
