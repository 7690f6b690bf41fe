"""Where a training step's time goes: forward + backward, and the optimizer step, per setting.

    python -m bench.train_step                    # about 2 minutes on 2 CPU cores
    python -m bench.train_step --variants fp32+adamw,bf16+fused --profile   # and the top operators

`bench.run --part train` measures whole runs of the train stage against the tutorial's recipe; this
takes one of its steps apart, to see which lever is worth pulling. What it runs:

- **The model and batches of the train stage.** `params.yaml`'s model (`stages.train.load_pretrained`,
  a fresh 5-way head), and 400 synthetic reviews at Yelp's length (length scale 7.0, seed 42) encoded
  as the tokenize stage encodes them (truncated at `tokenize.max_length`), sorted by length and cut into
  batches of `train.batch_size`, as `group_by_length` batches them, each padded to its longest review.
  Every 5th batch (10 batches, short to long) is timed, after one untimed warm-up step per variant.
- **One step is what the `Trainer` does**: forward under autocast (bf16 variants), backward, gradient
  clipping to norm 1.0, AdamW (lr 5e-5) and zeroing the gradients.
- **Variants, one after another in one process**, each with the model loaded afresh (so each starts
  from the same weights), named by `+`-joined settings: `fp32` or `bf16` (autocast), `adamw` (torch's
  foreach AdamW, `train.optimizer: adamw_torch`) or `fused` (`adamw_torch_fused`), and optionally
  `no-attention-dropout` (`train.attention_dropout: 0`; otherwise params.yaml's, by default the
  model's own 0.1), or `fast-mask` (the same dropout, its mask drawn by `stages/training/attention.py`).

It prints, per variant, the seconds in forward + backward and in clipping + the optimizer step over the
timed batches, samples/s, and the model FLOPs utilisation (`bench/flops.py`: useful FLOPs per second over
the matmul peak that the same run measures in the variant's precision), then each timed batch's padded
length, real tokens, step time and MFU (the tail: what the longest batches cost); with `--profile`,
torch's profiler table of the costliest operators.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from bench.flops import matmul_peak, training_flops
from stages.common.params import Params, load_params
from stages.data.synthetic import generate_reviews
from stages.data.tokenizer import load_tokenizer
from stages.train import load_pretrained
from stages.training import attention

SETTINGS = {"fp32", "bf16", "adamw", "fused", "no-attention-dropout", "fast-mask"}
DEFAULT_VARIANTS = "fp32+adamw,fp32+fused,bf16+fused,fp32+fused+no-attention-dropout,bf16+fused+no-attention-dropout"


def length_sorted_batches(params: Params, reviews: int, every: int) -> list[dict[str, torch.Tensor]]:
    texts, labels = generate_reviews(reviews, seed=42, length_scale=7.0)
    tokenizer = load_tokenizer(params.model)
    ids = tokenizer(
        texts,
        truncation=True,
        max_length=params.tokenize.max_length,
        return_token_type_ids=False,
        return_attention_mask=False,
    )["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    size = params.train.batch_size
    batches = [order[start : start + size] for start in range(0, len(order), size)][::every]
    return [
        {
            **tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt"),
            "labels": torch.tensor([labels[i] for i in rows]),
        }
        for rows in batches
    ]


def time_variant(
    variant: str, params: Params, batches: list[dict[str, torch.Tensor]], profile: bool, peaks: dict[str, float]
) -> dict:
    settings = set(variant.split("+"))
    unknown = settings - SETTINGS
    if unknown or len(settings & {"fp32", "bf16"}) != 1 or len(settings & {"adamw", "fused"}) != 1:
        raise SystemExit(
            f"variant {variant!r}: expected fp32 or bf16, adamw or fused, and optionally "
            f"no-attention-dropout, joined by '+' (unknown: {sorted(unknown)})"
        )
    torch.manual_seed(42)
    attention_dropout = 0.0 if "no-attention-dropout" in settings else params.train.attention_dropout
    model = load_pretrained(params.model, params.data.num_labels, attention_dropout).train()
    if "fast-mask" in settings:  # stages/training/attention.py, what `attention_dropout_kernel: auto` picks on CPUs
        attention.use_fast_mask(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused="fused" in settings)
    bf16 = "bf16" in settings

    def step(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        backward_done = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return backward_done - started, time.perf_counter() - backward_done

    step(batches[len(batches) // 2])  # warm-up: first-call allocations and kernel selection
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else nullcontext()
    with profiler as prof:
        times = [step(batch) for batch in batches]
    forward_backward, optimizer_step = sum(t[0] for t in times), sum(t[1] for t in times)
    samples = sum(len(batch["labels"]) for batch in batches)
    precision = "bf16" if bf16 else "fp32"
    flops = [training_flops(model.config, batch["attention_mask"].sum(dim=1).tolist()) for batch in batches]
    seconds = [sum(t) for t in times]
    result = {
        "variant": variant,
        "forward_backward_s": forward_backward,
        "optimizer_s": optimizer_step,
        "samples_per_second": samples / (forward_backward + optimizer_step),
        "tokens_per_second": sum(int(batch["attention_mask"].sum()) for batch in batches) / sum(seconds),
        "mfu": sum(flops) / sum(seconds) / peaks[precision],
        "steps": [
            {
                "padded_length": batch["input_ids"].shape[1],
                "real_tokens": int(batch["attention_mask"].sum()),
                "step_s": step_s,
                "mfu": step_flops / step_s / peaks[precision],
            }
            for batch, step_s, step_flops in zip(batches, seconds, flops, strict=True)
        ],
    }
    print(
        f"{variant:40s} forward+backward {forward_backward:6.2f} s   clip+optimizer {optimizer_step:5.2f} s   "
        f"{result['samples_per_second']:6.2f} samples/s   {result['tokens_per_second']:6.0f} real tokens/s   "
        f"MFU {100 * result['mfu']:4.1f}% of the {precision} peak",
        flush=True,
    )
    print("    padded length   real tokens   step s   MFU")
    for row in result["steps"]:
        print(
            f"    {row['padded_length']:13d}   {row['real_tokens']:11d}   {row['step_s']:6.3f}   {100 * row['mfu']:4.1f}%"
        )
    if profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated (default: %(default)s)")
    parser.add_argument("--reviews", type=int, default=400, help="synthetic reviews to batch (default: %(default)s)")
    parser.add_argument(
        "--every", type=int, default=5, help="time every Nth length-sorted batch (default: %(default)s)"
    )
    parser.add_argument("--profile", action="store_true", help="also print torch's profiler table per variant")
    args = parser.parse_args()
    params = load_params(args.params)
    batches = length_sorted_batches(params, args.reviews, args.every)
    tokens = sum(batch["input_ids"].numel() for batch in batches) / len(batches)
    print(
        f"{len(batches)} batches of {len(batches[0]['labels'])}, {tokens:.0f} tokens each on average "
        f"(padding included); {torch.get_num_threads()} torch threads; torch {torch.__version__}",
        flush=True,
    )
    variants = args.variants.split(",")
    # The peak in each precision a variant uses, measured here, on the threads the steps run on.
    peaks = {
        precision: matmul_peak(precision) for precision in ("fp32", "bf16") if any(precision in v for v in variants)
    }
    for precision, peak in peaks.items():
        print(f"matmul peak ({precision}, torch.mm, {torch.get_num_threads()} threads): {peak / 1e9:.1f} GFLOP/s")
    results = [time_variant(variant, params, batches, args.profile, peaks) for variant in variants]
    base = results[0]
    for result in results[1:]:
        print(
            f"{result['variant']} vs {base['variant']}: {result['samples_per_second'] / base['samples_per_second']:.2f}x "
            f"samples/s, optimizer step {base['optimizer_s'] / result['optimizer_s']:.2f}x faster"
        )


if __name__ == "__main__":
    main()
