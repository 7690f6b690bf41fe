"""GPU training throughput of a bert-base-cased-sized model: the tutorial's recipe against the project's settings.

    bench/gpu.sh                                        # the default run, under 5 minutes on one H100
    python -m bench.gpu_train --configs tutorial,project --steps 200
    python -m bench.gpu_train --allow-cpu               # no GPU: a tiny model, to smoke-test the code path

What it measures, and why this way:

- **The model is the tutorial's size, not its weights.** `BertForSequenceClassification` built from a
  `BertConfig` of bert-base-cased's shape (hidden 768, 12 layers, 12 heads, intermediate 3072, vocab
  28,996, 512 positions), `data.num_labels` classes, random weights. Throughput depends on the shapes,
  not on the weights' values, and nothing has to be downloaded on a GPU machine that may be offline.
- **The data has Yelp's lengths, not its words.** Random token ids (`[CLS] ... [SEP]`) whose lengths are
  drawn, seeded, from a lognormal (median 143 tokens, sigma 0.75) cut at 512: mean about 180 tokens, 4.5%
  of reviews truncated, like `yelp_review_full` through bert-base-cased's tokenizer. Padding costs what it
  would cost on the real reviews. Labels are random too: the loss's value does not change the speed.
- **It runs the pipeline's own code.** The examples are a parquet file read with
  `stages.data.tokenized.TokenizedExamples`, batched by `stages.data.tokenized.make_collator`; the settings are
  `params.yaml`'s `train:` section (`stages.common.params.load_params`) with `dataclasses.replace` overrides,
  resolved for this machine by `stages.training.devices.device_arguments(params, Device.detect())` and turned into
  `TrainingArguments` by `stages.train.training_arguments`; training is the `Trainer`'s own loop. Only
  this differs from the train stage: `max_steps` is warmup + timed steps, evaluation is off (the stage
  evaluates once an epoch, outside any step), the progress bar and log printing are off, and each
  config's TF32 setting is applied again after its `TrainingArguments` are built (see `measure_config`).
- **Configurations, side by side in one process, on the same examples in the same order:**
  - `tutorial`: every example padded to 512 (`padding="max_length"`), fp32, no TF32, `adamw_torch_fused`,
    no data-loading workers: the `Trainer`'s defaults, as the tutorial runs it.
  - `project`: `params.yaml` as it is (`auto`: bf16 where the GPU has it, else fp16; TF32; fused AdamW;
    4 workers), padded as `tokenize.padding` says (dynamic: each batch to its longest example), and
    `group_by_length` as `train.group_by_length` says.
  - `project-compile`: the same with `train.torch_compile: true`, with its own, longer warmup
    (`--compile-warmup`), since compiling (and recompiling for new sequence lengths) happens there.
  - `project-grouped` (not in the default run): the project with `group_by_length: true`.
  Every configuration uses the same batch size (`--batch-size`, default `train.batch_size`: 8, the
  tutorial's), so the ratio is of settings, not of batch size.
- **Timing.** A `TrainerCallback` takes a timestamp at the end of the last warmup step and at the end of
  the last timed step, each after `torch.cuda.synchronize()`, so the window holds exactly the timed steps:
  data loading, forward, backward, optimizer, the `Trainer`'s bookkeeping, all of it, and no compilation
  or CUDA start-up from the warmup. samples/s = timed steps x batch / window; tokens/s counts the
  non-padding tokens of the timed batches (their attention masks, summed on the GPU without a sync).
  Peak memory is `torch.cuda.max_memory_allocated()`, reset before each configuration's model is built.

Prints a Markdown table and writes it with every figure, the GPU, and the torch, CUDA and transformers
versions to `bench/results/gpu.json` (`--out`), rewritten after each configuration, so a run stopped
by `bench/gpu.sh`'s time limit keeps what it measured. A configuration that fails (out of memory, a
compile error) is recorded with its error and the run goes on to the next.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
NO_GPU = "no CUDA GPU: bench/gpu.sh measures GPU training; see BENCHMARKS.md for the CPU benchmark"

# bert-base-cased's shape (its config.json); the rest are BertConfig's defaults, which it shares.
BERT_BASE_CASED = {
    "vocab_size": 28996,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}
# The CPU smoke test's model: the same code path in seconds, figures meaningless.
TINY = {**BERT_BASE_CASED, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}

# bert-base-cased's special token ids: every example is [CLS] ... [SEP], padded with [PAD].
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
FIRST_WORDPIECE = 999  # ids below are [unusedN] and special tokens

# Review lengths in tokens: lognormal, median 143, sigma 0.75, cut at 512. Mean about 180 tokens, 4.5% of
# reviews cut, p90 375: yelp_review_full through bert-base-cased's tokenizer has a mean of about 180 and a
# long tail past 512. (The CPU benchmark's synthetic reviews at Yelp's length average 173.5 tokens with
# all-MiniLM's tokenizer; see BENCHMARKS.md.) A smaller --max-length scales the distribution down with it.
LENGTH_MEDIAN = 143
LENGTH_SIGMA = 0.75
MIN_LENGTH = 8
DATA_SEED = 42

# Sizes when there is a GPU, and for the CPU smoke test (--allow-cpu without CUDA).
# The smoke test writes its own file, so it never passes for a GPU figure in gpu.json.
GPU_DEFAULTS = {
    "steps": 100,
    "warmup": 20,
    "compile_warmup": 60,
    "batch_size": None,
    "max_length": None,
    "configs": "tutorial,project,project-compile",
    "out": RESULTS_DIR / "gpu.json",
}
CPU_DEFAULTS = {
    "steps": 5,
    "warmup": 3,
    "compile_warmup": 3,
    "batch_size": 4,
    "max_length": 64,
    "configs": "tutorial,project",  # compiling on 2 CPU cores takes minutes: ask for it by name
    "out": RESULTS_DIR / "gpu-cpu-smoke.json",
}


@dataclass(frozen=True)
class Config:
    """One measured configuration: `train:` overrides on params.yaml, and how examples are padded."""

    name: str
    train: dict[str, Any]  # dataclasses.replace overrides of TrainParams
    padding: str | None  # 'max_length' or 'dynamic'; None: tokenize.padding from params.yaml
    compile_warmup: bool = False  # warm up for --compile-warmup steps instead of --warmup


CONFIGS = {
    # The tutorial: Trainer defaults (fp32, 0 workers, and fused AdamW, its default from torch 2.8 on),
    # no TF32 (PyTorch's default for matmuls), every review padded to 512 by the tokenizer.
    "tutorial": Config(
        "tutorial",
        {
            "precision": "fp32",
            "tf32": "off",
            "optimizer": "adamw_torch_fused",
            "dataloader_workers": 0,
            "torch_compile": False,
            "group_by_length": False,
        },
        padding="max_length",
    ),
    "project": Config("project", {}, padding=None),
    "project-grouped": Config("project-grouped", {"group_by_length": True}, padding=None),
    "project-compile": Config("project-compile", {"torch_compile": True}, padding=None, compile_warmup=True),
}
BASELINE = "tutorial"


# ---------------------------------------------------------------------------------------------------
# Data


def review_lengths(n: int, max_length: int, seed: int = DATA_SEED) -> np.ndarray:
    """`n` token counts ([CLS] and [SEP] included) with Yelp's distribution, scaled to `max_length`/512."""
    rng = np.random.default_rng(seed)
    scale = max_length / 512
    lengths = rng.lognormal(mean=np.log(LENGTH_MEDIAN * scale), sigma=LENGTH_SIGMA, size=n)
    return np.clip(np.rint(lengths), min(MIN_LENGTH, max_length), max_length).astype(np.int64)


def write_examples(path: Path, lengths: np.ndarray, vocab_size: int, num_labels: int, seed: int = DATA_SEED) -> None:
    """A parquet file shaped like the subset stage's output: `input_ids` (unpadded, as tokenize stores
    them), `label`, `idx`, so `TokenizedExamples` reads it as the train stage would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stages.tokenize import id_type

    rng = np.random.default_rng(seed + 1)
    ids = []
    for length in lengths:
        body = rng.integers(FIRST_WORDPIECE, vocab_size, size=int(length) - 2).tolist()
        ids.append([CLS_ID, *body, SEP_ID])
    table = pa.table(
        {
            "input_ids": pa.array(ids, type=pa.list_(id_type(vocab_size))),
            "label": pa.array(rng.integers(0, num_labels, size=len(lengths)), type=pa.int64()),
            "idx": pa.array(np.arange(len(lengths)), type=pa.int64()),
        }
    )
    pq.write_table(table, path)


def padding_tokenizer():
    """A BERT tokenizer that can pad (all `make_collator` asks of one): [PAD] is 0, as in bert-base-cased.

    Its vocabulary holds only the special tokens, so it is built here with no download; the collator
    never looks ids up, it only pads them and builds the attention mask.
    """
    from transformers import BertTokenizer

    vocab = {"[PAD]": PAD_ID, "[UNK]": UNK_ID, "[CLS]": CLS_ID, "[SEP]": SEP_ID, "[MASK]": MASK_ID}
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=512)
    assert tokenizer.pad_token_id == PAD_ID
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# Timing


def make_timer(warmup: int, steps: int, cuda: bool):
    """A `TrainerCallback` timing the steps after `warmup`, from the end of step `warmup` to the end of
    step `warmup + steps`, both after a CUDA sync (the GPU runs behind the Python that queues its work)."""
    import torch
    from transformers import TrainerCallback

    class StepWindow(TrainerCallback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.end: float | None = None

        def _now(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.start = self._now()
            elif state.global_step == warmup + steps:
                self.end = self._now()

    return StepWindow()


def make_trainer_class():
    """The `Trainer`, counting the tokens of the timed steps' batches; everything else is its own."""
    import torch
    from transformers import Trainer

    class TokenCountingTrainer(Trainer):
        def __init__(self, *args: Any, timed_steps: range, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timed_steps = timed_steps
            self.real_tokens: list[torch.Tensor] = []  # per step, on the device: summed once at the end
            self.padded_tokens = 0
            self.batch_lengths: list[int] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            # global_step counts finished steps: step k of the run sees k - 1 here.
            if self.state.global_step in self.timed_steps:
                self.real_tokens.append(inputs["attention_mask"].sum())
                self.padded_tokens += inputs["input_ids"].numel()
                self.batch_lengths.append(inputs["input_ids"].shape[1])
            return super().training_step(model, inputs, num_items_in_batch)

    return TokenCountingTrainer


# ---------------------------------------------------------------------------------------------------
# One configuration


def resolve(config: Config, base, padding_default: str, device) -> tuple[Any, str, dict[str, Any]]:
    """`config`'s TrainParams, padding, and the project's `TrainingArguments` device settings for them."""
    from stages.training.devices import device_arguments

    params = dataclasses.replace(base, **config.train)
    return params, config.padding or padding_default, device_arguments(params, device)


def settings_row(config: Config, params, padding: str, device_args: dict[str, Any], max_length: int) -> dict[str, Any]:
    """The settings a config ran with, as the table and the JSON give them."""
    return {
        "config": config.name,
        "precision": "bf16" if device_args["bf16"] else "fp16" if device_args["fp16"] else "fp32",
        "tf32": device_args["tf32"],  # None on a CPU: no such setting there
        "optimizer": device_args["optim"],
        "padding": f"max_length {max_length}" if padding == "max_length" else "dynamic",
        "group_by_length": params.group_by_length,
        "torch_compile": params.torch_compile,
        "dataloader_workers": device_args["dataloader_num_workers"],
        "batch_size": params.batch_size,
    }


def measure_config(
    config: Config,
    base,
    padding_default: str,
    max_length: int,
    model_shape: dict[str, int],
    num_labels: int,
    examples,
    tokenizer,
    warmup: int,
    steps: int,
    device,
) -> dict[str, Any]:
    """Train `config` for `warmup + steps` steps with the `Trainer`; the timed window's figures."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        IntervalStrategy,
        PrinterCallback,
        ProgressCallback,
        set_seed,
    )

    from stages.data.tokenized import make_collator
    from stages.train import training_arguments

    params, padding, device_args = resolve(config, base, padding_default, device)  # `auto`, as train resolves it
    params = dataclasses.replace(params, max_steps=warmup + steps)
    result = {
        **settings_row(config, params, padding, device_args, max_length),
        "warmup_steps": warmup,
        "timed_steps": steps,
    }
    if device.cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch:
        # TrainingArguments sets TF32 process-wide when it is built, so each configuration sets its own.
        args = training_arguments(params, Path(scratch), save=False, device_args=device_args)
        args.eval_strategy = IntervalStrategy.NO  # the stage evaluates once an epoch, outside any step
        args.disable_tqdm = True
        if device.cuda and args.tf32 is not None:
            # transformers' enable_tf32 is an lru_cache'd function: a config asking for the TF32 setting an
            # earlier config asked for would silently keep the previous config's. Apply it again, with
            # transformers' own code (the train stage builds one TrainingArguments per process: no issue there).
            from transformers.utils.import_utils import enable_tf32

            getattr(enable_tf32, "__wrapped__", enable_tf32)(bool(args.tf32))
            result["tf32_backend"] = tf32_backend_state()
        set_seed(params.seed)  # as the train stage seeds before building the classification head
        model = BertForSequenceClassification(BertConfig(**model_shape, num_labels=num_labels))
        timer = make_timer(warmup, steps, device.cuda)
        trainer = make_trainer_class()(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=make_collator(tokenizer, {"padding": padding, "max_length": max_length}),
            processing_class=tokenizer,
            callbacks=[timer],
            timed_steps=range(warmup, warmup + steps),
        )
        for quiet in (PrinterCallback, ProgressCallback):  # the loss every logging_steps is noise here
            trainer.remove_callback(quiet)
        trainer.train()
        if timer.start is None or timer.end is None:
            raise RuntimeError(f"the Trainer stopped at step {trainer.state.global_step} of {warmup + steps}")
        seconds = timer.end - timer.start
        real_tokens = int(torch.stack(trainer.real_tokens).sum().item())
        samples = steps * params.batch_size
        result.update(
            attn_implementation=model.config._attn_implementation,
            seconds=round(seconds, 4),
            samples_per_s=round(samples / seconds, 2),
            tokens_per_s=round(real_tokens / seconds, 1),
            padded_tokens_per_s=round(trainer.padded_tokens / seconds, 1),
            real_token_fraction=round(real_tokens / trainer.padded_tokens, 4),
            mean_batch_length=round(float(np.mean(trainer.batch_lengths)), 1),
            peak_memory_bytes=torch.cuda.max_memory_allocated() if device.cuda else None,
        )
        del trainer, model
    return result


def tf32_backend_state() -> str:
    """What torch will do with fp32 matmuls now, as its own API says it (recorded beside each config)."""
    import torch

    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9
        return (
            f"fp32_precision={torch.backends.fp32_precision}, cuda.matmul={torch.backends.cuda.matmul.fp32_precision}"
        )
    return f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}"


def release(device) -> None:
    """Free the last configuration's model, optimizer and compiled graphs before the next one."""
    import torch

    gc.collect()
    torch._dynamo.reset()
    if device.cuda:
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# Report


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024**3:.2f} GiB"


TABLE_HEADER = (
    "config",
    "precision",
    "tf32",
    "optimizer",
    "padding",
    "compile",
    "samples/s",
    "tokens/s (non-pad)",
    "peak GPU memory",
    "× tutorial",
)


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"### Training throughput, {result['model']['name']} ({m['gpu'] or 'CPU'}; torch {m['torch']}, "
        f"CUDA {m['cuda'] or '-'}, transformers {m['transformers']})",
        "",
        f"batch {s['batch_size']}, {s['steps']} timed steps after {s['warmup']} warmup steps "
        f"({s['compile_warmup']} when compiling); random ids at Yelp's lengths "
        f"(mean {result['data']['lengths']['mean']:.0f} tokens, at most {s['max_length']})",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + " --- |" * len(TABLE_HEADER),
    ]
    for r in result["configs"]:
        if "precision" not in r:  # failed before its settings were known
            lines.append(f"| {r['config']} | failed: {r['error']} |" + " |" * (len(TABLE_HEADER) - 2))
            continue
        tf32 = "n/a" if r["tf32"] is None else "on" if r["tf32"] else "off"
        padding = r["padding"] + (" + group_by_length" if r["group_by_length"] else "")
        compiled = "yes" if r["torch_compile"] else "no"
        head = f"| {r['config']} | {r['precision']} | {tf32} | {r['optimizer']} | {padding} | {compiled} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} | | | |")
            continue
        speedup = r.get("speedup")
        lines.append(
            f"{head} {r['samples_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {_gib(r['peak_memory_bytes'])} | "
            f"{'-' if speedup is None else f'**{speedup:.2f}**'} |"
        )
    return "\n".join(lines)


def machine_info(device) -> dict[str, Any]:
    import accelerate
    import torch
    import transformers

    info: dict[str, Any] = {
        "gpu": device.name if device.cuda else None,
        "gpu_capability": None,
        "gpu_memory_bytes": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    if device.cuda:
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def save(path: Path, result: dict[str, Any]) -> None:
    result["markdown"] = markdown(result)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)  # a run killed mid-write leaves the previous configurations' file intact


# ---------------------------------------------------------------------------------------------------
# Main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See BENCHMARKS.md, section 'GPU: bench/gpu.sh'.",
    )

    def default(name: str) -> str:
        return f"default: {GPU_DEFAULTS[name]}; CPU: {CPU_DEFAULTS[name]}"

    parser.add_argument("--configs", help=f"comma-separated, from {', '.join(CONFIGS)} ({default('configs')})")
    parser.add_argument("--steps", type=int, help=f"timed steps per config ({default('steps')})")
    parser.add_argument("--warmup", type=int, help=f"untimed steps before them ({default('warmup')})")
    parser.add_argument(
        "--compile-warmup", type=int, help=f"untimed steps before them with torch_compile ({default('compile_warmup')})"
    )
    parser.add_argument(
        "--batch-size", type=int, help="train.batch_size, every config (default: params.yaml's; CPU: 4)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        help="longest example, and the tutorial's padding (default: tokenize.max_length, at most 512; CPU: 64)",
    )
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml", help="default: %(default)s")
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: bench/results/gpu.json; CPU: bench/results/gpu-cpu-smoke.json)"
    )
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="without CUDA, run a tiny model for a few steps: a smoke test of the code path, not a benchmark",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # torch and the stages are imported only now, so --help is instant.
    from transformers.utils import logging as hf_logging

    from bench.harness import length_summary
    from stages.common.params import load_params
    from stages.data.tokenized import TokenizedExamples
    from stages.training.devices import Device

    device = Device.detect()
    if not device.cuda and not args.allow_cpu:
        print(NO_GPU, file=sys.stderr)
        sys.exit(2)
    defaults = GPU_DEFAULTS if device.cuda else CPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        sys.exit(f"bench: unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if min(args.steps, args.warmup, args.compile_warmup) < 1:
        sys.exit("bench: --steps, --warmup and --compile-warmup must be at least 1")
    hf_logging.set_verbosity_warning()

    params = load_params(args.params)
    base = params.train
    if args.batch_size is not None:
        base = dataclasses.replace(base, batch_size=args.batch_size)
    model_shape = BERT_BASE_CASED if device.cuda else TINY
    max_length = min(args.max_length or params.tokenize.max_length, model_shape["max_position_embeddings"])
    load = os.getloadavg()[0]
    if load > 1.0:
        print(
            f"bench: warning: load average {load:.2f} at start; other work on this machine can slow the "
            "data loading and the kernel launches",
            file=sys.stderr,
            flush=True,
        )

    # One set of examples for every config, enough for the longest run: the same reviews in the same
    # (seeded) order, so the configs differ only in their settings.
    most_steps = max(args.steps + (args.compile_warmup if CONFIGS[c].compile_warmup else args.warmup) for c in configs)
    lengths = review_lengths(most_steps * base.batch_size, max_length)
    n_params = sum(p.numel() for p in _shape_only_model(model_shape, params.data.num_labels).parameters())
    result: dict[str, Any] = {
        "benchmark": "gpu_train",
        "command": shlex.join([sys.executable, "-m", "bench.gpu_train", *sys.argv[1:]]),
        "machine": {**machine_info(device), "loadavg_at_start": round(load, 2)},
        "model": {
            "name": "bert-base-cased shape, random weights" if device.cuda else "tiny BERT (CPU smoke test)",
            "config": model_shape,
            "num_labels": params.data.num_labels,
            "parameters": n_params,
        },
        "data": {
            "examples": len(lengths),
            "seed": DATA_SEED,
            "length_median": LENGTH_MEDIAN,
            "length_sigma": LENGTH_SIGMA,
            "lengths": length_summary(lengths),
        },
        "settings": {
            "batch_size": base.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "compile_warmup": args.compile_warmup,
            "max_length": max_length,
            "params": str(args.params),
            "tokenize_padding": params.tokenize.padding,
        },
        "configs": [],
    }
    print(
        f"bench: {result['model']['name']}, {n_params / 1e6:.1f}M parameters, on {device.name}; "
        f"{len(lengths)} examples, mean {lengths.mean():.0f} tokens",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="gpu-bench-data-") as scratch:
        write_examples(Path(scratch) / "train.parquet", lengths, model_shape["vocab_size"], params.data.num_labels)
        examples = TokenizedExamples(Path(scratch) / "train.parquet")
        tokenizer = padding_tokenizer()
        for name in configs:
            config = CONFIGS[name]
            warmup = args.compile_warmup if config.compile_warmup else args.warmup
            print(f"bench: {name}: {warmup} warmup + {args.steps} timed steps ...", flush=True)
            started = time.perf_counter()
            try:
                row = measure_config(
                    config,
                    base,
                    params.tokenize.padding,
                    max_length,
                    model_shape,
                    params.data.num_labels,
                    examples,
                    tokenizer,
                    warmup,
                    args.steps,
                    device,
                )
            except Exception as err:  # noqa: BLE001 - one failing config (OOM, compile error) must not lose the others
                traceback.print_exc()
                first_line = (str(err).strip().splitlines() or [""])[0][:200]
                row = {"config": name}
                try:  # the settings it would have run with, unless resolving them is what failed
                    resolved = resolve(config, base, params.tokenize.padding, device)
                    row = settings_row(config, resolved[0], resolved[1], resolved[2], max_length)
                except Exception:  # noqa: BLE001
                    pass
                row["error"] = f"{type(err).__name__}: {first_line}"
            finally:
                release(device)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            result["configs"].append(row)
            _speedups(result["configs"])
            save(args.out, result)
            done = row.get("samples_per_s", row.get("error"))
            print(f"bench: {name}: {done} ({row['wall_s']} s in all)", flush=True)

    print(f"\n{result['markdown']}\n\n(bench: wrote {args.out})", flush=True)
    if any("error" in r for r in result["configs"]):
        sys.exit(1)


def _shape_only_model(model_shape: dict[str, int], num_labels: int):
    """The model on the meta device: its parameter count without allocating it."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):
        return BertForSequenceClassification(BertConfig(**model_shape, num_labels=num_labels))


def _speedups(rows: list[dict[str, Any]]) -> None:
    """samples/s of each config over the tutorial's, once the tutorial has been measured."""
    baseline = next((r for r in rows if r["config"] == BASELINE and "samples_per_s" in r), None)
    for r in rows:
        if baseline is not None and "samples_per_s" in r:
            r["speedup"] = round(r["samples_per_s"] / baseline["samples_per_s"], 2)


if __name__ == "__main__":
    from stages.common.errors import run_main

    run_main(main)  # a params.yaml error is one line, as the stages print it
