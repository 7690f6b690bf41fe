"""The reports: per-class F1 (a DVC plot), the most confident errors, the model card, and the plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard

from stages import evaluate, prepare, subset, tokenize, train
from stages.common.errors import UserError
from stages.common.params import Params, load_params
from stages.data.tokenized import TokenizedExamples
from stages.metrics import scoring
from stages.training.devices import Device, device_arguments
from stages.training.environment import environment_record
from tests.helpers import run_cmd, stage_env, tiny_overrides, write_params

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """One tiny pipeline run, train and evaluate in-process, with every report written."""
    root = tmp_path_factory.mktemp("reports")
    params = load_params(write_params(root / "params.yaml", tiny_overrides(tiny_model_dir)))
    prepare.run(params.data, root / "prepared")
    tokenize.run(params.model, params.tokenize, root / "prepared", root / "tokenized")
    subset.run(params.subset, root / "tokenized", root / "subset")
    train.run(
        params.model,
        params.data.num_labels,
        params.train,
        root / "subset",
        root / "model",
        root / "epochs.csv",
        environment_out=root / "environment.json",
    )
    names = ("metrics.json", "predictions.csv", "per_class.csv", "errors.csv")
    paths = {name: root / name for name in names}
    evaluate.run(
        params.evaluate,
        root / "model",
        root / "subset",
        paths["metrics.json"],
        paths["predictions.csv"],
        root / "info.json",
        per_class_out=paths["per_class.csv"],
        prepared_dir=root / "prepared",
        errors_out=paths["errors.csv"],
    )
    return {**paths, "root": root, "params": params}


def test_per_class_scores_average_to_macro_f1(evaluated: dict) -> None:
    per_class = pd.read_csv(evaluated["per_class.csv"])
    metrics = json.loads(evaluated["metrics.json"].read_text())
    predictions = pd.read_csv(evaluated["predictions.csv"])
    assert list(per_class.columns) == ["label", "precision", "recall", "f1", "support"]
    assert list(per_class["label"]) == [0, 1, 2, 3, 4]
    assert per_class["f1"].mean() == pytest.approx(metrics["macro_f1"], abs=1e-6)
    assert per_class["support"].sum() == metrics["n_eval"]
    assert list(per_class["support"]) == [int((predictions["label"] == c).sum()) for c in range(5)]
    # Recall is per-label accuracy, so support-weighted recall is accuracy.
    weighted_recall = (per_class["recall"] * per_class["support"]).sum() / metrics["n_eval"]
    assert weighted_recall == pytest.approx(metrics["accuracy"], abs=1e-5)


def test_errors_are_the_most_confident_wrong_predictions_with_their_text(evaluated: dict) -> None:
    errors = pd.read_csv(evaluated["errors.csv"])
    predictions = pd.read_csv(evaluated["predictions.csv"])
    wrong = predictions[predictions["label"] != predictions["prediction"]]
    assert list(errors.columns) == ["idx", "label", "prediction", "confidence", "text"]
    assert len(errors) == min(evaluate.ERRORS_TOP, len(wrong)) > 0
    assert (errors["label"] != errors["prediction"]).all()
    assert errors["confidence"].is_monotonic_decreasing
    # No wrong prediction left out was more confident than the least confident one listed.
    assert wrong["confidence"].nlargest(len(errors)).min() == errors["confidence"].min()
    # Each row's label and confidence are the prediction's, and the text is the example's own.
    merged = errors.merge(predictions, on="idx", suffixes=("", "_p"))
    assert (merged["label"] == merged["label_p"]).all() and (merged["confidence"] == merged["confidence_p"]).all()
    test = pd.read_parquet(evaluated["root"] / "prepared" / "test.parquet")
    for row in errors.itertuples():
        original = " ".join(test["text"].iloc[row.idx].split())
        assert test["label"].iloc[row.idx] == row.label
        if len(original) <= evaluate.TEXT_CHARS:
            assert row.text == original
        else:  # cut to the limit, then "…"
            assert len(row.text) <= evaluate.TEXT_CHARS and row.text.endswith("…"), row.text
            assert original.startswith(row.text[:-1]) and len(row.text) > evaluate.TEXT_CHARS - 20


def test_errors_refuse_prepared_data_the_subset_was_not_made_from(evaluated: dict, tmp_path: Path) -> None:
    other = tmp_path / "prepared"
    shutil.copytree(evaluated["root"] / "prepared", other)
    test = pd.read_parquet(other / "test.parquet")
    test.loc[0, "text"] = test.loc[0, "text"] + " edited"
    test.to_parquet(other / "test.parquet", index=False)
    meta = json.loads((evaluated["root"] / "subset" / "meta.json").read_text())
    with pytest.raises(UserError, match="is not the test split the eval subset was tokenized from"):
        evaluate.read_texts(other, meta)


def test_model_card_in_the_model_folder_holds_the_run(evaluated: dict) -> None:
    """train writes README.md into the model folder; its metrics are evaluate's metrics.json."""
    card = (evaluated["root"] / "model" / "README.md").read_text()
    metrics = json.loads(evaluated["metrics.json"].read_text())
    params: Params = evaluated["params"]
    # The Hub's metadata: the eval results as model-index; no base model or dataset id (neither is from the Hub).
    header = ModelCard(card).data
    assert (header.library_name, header.pipeline_tag, header.base_model, header.datasets) == (
        "transformers",
        "text-classification",
        None,
        None,
    )
    results = {result.metric_type: result.metric_value for result in header.eval_results}
    assert results == pytest.approx({"accuracy": metrics["accuracy"], "f1": metrics["macro_f1"]}, abs=1e-9)
    for name in ("accuracy", "macro_f1", "eval_loss"):
        assert f"| {name} | {metrics[name]:.4f} |" in card, name
    assert f"n = {metrics['n_eval']}" in card
    predictions = pd.read_csv(evaluated["predictions.csv"])
    intervals = scoring.metric_intervals(predictions["label"].to_numpy(), predictions["prediction"].to_numpy(), 5)
    low, high, _ = intervals["accuracy"]
    assert f"| accuracy | {metrics['accuracy']:.4f} | {low:.4f} – {high:.4f} | Wilson score interval |" in card
    low, high, _ = intervals["macro_f1"]
    assert f"| macro_f1 | {metrics['macro_f1']:.4f} | {low:.4f} – {high:.4f} | bootstrap" in card
    per_class = pd.read_csv(evaluated["per_class.csv"])
    assert f"| 0 | {per_class['precision'][0]:.4f} | {per_class['recall'][0]:.4f} | {per_class['f1'][0]:.4f} |" in card
    environment = json.loads((evaluated["root"] / "environment.json").read_text())
    assert environment == environment_record(device_arguments(params.train, Device.detect()))
    assert (environment["precision"], environment["cpu_instructions"].split()[0]) == (
        "fp32",
        torch.backends.cpu.get_cpu_capability(),
    )
    assert f"| torch | `{environment['torch']}` |" in card
    assert f"Base model: `{params.model.name}`" in card
    assert f"Dataset: `{params.data.dataset}`, revision default branch (not pinned)" in card
    assert f"learning_rate: {params.train.learning_rate}" in card and f"train_size: {params.subset.train_size}" in card
    assert f'AutoModelForSequenceClassification.from_pretrained("{evaluated["root"] / "model"}")' in card


def test_intervals_bracket_the_metrics() -> None:
    low, high = scoring.wilson_interval(594, 1000)
    assert (round(low, 4), round(high, 4)) == (0.5633, 0.6240)  # the textbook Wilson interval
    assert scoring.wilson_interval(0, 10)[0] == 0.0 and scoring.wilson_interval(10, 10)[1] == 1.0
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 500)
    predictions = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 5, 500))
    intervals = scoring.metric_intervals(labels, predictions, 5)
    macro_f1 = scoring.per_class_scores(labels, predictions, 5)["f1"].mean()
    assert intervals["macro_f1"][0] < macro_f1 < intervals["macro_f1"][1]
    assert 0.03 < intervals["macro_f1"][1] - intervals["macro_f1"][0] < 0.15
    assert scoring.metric_intervals(labels, predictions, 5) == intervals  # seeded


def _plots(shown: dict, name: str) -> list[dict]:
    """The plots of file `name` in `dvc plots show --json` output ({"data": {path: [plot, ...]}})."""
    return [plot for key, plots in shown["data"].items() if key.endswith(name) for plot in plots]


def _check_plots(project: Path, tmp_path: Path, epochs: int) -> None:
    """After a tiny run of `epochs` epochs (10 steps each, a log every 5): the reports, the model
    card, `dvc plots show --json` with every plot's data, and the HTML page drawn by Chromium."""
    for name in ("per_class.csv", "errors.csv"):
        assert (project / "reports" / name).is_file(), name
    card = (project / "models" / "model" / "README.md").read_text()
    accuracy = json.loads((project / "metrics.json").read_text())["accuracy"]
    assert "| torch |" in card and f"| accuracy | {accuracy:.4f} |" in card
    assert 'from_pretrained("models/model")' in card

    shown = json.loads(run_cmd(["dvc", "plots", "show", "--json"], project).stdout)
    per_class = _plots(shown, "per_class.csv")
    confusion = _plots(shown, "predictions.csv")
    assert per_class and confusion, list(shown["data"])
    per_class_values = per_class[0]["content"]["data"]["values"]
    assert sorted(int(row["label"]) for row in per_class_values) == [0, 1, 2, 3, 4]
    assert per_class[0]["content"]["encoding"]["x"]["field"] == "f1"
    assert len(confusion[0]["content"]["data"]["values"]) == 100
    # The training curves: loss at each Trainer logging step (160 / 16 = 10 steps an epoch, a log
    # every 5), eval accuracy and loss after each epoch.
    curves = {
        name: _plots(shown, name)[0]["content"]["data"]["values"]
        for name in ("train/loss.tsv", "eval/accuracy.tsv", "train_epochs.csv", "Eval loss per epoch")
    }
    curves["Eval accuracy per epoch"] = curves["train_epochs.csv"]
    assert [int(row["step"]) for row in curves["train/loss.tsv"]] == list(range(5, 10 * epochs + 1, 5))
    assert [int(row["step"]) for row in curves["eval/accuracy.tsv"]] == list(range(10, 10 * epochs + 1, 10))
    assert [float(row["epoch"]) for row in curves["Eval accuracy per epoch"]] == [
        float(e) for e in range(1, epochs + 1)
    ]
    assert float(curves["Eval accuracy per epoch"][-1]["eval_accuracy"]) == pytest.approx(
        json.loads((project / "metrics.json").read_text())["accuracy"], abs=1e-6
    )
    assert all(float(row["eval_loss"]) > 0 for row in curves["Eval loss per epoch"])

    # The page inlines vega (plots/offline_template.html, set in .dvc/config), so it draws offline.
    html_dir = tmp_path / "plots"
    run_cmd(["dvc", "plots", "show", "-o", str(html_dir)], project)
    index = html_dir / "index.html"
    page = index.read_text()
    assert "F1 per label" in page and "Confusion matrix" in page and "cdn.jsdelivr.net" not in page
    plot_ids = re.findall(r'<div id = "([^"]+)">', page)
    assert len(plot_ids) == 9, plot_ids  # 5 DVCLive curves, eval accuracy and loss per epoch, confusion, F1
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: the HTML was written but not rendered in a browser")
    dom = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--virtual-time-budget=5000",
            "--dump-dom",
            index.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert _drawn_plots(dom, plot_ids) == plot_ids, dom[:3000]


def _drawn_plots(dom: str, plot_ids: list[str]) -> list[str]:
    """The plots the browser drew: vega-embed took the plot's element and drew a chart of some size
    in it (a plot without data gets a 0 x 0 canvas)."""
    starts = [dom.index(f'<div id="{plot_id}"') for plot_id in plot_ids]
    drawn = []
    for plot_id, start, end in zip(plot_ids, starts, starts[1:] + [len(dom)], strict=True):
        element = dom[start:end]
        marks = re.search(r'<(?:canvas|svg)\b[^>]*\bwidth="(\d+)"[^>]*\bclass="marks"', element)
        if 'class="vega-embed' in element[: element.index(">") + 1] and marks and int(marks.group(1)) > 0:
            drawn.append(plot_id)
    return drawn


def _workspace_live_summary(project: Path, retry: bool = False) -> dict | None:
    """The workspace row's DVCLive summary in `dvc exp show --json`, None while there is none.

    With `retry`, a failed `dvc exp show` also gives None: while `dvc exp run` starts or records the
    experiment, its git refs are briefly in flux ("unknown Git revision refs/exps/exec/EXEC_BASELINE").
    """
    result = run_cmd(["dvc", "exp", "show", "--json"], project, check=not retry)
    if result.returncode != 0:
        return None
    shown = result.stdout
    workspace = next(row for row in json.loads(shown) if row["rev"] == "workspace")
    if workspace.get("data") is None and retry:  # DVC rewriting the workspace's files that moment
        return None
    summary = workspace["data"]["metrics"].get("dvclive/metrics.json", {})
    return summary.get("data")


@pytest.mark.slow
def test_exp_show_follows_a_running_experiment_then_plots_show_it(project: Path, tmp_path: Path) -> None:
    """While `dvc exp run` trains, `dvc exp show` shows its step, loss and eval accuracy; once it has
    finished, `dvc plots show` draws every plot (one pipeline run serves both checks)."""
    run_cmd(["dvc", "repro", "subset"], project)
    run_cmd(["git", "add", "-A"], project)
    run_cmd(["git", "commit", "-qm", "data"], project)
    # 30 epochs of 10 steps, about 10 s, long enough to look in on. Training keeps to one thread so
    # that `dvc exp show` has the other core: torch slows tenfold when its threads must share one.
    # Its output goes to a file: a pipe nobody reads fills up and stalls the run.
    log = tmp_path / "exp-run.log"
    with log.open("w") as output:
        running = subprocess.Popen(
            ["dvc", "exp", "run", "-S", "train.epochs=30"],
            cwd=project,
            env={**stage_env(), "OMP_NUM_THREADS": "1"},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        seen_while_running: list[dict] = []
        try:
            deadline = time.monotonic() + 300
            while running.poll() is None and time.monotonic() < deadline:
                summary = _workspace_live_summary(project, retry=True)
                if summary is not None and running.poll() is None and summary["step"] < 300:
                    seen_while_running.append(summary)
                time.sleep(1)
            running.wait(timeout=300)
        finally:
            running.kill()
    output = log.read_text()
    assert running.returncode == 0, output
    assert len(seen_while_running) >= 2, f"no live summary seen while training\n{output}"
    steps = [summary["step"] for summary in seen_while_running]
    assert steps == sorted(steps) and steps[0] < steps[-1] < 300, steps
    middle = seen_while_running[-1]
    assert middle["train"]["loss"] > 0 and 0 <= middle["eval"]["accuracy"] <= 1 and 0 < middle["epoch"] < 30
    final = _workspace_live_summary(project)
    assert final["step"] == 300 and final["epoch"] == 30
    assert final["eval"]["accuracy"] == pytest.approx(
        json.loads((project / "metrics.json").read_text())["accuracy"], abs=1e-6
    )
    _check_plots(project, tmp_path, epochs=30)


def test_the_card_scores_the_eval_examples_in_their_own_order(
    tiny_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train evaluates in length order and must hand the card its logits in the examples' order."""
    prepare.run(tiny_params.data, tmp_path / "prepared")
    tokenize.run(tiny_params.model, tiny_params.tokenize, tmp_path / "prepared", tmp_path / "tokenized")
    subset.run(tiny_params.subset, tmp_path / "tokenized", tmp_path / "subset")
    scored: dict = {}
    real_score = scoring.score
    monkeypatch.setattr(
        scoring, "score", lambda logits, labels, n: scored.update(labels=labels) or real_score(logits, labels, n)
    )
    train.run(tiny_params.model, 5, tiny_params.train, tmp_path / "subset", tmp_path / "model", tmp_path / "epochs.csv")
    examples = TokenizedExamples(tmp_path / "subset" / "eval.parquet")
    assert list(examples.length_order()) != list(range(len(examples)))  # length order is another order
    assert list(scored["labels"]) == examples.labels
