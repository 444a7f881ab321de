"""The one examples replay rule: ExampleSet reading, per-precision tolerances a manifest cannot
loosen, and check / swap / replay_artifacts agreeing on the same bundle."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edgerec.runtime as er
from edgerec.runtime import examples as ex
from edgerec.runtime.contract import REPLAY_TOLERANCES
from edgerec.runtime.errors import BundleError, IntegrityError
from edgerec.runtime.examples import ExampleSet, check_bundle, replay_artifacts, replay_tolerance
from edgerec.runtime.manifest import TensorSpec, load_manifest, write_manifest

from .conftest import make_onnx_bundle, relist, scored_expected, scored_onnx_bytes, small_requests

pytest.importorskip("onnxruntime")


def _lines(drift=None):
    """Example lines with the exact scores, each moved by ``drift[i]`` (as quantization does)."""
    requests = small_requests()
    want = scored_expected([r["item"] for r in requests])
    drift = np.zeros(len(want)) if drift is None else drift
    return [{**r, "expected": float(w + d)} for r, w, d in zip(requests, want, drift)]


def _int8_drift(n=32):
    """What an int8 artifact does on examples: a few thousandths on most lines, 0.04 on the worst."""
    drift = np.where(np.arange(n) % 2, 0.004, -0.004)
    drift[5] = 0.04
    return drift


def _verdicts(path):
    """(check passed, swap accepted, every replay_artifacts result passed, `edgerec validate
    --examples-only` ok) for one bundle."""
    from edgerec.converters.revalidate import validate_bundle

    validated = validate_bundle(path, examples_only=True).status == "ok"
    checked = all(r.passed for r in check_bundle(path))
    replayed = all(r.passed for r in replay_artifacts(path, load_manifest(path)))
    with er.load(path, backend="onnxruntime") as predictor:
        try:
            predictor.swap(path)
            swapped = True
        except BundleError:
            swapped = False
    return checked, swapped, replayed, validated


# -- the tolerance ---------------------------------------------------------------------------------
def test_replay_tolerance_is_declared_per_precision_and_only_tightened():
    for precision, declared in REPLAY_TOLERANCES.items():
        assert replay_tolerance(precision) == declared
        for loose in ({"max_abs_diff": 10.0, "mean_abs_diff": 10.0}, {"max_abs_diff": float("inf")},
                      {"max_abs_diff": -1}, {"max_abs_diff": True}, {"max_abs_diff": "0.5"}, "junk", None):
            got = replay_tolerance(precision, loose)
            assert got.max_abs_diff <= declared.max_abs_diff and got.mean_abs_diff == declared.mean_abs_diff
    assert replay_tolerance("int8", {"max_abs_diff": 0.01}).max_abs_diff == pytest.approx(0.1)
    assert replay_tolerance("dynamic", {"max_abs_diff": 0.0064}).max_abs_diff == pytest.approx(0.064)
    assert replay_tolerance("fp16", {"max_abs_diff": 0.001}).max_abs_diff == pytest.approx(0.002)
    assert replay_tolerance("int8", {"max_abs_diff": 0.0}).max_abs_diff == pytest.approx(1e-4)   # the floor
    # int8 examples drift 0.035-0.040 on real bundles: inside the int8 bound, far outside fp32's
    assert REPLAY_TOLERANCES["int8"].max_abs_diff >= 0.1 and REPLAY_TOLERANCES["fp32"].max_abs_diff <= 1e-3
    with pytest.raises(Exception, match="precision"):
        replay_tolerance("int3")


# -- reading -------------------------------------------------------------------------------------
def test_example_set_reads_requests_once(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    examples = ExampleSet.load(path, load_manifest(path))
    assert examples.kind == "requests" and examples.rows == 32
    assert examples.feeds["hist_items"].shape == (32, 4) and examples.feeds["cand_item"].dtype == np.int32
    assert examples.expected["score"].shape == (32, 1) and examples.expected["score"].dtype == np.float64


@pytest.mark.parametrize("damage, error, words", [
    ("unlisted", BundleError, "not listed"),
    ("deleted", BundleError, "missing"),
    ("empty", BundleError, "at least one example"),
    ("bad json", BundleError, "line 2"),
    ("not an object", BundleError, "JSON object"),
    ("no expected", BundleError, "'expected'"),
    ("nan expected", BundleError, "'expected'"),
    ("mixed kinds", BundleError, "one kind"),
    ("unencodable", BundleError, "feature spec encodes"),
    ("tampered", IntegrityError, "sha256"),
    ("deep", BundleError, "line 1"),
])
def test_example_set_refuses_bad_files(tmp_path, damage, error, words):
    path = make_onnx_bundle(tmp_path / "b")
    target = path / "examples.jsonl"
    lines = target.read_text().splitlines()
    edits = {
        "empty": "", "bad json": lines[0] + "\n{nope\n", "not an object": "[1, 2]\n",
        "no expected": json.dumps({"history": [], "item": "100"}) + "\n",
        "nan expected": json.dumps({"history": [], "item": "100", "expected": float("nan")}) + "\n",
        "mixed kinds": lines[0] + "\n" + json.dumps({"inputs": {"cand_item": [2]}, "expected": {"score": [0.5]}}) + "\n",
        "unencodable": json.dumps({"history": "100", "item": "100", "expected": 0.5}) + "\n",
        "deep": "[" * 100_000 + "]" * 100_000 + "\n",
    }
    manifest = load_manifest(path)
    if damage == "unlisted":
        manifest.files = [f for f in manifest.files if f.get("role") != "examples"]
        write_manifest(path, manifest)
    elif damage == "deleted":
        target.unlink()
    elif damage == "tampered":
        target.write_text(target.read_text().replace('"expected": 0.', '"expected": 0.0', 1))
    else:
        target.write_text(edits[damage])
        relist(path)
    with pytest.raises(error, match=words):
        ExampleSet.load(path, load_manifest(path, verify=False))


def test_example_set_is_bounded(tmp_path, monkeypatch):
    path = make_onnx_bundle(tmp_path / "b")
    monkeypatch.setattr(ex, "MAX_EXAMPLES_BYTES", 100)
    with pytest.raises(BundleError, match="at most 100 bytes"):
        ExampleSet.load(path, load_manifest(path))


def test_tensor_rows_take_the_declared_dtypes(tmp_path):
    requests = small_requests(8)
    rows = [{"inputs": {"hist_items": [2, 3, 4, 5], "cand_item": i + 2}, "expected": {"score": [0.5]}}
            for i, _ in enumerate(requests)]
    path = make_onnx_bundle(tmp_path / "b", lines=rows)
    examples = ExampleSet.load(path, load_manifest(path))
    assert examples.kind == "tensors" and examples.feeds["cand_item"].dtype == np.int32
    assert examples.expected["score"].shape == (8, 1)


# -- one rule, three callers -------------------------------------------------------------------
@pytest.mark.parametrize("precision, drift, model, passes", [
    ("fp32", None, None, True),
    ("int8", _int8_drift(), None, True),                   # int8-sized drift on an int8 artifact
    ("fp32", _int8_drift(), None, False),                  # the same drift on an fp32 artifact
    ("int8", None, scored_onnx_bytes(slope=0.0), False),   # a constant-output model
])
def test_check_swap_and_replay_artifacts_agree(tmp_path, precision, drift, model, passes):
    path = make_onnx_bundle(tmp_path / "b", model=model, precision=precision, lines=_lines(drift))
    assert _verdicts(path) == (passes, passes, passes, passes)


def test_a_manifest_cannot_loosen_its_own_check(tmp_path):
    """A constant-output model whose manifest claims max/mean |Δ| 0.5 (and a passing validation)."""
    loose = {"max_abs_diff": 0.5, "mean_abs_diff": 0.5, "passed": True}
    path = make_onnx_bundle(tmp_path / "b", model=scored_onnx_bytes(slope=0.0), precision="int8",
                            lines=_lines(), validation=loose)
    results = check_bundle(path)
    assert [r.passed for r in results] == [False]
    assert results[0].tolerance == REPLAY_TOLERANCES["int8"] and "worst" in results[0].reason
    assert _verdicts(path) == (False, False, False, False)


def test_swap_with_defaults_accepts_a_copy_of_the_int8_bundle_it_serves(tmp_path):
    path = make_onnx_bundle(tmp_path / "b", precision="int8", lines=_lines(_int8_drift()))
    copy = shutil.copytree(path, tmp_path / "copy")
    with er.load(path, backend="onnxruntime") as predictor:
        version = predictor.version
        assert predictor.swap(copy) == version          # same manifest bytes, same version
        assert predictor.stats()["swaps"] == 1 and predictor.stats()["failed_swaps"] == 0


@pytest.mark.parametrize("how", ["unlisted", "empty"])
def test_swap_refuses_a_bundle_without_examples_unless_told(tmp_path, how):
    path = make_onnx_bundle(tmp_path / "b")
    bare = make_onnx_bundle(tmp_path / "bare")
    if how == "unlisted":
        manifest = load_manifest(bare)
        manifest.files = [f for f in manifest.files if f.get("role") != "examples"]
        write_manifest(bare, manifest)
        (bare / "examples.jsonl").unlink()
    else:
        (bare / "examples.jsonl").write_text("")
        relist(bare)
    with er.load(path, backend="onnxruntime") as predictor:
        with pytest.raises(BundleError, match="example"):
            predictor.swap(bare)
        assert predictor.stats()["failed_swaps"] == 1
        predictor.swap(bare, check_examples=False)
        assert predictor.stats()["swaps"] == 1
    with pytest.raises(BundleError, match="example"):
        check_bundle(bare)


def test_caller_tolerance_replaces_the_declared_bound(tmp_path):
    path = make_onnx_bundle(tmp_path / "b", lines=_lines(_int8_drift()))     # fp32 artifact, int8 drift
    assert not check_bundle(path)[0].passed
    assert check_bundle(path, tolerance=0.05)[0].passed
    with er.load(path, backend="onnxruntime") as predictor:
        predictor.swap(path, tolerance=0.05)


def test_replay_reports_a_model_that_cannot_run_as_failed(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    manifest = load_manifest(path)
    manifest.artifacts[0].inputs.append(TensorSpec("dense", "float32", [None, 1]))   # not in the model
    write_manifest(path, manifest)
    results = replay_artifacts(path, load_manifest(path))
    assert [r.passed for r in results] == [False] and "inputs" in results[0].reason
    assert results[0].to_dict()["worst"] is None


@pytest.mark.slow
def test_real_bundle_check_swap_and_replay_agree(bundle, copy_bundle):
    """The TF-built bundle (fused + split parts, LiteRT and ONNX): all pass; one skewed example
    line fails every artifact in all three."""
    results = check_bundle(bundle)
    assert {r.backend for r in results} >= {"onnxruntime", "litert"}
    assert {r.label for r in results if r.backend == "litert"} == {"fused.tflite", "user_encoder.tflite -> scorer.tflite"}
    assert all(r.passed for r in results)
    assert all(r.passed for r in replay_artifacts(bundle, load_manifest(bundle)))
    skewed = copy_bundle("skewed")
    lines = [json.loads(x) for x in (skewed / "examples.jsonl").read_text().splitlines()]
    lines[3]["expected"] += 0.05
    (skewed / "examples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    relist(skewed)
    assert not any(r.passed for r in check_bundle(skewed))
    assert not any(r.passed for r in replay_artifacts(skewed, load_manifest(skewed)))
    with er.load(bundle, backend="litert") as predictor:
        with pytest.raises(BundleError, match="replay tolerance"):
            predictor.swap(skewed)
        predictor.swap(copy_bundle("same"))
