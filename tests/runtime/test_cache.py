"""LRU/TTL/bytes bounds, user-state keys, request keys, session cache, thread safety."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from edgerec.runtime.cache import CacheConfig, LRUCache, SessionCache, request_key, size_of, user_state_key
from edgerec.runtime.errors import RequestError


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_hit_miss_and_lru_eviction_by_entries():
    cache = LRUCache(max_entries=2, max_bytes=1 << 20)
    cache.put("a", np.zeros(1))
    cache.put("b", np.zeros(1))
    assert cache.get("a") is not None          # a becomes most recent
    cache.put("c", np.zeros(1))                # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"], stats["entries"]) == (3, 1, 1, 2)


def test_eviction_by_bytes_and_oversized_rejected():
    cache = LRUCache(max_entries=100, max_bytes=3 * (800 + 128))
    for i in range(5):
        cache.put(i, np.zeros(100))              # 800 bytes + overhead each
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes and cache.stats()["evictions"] == 2
    assert cache.get(0) is None and cache.get(4) is not None
    assert cache.put("huge", np.zeros(10_000)) is False and cache.stats()["rejected"] == 1
    assert cache.get(4) is not None             # nothing evicted for the rejected value


def test_ttl_expiry():
    clock = FakeClock()
    cache = LRUCache(10, 1 << 20, ttl_s=5, clock=clock)
    cache.put("k", np.ones(2))
    clock.now = 4.9
    assert cache.get("k") is not None
    clock.now = 5.0
    assert cache.get("k") is None
    assert cache.stats()["expirations"] == 1 and len(cache) == 0 and cache.bytes == 0


def test_replacing_a_key_keeps_bytes_exact():
    cache = LRUCache(10, 1 << 20)
    cache.put("k", np.zeros(10))
    cache.put("k", np.zeros(20))
    assert len(cache) == 1 and cache.bytes == 160 + 128
    cache.clear()
    assert cache.bytes == 0 and len(cache) == 0


def test_disabled_cache():
    cache = LRUCache(0, 1 << 20)
    assert not cache.enabled and cache.put("a", 1) is False and cache.get("a") is None
    assert cache.stats()["misses"] == 0


def test_size_of_nested():
    assert size_of({"user_state": np.zeros((1, 8), np.float32)}) == 32 + len("user_state")
    assert size_of([np.zeros(2), np.zeros(3)]) == 40


def test_user_state_key_changes_with_behaviour_and_version():
    hist = np.array([[0, 0, 3, 4, 5]], np.int32)
    same = user_state_key("v1", "u1", hist.copy())
    assert same == user_state_key("v1", "u1", hist)
    assert user_state_key("v1", "u1", np.array([[0, 3, 4, 5, 6]], np.int32)) != same
    assert user_state_key("v2", "u1", hist) != same
    assert user_state_key("v1", 1, hist) == user_state_key("v1", "1", hist)


def test_request_key_normalised():
    a = {"history": ["1", "2"], "item": "3", "context": {"hour": 1, "device": "ios"}}
    b = {"context": {"device": "ios", "hour": 1}, "item": "3", "history": ["1", "2"], "expected": 0.3}
    assert request_key("v", a) == request_key("v", b)
    assert request_key("v", a) != request_key("v", {**a, "item": "4"})
    assert request_key("v", a) != request_key("w", a)


def test_cache_config_coerce():
    assert CacheConfig.coerce(None) == CacheConfig()
    off = CacheConfig.coerce(False)
    assert off.user_entries == 0 and off.result_entries == 0 and not off.share_sessions
    assert CacheConfig.coerce({"user_entries": 5}).user_entries == 5
    with pytest.raises(RequestError):
        CacheConfig.coerce({"bogus": 1})
    with pytest.raises(RequestError):
        CacheConfig(user_entries=-1)
    with pytest.raises(RequestError):
        CacheConfig(user_ttl_s=0)
    with pytest.raises(RequestError):
        CacheConfig.coerce("big")


class _Closable:
    closed = 0

    def close(self):
        type(self).closed += 1


def test_session_cache_refcounts():
    sessions = SessionCache()
    key = SessionCache.key("onnxruntime", "abc", {"num_threads": 1})
    made = []
    first = sessions.acquire(key, lambda: made.append(1) or _Closable())
    second = sessions.acquire(key, lambda: made.append(1) or _Closable())
    assert first is second and len(made) == 1 and sessions.stats()["references"] == 2
    assert SessionCache.key("onnxruntime", "abc", {"num_threads": 2}) != key
    _Closable.closed = 0
    sessions.release(key)
    assert _Closable.closed == 0
    sessions.release(key)
    assert _Closable.closed == 1 and sessions.stats()["entries"] == 0


def test_thread_safety_bounds_hold():
    cache = LRUCache(max_entries=50, max_bytes=50 * (80 + 128))
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(2000):
                key = int(rng.integers(0, 200))
                value = cache.get(key)
                if value is None:
                    cache.put(key, np.full(10, key, dtype=np.float64))
                elif value[0] != key:
                    errors.append((key, value[0]))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert errors == []
    assert stats["entries"] <= 50 and stats["bytes"] <= stats["max_bytes"]
    assert stats["hits"] + stats["misses"] == 6 * 2000
    assert stats["bytes"] == stats["entries"] * (80 + 128)
