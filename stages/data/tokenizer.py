"""The model's fast tokenizer, as the tokenize and train stages load it."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from stages.common import hub
from stages.common.errors import UserError
from stages.common.params import ModelParams


def load_tokenizer(model: ModelParams) -> PreTrainedTokenizerBase:
    """The fast tokenizer of `model.name`; safetensors-only, remote code only when allowed."""
    model_dir = hub.model_dir(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True, trust_remote_code=model.trust_remote_code)
    if not tokenizer.is_fast:
        raise UserError(f"model.name = {model.name!r}: has no fast tokenizer (tokenizer.json); one is required")
    return tokenizer
