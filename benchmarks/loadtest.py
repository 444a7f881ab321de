"""Load test with a hot swap: many threads of mixed raw calls on one `Predictor`, a swap in the middle.

What it proves: under concurrent traffic with the caches on, ``Predictor.swap``
switches models with **0 errors**, **0 answers from the old model** once ``swap()`` has returned,
and the caches stay **within their byte bounds**; a failed swap leaves the old model serving.

How answers are attributed to a model: before the run, every pooled request is scored on each
bundle alone (caches off). A call's answer "is" bundle A's or B's when it matches that bundle's
reference (``atol``); pools where A and B agree are reported as ``ambiguous``. Phases by time:
``before`` = the call ended before ``swap()`` began (must be A), ``during`` = overlapped the
swap (A or B), ``after`` = started after ``swap()`` returned (must be B; A again if it failed).

Examples:
    >>> result = run_load_test("bundle_v1/", "bundle_v2/", threads=8, requests=50_000)
    >>> result["answers"]["old_after_swap"], result["totals"]["errors"], result["passed"]
    (0, 0, True)
"""
from __future__ import annotations

import collections
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgerec.runtime.errors import BundleError, expected

from .machine import current_rss_mb, peak_rss_mb
from .stats import summarize
from .tables import markdown_table

CALL_TYPES = ("predict", "predict_cached", "candidates")
DEFAULT_MIX = {"candidates": 0.5, "predict": 0.25, "predict_cached": 0.25}
# Tight bounds on purpose: the pool has more users than entries, so both caches evict under load.
DEFAULT_CACHE = {"user_entries": 128, "user_bytes": 256 << 10, "user_ttl_s": None,
                 "result_entries": 1024, "result_bytes": 256 << 10, "result_ttl_s": None}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(expected(f"{name} as a positive int", value))
    return int(value)


def build_pool(bundle, users: int, rows: int, candidates: int, seed: int = 0) -> dict:
    """Raw requests for the load: ``users`` user requests (history sampled from the item
    vocabulary; context/dense copied from the bundle's examples), ``rows`` full predict rows and
    one list of ``candidates`` raw item ids."""
    from edgerec.runtime.examples import ExampleSet
    from edgerec.runtime.manifest import confined_path, load_manifest
    from edgerec.runtime.spec import FeatureSpec

    bundle = Path(bundle)
    manifest = load_manifest(bundle, verify=False)
    if not manifest.feature_spec:
        raise BundleError(expected("a bundle with a feature spec (raw requests)", "none"))
    spec = FeatureSpec.load(confined_path(bundle, manifest.feature_spec))
    lines = ExampleSet.load(bundle, manifest, spec=spec).lines
    examples = [e for e in lines if "history" in e]
    if not examples:
        raise BundleError(expected("raw example requests with a history in examples.jsonl", "none"))
    tokens = list(spec.item_vocab.tokens)
    rng = random.Random(seed)
    user_pool = []
    for u in range(users):
        base = examples[u % len(examples)]
        request = {k: v for k, v in base.items() if k in ("context", "dense")}
        length = rng.randint(1, spec.max_seq_len)
        request.update(user_id=f"load-u{u}", history=[rng.choice(tokens) for _ in range(length)])
        user_pool.append(request)
    row_pool = [dict(user_pool[i % users], item=rng.choice(tokens)) for i in range(rows)]
    return {"users": user_pool, "rows": row_pool, "candidates": [tokens[i % len(tokens)] for i in range(candidates)]}


def reference_scores(bundle, pool: dict, backend: str, num_threads: int = 1) -> dict:
    """Scores of every pooled request on ``bundle`` alone (no caches): ``rows`` [R], ``candidates`` [U, C]."""
    from edgerec.runtime.predictor import load

    with load(bundle, backend=backend, warmup=False, cache=False, num_threads=num_threads) as predictor:
        rows = np.concatenate([predictor.predict(pool["rows"][i:i + 64], use_cache=False)
                               for i in range(0, len(pool["rows"]), 64)])
        cands = np.stack([predictor.score_candidates(u, pool["candidates"], use_cache=False) for u in pool["users"]])
        return {"rows": rows, "candidates": cands, "version": predictor.version}


def broken_copy(bundle, out_dir) -> Path:
    """A copy of ``bundle`` with one byte flipped in its first selected artifact (must be refused)."""
    import shutil

    from edgerec.runtime.manifest import load_manifest

    out = Path(shutil.copytree(bundle, Path(out_dir) / f"{Path(bundle).name}-broken"))
    selected = load_manifest(out, verify=False).selected
    target = out / next(f for files in selected.values() for f in files.values())
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return out


class _Worker:
    """One load thread: its own RNG, records and error counts (no shared state on the hot path)."""

    def __init__(self, predictor, pool: dict, calls: int, mix: dict, batch: int, seed: int):
        self.predictor, self.pool, self.calls, self.batch = predictor, pool, calls, batch
        self.rng = random.Random(seed)
        total = sum(mix.values())
        self.types = [CALL_TYPES.index(t) for t in mix for _ in range(max(1, round(mix[t] / total * 20)))]
        self.records = []            # (type, start_ns, end_ns, index, answer)
        self.errors = collections.Counter()
        self.examples = []
        self.done = 0
        self.extra = 0              # calls beyond the quota, made while waiting for the swap

    def __call__(self, barrier: threading.Barrier, settled: threading.Event) -> None:
        barrier.wait()
        for _ in range(self.calls):
            self._one_call()
        if settled.is_set():
            return
        # Quota spent while the swap is still running (slow machine): keep serving until it has
        # settled, then a tail of calls, so every run has traffic on both sides of the swap.
        while not settled.is_set():
            self._one_call()
            self.extra += 1
        for _ in range(max(1, self.calls // 10)):
            self._one_call()
            self.extra += 1

    def _one_call(self) -> None:
        p, pool, rng, batch, clock = self.predictor, self.pool, self.rng, self.batch, time.perf_counter_ns
        kind = rng.choice(self.types)
        start = clock()
        try:
            if kind == 2:
                index = rng.randrange(len(pool["users"]))
                answer = p.score_candidates(pool["users"][index], pool["candidates"])
            else:
                index = rng.randrange(len(pool["rows"]) - batch + 1)
                answer = p.predict(pool["rows"][index:index + batch], use_cache=kind == 1)
            self.records.append((kind, start, clock(), index, answer))
        except Exception as err:  # noqa: BLE001 - every failure is counted by type
            self.errors[type(err).__name__] += 1
            if len(self.examples) < 5:
                self.examples.append(f"{type(err).__name__}: {err}"[:300])
        self.done += 1


def run_load_test(bundle_a, bundle_b, *, threads: int = 8, requests: int = 50_000, swap_at: float = 0.5,
                  backend: str = "auto", cache=None, mix: dict | None = None, batch: int = 4,
                  candidates: int = 20, users: int = 256, rows: int = 512, num_threads: int = 1,
                  atol: float = 1e-5, bad_swap_first: bool = False, expect_swap_ok: bool = True,
                  seed: int = 0, workdir=None) -> dict:
    """Serve ``bundle_a`` from ``threads`` threads, swap to ``bundle_b`` after ``swap_at`` of the calls.

    Args:
        bundle_a, bundle_b: bundle directories; B must score differently from A (e.g. a second seed
            or an `edgerec update`) for the old-answer check to have teeth.
        threads: load threads; requests: calls in total (split evenly over the threads).
        swap_at: fraction of calls completed when the main thread calls ``swap(bundle_b)``.
        backend: Predictor backend ("auto", "onnxruntime", "litert"); num_threads: its intra-op threads.
        cache: Predictor cache config (default `DEFAULT_CACHE`: user-state and result caches on, tight bounds).
        mix: call-type weights over ``predict`` (result cache bypassed), ``predict_cached`` (result
            cache) and ``candidates`` (``score_candidates``, user-state cache).
        batch: rows per predict call; candidates: candidates per score_candidates call;
        users, rows: sizes of the request pools.
        atol: tolerance when matching an answer to a bundle's reference scores.
        bad_swap_first: first try a swap to a corrupted copy of B (must fail, serving A on).
        expect_swap_ok: False when ``bundle_b`` itself is meant to be refused.

    Returns:
        a JSON-ready dict: config, totals (calls, errors by type, throughput), swap, answers,
        latency per call type and phase, caches (peak bytes vs bound), memory, passed + failures.
    """
    from edgerec.runtime.cache import CacheConfig
    from edgerec.runtime.predictor import load

    threads, requests = _positive_int("threads", threads), _positive_int("requests", requests)
    batch, candidates = _positive_int("batch", batch), _positive_int("candidates", candidates)
    users, rows = _positive_int("users", users), max(_positive_int("rows", rows), batch)
    if not isinstance(swap_at, (int, float)) or isinstance(swap_at, bool) or not 0 < swap_at < 1:
        raise ValueError(expected("swap_at in (0, 1)", swap_at))
    mix = dict(DEFAULT_MIX if mix is None else mix)
    if not mix or set(mix) - set(CALL_TYPES) or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(expected(f"mix as weights over {CALL_TYPES}", mix))
    mix = {k: v for k, v in mix.items() if v > 0}
    config = CacheConfig.coerce(DEFAULT_CACHE if cache is None else cache)
    pool = build_pool(bundle_a, users, rows, candidates, seed)
    refs = {"a": reference_scores(bundle_a, pool, backend, num_threads)}
    try:
        refs["b"] = reference_scores(bundle_b, pool, backend, num_threads)
        reference_b_error = None
    except Exception as err:  # noqa: BLE001 - a broken B is a legitimate scenario
        reference_b_error = f"{type(err).__name__}: {err}"[:300]
    rss_before = current_rss_mb()
    per_thread = -(-requests // threads)
    predictor = load(bundle_a, backend=backend, cache=config, num_threads=num_threads)
    workers = [_Worker(predictor, pool, per_thread, mix, batch, seed * 1000 + i + 1) for i in range(threads)]
    barrier, settled = threading.Barrier(threads + 1), threading.Event()
    pool_threads = [threading.Thread(target=w, args=(barrier, settled), name=f"load-{i}") for i, w in enumerate(workers)]
    cache_peak = {"user_state": {"bytes": 0, "entries": 0}, "result": {"bytes": 0, "entries": 0}}
    rss_peak = [rss_before]

    def sample():
        caches = predictor.stats()["caches"]
        for name, peak in cache_peak.items():
            peak["bytes"] = max(peak["bytes"], caches[name]["bytes"])
            peak["entries"] = max(peak["entries"], caches[name]["entries"])
        now = current_rss_mb()
        if now is not None:
            rss_peak[0] = max(rss_peak[0] or 0.0, now)

    swap = {"ok": False, "error": None, "failed_attempts": [], "old_version": predictor.version}
    scratch = tempfile.TemporaryDirectory(prefix="edgerec-load-", dir=workdir) if bad_swap_first else None
    broken = broken_copy(bundle_b, scratch.name) if scratch else None
    try:
        for t in pool_threads:
            t.start()
        barrier.wait()
        wall_start = time.perf_counter_ns()
        target = int(swap_at * per_thread * threads)
        while sum(w.done for w in workers) < target and any(t.is_alive() for t in pool_threads):
            sample()
            time.sleep(0.002)
        swap["after_calls"] = sum(w.done for w in workers)
        if broken is not None:
            try:
                predictor.swap(broken)
                swap["failed_attempts"].append({"bundle": "corrupted copy of B", "error": None})
            except Exception as err:  # noqa: BLE001
                swap["failed_attempts"].append({"bundle": "corrupted copy of B",
                                                "error": f"{type(err).__name__}: {err}"[:300]})
        swap_start = time.perf_counter_ns()
        try:
            swap["new_version"] = predictor.swap(bundle_b)
            swap["ok"] = True
        except Exception as err:  # noqa: BLE001
            swap["error"] = f"{type(err).__name__}: {err}"[:300]
        swap_end = time.perf_counter_ns()
        settled.set()
        swap["duration_ms"] = (swap_end - swap_start) / 1e6
        while any(t.is_alive() for t in pool_threads):
            sample()
            time.sleep(0.005)
        for t in pool_threads:
            t.join()
        wall_s = (time.perf_counter_ns() - wall_start) / 1e9
        sample()
        final_stats = predictor.stats()
    finally:
        settled.set()
        predictor.close()
        if scratch is not None:
            scratch.cleanup()
    settings = dict(bundle_a=str(bundle_a), bundle_b=str(bundle_b), threads=threads, requests=requests,
                    swap_at=swap_at, mix=mix, batch=batch, candidates=candidates, users=users, rows=rows,
                    num_threads=num_threads, atol=atol, bad_swap_first=bad_swap_first, expect_swap_ok=expect_swap_ok)
    return _summarise(settings, config, workers, refs, swap, swap_start, swap_end, wall_s, final_stats,
                      cache_peak, rss_before, rss_peak[0], reference_b_error)


def _matches(answer, ref: np.ndarray, atol: float) -> bool:
    answer = np.asarray(answer, dtype=np.float32)
    return answer.shape == ref.shape and bool(np.all(np.abs(answer - ref) <= atol))


def _summarise(ctx: dict, config, workers, refs, swap, swap_start, swap_end, wall_s, final_stats, cache_peak,
               rss_before, rss_peak, reference_b_error) -> dict:
    """Attribute answers to models, compute latencies and the checks (all failures collected)."""
    batch = ctx["batch"]
    records = [r for w in workers for r in w.records]
    errors = sum((w.errors for w in workers), collections.Counter())
    answers = collections.Counter()
    durations = collections.defaultdict(list)
    serving_after = "b" if swap["ok"] else "a"
    for kind, start, end, index, answer in records:
        phase = "before" if end < swap_start else "after" if start > swap_end else "during"
        durations[(CALL_TYPES[kind], phase)].append(end - start)
        key = "candidates" if kind == 2 else "rows"
        matches = set()
        for name, ref in refs.items():
            want = ref[key][index] if kind == 2 else ref[key][index:index + batch]
            if _matches(answer, want, ctx["atol"]):
                matches.add(name)
        answers[phase] += 1
        allowed = {"before": {"a"}, "during": {"a", "b"}, "after": {serving_after}}[phase]
        if len(matches) > 1:
            answers["ambiguous"] += 1
        if not matches & allowed:
            answers["wrong"] += 1
            if phase == "after" and matches == {"a"}:
                answers["old_after_swap"] += 1
            if phase == "before" and matches == {"b"}:
                answers["new_before_swap"] += 1
    latency = []
    for call in CALL_TYPES:
        for phase in ("before", "during", "after"):
            values = durations.get((call, phase))
            if values:
                rows_per_call = ctx["candidates"] if call == "candidates" else batch
                summary = summarize(values, batch=rows_per_call).to_dict()
                latency.append({"call": call, "phase": phase, **{k: summary[k] for k in (
                    "iterations", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms", "max_ms", "rows_per_s")}})
    final_caches = final_stats["caches"]
    caches = {}
    for name, bound_entries, bound_bytes in (("user_state", config.user_entries, config.user_bytes),
                                             ("result", config.result_entries, config.result_bytes)):
        final, peak = final_caches[name], cache_peak[name]
        caches[name] = {"max_bytes": bound_bytes, "max_entries": bound_entries, "peak_bytes": peak["bytes"],
                        "peak_entries": peak["entries"], "final_bytes": final["bytes"],
                        "hits": final["hits"], "misses": final["misses"], "evictions": final["evictions"],
                        "within_bound": peak["bytes"] <= bound_bytes and peak["entries"] <= bound_entries}
    calls = len(records) + sum(errors.values())
    rows_total = sum(ctx["candidates"] if r[0] == 2 else batch for r in records)
    counts = final_stats
    differ = {key: float(np.mean(np.any(np.abs(refs["a"][key] - refs["b"][key]).reshape(len(refs["a"][key]), -1)
                                        > ctx["atol"], axis=1))) for key in ("rows", "candidates")} \
        if "b" in refs else None
    result = {
        "config": {**ctx, "backend": counts["backend"]},
        "totals": {"calls": calls, "rows": rows_total, "wall_s": wall_s,
                   "calls_per_s": calls / wall_s if wall_s > 0 else None,
                   "rows_per_s": rows_total / wall_s if wall_s > 0 else None,
                   "calls_past_quota": sum(w.extra for w in workers),
                   "errors": sum(errors.values()), "errors_by_type": dict(errors),
                   "error_examples": [e for w in workers for e in w.examples][:5],
                   "predictor_swaps": counts["swaps"], "predictor_failed_swaps": counts["failed_swaps"]},
        "swap": {**swap, "reference_b_error": reference_b_error,
                 "versions": {k: v["version"] for k, v in refs.items()}},
        "answers": {k: answers.get(k, 0) for k in ("before", "during", "after", "old_after_swap",
                                                    "new_before_swap", "wrong", "ambiguous")},
        "distinguishable": differ,
        "latency": latency, "caches": caches,
        "memory": {"rss_before_mb": rss_before, "rss_peak_sampled_mb": rss_peak,
                   "peak_rss_mb": peak_rss_mb()},
    }
    result["failures"] = load_test_failures(result)
    result["passed"] = not result["failures"]
    return result


def load_test_failures(result: dict) -> list[str]:
    """Every violated invariant of a load-test result, as "Expected …, received: …" lines."""
    failures = []
    totals, answers, swap = result["totals"], result["answers"], result["swap"]
    if totals["errors"]:
        failures.append(expected("0 errors", totals["errors_by_type"]))
    if answers["old_after_swap"]:
        failures.append(expected("0 answers from the old model after swap() returned", answers["old_after_swap"]))
    if answers["wrong"]:
        failures.append(expected("every answer from the model that must be serving", f"{answers['wrong']} not"))
    if swap["ok"] != result["config"]["expect_swap_ok"]:
        failures.append(expected(f"swap ok = {result['config']['expect_swap_ok']}", swap["error"] or "ok"))
    if any(a["error"] is None for a in swap["failed_attempts"]):
        failures.append(expected("the swap to a corrupted bundle to be refused", "accepted"))
    if swap["ok"] and answers["after"] == 0:
        failures.append(expected("calls after the swap", 0))
    for name, cache in result["caches"].items():
        if not cache["within_bound"]:
            failures.append(expected(f"{name} cache within {cache['max_bytes']} bytes / {cache['max_entries']} "
                                     f"entries", f"{cache['peak_bytes']} bytes / {cache['peak_entries']} entries"))
    return failures


def load_test_markdown(section: dict) -> list[str]:
    """The bench.md lines of a load-test section (called by `report.render_markdown`)."""
    cfg, totals, answers, swap = section["config"], section["totals"], section["answers"], section["swap"]
    mix = ", ".join(f"{k} {v / sum(cfg['mix'].values()):.0%}" for k, v in cfg["mix"].items())
    verdict = "passed" if section.get("passed") else "FAILED: " + "; ".join(section.get("failures", []))
    lines = ["## Load test with a hot swap", "",
             f"{cfg['threads']} threads × {totals['calls']:,} calls ({totals['rows']:,} rows) of mixed raw calls "
             f"({mix}) on {cfg['backend']}, swap to `{Path(cfg['bundle_b']).name}` after "
             f"{swap.get('after_calls', '?'):,} calls ({swap.get('duration_ms', 0):.0f} ms to validate and switch; "
             f"{'ok' if swap['ok'] else 'refused: ' + str(swap['error'])}). {verdict}.", "",
             markdown_table([{"errors": totals["errors"], "old": answers["old_after_swap"], "wrong": answers["wrong"],
                              "calls_per_s": totals["calls_per_s"], "rows_per_s": totals["rows_per_s"],
                              "wall_s": totals["wall_s"], "failed": len(swap["failed_attempts"]),
                              "rss": section["memory"]["rss_peak_sampled_mb"]}],
                            (("errors", "errors"), ("old", "old-model answers after swap"),
                             ("wrong", "wrong answers"), ("calls_per_s", "calls/s"), ("rows_per_s", "rows/s"),
                             ("wall_s", "wall s"), ("failed", "refused bad swaps"),
                             ("rss", "bench-process RSS MB (sampled peak)"))), "",
             markdown_table(section["latency"], (("call", "call"), ("phase", "phase"), ("iterations", "calls"),
                                                 ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"),
                                                 ("p999_ms", "p99.9 ms"), ("max_ms", "max ms"))), "",
             markdown_table([{"cache": k, **v} for k, v in section["caches"].items()],
                            (("cache", "cache"), ("peak_bytes", "peak bytes"), ("max_bytes", "bound bytes"),
                             ("peak_entries", "peak entries"), ("max_entries", "bound entries"),
                             ("hits", "hits"), ("misses", "misses"), ("evictions", "evictions"),
                             ("within_bound", "within bound"))), ""]
    if totals["errors_by_type"]:
        lines += [f"Errors by type: {totals['errors_by_type']}; e.g. {totals['error_examples'][:2]}", ""]
    return lines
