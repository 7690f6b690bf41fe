"""Model FLOPs utilisation (MFU): useful training FLOPs per second over the machine's matmul peak.

    peak = matmul_peak("bf16")                      # FLOP/s of this process's threads, measured now
    flops = training_flops(model.config, lengths)   # the useful FLOPs of training on these examples
    mfu = flops / seconds / peak

Useful FLOPs count each example's real tokens, never the padding (formula in BENCHMARKS.md, "MFU").
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch

# Square matmuls timed for the peak: the best of them is the peak (small ones miss it, large ones
# take long on 2 cores).
PEAK_SIZES = (1024, 2048, 3072)
PEAK_REPEATS = 5


def matmul_peak(precision: str, sizes: Iterable[int] = PEAK_SIZES, repeats: int = PEAK_REPEATS) -> float:
    """The FLOP/s of `torch.mm` on this CPU with this process's threads, in `precision` (fp32 or bf16):
    the best over `sizes` of the fastest of `repeats` timed runs, after one untimed warm-up each."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    best = 0.0
    generator = torch.Generator().manual_seed(0)
    for n in sizes:
        a, b = (torch.randn(n, n, generator=generator).to(dtype) for _ in range(2))
        torch.mm(a, b)  # warm-up: kernel selection and first-call allocations
        fastest = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            fastest = min(fastest, time.perf_counter() - started)
        best = max(best, 2 * n**3 / fastest)
    return best


def forward_flops(config: Any, length: int) -> float:
    """Forward FLOPs of a BERT-style encoder and its classification head on one example of `length`
    real tokens: 2 per multiply-add of every matmul (embedding lookups and element-wise work count 0)."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    projections = 4 * d * d + 2 * d * f  # Q, K, V, output; the two feed-forward matmuls
    attention = 2 * length * d  # scores Q·Kᵀ and the weighted sum of V, per token
    head = d * d + d * config.num_labels  # pooler and classifier, once per example
    return 2 * (layers * length * (projections + attention) + head)


def training_flops(config: Any, lengths: Iterable[int]) -> float:
    """Useful FLOPs of one training pass over examples of these real lengths: forward plus backward,
    which does twice the forward's matmul work (gradients of the inputs and of the weights)."""
    return 3 * sum(forward_flops(config, int(length)) for length in lengths)
