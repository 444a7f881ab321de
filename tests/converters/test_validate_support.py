"""Helpers shared by the validate/select/bundle/export tests (no tests here).

Loaded by path (``load_support()``) because tests run with ``--import-mode=importlib``.
Rows are drawn from the real index ranges of the models built by ``conftest.py`` (ids from
the vocabulary, never arbitrary ints); labels follow a learnable rule so AUC is meaningful.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB = 60


def conftest_module():
    """The converters conftest module pytest already imported (its model builders)."""
    import sys

    here = Path(__file__).with_name("conftest.py").resolve()
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == here:
            return module
    raise LookupError("tests/converters/conftest.py was not imported by pytest")


def model_inputs(model) -> dict[str, tuple[str, tuple]]:
    from edgerec.converters.keras_io import input_specs

    return input_specs(model)


def rows_for(specs: dict, n: int, seed: int = 1, groups: int | None = None) -> dict[str, np.ndarray]:
    """Rows for ``specs``: item ids in [2, VOCAB), hour in [1, 25), floats N(0, 1).

    With ``groups``: rows come in groups of ``n // groups`` sharing a history, first one positive.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dtype, shape) in specs.items():
        full = (n,) + tuple(d for d in shape[1:])
        if name == "hour":
            out[name] = rng.integers(1, 25, size=full).astype(dtype)
        elif "int" in dtype:
            out[name] = rng.integers(2, VOCAB, size=full).astype(dtype)
        else:
            out[name] = rng.normal(size=full).astype(dtype)
    if "hist_items" in out and "cand_item" in out:
        hist, cand = out["hist_items"], out["cand_item"]
        if groups:
            size = n // groups
            gid = np.repeat(np.arange(groups), size)[:n]
            for g in range(groups):
                rows = np.where(gid == g)[0]
                hist[rows] = hist[rows[0]]
                parity = hist[rows[0], -1] % 2          # one positive (first row) per group
                cand[rows] = cand[rows] - (cand[rows] % 2) + (1 - parity)
                cand[rows[0]] = cand[rows[0]] - (cand[rows[0]] % 2) + parity
            cand[cand < 2] += 2
            out["groups"] = gid.astype(np.int64)
        out["labels"] = ((cand % 2) == (hist[:, -1] % 2)).astype(np.float32)
    return out


def save_npz(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def tflite(keras_path, mode: str, out_dir, part: str = "fused", data=None):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    return TFLitePass().run(str(keras_path), TFLiteConfig(mode=mode, data=str(data) if data else None),
                            Path(out_dir), part=part)


def onnx_fp32(model, out_path, part: str = "fused"):
    """fp32 ONNX through tf2onnx with the canonical names (as OnnxExportPass does)."""
    import tf2onnx

    from edgerec.converters.keras_io import serving_function
    from edgerec.converters.validate import Candidate

    serve, signature = serving_function(model, part)
    tf2onnx.convert.from_function(serve, input_signature=[signature], opset=17, output_path=str(out_path))
    return Candidate(str(out_path), "onnx", "fp32", part)


def zero_weights_onnx(src, dst) -> Path:
    """A deliberately corrupted copy: the largest initializer (embedding/dense kernel) zeroed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    largest.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(largest)), largest.name))
    onnx.save(model, str(dst))
    return Path(dst)


def flip_weight_bytes_tflite(src, dst, weights: np.ndarray) -> Path:
    """Copy of a .tflite whose stored copy of ``weights`` (float32) has every byte flipped."""
    data = bytearray(Path(src).read_bytes())
    raw = np.ascontiguousarray(weights, dtype=np.float32).tobytes()
    at = bytes(data).find(raw)
    assert at >= 0, "weights not found verbatim in the fp32 flatbuffer"
    flipped = (np.frombuffer(raw, dtype=np.float32) * -3.0).astype(np.float32).tobytes()
    data[at:at + len(raw)] = flipped
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def write_model_dir(folder: Path, fused, user=None, scorer=None, n_val=400, groups=20) -> Path:
    """A model directory per docs/contracts.md around already-built tf_keras models."""
    from edgerec.runtime.spec import ContextField, FeatureSpec, Vocabulary

    folder.mkdir(parents=True, exist_ok=True)
    specs = model_inputs(fused)
    seq = specs["hist_items"][1][1]
    vocab = Vocabulary("item", tuple(str(1000 + i) for i in range(VOCAB - 2)))
    context = tuple(ContextField("hour", "hour") for _ in [0] if "hour" in specs)
    from edgerec.runtime.spec import DenseField

    dense = tuple(DenseField(f"d{i}") for i in range(specs["dense"][1][1])) if "dense" in specs else ()
    spec = FeatureSpec(max_seq_len=seq, item_vocab=vocab, context=context, dense=dense)
    spec.save(folder / "feature_spec.json")
    parts = {"fused": "fused.keras"}
    fused.save(folder / "fused.keras")
    if user is not None:
        user.save(folder / "user_encoder.keras")
        scorer.save(folder / "scorer.keras")
        parts.update(user_encoder="user_encoder.keras", scorer="scorer.keras")
    save_npz(folder / "calibration.npz", rows_for(specs, 300, seed=2))
    save_npz(folder / "validation.npz", rows_for(specs, n_val, seed=3, groups=groups))
    rng = np.random.default_rng(4)
    with open(folder / "examples.jsonl", "w") as handle:
        for _ in range(40):
            req = {"history": [str(1000 + i) for i in rng.integers(0, VOCAB - 2, size=5)],
                   "item": str(1000 + int(rng.integers(0, VOCAB - 2))),
                   "context": {"timestamp": int(rng.integers(9e8, 1.6e9))}}
            if dense:
                req["dense"] = {d.name: float(rng.normal()) for d in dense}
            handle.write(json.dumps(req) + "\n")
    meta = {"format_version": 1, "family": "din", "keras": "tf_keras", "parts": parts,
            "custom_objects_module": None, "feature_spec": "feature_spec.json",
            "data": {"calibration": "calibration.npz", "validation": "validation.npz"},
            "examples": "examples.jsonl", "config": {"tiny": True}, "data_source": "synthetic-test"}
    (folder / "edgerec_model.json").write_text(json.dumps(meta))
    return folder


def staged_din_bundle_inputs(model_dir: Path, root: Path) -> dict:
    """What `write_bundle` takes for the test DIN (``model_dir/din.keras``): TFLite fp32 + dynamic and
    ONNX fp32 candidates, their validation report and selection, the examples and the feature spec."""
    from edgerec.converters.bundle import examples_with_expected, read_raw_examples
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.converters.select import select_variants
    from edgerec.converters.validate import ValidationData, validate_artifacts
    from edgerec.runtime.spec import FeatureSpec

    model = load_keras_model(model_dir / "din.keras")
    mdir = write_model_dir(root / "model", model)
    data = ValidationData.load(mdir / "validation.npz")
    cands = [tflite(mdir / "fused.keras", "fp32", root / "a"), tflite(mdir / "fused.keras", "dynamic", root / "b"),
             onnx_fp32(model, root / "fused.fp32.onnx")]
    report = validate_artifacts({"fused": model}, cands, data)
    selection = select_variants(report, {Path(c.path).name: {1: 1.0 + i, 256: 10.0 + i} for i, c in enumerate(cands)})
    spec = FeatureSpec.load(mdir / "feature_spec.json")
    examples = examples_with_expected(read_raw_examples(mdir / "examples.jsonl"), model, spec)
    return {"root": root, "model": model, "spec": spec, "cands": cands, "report": report, "selection": selection,
            "examples": examples, "spec_path": mdir / "feature_spec.json"}
