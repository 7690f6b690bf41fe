"""The metric gate: does the candidate run lose quality against the base beyond noise?

    python -m stages.gate --base origin/main    # or --base-run DIR; the candidate: the workspace or --candidate-run DIR

The base's `gate:` rules judge (or `--rules FILE`), never the candidate's. Exit status: 0 pass, 1 regression,
2 could not compare; the Markdown report goes to stdout (and to `--report FILE`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from stages.common.atomic import recover
from stages.common.params import GateParams, MetricRule, ParamsError, flatten, load_gate_rules, read_yaml

PASS, REGRESSION, CANNOT_COMPARE = 0, 1, 2
POWER = 0.8  # the detection rate at which the report states the smallest drop the test catches
# The sequential test over seed pairs looks from the third pair on: with two, Student's t has one
# degree of freedom, and a look there would spend its share of the error rate on almost no power.
FIRST_LOOK = 3
# Each side: its metrics, per-example predictions, and what the metrics were computed on.
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "reports/predictions.csv"
INFO_FILE = "reports/eval_info.json"
PARAMS_FILE = "params.yaml"


class CannotCompare(Exception):
    """The two sides cannot be compared; the message says why."""


@dataclass(frozen=True)
class Side:
    """One run's outputs: its metrics, what they were computed on, and per-example predictions."""

    name: str
    metrics: dict[str, float]
    info: dict[str, Any]
    predictions: pd.DataFrame | None
    params: dict[str, Any]


@dataclass(frozen=True)
class MetricResult:
    name: str
    base: float
    candidate: float
    interval: tuple[float, float] | None  # of candidate - base
    method: str
    p_value: float | None
    tolerance: float
    verdict: str  # "pass", "pass (within noise)", "regression"
    detectable: float | None = None  # the drop this test would fail with probability POWER

    @property
    def delta(self) -> float:
        return self.candidate - self.base


# -- reading a side -------------------------------------------------------------------------------


def read_from_git(revision: str, repo: Path = Path(".")) -> Side:
    """The side committed at `revision`: read with `git show`, so no DVC cache is needed."""
    name = f"{revision} ({resolve_commit(revision, repo)[:10]})"

    def show(path: str) -> str | None:
        return git_show(revision, path, repo)

    return _side(name, show(METRICS_FILE), show(INFO_FILE), show(PREDICTIONS_FILE), show(PARAMS_FILE))


def resolve_commit(revision: str, repo: Path = Path(".")) -> str:
    """The full commit id of `revision`; `CannotCompare` if it names no commit."""
    resolved = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if resolved.returncode != 0:
        raise CannotCompare(f"base revision {revision!r} is not a commit in this repository")
    return resolved.stdout.strip()


def git_show(revision: str, path: str, repo: Path = Path(".")) -> str | None:
    """The text of `path` committed at `revision`, or None where it has none."""
    result = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=repo, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def base_rules(base_revision: str | None, base_run: Path | None, rules_file: Path | None) -> tuple[GateParams, str]:
    """The gate rules that judge, and where they came from: `rules_file`, else the base's own params.

    Raises `CannotCompare` when they cannot be read: the candidate's rules are never the fallback.
    """
    if rules_file is not None or base_run is not None:
        path = rules_file if rules_file is not None else base_run / PARAMS_FILE
        source, text = str(path), path.read_text() if path.is_file() else None
    else:
        revision = base_revision or "HEAD"
        source = f"{revision} ({resolve_commit(revision)[:10]}):{PARAMS_FILE}"
        text = git_show(revision, PARAMS_FILE)
    if text is None:
        raise CannotCompare(f"{source}: not found, so there are no gate rules to judge by")
    try:
        return load_gate_rules(text, source), source
    except ParamsError as err:
        raise CannotCompare(
            f"the base's gate rules cannot be read ({err}); the candidate's rules are never used instead"
        ) from None


def read_from_dir(folder: Path, name: str | None = None) -> Side:
    """The side held in a run's folder (a checkout or worktree after `dvc repro`)."""
    # An evaluate run killed while renaming its outputs in leaves a journal: finish it, so no mix is read.
    recover([folder / METRICS_FILE, folder / INFO_FILE, folder / PREDICTIONS_FILE])

    def read(path: str) -> str | None:
        target = folder / path
        return target.read_text() if target.is_file() else None

    return _side(name or str(folder), read(METRICS_FILE), read(INFO_FILE), read(PREDICTIONS_FILE), read(PARAMS_FILE))


def _side(
    name: str, metrics_text: str | None, info_text: str | None, predictions_text: str | None, params_text: str | None
) -> Side:
    if metrics_text is None:
        raise CannotCompare(f"{name}: {METRICS_FILE} is missing")
    try:
        metrics = json.loads(metrics_text)
    except json.JSONDecodeError as err:
        raise CannotCompare(f"{name}: {METRICS_FILE} is not valid JSON ({err})") from None
    if not isinstance(metrics, dict) or not metrics:
        raise CannotCompare(f"{name}: {METRICS_FILE} holds no metrics ({metrics_text.strip()[:40]!r})")
    if info_text is None:
        raise CannotCompare(
            f"{name}: {INFO_FILE} is missing, so what its metrics were computed on is unknown; "
            "rerun the evaluate stage there"
        )
    try:
        info = json.loads(info_text)
    except json.JSONDecodeError as err:
        raise CannotCompare(f"{name}: {INFO_FILE} is not valid JSON ({err})") from None
    _check_written_together(name, info, metrics_text, predictions_text)
    predictions = None
    if predictions_text is not None:
        predictions = pd.read_csv(io.StringIO(predictions_text)).sort_values("idx").reset_index(drop=True)
    try:
        params = read_yaml(params_text, f"{name}: {PARAMS_FILE}") if params_text else {}
    except ParamsError as err:
        raise CannotCompare(str(err)) from None
    return Side(name, metrics, info, predictions, params if isinstance(params, dict) else {})


def _check_written_together(name: str, info: dict, metrics_text: str, predictions_text: str | None) -> None:
    """`CannotCompare` unless the metrics and predictions are the ones `eval_info.json` was written with."""
    recorded = info.get("outputs_sha256") if isinstance(info, dict) else None
    if not isinstance(recorded, dict):  # written before evaluate recorded them
        return
    found = {"metrics": metrics_text}
    if predictions_text is not None:
        found["predictions"] = predictions_text
    names = {"metrics": METRICS_FILE, "predictions": PREDICTIONS_FILE}
    differ = [
        names[key] for key, text in found.items() if hashlib.sha256(text.encode()).hexdigest() != recorded.get(key)
    ]
    if differ:
        raise CannotCompare(
            f"{name}: {' and '.join(differ)} {'are' if len(differ) > 1 else 'is'} not what {INFO_FILE} was written with (an evaluate run interrupted "
            "or outputs edited by hand); rerun the evaluate stage there"
        )


# -- comparing ------------------------------------------------------------------------------------


def check_comparable(base: Side, candidate: Side) -> None:
    """Raise `CannotCompare` unless both sides were evaluated the same way on the same examples."""
    for key, what in (("profile", "profiles"), ("eval_fingerprint", "eval examples")):
        if base.info.get(key) != candidate.info.get(key):
            raise CannotCompare(
                f"the runs used different {what} ({key}: base {base.info.get(key)!r}, "
                f"candidate {candidate.info.get(key)!r}); compare runs of the same profile on the same eval data"
            )


def compare(
    base: Side, candidate: Side, gate: GateParams, seed_noise: dict[str, Any] | None = None
) -> list[MetricResult]:
    """One result per gated metric. Raises `CannotCompare` when the sides do not match."""
    check_comparable(base, candidate)
    paired = _paired(base, candidate)
    results = []
    for name, rule in gate.metrics.items():
        for side in (base, candidate):
            value = side.metrics.get(name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise CannotCompare(f"{side.name}: {METRICS_FILE} has no numeric {name!r} (gate.metrics.{name})")
            # A NaN loss compares false with everything, so it would pass every check below.
            if not math.isfinite(value):
                raise CannotCompare(
                    f"{side.name}: {METRICS_FILE} has {name} = {value}, not a finite number (the run diverged)"
                )
        results.append(_judge(name, rule, base, candidate, paired, gate, seed_noise))
    return results


def _paired(base: Side, candidate: Side) -> bool:
    if base.predictions is None or candidate.predictions is None:
        return False
    same_rows = base.predictions["idx"].equals(candidate.predictions["idx"]) and base.predictions["label"].equals(
        candidate.predictions["label"]
    )
    if not same_rows:
        raise CannotCompare("the predictions files hold different eval examples although their fingerprints match")
    return True


def _judge(
    name: str,
    rule: MetricRule,
    base: Side,
    candidate: Side,
    paired: bool,
    gate: GateParams,
    seed_noise: dict[str, Any] | None,
) -> MetricResult:
    b, c = float(base.metrics[name]), float(candidate.metrics[name])
    z = stats.norm.ppf(0.5 + gate.confidence / 2)
    interval, method, p_value, se, quantiles = None, "no interval", None, None, stats.norm
    # The noise: the seed spread (--seed-noise), else a paired bootstrap on the same examples, else binomial.
    if seed_noise and name in seed_noise:
        n = int(seed_noise[name]["n"])
        # Student's t, not z: a spread measured on a handful of seeds is itself uncertain.
        quantiles = stats.t(df=max(n - 1, 1))
        t = quantiles.ppf(0.5 + gate.confidence / 2)
        se = float(seed_noise[name]["std"]) * np.sqrt(2.0)  # the difference of two seeded runs
        interval, method = (c - b - t * se, c - b + t * se), f"seed spread (n={n})"
    elif paired and name in PER_EXAMPLE:
        deltas = _bootstrap_deltas(name, base.predictions, candidate.predictions, gate)
        tail = (1 - gate.confidence) / 2 * 100
        interval = (float(np.percentile(deltas, tail)), float(np.percentile(deltas, 100 - tail)))
        se = float(np.std(deltas))
        method = f"paired bootstrap ({gate.bootstrap_samples:,})"
        if name == "accuracy":
            p_value = mcnemar_p(base.predictions, candidate.predictions)
    elif name == "accuracy":
        nb, nc = int(base.info["n_eval"]), int(candidate.info["n_eval"])
        se = np.sqrt(b * (1 - b) / nb + c * (1 - c) / nc)
        interval, method = (c - b - z * se, c - b + z * se), "binomial"
    # A true drop d fails when it beats the tolerance and its interval clears 0, which under a normal
    # (or t) error of this size happens with probability POWER once d >= (q_conf + q_power) * se.
    detectable = None
    if se is not None:
        q_conf = quantiles.ppf(0.5 + gate.confidence / 2)  # z, or the seed spread's t
        detectable = max(rule.tolerance, float((q_conf + quantiles.ppf(POWER)) * se))

    worse = (b - c) if rule.direction == "higher" else (c - b)
    # No worse than the tolerance passes; a larger drop fails if significant, or if its noise is unknown.
    if worse <= rule.tolerance + 1e-12:
        verdict = "pass"
    elif interval is None:
        verdict = "regression"
    else:
        significant = interval[1] < 0 if rule.direction == "higher" else interval[0] > 0
        verdict = "regression" if significant else "pass (within noise)"
    return MetricResult(name, b, c, interval, method, p_value, rule.tolerance, verdict, detectable)


def _per_example_accuracy(predictions: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    correct = (predictions["prediction"] == predictions["label"]).to_numpy()
    return correct[rows].mean(axis=1)


def _per_example_loss(predictions: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    return predictions["loss"].to_numpy()[rows].mean(axis=1)


def _per_example_macro_f1(predictions: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    labels = predictions["label"].to_numpy()[rows]
    predicted = predictions["prediction"].to_numpy()[rows]
    classes = np.unique(predictions["label"])
    scores = []
    for c in classes:
        tp = ((predicted == c) & (labels == c)).sum(axis=1)
        fp = ((predicted == c) & (labels != c)).sum(axis=1)
        fn = ((predicted != c) & (labels == c)).sum(axis=1)
        denominator = 2 * tp + fp + fn
        scores.append(np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0))
    return np.mean(scores, axis=0)


PER_EXAMPLE = {"accuracy": _per_example_accuracy, "eval_loss": _per_example_loss, "macro_f1": _per_example_macro_f1}


def _bootstrap_deltas(name: str, base: pd.DataFrame, candidate: pd.DataFrame, gate: GateParams) -> np.ndarray:
    """Candidate minus base on the same resamples of the eval examples (seeded: same verdict every run)."""
    rng = np.random.default_rng(gate.seed)
    rows = rng.integers(0, len(base), size=(gate.bootstrap_samples, len(base)))
    metric = PER_EXAMPLE[name]
    return metric(candidate, rows) - metric(base, rows)


def mcnemar_p(base: pd.DataFrame, candidate: pd.DataFrame) -> float:
    """Exact McNemar test: are the examples only one side gets right split unevenly?"""
    base_right = (base["prediction"] == base["label"]).to_numpy()
    cand_right = (candidate["prediction"] == candidate["label"]).to_numpy()
    only_base, only_cand = int((base_right & ~cand_right).sum()), int((~base_right & cand_right).sum())
    if only_base + only_cand == 0:
        return 1.0
    return float(stats.binomtest(only_base, only_base + only_cand, 0.5).pvalue)


# -- over training seeds --------------------------------------------------------------------------


def compare_over_seeds(
    gate: GateParams, pairs: list[tuple[dict[str, float], dict[str, float]]], looks: int = 1
) -> list[MetricResult]:
    """One result per gated metric from runs paired by training seed: `pairs[i]` is (base, candidate) metrics.

    `looks`: how many times a sequential test looks at growing `pairs`.
    """
    n = len(pairs)
    if n < 2:
        raise ValueError("judging over seeds needs at least two pairs of runs")
    # Each look and metric gets Bonferroni's share: false alarms over all stay within one-sided 1 - confidence.
    confidence = seed_pairs_confidence(gate, looks)
    quantiles = stats.t(df=n - 1)
    q_conf = quantiles.ppf(0.5 + confidence / 2)
    results = []
    for name, rule in gate.metrics.items():
        base = np.array([float(b[name]) for b, _ in pairs])
        candidate = np.array([float(c[name]) for _, c in pairs])
        # The noise is the spread of same-seed differences: a change that barely moves training needs few pairs.
        differences = candidate - base
        se = float(differences.std(ddof=1) / np.sqrt(n))
        mean = float(differences.mean())
        interval = (mean - q_conf * se, mean + q_conf * se)
        worse = -mean if rule.direction == "higher" else mean
        if worse <= rule.tolerance + 1e-12:
            verdict = "pass"
        else:
            significant = interval[1] < 0 if rule.direction == "higher" else interval[0] > 0
            verdict = "regression" if significant else "pass (within noise)"
        detectable = max(rule.tolerance, float((q_conf + quantiles.ppf(POWER)) * se))
        results.append(
            MetricResult(
                name,
                float(base.mean()),
                float(candidate.mean()),
                interval,
                f"{n} seed pairs, t",
                None,
                rule.tolerance,
                verdict,
                detectable,
            )
        )
    return results


def seed_pairs_confidence(gate: GateParams, looks: int) -> float:
    """The confidence of each look's intervals over seed pairs, at `looks` looks."""
    # A regression is one-sided (the interval's better end below 0), so the shared one-sided error
    # (1 - confidence) / (looks * metrics) is the tail of a two-sided interval of twice that.
    return 1 - 2 * (1 - gate.confidence) / (max(looks, 1) * len(gate.metrics))


def sequential_looks(max_pairs: int) -> int:
    """How many times the sequential test looks, at most `max_pairs` pairs."""
    return max_pairs - min(FIRST_LOOK, max_pairs) + 1


def sequential_status(
    gate: GateParams, pairs: list[tuple[dict[str, float], dict[str, float]]], max_pairs: int
) -> tuple[int | None, list[MetricResult]]:
    """A sequential test over seed pairs, after `pairs` of at most `max_pairs`: (status, results).

    status is REGRESSION, PASS, or None for "run another pair"; results are at the Bonferroni-shared confidence.
    """
    if len(pairs) < min(FIRST_LOOK, max_pairs):
        return None, []
    results = compare_over_seeds(gate, pairs, looks=sequential_looks(max_pairs))
    if any(r.verdict == "regression" for r in results):
        return REGRESSION, results
    if len(pairs) >= max_pairs:
        return PASS, results
    # Pass early once every interval lies within its tolerance, so more pairs would not turn the verdict; that
    # interval is a single look's: stopping to pass costs no false alarm, so it needs no share.
    plain = compare_over_seeds(gate, pairs)
    worst = [-r.interval[0] if gate.metrics[r.name].direction == "higher" else r.interval[1] for r in plain]
    return (PASS if all(w <= r.tolerance for w, r in zip(worst, plain, strict=True)) else None), results


# -- reporting ------------------------------------------------------------------------------------


def changed_params(base: dict[str, Any], candidate: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, base value, candidate value) for every params key that differs, dotted keys."""
    b, c = flatten(base), flatten(candidate)
    missing = "(absent)"
    return [
        (key, b.get(key, missing), c.get(key, missing))
        for key in sorted(b.keys() | c.keys())
        if b.get(key, missing) != c.get(key, missing)
    ]


def render_report(
    base: Side | None,
    candidate: Side | None,
    results: list[MetricResult],
    status: int,
    reason: str | None = None,
    confidence: float = 0.95,
    rules_from: str | None = None,
) -> str:
    title = {PASS: "PASS", REGRESSION: "FAIL: regression", CANNOT_COMPARE: "FAIL: cannot compare"}[status]
    lines = [f"## Metric gate: {title}", ""]
    if base is not None and candidate is not None:
        lines += [
            f"Base: `{base.name}` · Candidate: `{candidate.name}` · "
            f"profile `{candidate.info.get('profile')}` · {candidate.info.get('n_eval')} eval examples",
            "",
        ]
    if rules_from:
        lines += [f"Gate rules from `{rules_from}`.", ""]
    if reason:
        lines += [f"**Could not compare:** {reason}", ""]
    if base is not None and candidate is not None:
        changes = changed_params(base.params, candidate.params)
        lines += ["### Params changed", ""]
        if changes:
            lines += ["| param | base | candidate |", "| --- | --- | --- |"]
            lines += [f"| `{key}` | {b} | {c} |" for key, b, c in changes]
        else:
            lines += ["None."]
        lines.append("")
    if results:
        lines += [
            "### Metrics",
            "",
            f"| metric | base | candidate | delta | {100 * confidence:.4g}% interval of delta | test | tolerance "
            f"| verdict | drop caught {POWER:.0%} of the time |",
            "| --- | ---: | ---: | ---: | --- | --- | ---: | --- | ---: |",
        ]
        for r in results:
            interval = f"[{r.interval[0]:+.4f}, {r.interval[1]:+.4f}]" if r.interval else "n/a"
            test = r.method + (f", McNemar p={r.p_value:.3g}" if r.p_value is not None else "")
            verdict = "**regression**" if r.verdict == "regression" else r.verdict
            detectable = f"{r.detectable:.4f}" if r.detectable is not None else "n/a"
            lines.append(
                f"| {r.name} | {r.base:.4f} | {r.candidate:.4f} | {r.delta:+.4f} | {interval} | {test} | "
                f"{r.tolerance:g} | {verdict} | {detectable} |"
            )
        lines += [
            "",
            f"The last column is the smallest drop this test would fail {POWER:.0%} of the time, for noise of "
            "the size measured here (normal or Student's t approximation, never below the tolerance).",
        ]
        lines.append("")
        lines += ["### Verdict", "", _verdict_sentence(results), ""]
    return "\n".join(lines)


def _verdict_sentence(results: list[MetricResult]) -> str:
    failed = [r.name for r in results if r.verdict == "regression"]
    noisy = [r.name for r in results if r.verdict == "pass (within noise)"]
    if failed:
        return f"Regression in {', '.join(failed)}: a drop beyond the tolerance that is larger than the noise."
    if noisy:
        return f"Pass. {', '.join(noisy)} dropped beyond the tolerance, but within the noise (not significant)."
    return "Pass: no metric dropped beyond its tolerance."


def judge(
    gate: GateParams,
    base_revision: str | None,
    base_run: Path | None,
    candidate_run: Path | None,
    seed_noise_file: Path | None = None,
    names: tuple[str, str] | None = None,
    rules_from: str | None = None,
) -> tuple[int, list[MetricResult], str]:
    """Compare a candidate run with its base by the rules `gate`: (exit status, per-metric results, Markdown
    report). `names` label (base, candidate); `rules_from` says in the report where the rules came from."""
    base = candidate = None
    base_name, candidate_name = names or (str(base_run), str(candidate_run) if candidate_run else "workspace")
    try:
        candidate = read_from_dir(candidate_run or Path("."), name=candidate_name)
        base = read_from_dir(base_run, name=base_name) if base_run else read_from_git(base_revision or "HEAD")
        seed_noise = _read_seed_noise(seed_noise_file) if seed_noise_file else None
        results = compare(base, candidate, gate, seed_noise)
    except CannotCompare as err:
        report = render_report(base, candidate, [], CANNOT_COMPARE, str(err), gate.confidence, rules_from)
        return CANNOT_COMPARE, [], report
    status = status_of(results)
    report = render_report(base, candidate, results, status, confidence=gate.confidence, rules_from=rules_from)
    return status, results, report


def status_of(results: list[MetricResult]) -> int:
    return REGRESSION if any(r.verdict == "regression" for r in results) else PASS


def _read_seed_noise(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())["metrics"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise CannotCompare(f"{path}: cannot read the seed spread ({type(err).__name__}: {err})") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--base", help="git revision whose committed metrics are the base (e.g. origin/main)")
    source.add_argument("--base-run", type=Path, help="folder of a run whose outputs are the base")
    parser.add_argument("--candidate-run", type=Path, help="folder of the candidate run (default: the workspace)")
    parser.add_argument(
        "--rules",
        type=Path,
        help="params file whose gate: section judges (default: the base's own params.yaml, never the candidate's)",
    )
    parser.add_argument("--seed-noise", type=Path, help="seed spread from `python -m stages.gate.seeds` (JSON)")
    parser.add_argument("--report", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    try:
        gate, rules_from = base_rules(args.base, args.base_run, args.rules)
    except CannotCompare as err:
        print(f"error: {err}", file=sys.stderr)
        return CANNOT_COMPARE
    status, _, report = judge(
        gate, args.base, args.base_run, args.candidate_run, args.seed_noise, rules_from=rules_from
    )
    print(report)
    if args.report:
        args.report.write_text(report + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
