"""GPU check: ONNX Runtime CUDA (and TensorRT where obtainable) against ORT CPU on one bundle.

Run by `benchmarks/gpu_check.sh` on a machine with an NVIDIA GPU. For every ONNX artifact of
the bundle (fused, user_encoder, scorer; fp32 and int8 variants) and each provider that
activates, it measures batch 1 / 256 / 4096 latency, checks the outputs against ORT CPU on the
same rows, and times `Predictor.score_candidates` for 1 user x 1000 candidates and, for a cascade
bundle, `Predictor.recommend_batch` for batches of 1 → 1,024 users (`recommend_batch_rows`). Writes
``gpu_check.json`` and ``gpu_check.md`` to the output folder. Providers that do not activate
are reported with the reason, never silently replaced by CPU.

Usage: python -m edgerec.benchmarks.gpu_check BUNDLE OUT_DIR [--budget-s 1.0]
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgerec.benchmarks.recommend import USER_BATCHES, recommend_batch_rows
from edgerec.benchmarks.stats import LoopLimits, summarize, timed_calls
from edgerec.runtime.backends.registry import create_backend
from edgerec.runtime.errors import EdgeRecError
from edgerec.runtime.io import atomic_write_json, atomic_write_text
from edgerec.runtime.manifest import load_manifest
from edgerec.runtime.recommend import has_index

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider"]}
BATCHES = (1, 256, 4096)


def feeds_for(artifact, batch: int, rng: np.random.Generator, item_count: int) -> dict:
    """Rows of the artifact's declared signature; ids drawn from the real vocabulary range."""
    feeds = {}
    for spec in artifact.inputs:
        shape = [batch if d is None or (i == 0) else d for i, d in enumerate(spec.shape)]
        if spec.dtype.startswith("int"):
            high = item_count if spec.name in ("hist_items", "cand_item") else 8
            feeds[spec.name] = rng.integers(0, high, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def wanted(artifact, provider: str) -> bool:
    """fp32 and static-QDQ int8 everywhere; the TensorRT-ready int8 variant on TensorRT only."""
    if artifact.precision == "fp32":
        return True
    if "trt" in artifact.file:
        return provider == "tensorrt"
    return artifact.precision == "int8"


def gpu_description() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or "no nvidia-smi output"
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi unavailable ({err})"


def run(bundle: Path, out_dir: Path, budget_s: float, user_batches: tuple = USER_BATCHES) -> dict:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()   # CUDA/cuDNN from the nvidia-* pip packages, when present
        except Exception as err:  # noqa: BLE001 - report, keep going with what loads
            print(f"preload_dlls: {err}", file=sys.stderr)
    manifest = load_manifest(bundle)
    item_count = 1000
    if manifest.feature_spec:
        from edgerec.runtime.manifest import confined_path
        from edgerec.runtime.spec import FeatureSpec

        item_count = len(FeatureSpec.load(confined_path(bundle, manifest.feature_spec)).item_vocab.tokens) + 2
    report = {"gpu": gpu_description(), "onnxruntime": ort.__version__, "python": platform.python_version(),
              "available_providers": ort.get_available_providers(), "bundle": str(bundle),
              "providers": {}, "results": [], "candidates": [], "recommend_batches": []}
    limits = LoopLimits(budget_s=budget_s, max_iters=2000, min_iters=20, warmup_iters=20)
    onnx_artifacts = [a for a in manifest.artifacts if a.format == "onnx"]
    for provider, names in PROVIDERS.items():
        status = {"active": False}
        for art in onnx_artifacts:
            if not wanted(art, provider):
                continue
            try:
                backend = create_backend("onnxruntime", bundle / art.file, providers=names)
            except EdgeRecError as err:
                status["reason"] = f"{type(err).__name__}: {err}"
                break
            status = {"active": True, "session_providers": backend.info["providers"]}
            with backend:
                for batch in BATCHES:
                    rng = np.random.default_rng(batch)
                    feeds = feeds_for(art, batch, rng, item_count)
                    outputs = backend.run(feeds)
                    record = {"provider": provider, "file": art.file, "part": art.part,
                              "precision": art.precision, "batch": batch}
                    if provider != "cpu":
                        with create_backend("onnxruntime", bundle / art.file, providers=PROVIDERS["cpu"]) as cpu:
                            reference = cpu.run(feeds)
                        record["max_abs_diff_vs_cpu"] = max(float(np.max(np.abs(outputs[k] - reference[k])))
                                                            for k in reference)
                    record.update(summarize(timed_calls(lambda: backend.run(feeds), limits), batch).to_dict())
                    report["results"].append(record)
                    print(f"{provider:8s} {art.file:40s} b={batch:5d} p50={record['p50_ms']:.3f} ms "
                          f"rows/s={record['rows_per_s']:.0f}", flush=True)
        report["providers"][provider] = status
        if status.get("active"):
            report["candidates"].append(candidate_scoring(bundle, names, limits))
            if has_index(manifest) and provider != "tensorrt":   # an engine per scorer shape: not this check
                report["recommend_batches"].extend(recommend_batches(bundle, provider, names, budget_s, user_batches))
    write(report, out_dir)
    return report


def candidate_scoring(bundle: Path, providers: list, limits: LoopLimits) -> dict:
    """1 user x 1000 candidates through the Predictor (user state cached after the first call)."""
    from edgerec.runtime.examples import ExampleSet
    from edgerec.runtime.predictor import load

    with load(bundle, backend="onnxruntime", providers=providers) as predictor:
        examples = ExampleSet.load(bundle, predictor.manifest, spec=predictor.spec).lines
        user = {k: v for k, v in examples[0].items() if k in ("user_id", "history", "context", "dense")}
        tokens = predictor.spec.item_vocab.tokens
        items = [tokens[i % len(tokens)] for i in range(1000)]
        predictor.score_candidates(user, items, context=user.get("context"), dense=user.get("dense"))
        stats = summarize(timed_calls(lambda: predictor.score_candidates(
            user, items, context=user.get("context"), dense=user.get("dense")), limits), 1000)
    return {"providers": providers, "scenario": "candidates_1x1000_warm", **stats.to_dict()}


def recommend_batches(bundle: Path, provider: str, names: list, budget_s: float,
                      user_batches: tuple = USER_BATCHES) -> list[dict]:
    """`recommend_batch_rows` on one provider, each row tagged with it (an error as a row)."""
    try:
        rows = recommend_batch_rows(bundle, names, batches=user_batches, budget_s=budget_s)
    except EdgeRecError as err:
        return [{"provider": provider, "error": f"{type(err).__name__}: {err}"}]
    for row in rows:
        print(f"{provider:8s} recommend_batch users={row['users']:5d} p50={row['p50_ms']:.2f} ms "
              f"users/s={row['users_per_s']:.0f} same_as_single={row['same_as_single']:.2f}", flush=True)
    return [{"provider": provider, **row} for row in rows]


def write(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "gpu_check.json", report)
    lines = [f"# GPU check — {report['gpu']}", "",
             f"onnxruntime {report['onnxruntime']}, providers available: {report['available_providers']}", "",
             "| provider | status |", "|---|---|"]
    for name, status in report["providers"].items():
        lines.append(f"| {name} | {'active ' + str(status.get('session_providers')) if status.get('active') else status.get('reason', 'not run')} |")
    lines += ["", "| provider | artifact | part | precision | batch | p50 ms | p99 ms | rows/s | max abs diff vs CPU |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        diff = r.get("max_abs_diff_vs_cpu")
        lines.append(f"| {r['provider']} | {r['file']} | {r['part']} | {r['precision']} | {r['batch']} | "
                     f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rows_per_s']:.0f} | "
                     f"{'' if diff is None else f'{diff:.2e}'} |")
    lines += ["", "| providers | 1 user x 1000 candidates p50 ms | p99 ms |", "|---|---|---|"]
    for c in report["candidates"]:
        lines.append(f"| {c['providers'][0]} | {c['p50_ms']:.3f} | {c['p99_ms']:.3f} |")
    if report.get("recommend_batches"):
        lines += ["", "| provider | users per call | p50 ms | p99 ms | ms per user | users/s | same top k as single |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["recommend_batches"]:
            if "error" in r:
                lines.append(f"| {r['provider']} | error: {r['error'][:100]} | | | | | |")
                continue
            lines.append(f"| {r['provider']} | {r['users']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['ms_per_user']:.3f} | {r['users_per_s']:.0f} | {r['same_as_single']:.2f} |")
    atomic_write_text(out_dir / "gpu_check.md", "\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    report = run(args.bundle, args.out, args.budget_s)
    return 0 if report["providers"].get("cpu", {}).get("active") else 1


if __name__ == "__main__":
    sys.exit(main())
