"""One least-recently-used cache bounded in bytes, for training's decoded images and inference's encodings."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

__all__ = ["ByteBudgetCache", "digest"]


class ByteBudgetCache:
    """A least-recently-used dict of arrays (numpy or torch; or tuples/lists of them) holding at most
    ``max_bytes``; ``max_bytes=0`` keeps nothing. What it returns is what was stored: results never depend
    on it (tested)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used = int(max_bytes), 0
        self._entries: OrderedDict = OrderedDict()

    def get(self, key, compute):
        """The value stored under ``key``, else ``compute()`` (stored if it fits, the oldest entries dropped)."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        value = compute()
        size = sum(int(a.nbytes) for a in (value if isinstance(value, (tuple, list)) else (value,)))
        if self.max_bytes and size <= self.max_bytes:
            self._entries[key] = (value, size)
            self.used += size
            while self.used > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.used -= dropped
        return value


def digest(images: list[np.ndarray]) -> bytes:
    """A key for a list of images by their shapes and bytes (never by object identity)."""
    h = hashlib.blake2b(digest_size=16)
    for image in images:
        h.update(repr(image.shape).encode())
        h.update(np.ascontiguousarray(image).data)
    return h.digest()
