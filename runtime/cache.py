"""Caches of the runtime: user state (LRU + TTL, bounded by entries and bytes), results, sessions.

- `LRUCache`: thread-safe LRU with a time-to-live, bounded by entry count AND bytes.
- `user_state_key`: (model version, user id, sha256 of the *encoded* behaviour sequence), so a
  user's new behaviour misses the cache instead of returning a stale state.
- `result_keys`: one key per encoded request row (result cache): the sha256 of the exact bytes
  the model is fed, so two requests share a score only when the model sees the same input.
- `request_key`: a stable hash of a normalised raw request, exact for numpy values too.
- `SessionCache`: loading the same artifact (same sha256) with the same backend options twice
  shares one compiled backend, reference-counted.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .errors import RequestError, expected

_ENTRY_OVERHEAD = 128   # bytes charged per entry for the key and bookkeeping


@dataclass(frozen=True)
class CacheConfig:
    """Sizes of the predictor's caches; 0 entries disables a cache.

    Args:
        user_entries, user_bytes, user_ttl_s: user-state cache bounds (ttl None = no expiry).
        result_entries, result_bytes, result_ttl_s: result cache (off by default).
        share_sessions: reuse compiled backends across predictors loading the same files.
    """

    user_entries: int = 10_000
    user_bytes: int = 64 << 20
    user_ttl_s: float | None = 300.0
    result_entries: int = 0
    result_bytes: int = 16 << 20
    result_ttl_s: float | None = 60.0
    share_sessions: bool = True

    def __post_init__(self):
        for name in ("user_entries", "user_bytes", "result_entries", "result_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RequestError(expected(f"cache {name} as a non-negative int", value))
        for name in ("user_ttl_s", "result_ttl_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise RequestError(expected(f"cache {name} as a positive number or None", value))

    @classmethod
    def coerce(cls, value) -> "CacheConfig":
        """None -> defaults; False -> everything off; True -> defaults; dict -> fields; CacheConfig as is."""
        if value is None or value is True:
            return cls()
        if value is False:
            return cls(user_entries=0, result_entries=0, share_sessions=False)
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - set(asdict(cls()))
            if unknown:
                raise RequestError(expected(f"cache options among {sorted(asdict(cls()))}", sorted(unknown)))
            return cls(**value)
        raise RequestError(expected("cache as None, a bool, a dict or a CacheConfig", type(value).__name__))


def size_of(value: Any) -> int:
    """Bytes held by a cached value: numpy arrays (also inside dicts/lists/tuples) + overhead."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(size_of(v) + len(str(k)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(size_of(v) for v in value)
    return 16


class LRUCache:
    """Thread-safe LRU cache with TTL, bounded by ``max_entries`` and ``max_bytes``.

    Args:
        max_entries: most entries kept (0 disables the cache).
        max_bytes: most bytes kept (values measured by `size_of` plus a per-entry overhead).
        ttl_s: seconds an entry stays valid (None = until evicted).
        clock: time source (tests inject a fake one).

    Examples:
        >>> cache = LRUCache(max_entries=2, max_bytes=1 << 20)
        >>> cache.put("a", np.zeros(4)); cache.get("a").shape
        (4,)
    """

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.max_entries, self.max_bytes, self.ttl_s, self._clock = max_entries, max_bytes, ttl_s, clock
        self._data: OrderedDict = OrderedDict()   # key -> (value, nbytes, expires_at)
        self._lock = threading.Lock()
        self._bytes = 0
        self.hits = self.misses = self.evictions = self.expirations = self.rejected = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def get(self, key):
        if not self.enabled:
            return None
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            value, nbytes, expires = entry
            if expires is not None and self._clock() >= expires:
                self._drop(key)
                self.expirations += 1
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def get_many(self, keys) -> tuple[list, list[int]]:
        """``[get(k) for k in keys]`` and the indices of the misses."""
        values = [self.get(key) for key in keys]
        return values, [i for i, value in enumerate(values) if value is None]

    def put(self, key, value) -> bool:
        """Store ``value``; False when it alone exceeds ``max_bytes`` (or the cache is off)."""
        if not self.enabled:
            return False
        nbytes = size_of(value) + _ENTRY_OVERHEAD
        if nbytes > self.max_bytes:
            with self._lock:
                self.rejected += 1
            return False
        expires = None if self.ttl_s is None else self._clock() + self.ttl_s
        with self._lock:
            if key in self._data:
                self._drop(key)
            self._data[key] = (value, nbytes, expires)
            self._bytes += nbytes
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                oldest = next(iter(self._data))
                self._drop(oldest)
                self.evictions += 1
        return True

    def _drop(self, key) -> None:
        _, nbytes, _ = self._data.pop(key)
        self._bytes -= nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                    "expirations": self.expirations, "rejected": self.rejected, "entries": len(self._data),
                    "bytes": self._bytes, "max_entries": self.max_entries, "max_bytes": self.max_bytes,
                    "ttl_s": self.ttl_s}


def user_state_key(version: str, user_id: Any, hist_items: np.ndarray) -> tuple:
    """Key of a user's encoded state: new behaviour (a different sequence) -> a different key."""
    digest = hashlib.sha256(np.ascontiguousarray(hist_items, dtype=np.int32).tobytes()).hexdigest()
    return (version, None if user_id is None else str(user_id), digest)


def result_keys(version: str, arrays: Mapping[str, np.ndarray]) -> list[tuple]:
    """One result-cache key per row of encoded model inputs (name -> array, batch first):
    (version, sha256 of the row's bytes in every array, names in sorted order). Exact: rows
    differing in any byte (one id at any position of a long history) get different keys."""
    names = sorted(arrays)
    n = len(arrays[names[0]])
    layout = hashlib.sha256(repr([(k, arrays[k].dtype.str, arrays[k].shape[1:]) for k in names]).encode())
    if n == 1:
        digest = layout.copy()
        for k in names:
            digest.update(np.ascontiguousarray(arrays[k]).tobytes())
        return [(version, digest.digest())]
    rows = np.concatenate([np.ascontiguousarray(arrays[k]).reshape(n, -1).view(np.uint8) for k in names], axis=1)
    keys = []
    for row in rows:
        digest = layout.copy()
        digest.update(row.tobytes())
        keys.append((version, digest.digest()))
    return keys


def _exact_json(value):
    """json.dumps ``default``: numpy values as their exact Python values (never ``str``, which
    summarises long arrays), anything else by type and repr."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return f"<{type(value).__name__}>{value!r}"


def request_key(version: str, request: Mapping) -> tuple:
    """Key of a raw request: sorted-key JSON without ``expected``/``request_id`` (numpy arrays by
    every value). The Predictor keys its result cache on the encoded rows (`result_keys`)."""
    body = {k: v for k, v in request.items() if k not in ("expected", "request_id")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_exact_json)
    return (version, hashlib.sha256(text.encode("utf-8")).hexdigest())


class SessionCache:
    """Shares loaded backends between predictors: key = (backend, sha256, options)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict = {}   # key -> [backend, refcount]
        self.hits = self.misses = 0

    @staticmethod
    def key(backend: str, sha256: str, options: Mapping) -> tuple:
        return (backend, sha256, json.dumps(dict(options), sort_keys=True, default=str))

    def acquire(self, key: tuple, factory: Callable[[], Any]):
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry[1] += 1
                self.hits += 1
                return entry[0]
            self.misses += 1
        backend = factory()   # outside the lock: loading can take a while
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:          # someone else loaded it meanwhile: keep theirs
                entry[1] += 1
                backend.close()
                return entry[0]
            self._entries[key] = [backend, 1]
            return backend

    def release(self, key: tuple) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._entries[key]
        entry[0].close()

    def stats(self) -> dict:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries),
                    "references": sum(e[1] for e in self._entries.values())}


SESSIONS = SessionCache()
