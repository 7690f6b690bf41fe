"""The benchmarks' shared harness: timed commands, project repositories, results files, command lines."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import harness, lengths, noop, run, tokenize_speed, train_speed
from stages.common.params import read_yaml
from stages.gate.compare import mcnemar_p
from tests.helpers import PROJECT_FILES, REPO_ROOT, default_params_dict, run_cmd

VENV_BIN = str(Path(sys.executable).parent)


def test_bench_run_lengths_writes_its_results_into_the_results_dir(tmp_path: Path) -> None:
    stored = REPO_ROOT / "bench" / "results" / "lengths.json"
    before = stored.stat().st_mtime_ns if stored.exists() else None
    results = tmp_path / "results"
    args = ["--part", "lengths", "--calibration-rows", "200", "--results-dir", str(results)]
    out = run_cmd([sys.executable, "-m", "bench.run", *args, "--workdir", str(tmp_path / "work")], REPO_ROOT)

    result = json.loads((results / "lengths.json").read_text())
    assert {"part", "target_mean_chars", "chosen_scale", "scales", "markdown"} <= set(result)
    assert {"machine", "command", "workdir", "finished", "loadavg_at_start"} <= set(result)
    assert result["part"] == "lengths" and result["chosen_scale"] == harness.YELP_LENGTH_SCALE
    assert [row["length_scale"] for row in result["scales"]] == list(lengths.CALIBRATION_SCALES)
    assert all(row["rows"] == 200 and row["mean"] > 0 for row in result["scales"])
    assert shlex.split(result["command"])[1:] == ["-m", "bench.run", *args, "--workdir", str(tmp_path / "work")]
    assert "7.0 **(used)**" in result["markdown"] and result["markdown"] in out.stdout
    assert sorted(p.name for p in results.iterdir()) == ["lengths.json"]  # no summary.md for one part
    assert (stored.stat().st_mtime_ns if stored.exists() else None) == before


def test_make_repo_builds_the_project_of_tests_helpers_with_layered_overrides(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "left-over").write_text("from an earlier run")
    layers = [{"train": {"epochs": 2, "seed": 5}}, {"train": {"epochs": 3}}, {"subset": {"train_size": 7}}]
    harness.make_repo(repo, layers, cache_type="copy")

    def files(root: Path, name: str) -> set[str]:
        path = root / name
        found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        return {str(p.relative_to(root)) for p in found if "__pycache__" not in p.parts}

    assert {p.name for p in repo.iterdir()} == {".git", ".dvc"} | {name.split("/")[0] for name in PROJECT_FILES}
    for name in PROJECT_FILES:
        assert files(repo, name) == files(REPO_ROOT, name), name
    assert not (repo / "data" / "left-over").exists()
    params, default = read_yaml((repo / "params.yaml").read_text(), "params.yaml"), default_params_dict()
    assert params["train"] == {**default["train"], "epochs": 3, "seed": 5}
    assert params["subset"] == {**default["subset"], "train_size": 7}
    assert params["data"] == default["data"]
    cache_type = run_cmd([harness.DVC, "config", "cache.type"], repo).stdout.strip()
    assert cache_type == "copy"


def test_bench_env_puts_this_venv_first_offline_and_measure_runs_in_it(tmp_path: Path) -> None:
    env = harness.bench_env()
    assert env["PATH"].split(os.pathsep)[0] == VENV_BIN
    assert env["HF_HUB_OFFLINE"] == "1" and env["DVC_NO_ANALYTICS"] == "1"
    assert env["TOKENIZERS_PARALLELISM"] and env["GIT_AUTHOR_NAME"] and env["GIT_COMMITTER_EMAIL"]
    m = harness.measure(["sh", "-c", 'command -v dvc; echo "$HF_HUB_OFFLINE"'], tmp_path, tmp_path / "log" / "env.log")
    assert m.text().split() == [os.path.join(VENV_BIN, "dvc"), "1"]


def test_measure_reports_wall_cpu_and_peak_rss_and_fails_with_the_log(tmp_path: Path) -> None:
    busy = "import time; b = bytearray(64 * 2**20); t = time.process_time()\nwhile time.process_time() - t < 0.2: pass"
    m = harness.measure([sys.executable, "-c", busy], tmp_path, tmp_path / "busy.log")
    assert m.returncode == 0 and m.cpu_s >= 0.2 and m.wall_s >= 0.2
    assert m.peak_rss_bytes > 64 * 2**20
    failing = [sys.executable, "-c", "print('the last words'); raise SystemExit(3)"]
    assert harness.measure(failing, tmp_path, tmp_path / "fail.log", check=False).returncode == 3
    with pytest.raises(SystemExit, match="exited 3(.|\n)*the last words"):
        harness.measure(failing, tmp_path, tmp_path / "fail.log")


def test_stage_args_is_dvc_yaml_command_with_this_python() -> None:
    cmd = read_yaml((REPO_ROOT / "dvc.yaml").read_text(), "dvc.yaml")["stages"]["tokenize"]["cmd"]
    assert harness.stage_args(REPO_ROOT, "tokenize") == [sys.executable, *shlex.split(cmd)[1:]]


def test_du_bytes_counts_a_hardlinked_file_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 1_000_000)
    os.link(tmp_path / "a", tmp_path / "b")
    assert harness.du_bytes([tmp_path / "a", tmp_path / "b"], apparent=True) == 1_000_000
    assert harness.du_bytes([tmp_path / "a", tmp_path / "b"]) == harness.du_bytes([tmp_path / "a"]) > 0
    assert harness.du_bytes([tmp_path / "missing"]) == 0


def test_every_benchmark_module_parses_its_own_command_line() -> None:
    for module in (lengths, train_speed, tokenize_speed, noop):
        parser = harness.new_parser(module.__doc__)
        module.add_arguments(parser)
        args = parser.parse_args([])
        assert args.scale == "small" and args.workdir.is_absolute() and args.results_dir == harness.RESULTS_DIR
    parser = harness.new_parser(run.__doc__)
    for module in run.PARTS.values():
        module.add_arguments(parser)  # noop adds tokenize_speed's options again: once in the parser
    args = parser.parse_args(["--cases", "project-fp32, tutorial", "--seeds", "1,2", "--cache-type", "project"])
    assert args.cases == ["project-fp32", "tutorial"] and args.seeds == [1, 2] and args.cache_type is None
    assert parser.format_help().count("--tok-train") == 2  # in the usage line and in the options
    with pytest.raises(SystemExit):
        run.main(["--part", "train", "--cases", "no-such-case"])


def test_accuracy_intervals_match_the_stored_training_results() -> None:
    stored = json.loads((REPO_ROOT / "bench" / "results" / "train.json").read_text())
    for case in stored["cases"].values():
        assert train_speed.accuracy_ci95(case["accuracy"], case["n_eval"]) == case["accuracy_ci95"]


def test_comparison_counts_discordant_pairs_and_tests_them_with_the_gates_mcnemar(tmp_path: Path) -> None:
    # 20 eval examples: 7 only the project gets right, 2 only the tutorial, 11 both or neither.
    label = [0] * 20
    project = [0] * 7 + [1] * 2 + [0] * 5 + [1] * 6
    tutorial = [1] * 7 + [0] * 2 + [0] * 5 + [1] * 6
    frames = {}
    for name, prediction in (("project", project), ("tutorial", tutorial)):
        (tmp_path / name / "reports").mkdir(parents=True)
        frames[name] = pd.DataFrame({"idx": range(20), "label": label, "prediction": prediction})
        frames[name].to_csv(tmp_path / name / "reports" / "predictions.csv", index=False)
    speeds = {"train_samples_per_second": 6.0, "trainer_samples_per_second": 5.0, "eval_samples_per_second": 4.0}
    cases = {
        "project": {**speeds, "accuracy": 12 / 20},
        "tutorial": {**{k: v / 2 for k, v in speeds.items()}, "accuracy": 7 / 20},
    }
    result = train_speed.comparison(tmp_path, cases)["project"]
    assert (result["only_this_right"], result["only_baseline_right"], result["same_prediction"]) == (7, 2, 11)
    assert result["mcnemar_p"] == round(mcnemar_p(frames["tutorial"], frames["project"]), 4) == 0.1797
    assert result["train_speedup"] == result["eval_speedup"] == 2.0 and not result["meets_speedup_target"]
    assert result["accuracy_equal_within_noise"] and result["accuracy_difference"] == 0.25


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_useful_flops_formula_is_torchs_own_count(attention: str) -> None:
    """bench/flops.py's count of a training step equals torch's FlopCounterMode on an unpadded example."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForSequenceClassification

    from bench.flops import forward_flops, training_flops

    config = BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=5
    )
    config._attn_implementation = attention
    model = BertForSequenceClassification(config).train()
    for length in (7, 40):
        with FlopCounterMode(display=False) as forward:
            loss = model(input_ids=torch.randint(5, 1000, (1, length)), labels=torch.tensor([1])).loss
        with FlopCounterMode(display=False) as backward:
            loss.backward()
        assert forward.get_total_flops() == forward_flops(config, length)
        assert forward.get_total_flops() + backward.get_total_flops() == training_flops(config, [length])
