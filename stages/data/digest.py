"""A digest of a split's reviews, independent of the tokenizer: tokenize records it, evaluate checks it."""

from __future__ import annotations

import hashlib

import numpy as np


class ContentDigest:
    """What a split's reviews are, independent of the tokenizer: a digest of its texts and labels.

    Separate digests of texts and labels, each fed review by review (a separator after every text),
    so however the rows are batched the digest is the same.
    """

    def __init__(self) -> None:
        self._texts, self._labels = hashlib.sha256(), hashlib.sha256()

    def update(self, texts: list[str], labels: np.ndarray) -> None:
        if texts:
            self._texts.update(("\x1e".join(texts) + "\x1e").encode())
        self._labels.update(np.asarray(labels).astype("<i8").tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256(self._texts.digest() + self._labels.digest()).hexdigest()
