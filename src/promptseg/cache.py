"""One cache bounded in bytes, for training's decoded images (least recently used dropped) and inference's
encodings (scan-resistant: what fits is kept)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

__all__ = ["ByteBudgetCache", "digest"]


class ByteBudgetCache:
    """A dict of arrays (numpy or torch; or tuples/lists of them) holding at most ``max_bytes``; ``max_bytes=0``
    keeps nothing. What it returns is what was stored: results never depend on it (tested).

    ``policy``: what happens to a new value that does not fit beside what is held:
      - ``lru``: the least recently used entries are dropped to make room (random access: training's crops);
      - ``keep``: it is returned but not stored, and what is held stays. Under a cyclic scan over more than the
        budget (evaluation: every prompt over a whole split) LRU drops each entry just before its next use and
        hits nothing; ``keep`` hits on every entry it holds. :meth:`clear` starts over (a new split)."""

    POLICIES = ("lru", "keep")

    def __init__(self, max_bytes: int, policy: str = "lru"):
        if policy not in self.POLICIES:
            raise ValueError(f"cache policy {policy!r}: expected one of {', '.join(self.POLICIES)}")
        self.max_bytes, self.policy, self.used = int(max_bytes), policy, 0
        self._entries: OrderedDict = OrderedDict()

    def get(self, key, compute):
        """The value stored under ``key``, else ``compute()`` (stored if the policy makes room for it)."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        value = compute()
        size = sum(int(a.nbytes) for a in (value if isinstance(value, (tuple, list)) else (value,)))
        fits = size <= self.max_bytes - self.used if self.policy == "keep" else size <= self.max_bytes
        if self.max_bytes and fits:
            self._entries[key] = (value, size)
            self.used += size
            while self.used > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.used -= dropped
        return value

    def clear(self) -> None:
        """Drop everything held."""
        self._entries.clear()
        self.used = 0


def digest(images: list[np.ndarray]) -> bytes:
    """A key for a list of images by their shapes and bytes (never by object identity)."""
    h = hashlib.blake2b(digest_size=16)
    for image in images:
        h.update(repr(image.shape).encode())
        h.update(np.ascontiguousarray(image).data)
    return h.digest()
