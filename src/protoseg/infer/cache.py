"""Thread-safe LRU cache bounded in bytes, computing each missing key once even under concurrency.

Concurrent requests for a key being computed wait on the same future instead of computing again.
``get_many`` lets one caller compute all keys it is first to ask for in a single batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Any


def nbytes_of(value: Any) -> int:
    """Size of a cached value: arrays, tuples/lists/dicts of arrays, or objects with ``nbytes``."""
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes_of(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    return 64


class ByteLRU:
    """LRU of computed values whose total ``nbytes`` stays under ``max_bytes`` (newest kept)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._pending: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def peek(self, key: Hashable) -> Any | None:
        """The cached value of ``key`` (marked recently used), or None; never computes nor waits."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            self._data.move_to_end(key)
            return entry[0]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0

    def _insert(self, key: Hashable, value: Any) -> None:
        size = nbytes_of(value)
        if size > self.max_bytes:
            return  # larger than the whole cache: hand it out, do not keep it
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._data[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes and self._data:
            _, (_, dropped) = self._data.popitem(last=False)
            self.bytes -= dropped

    def get_many(self, keys: Sequence[Hashable], compute: Callable[[list[Hashable]], Sequence[Any]]) -> list[Any]:
        """Values for ``keys``; ``compute(missing_keys) -> values`` runs once for the keys this call owns."""
        found: dict[Hashable, Any] = {}
        waits: dict[Hashable, Future] = {}
        owned: list[Hashable] = []
        with self._lock:
            for key in dict.fromkeys(keys):
                if key in self._data:
                    self._data.move_to_end(key)
                    found[key] = self._data[key][0]
                    self.hits += 1
                elif key in self._pending:
                    waits[key] = self._pending[key]
                    self.hits += 1
                else:
                    self._pending[key] = Future()
                    owned.append(key)
                    self.misses += 1
        if owned:
            try:
                values = list(compute(owned))
                if len(values) != len(owned):
                    raise RuntimeError(f"compute returned {len(values)} values for {len(owned)} keys")
            except BaseException as exc:
                with self._lock:
                    futures = [self._pending.pop(k) for k in owned]
                for fut in futures:
                    fut.set_exception(exc)
                raise
            with self._lock:
                futures = []
                for key, value in zip(owned, values):
                    self._insert(key, value)
                    futures.append(self._pending.pop(key))
                    found[key] = value
            for fut, value in zip(futures, values):
                fut.set_result(value)
        for key, fut in waits.items():
            found[key] = fut.result()
        return [found[k] for k in keys]

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """Value for one key, computed by ``compute()`` at most once at a time."""
        return self.get_many([key], lambda _keys: [compute()])[0]
