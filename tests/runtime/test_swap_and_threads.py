"""Thread safety, hot swap (atomic, in-flight calls on the old model, failed swap keeps serving),
and a short CI load test: 8 threads, a swap in the middle, 0 errors, 0 old answers after it."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import edgerec.runtime as er
from edgerec.runtime.errors import BundleError, IntegrityError

from .conftest import ITEMS, make_requests

pytestmark = pytest.mark.slow
CANDIDATES = ITEMS[:15] + ["999"]


def _users(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"user_id": f"u{i}", "history": [str(x) for x in rng.choice(ITEMS, size=int(rng.integers(1, 7)))],
             "context": {"hour": int(i % 24), "device": "ios"}} for i in range(n)]


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_threads_equal_single_thread(bundle, backend):
    users, rows = _users(12), make_requests(40, seed=11)
    with er.load(bundle, backend=backend, num_threads=1, cache={"user_entries": 5}) as p:
        want_rows = p.predict(rows, use_cache=False)
        want_users = [p.score_candidates(u, CANDIDATES, use_cache=False) for u in users]
        failures = []

        def worker(seed):
            rng = np.random.default_rng(seed)
            try:
                for _ in range(40):
                    i = int(rng.integers(0, len(users)))
                    np.testing.assert_array_equal(p.score_candidates(users[i], CANDIDATES), want_users[i])
                    lo = int(rng.integers(0, 30))
                    np.testing.assert_array_equal(p.predict(rows[lo:lo + 10]), want_rows[lo:lo + 10])
            except Exception as err:  # noqa: BLE001
                failures.append(repr(err))

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        stats = p.stats()["caches"]["user_state"]
        assert stats["entries"] <= 5 and stats["evictions"] > 0 and stats["hits"] > 0


def test_swap_switches_and_invalidates(bundle, bundle_v2):
    user = _users(1)[0]
    with er.load(bundle_v2, backend="onnxruntime") as direct:
        want_v2 = direct.score_candidates(user, CANDIDATES)
    with er.load(bundle, backend="onnxruntime") as p:
        v1_version = p.version
        before = p.score_candidates(user, CANDIDATES)
        assert not np.allclose(before, want_v2)
        new_version = p.swap(bundle_v2)
        assert new_version == p.version != v1_version
        assert p.stats()["caches"]["user_state"]["entries"] == 0 and p.stats()["swaps"] == 1
        np.testing.assert_allclose(p.score_candidates(user, CANDIDATES), want_v2, atol=1e-6)
        p.swap(bundle)          # and back
        np.testing.assert_allclose(p.score_candidates(user, CANDIDATES), before, atol=1e-6)


def test_failed_swap_keeps_old_model(bundle, copy_bundle, tmp_path):
    import json
    user = _users(1)[0]
    tampered = copy_bundle("tampered")
    with open(tampered / "fused.onnx", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    skewed = copy_bundle("skewed")
    rows = [json.loads(x) for x in (skewed / "examples.jsonl").read_text().splitlines()]
    rows[0]["expected"] = 1.5 - rows[0]["expected"]
    (skewed / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from edgerec.runtime.manifest import file_entry, load_manifest, write_manifest
    manifest = load_manifest(skewed, verify=False)
    manifest.files = [file_entry(skewed, f["file"], f.get("role", "")) for f in manifest.files]
    write_manifest(skewed, manifest)
    with er.load(bundle, backend="litert") as p:
        version, before = p.version, p.score_candidates(user, CANDIDATES)
        for bad, error in ((tampered, IntegrityError), (skewed, BundleError), (tmp_path / "none", BundleError)):
            with pytest.raises(error):
                p.swap(bad)
            assert p.version == version
            np.testing.assert_array_equal(p.score_candidates(user, CANDIDATES), before)
        assert p.stats()["failed_swaps"] == 3


def test_inflight_call_finishes_on_old_model(bundle, bundle_v2):
    rows = make_requests(3, seed=4)
    with er.load(bundle, backend="onnxruntime") as ref:
        want_v1 = ref.predict(rows)
    with er.load(bundle, backend="onnxruntime", cache={"share_sessions": False}) as p:
        old_model = p._model
        fused = old_model.parts["fused"]
        entered, release = threading.Event(), threading.Event()
        original = fused._run_impl     # every call path (checked or not) ends here

        def slow_run(feeds):
            entered.set()
            release.wait(30)
            return original(feeds)

        fused._run_impl = slow_run
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("scores", p.predict(rows)))
        thread.start()
        assert entered.wait(30)
        p.swap(bundle_v2, check_examples=True)          # does not wait for the in-flight call
        assert p._model is not old_model and not fused._closed   # old model still open for it
        release.set()
        thread.join(30)
        np.testing.assert_allclose(result["scores"], want_v1, atol=1e-6)
        assert fused._closed                              # retired after the last call finished
        assert not np.allclose(p.predict(rows), want_v1)


def test_load_test_with_swap(bundle, bundle_v2):
    """8 threads x 300 calls, swap halfway: 0 errors, no v1 answers after the swap, cache in bound."""
    users = _users(40, seed=3)
    refs = {}
    for name, path in (("v1", bundle), ("v2", bundle_v2)):
        with er.load(path, backend="onnxruntime", cache=False) as ref:
            refs[name] = [ref.score_candidates(u, CANDIDATES) for u in users]
    bound = {"user_entries": 16, "user_bytes": 16 * 400}
    with er.load(bundle, backend="onnxruntime", num_threads=1, cache=bound) as p:
        records, errors, swap_done = [], [], {}
        lock = threading.Lock()

        def worker(seed):
            rng = np.random.default_rng(seed)
            for _ in range(300):
                i = int(rng.integers(0, len(users)))
                start = time.perf_counter()
                try:
                    scores = p.score_candidates(users[i], CANDIDATES)
                except Exception as err:  # noqa: BLE001
                    errors.append(repr(err))
                    continue
                with lock:
                    records.append((start, time.perf_counter(), i, scores))

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        # Swap a quarter of the way in: the swap (load, warm-up, examples replay through the fused
        # model and the split pair) competes with 8 threads for the GIL and takes ~100-500 calls.
        while len(records) < 600 and any(t.is_alive() for t in threads):
            time.sleep(0.005)
        swap_start = time.perf_counter()
        p.swap(bundle_v2)
        swap_done["t"] = time.perf_counter()
        for t in threads:
            t.join()
        stats = p.stats()["caches"]["user_state"]
    assert errors == []
    assert len(records) == 8 * 300
    after = [r for r in records if r[0] > swap_done["t"]]
    before = [r for r in records if r[1] < swap_start]
    assert len(after) > 100 and len(before) > 100
    old_after = sum(not np.allclose(s, refs["v2"][i], atol=1e-5) for _, _, i, s in after)
    wrong_before = sum(not np.allclose(s, refs["v1"][i], atol=1e-5) for _, _, i, s in before)
    assert old_after == 0 and wrong_before == 0
    assert stats["entries"] <= 16 and stats["bytes"] <= 16 * 400
