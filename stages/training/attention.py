"""Attention dropout at a fraction of its cost on CPUs: the model's own attention and dropout, the mask drawn
16 bits at a time from 64-bit random words (`train.attention_dropout_kernel`).

    if attention.kernel(params.attention_dropout_kernel, device) == "fast":
        attention.use_fast_mask(model)     # training with attention dropout: this attention; otherwise SDPA

torch draws a dropout mask one random float per attention weight, which costs far more than the attention's
matmuls on a CPU (BENCHMARKS.md, "MFU"). Four 16-bit lanes per 64-bit word cut the random draws by 4; the drop
probability is rounded to 1/65536 (0.1 becomes 0.1000061), and the kept weights are scaled by 1/(1 - that).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from stages.training.devices import Device

NAME = "fast_mask_dropout"
LANES = 65536  # values of a 16-bit lane


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask of `shape` that keeps each element with probability 1 - p (p rounded to 1/65536),
    and that kept probability."""
    n = shape.numel()
    # random_ with from = int64's minimum and no `to` draws all 64 bits, so each 16-bit lane is uniform.
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = words.view(torch.int16)[:n].view(shape)
    dropped = round(p * LANES)
    return lanes >= dropped - LANES // 2, 1 - dropped / LANES


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention, with `keep_mask` for the dropout; SDPA's fused kernel without dropout."""
    if not (module.training and dropout > 0):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=0.0, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.nn.functional.softmax(weights, dim=-1)
    keep, kept = keep_mask(weights.shape, dropout, weights.device)
    weights = torch.where(keep, weights * (1 / kept), 0.0)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def kernel(setting: str, device: Device) -> str:
    """What `train.attention_dropout_kernel` resolves to: 'auto' is the fast mask on a CPU (a GPU's fused
    attention kernels draw their own), else the setting ('fast' or 'torch')."""
    if setting == "auto":
        return "torch" if device.cuda or device.mps else "fast"
    return setting


def use_fast_mask(model: torch.nn.Module) -> bool:
    """Make `model` attend with `attention`; False (and unchanged) for a model without transformers'
    attention interface, which keeps torch's dropout."""
    AttentionInterface.register(NAME, attention)
    # Without a mask function of its own, transformers gives a custom attention no padding mask at all.
    AttentionMaskInterface.register(NAME, eager_mask)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError):
        return False
    return True
