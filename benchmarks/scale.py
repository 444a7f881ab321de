"""`edgerec bench --scale`: what export and serving cost as the catalogue grows.

For each catalogue size N, `run_scale` generates synthetic data (N items, ``N / 10`` users capped
at 10^5), trains a small retrieval model and a small DIN ranker (a few steps: this measures cost,
not quality), exports the cascade bundle (``edgerec export RANKER --retrieval R``), loads it in a
runtime-only process and times ``Predictor.recommend`` at 1 thread. Every stage runs in its own
child interpreter, so each peak RSS is that stage's own ``VmHWM`` (read from /proc/self/status in
the child: on Linux ``getrusage`` of a child started by a big parent reports the parent's peak).

``DIR/scale.json`` holds ``{"sizes": [{"items", "users", "export_s", "export_peak_rss_mb",
"bundle_bytes", "load_s", "runtime_rss_mb", "recommend_p50_ms", "recommend_p99_ms",
"index_recall_at_200", ...}, ...]}`` (`SIZE_KEYS`, plus stage times and details beside them), and
``DIR/scale.png`` plots the costs against the catalogue size (log x).

Examples:
    >>> report = run_scale([10_000, 100_000], "runs/scale")                     # doctest: +SKIP
    >>> report["sizes"][0]["recommend_p50_ms"]                                   # doctest: +SKIP
    0.9
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from edgerec.runtime.errors import SpecError, expected

logger = logging.getLogger(__name__)

SIZE_KEYS = ("items", "users", "export_s", "export_peak_rss_mb", "bundle_bytes", "load_s", "runtime_rss_mb",
             "recommend_p50_ms", "recommend_p99_ms", "index_recall_at_200")
REPORT_FILE, PLOT_FILE = "scale.json", "scale.png"
MAX_USERS = 100_000
MIN_USERS = 50
STAGES = ("train_retrieval", "train_ranker", "export", "serve")
ROUND_GAP_S = 1.0


@dataclass(frozen=True)
class ScaleConfig:
    """How each size of the sweep is built and measured.

    Args:
        users_per_item: users generated per catalogue item (capped at `MAX_USERS`).
        events_per_user: synthetic events per user (more covers more of the catalogue).
        zipf_exponent: the generator's popularity skew within a category; 0 (uniform) lets a
            few events per item cover the whole catalogue, whose size is what is measured.
        max_seq_len / embedding_dim: the models' history length and item embedding width.
        train_rows: rows each model trains on (one epoch): the cost of a size, not its quality.
        negatives: sampled negatives per training event in the built dataset. Training reads only
            ``train_rows`` of its rows, and at 10^6 items x 3 x 10^6 events each extra negative is
            ~0.6 GB of training rows held by both training stages; the export's validation rows
            (the test split: 100 negatives per held-out user) do not depend on it.
        max_groups: validation ranking groups the export compares artifacts on.
        eval_users: held-out users of the cascade checks (tower validation, index recall).
        ranker_users: users whose every item the ranker scores for the ranker-alone metric.
        quantize / targets: the export's variants (ONNX only by default: the runtime stage serves
            ONNX Runtime, and on a 2-core machine the TFLite variants double a 10^6 export's time).
        requests / k / m: timed ``recommend(k, m)`` calls of the runtime stage, in
            ``serve_rounds`` rounds a second apart (its p50: the median of the rounds' p50s).
        settle_load / settle_max_s: the runtime stage starts once the 1-minute load average is
            below ``settle_load`` (or after ``settle_max_s``): on 2 cores, timed right after a
            10^6 export (load 1.8), ``recommend()`` cost 10.1 ms of CPU per call against 7.2–8.8 ms
            idle (load < 0.6), the same bundle.
        timeout_s: wall-clock limit of each stage.
        seed: seeds the data and the training.
    """

    users_per_item: float = 0.1
    events_per_user: int = 30
    zipf_exponent: int = 0
    max_seq_len: int = 50
    embedding_dim: int = 32
    train_rows: int = 20_000
    negatives: int = 1
    max_groups: int = 500
    eval_users: int = 200
    ranker_users: int = 2
    quantize: tuple = ("int8",)
    targets: tuple = ("onnx",)
    requests: int = 1000
    k: int = 10
    m: int = 200
    timeout_s: float = 7200.0
    settle_load: float = 0.6
    settle_max_s: float = 180.0
    serve_rounds: int = 5
    seed: int = 0

    def __post_init__(self):
        for name in ("events_per_user", "max_seq_len", "embedding_dim", "train_rows", "negatives", "max_groups",
                     "eval_users", "ranker_users", "requests", "k", "m", "serve_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(expected(f"{name} as an int >= 1", value))
        if isinstance(self.settle_load, bool) or not isinstance(self.settle_load, (int, float)) or self.settle_load <= 0:
            raise SpecError(expected("settle_load as a number > 0", self.settle_load))
        if isinstance(self.settle_max_s, bool) or not isinstance(self.settle_max_s, (int, float)) \
                or self.settle_max_s < 0:
            raise SpecError(expected("settle_max_s as a number >= 0", self.settle_max_s))
        if not 0 < self.users_per_item <= 10:
            raise SpecError(expected("users_per_item in (0, 10]", self.users_per_item))

    def users_for(self, items: int) -> int:
        return int(min(MAX_USERS, max(MIN_USERS, round(items * self.users_per_item))))


def parse_sizes(text: str) -> list[int]:
    """``"1e4,1e5,1e6"`` -> ``[10000, 100000, 1000000]`` (each size an integer >= 100).

    Examples:
        >>> parse_sizes("1e3, 20000")
        [1000, 20000]
    """
    sizes = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise SpecError(expected("catalogue sizes like 1e4,1e5,1e6", text)) from None
        if value != int(value) or value < 100:
            raise SpecError(expected("catalogue sizes as integers >= 100", part.strip()))
        sizes.append(int(value))
    if not sizes:
        raise SpecError(expected("at least one catalogue size, e.g. 1e4,1e5,1e6", text))
    return sizes


def run_scale(sizes: Sequence[int], out, config: ScaleConfig | None = None,
              say: Callable[[str], None] | None = None) -> dict:
    """Measure every size into ``out/scale.json`` (rewritten after each size) and ``out/scale.png``.

    Args:
        sizes: catalogue sizes (items).
        out: the report folder; each size's model dirs and bundle go to ``out/<items>/``.
        config: `ScaleConfig` (defaults when None).
        say: progress lines (default: this module's logger).

    Returns:
        the report written to ``scale.json``.
    """
    from edgerec.runtime.io import atomic_write_json

    config, say = config or ScaleConfig(), say or logger.info
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"sizes": [], "config": asdict(config)}
    for items in sizes:
        say(f"scale {items} items: {config.users_for(items)} users")
        entry = measure_size(items, out / str(items), config, say)
        report["sizes"].append(entry)
        atomic_write_json(out / REPORT_FILE, report)
    try:
        from .figures import plot_scale

        plot_scale(report, out / PLOT_FILE)
    except ImportError as err:
        say(f"no plot: {err}")
    return report


def scale_lines(report: dict, out) -> list[str]:
    """The terminal summary of a sweep: one ``key=value`` line per size, then where it was written."""
    lines = [" ".join(f"{key}={entry[key]}" for key in SIZE_KEYS) for entry in report["sizes"]]
    return lines + [f"wrote {out}/scale.json and {out}/scale.png"]


def measure_size(items: int, folder: Path, config: ScaleConfig, say) -> dict:
    """One size: train, export, serve; the `SIZE_KEYS` entry plus stage details. A model dir left
    by an earlier run of the same folder is reused (its stage is marked ``reused``): training is
    not what this measures."""
    folder.mkdir(parents=True, exist_ok=True)
    users = config.users_for(items)
    retrieval, ranker, bundle = folder / "retrieval", folder / "ranker", folder / "bundle"
    data = {"num_items": items, "num_users": users, "num_events": users * config.events_per_user,
            "zipf_exponent": config.zipf_exponent}
    entry: dict = {"items": items, "users": users}
    stages = {}
    for stage, payload in (("train_retrieval", {"out": str(retrieval), "family": "retrieval", "data": data}),
                           ("train_ranker", {"out": str(ranker), "family": "din", "data": data}),
                           ("export", {"ranker": str(ranker), "retrieval": str(retrieval), "bundle": str(bundle)}),
                           ("serve", {"bundle": str(bundle)})):
        if stage.startswith("train") and (Path(payload["out"]) / "edgerec_model.json").is_file():
            say(f"  {stage}: reusing {payload['out']}")
            stages[stage] = {"seconds": None, "peak_rss_mb": None, "reused": True}
            continue
        if stage == "serve":
            stages["settle"] = settle(config.settle_load, config.settle_max_s, say)
        say(f"  {stage}")
        stages[stage] = run_stage(stage, {**payload, "config": asdict(config)}, config.timeout_s)
        say(f"  {stage}: {stages[stage]['seconds']:.1f} s, peak RSS {stages[stage]['peak_rss_mb']} MB")
    export, serve = stages["export"], stages["serve"]
    entry.update(export_s=export["seconds"], export_peak_rss_mb=export["peak_rss_mb"],
                 bundle_bytes=export["bundle_bytes"], load_s=serve["load_s"], runtime_rss_mb=serve["peak_rss_mb"],
                 recommend_p50_ms=serve["p50_ms"], recommend_p99_ms=serve["p99_ms"],
                 index_recall_at_200=export["index_recall"].get(f"recall@{config.m}"))
    entry["catalogue_items"] = export["catalogue_items"]
    entry["index_kind"] = export["index_kind"]
    entry["index_bytes"] = export["index_bytes"]
    entry["backend"] = serve["backend"]
    entry["recommend_cpu_p50_ms"] = serve.get("cpu_p50_ms")
    entry["recommend_round_p50_ms"] = serve.get("round_p50_ms")
    entry["serve_load_average"] = serve.get("load_average")
    entry["index_search"] = export.get("index_search")
    entry["stages"] = {name: {k: v for k, v in result.items() if k in ("seconds", "peak_rss_mb", "reused",
                                                                      "load_average")}
                       for name, result in stages.items()}
    return entry


def settle(load: float, max_s: float, say, poll_s: float = 5.0) -> dict:
    """Wait until the 1-minute load average is below ``load`` (at most ``max_s``): the waited
    ``seconds`` and the ``load_average`` at the end."""
    start = time.perf_counter()
    current = os.getloadavg()[0]
    while current >= load and time.perf_counter() - start < max_s:
        time.sleep(poll_s)
        current = os.getloadavg()[0]
    waited = round(time.perf_counter() - start, 1)
    if waited:
        say(f"  settled for {waited:.0f} s: load average {current:.2f}")
    return {"seconds": waited, "load_average": round(current, 2)}


def run_stage(stage: str, payload: dict, timeout_s: float) -> dict:
    """Run ``stage`` in a child interpreter; its JSON result with ``seconds`` and ``peak_rss_mb``."""
    if stage not in STAGES:
        raise SpecError(expected(f"a scale stage among {STAGES}", stage))
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "edgerec.benchmarks.scale", stage], input=json.dumps(payload),
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SpecError(expected(f"the {stage} stage to finish within {timeout_s:.0f} s", "a timeout")) from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SpecError(expected(f"the {stage} stage to succeed", f"exit {done.returncode}:\n{tail}"))
    result = json.loads(lines[-1])
    result.setdefault("seconds", round(time.perf_counter() - start, 2))
    return result


# -- the children ----------------------------------------------------------------------------
def _train(payload: dict) -> dict:
    from edgerec.sdk.training.job import TrainJob, train_and_save

    cfg = ScaleConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["config"].items()})
    model = {"embedding_dim": cfg.embedding_dim}
    job = TrainJob.from_dict({"out": payload["out"], "family": payload["family"], "data": "synthetic",
                              "data_options": payload["data"], "max_seq_len": cfg.max_seq_len,
                              "negatives": cfg.negatives,
                              "model": model, "train": {"epochs": 1, "patience": 0, "seed": cfg.seed, "verbose": 0,
                                                        "max_train_rows": cfg.train_rows,
                                                        "full_catalogue_rows": 0}})
    train_and_save(job)
    return {}


def _export(payload: dict) -> dict:
    from edgerec.converters.cascade import CascadeSettings
    from edgerec.converters.export import export_bundle

    from .machine import current_rss_mb

    cfg = ScaleConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["config"].items()})
    settings = CascadeSettings(m=cfg.m, eval_users=cfg.eval_users, ranker_users=cfg.ranker_users, seed=cfg.seed)
    bundle = Path(payload["bundle"])
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak[0] = max(peak[0], current_rss_mb() or 0.0)

    with open(bundle.parent / "export.log", "w", encoding="utf-8") as log:
        def say(line: str) -> None:
            # each step with the RSS now and the highest RSS since the previous step: where the
            # export's memory goes
            now = current_rss_mb() or 0.0
            log.write(f"{time.strftime('%H:%M:%S')} rss {now:.0f} MB (peak since last line {max(peak[0], now):.0f})"
                      f"  {line}\n")
            log.flush()
            peak[0] = 0.0

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            export_bundle(payload["ranker"], bundle, quantize=cfg.quantize, targets=cfg.targets,
                          max_groups=cfg.max_groups, retrieval=payload["retrieval"], cascade=settings,
                          seed=cfg.seed, progress=say)
        finally:
            done.set()
            say("export finished")
    manifest = json.loads((bundle / "manifest.json").read_text("utf-8"))
    index = manifest.get("index", {})
    files = [p for p in bundle.rglob("*") if p.is_file()]
    search = {k: index[k] for k in ("ann", "search_tuning") if k in index}
    return {"bundle_bytes": sum(p.stat().st_size for p in files), "index_search": search,
            "index_bytes": sum(p.stat().st_size for p in files if p.name.startswith("item_index")),
            "index_recall": {k: v for k, v in index.items() if k.startswith("recall@")},
            "index_kind": index.get("kind"), "catalogue_items": index.get("num_items")}


def _serve(payload: dict) -> dict:
    import numpy as np

    import edgerec.runtime as rt

    from .recommend import _requests

    cfg = ScaleConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["config"].items()})
    bundle = Path(payload["bundle"])
    requests = _requests(bundle, 64)
    backend = "onnxruntime"
    start = time.perf_counter()
    with rt.load(bundle, backend=backend, num_threads=1, cache=False) as predictor:
        predictor.recommend(requests[0], k=cfg.k, m=cfg.m)
        load_s = time.perf_counter() - start
        for request in requests[:5]:
            predictor.recommend(request, k=cfg.k, m=cfg.m)
        # wall time per call, and this process's CPU time per call beside it: on a shared machine
        # the wall time includes waiting for a core, which the load average says. The calls run
        # in rounds a second apart and the p50 is the median of the rounds' p50s: on this VM
        # back-to-back runs of 1,000 calls on one idle 10^4 bundle gave p50 2.1, 2.4 and 3.2 ms
        times, cpu, load, round_p50 = [], [], [os.getloadavg()[0]], []
        chunks = [c for c in np.array_split(np.arange(cfg.requests), cfg.serve_rounds) if c.size]
        for r, calls in enumerate(chunks):
            if r:
                time.sleep(ROUND_GAP_S)
            first = len(times)
            for i in calls.tolist():
                begin, begin_cpu = time.perf_counter(), time.process_time()
                predictor.recommend(requests[i % len(requests)], k=cfg.k, m=cfg.m)
                times.append(time.perf_counter() - begin)
                cpu.append(time.process_time() - begin_cpu)
            round_p50.append(float(np.percentile(times[first:], 50)) * 1e3)
        load.append(os.getloadavg()[0])
    ms, cpu_ms = np.asarray(times) * 1e3, np.asarray(cpu) * 1e3
    heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras", "tf2onnx") if m in sys.modules)
    return {"backend": backend, "load_s": round(load_s, 3), "p50_ms": round(float(np.median(round_p50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "cpu_p50_ms": round(float(np.percentile(cpu_ms, 50)), 3),
            "cpu_mean_ms": round(float(cpu_ms.mean()), 3), "load_average": [round(x, 2) for x in load],
            "round_p50_ms": [round(x, 3) for x in round_p50], "pooled_p50_ms": round(float(np.percentile(ms, 50)), 3),
            "calls": cfg.requests, "heavy_modules": heavy}


def _child_main(stage: str) -> int:
    from .machine import peak_rss_mb

    payload = json.loads(sys.stdin.read())
    start = time.perf_counter()
    work = {"train_retrieval": _train, "train_ranker": _train, "export": _export, "serve": _serve}[stage]
    result = work(payload)
    result["seconds"] = round(time.perf_counter() - start, 2)
    peak = peak_rss_mb()
    result["peak_rss_mb"] = None if peak is None else round(peak, 1)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
