"""Which configurations a bundle benchmark runs (`plan_cases`) and how each is built (`build_case`).

Scenarios (the record's ``scenario`` field):

* ``tensor``       – already-encoded arrays: edgerec's backend call (``Predictor.predict_arrays``)
  vs the raw backend on the same artifact and arrays, plus the Keras baselines (goal ≤ 1.10×).
* ``raw_request``  – raw request dicts through preprocessing (``Predictor.predict``) vs the raw
  backend on pre-encoded arrays (goal ≤ 2× at batch 1). Batch 1 is the single-request case.
* ``candidates_cold`` / ``candidates_warm`` / ``candidates_fused`` – 1 user × N candidates
  (``batch`` = N): ``score_candidates`` with the user-state cache cleared before every call, with
  it warm (the cached 1-row user state fed once to the scorer), and the same N rows scored as N
  full fused requests. N = `RANKING_CANDIDATES` (200, what ``recommend`` ranks by default) is in
  the default list: its warm/fused pair is the ranking-cost target (≥ 3× for GRU and BST, ≥ 1.5×
  for DIN).
* ``result_cache_hit`` / ``result_cache_miss`` – the same request repeated (hit) vs a fresh
  request every call (miss) with the result cache on.

Inputs come from the bundle itself: ``examples.jsonl`` requests (encoded with the bundle's
``feature_spec.json``) are cycled to fill a batch, so every backend sees identical arrays.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgerec.runtime.errors import BundleError, expected
from edgerec.runtime.manifest import Manifest, confined_path, load_manifest
from edgerec.runtime.shared_tables import artifact_size

from . import baselines, edgerec_paths
from .harness import CaseSpec, Prepared

FORMAT_BACKEND = {"tflite": "litert", "onnx": "onnxruntime"}
RANKING_CANDIDATES = 200    # 1 user x M candidates from the item index, ranked by the scorer
RAW_FOR = {"litert": ("raw_litert", "raw_litert_direct"), "onnxruntime": ("raw_onnxruntime",)}


@dataclass(frozen=True)
class BundleData:
    """A bundle's manifest, raw example requests (may be empty for BYOM) and encoded arrays."""

    path: Path
    manifest: Manifest
    requests: tuple
    arrays: dict

    def rows(self, batch: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``batch`` rows of the encoded examples (cycled), restricted to ``names``."""
        names = list(self.arrays) if names is None else list(names)
        missing = [n for n in names if n not in self.arrays]
        if missing:
            raise BundleError(expected(f"example arrays for the inputs {names}", f"missing {missing}"))
        n = len(next(iter(self.arrays.values())))
        index = np.arange(batch) % n
        return {name: np.ascontiguousarray(self.arrays[name][index]) for name in names}

    def request_batch(self, batch: int, offset: int = 0) -> list[dict]:
        if not self.requests:
            raise BundleError(expected("raw example requests in examples.jsonl", "none (bring-your-own model?)"))
        return [dict(self.requests[(offset + i) % len(self.requests)]) for i in range(batch)]


@functools.lru_cache(maxsize=4)
def bundle_data(path: str) -> BundleData:
    """The bundle's manifest (verified) and its examples.jsonl, read and encoded by the runtime."""
    from edgerec.runtime.examples import ExampleSet

    bundle = Path(path)
    manifest = load_manifest(bundle, verify=True)
    examples = ExampleSet.load(bundle, manifest)
    requests = [{k: v for k, v in line.items() if k != "expected"} for line in examples.lines] \
        if examples.kind == "requests" else []
    arrays = dict(examples.feeds)
    # the dtypes the artifacts declare (JSON rows lose them)
    for art in manifest.artifacts:
        for tensor in art.inputs:
            if tensor.name in arrays:
                arrays[tensor.name] = arrays[tensor.name].astype(tensor.dtype, copy=False)
    return BundleData(bundle.resolve(), manifest, tuple(requests), arrays)


def plan_cases(bundle: str | Path, batches: Sequence[int] = (1, 256), threads: Sequence[int] = (1,),
               keras_dir: str | Path | None = None, keras: bool = True, candidates: Sequence[int] = (RANKING_CANDIDATES, 1000),
               backends: Sequence[str] | None = None, all_variants: bool = True,
               keras_predict: bool = True) -> list[CaseSpec]:
    """Every configuration for ``bundle``; raw/edgerec pairs share a group (timed interleaved)."""
    data = bundle_data(str(Path(bundle).resolve()))
    manifest, path = data.manifest, str(data.path)
    fused = [a for a in manifest.artifacts if a.part == "fused" and a.format in FORMAT_BACKEND]
    if backends is not None:
        fused = [a for a in fused if FORMAT_BACKEND[a.format] in backends]
    if not all_variants:
        chosen = {parts.get("fused") for parts in manifest.selected.values()}
        fused = [a for a in fused if a.file in chosen] or fused
    specs: list[CaseSpec] = []
    keras_specs: list[CaseSpec] = []  # run last: TensorFlow's memory would inflate every later peak RSS
    for t in threads:
        for batch in batches:
            for art in fused:
                backend = FORMAT_BACKEND[art.format]
                params = {"bundle": path, "artifact": art.file}
                group = f"tensor/{art.file}/b{batch}/t{t}"
                for raw in RAW_FOR[backend]:
                    specs.append(CaseSpec("tensor", raw, art.file, batch, t, group, params))
                specs.append(CaseSpec("tensor", f"edgerec_{backend}", art.file, batch, t, group, params))
                if data.requests:
                    group = f"raw_request/{art.file}/b{batch}/t{t}"
                    specs.append(CaseSpec("raw_request", RAW_FOR[backend][0], art.file, batch, t, group, params))
                    specs.append(CaseSpec("raw_request", f"edgerec_{backend}", art.file, batch, t, group, params))
            if keras:
                model_dir = baselines.resolve_keras_dir(keras_dir, manifest.model, path)
                if model_dir is not None:
                    modes = baselines.KERAS_MODES if keras_predict else baselines.KERAS_MODES[:2]
                    for mode in modes:
                        keras_specs.append(CaseSpec("tensor", mode, "keras", batch, t, "",
                                                    {"bundle": path, "keras_dir": str(model_dir)}))
        if data.requests:
            for backend in manifest.selected:
                if backends is not None and backend not in backends:
                    continue
                parts = manifest.selected[backend]
                variant = "+".join(parts[p] for p in ("user_encoder", "scorer") if p in parts) or parts.get("fused", "?")
                params = {"bundle": path, "edgerec_backend": backend}
                if "scorer" in parts and "user_encoder" in parts:
                    for n in candidates:
                        group = f"candidates/{backend}/n{n}/t{t}"
                        for scenario in ("candidates_warm", "candidates_cold", "candidates_fused"):
                            specs.append(CaseSpec(scenario, f"edgerec_{backend}", variant, n, t, group, params))
                group = f"result_cache/{backend}/t{t}"
                for scenario in ("result_cache_hit", "result_cache_miss"):
                    specs.append(CaseSpec(scenario, f"edgerec_{backend}", parts.get("fused", variant), 1, t, group,
                                          params))
    return specs + keras_specs


def build_case(spec: CaseSpec) -> Prepared:
    """The harness's default builder: load what ``spec`` names and return the call to time."""
    params = spec.params
    data = bundle_data(params["bundle"])
    if spec.backend in baselines.KERAS_MODES:
        fused_inputs = {t.name for a in data.manifest.artifacts if a.part == "fused" for t in a.inputs}
        feeds = data.rows(spec.batch, [n for n in data.arrays if n in fused_inputs] or None)
        return baselines.keras_baseline(spec.backend, params["keras_dir"], feeds, spec.threads)
    if spec.scenario in ("tensor", "raw_request") and spec.backend in baselines.RAW_BASELINES:
        art = data.manifest.artifact(params["artifact"])
        feeds = data.rows(spec.batch, [t.name for t in art.inputs])
        ready = baselines.RAW_BASELINES[spec.backend](confined_path(data.path, art.file), feeds, spec.threads)
        return _with_artifact(ready, art, data.manifest)
    if spec.backend.startswith("edgerec_"):
        backend = spec.backend[len("edgerec_"):]
        if spec.scenario == "tensor":
            art = data.manifest.artifact(params["artifact"])
            ready = edgerec_paths.tensor_path(data, art, backend, spec.batch, spec.threads)
            return _with_artifact(ready, art, data.manifest)
        if spec.scenario == "raw_request":
            art = data.manifest.artifact(params["artifact"])
            ready = edgerec_paths.request_path(data, art, backend, spec.batch, spec.threads)
            return _with_artifact(ready, art, data.manifest)
        if spec.scenario.startswith("candidates_"):
            mode = spec.scenario[len("candidates_"):]
            return edgerec_paths.candidates_path(data, backend, spec.batch, spec.threads, mode)
        if spec.scenario.startswith("result_cache_"):
            return edgerec_paths.result_cache_path(data, backend, spec.threads, hit=spec.scenario.endswith("hit"))
    raise BundleError(expected("a known (scenario, backend) pair", (spec.scenario, spec.backend)))


def _with_artifact(ready: Prepared, art, manifest: Manifest) -> Prepared:
    # with the shared tables it reads: what the variant costs as one file, comparable across variants
    ready.size_bytes = artifact_size(manifest, art.file)
    ready.delta_auc = art.validation.get("delta_auc")
    ready.extra.setdefault("precision", art.precision)
    ready.extra.setdefault("format", art.format)
    return ready
