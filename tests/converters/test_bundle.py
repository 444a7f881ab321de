"""Bundle writing: atomic directory, manifest round trip, sha256 checks, examples, archive, no pickle."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _support():
    spec = importlib.util.spec_from_file_location("validate_support_b", Path(__file__).with_name("test_validate_support.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _support()


@pytest.fixture(scope="module")
def built(model_dir, tmp_path_factory):
    from edgerec.converters.bundle import write_bundle

    staged = S.staged_din_bundle_inputs(model_dir, tmp_path_factory.mktemp("bundle"))
    root = staged["root"]
    out = root / "out" / "BUNDLE"
    manifest = write_bundle(out, artifacts=staged["cands"], report=staged["report"], selection=staged["selection"],
                            examples=staged["examples"], feature_spec_path=staged["spec_path"],
                            model_info={"family": "din"}, lineage={"passes": ["tflite", "onnx_export"]},
                            archive=root / "out" / "b.tar.gz")
    return {"out": out, "manifest": manifest, **{k: staged[k] for k in ("model", "spec", "root", "cands", "report",
                                                                         "selection", "examples")}}


def test_manifest_round_trip_and_contents(built):
    from edgerec.runtime.manifest import load_manifest

    loaded = load_manifest(built["out"], verify=True)
    assert loaded.to_dict() == json.loads((built["out"] / "manifest.json").read_text())
    assert loaded.to_dict() == built["manifest"].to_dict()
    assert {a.file for a in loaded.artifacts} == {"fused.fp32.tflite", "fused.dynamic.tflite", "fused.fp32.onnx"}
    art = loaded.artifact("fused.fp32.tflite")
    assert {t.name for t in art.inputs} == {"hist_items", "cand_item", "hour", "dense"}
    assert [t.name for t in art.outputs] == ["score"]
    assert set(art.validation) >= {"max_abs_diff", "mean_abs_diff", "auc", "delta_auc", "recall_overlap@10"}
    assert loaded.selected["litert"]["fused"] in {"fused.fp32.tflite", "fused.dynamic.tflite"}
    assert loaded.feature_spec == "feature_spec.json" and len(loaded.candidates) == 3
    assert loaded.lineage["tools"]["tensorflow"] and loaded.lineage["passes"] == ["tflite", "onnx_export"]
    assert not list(built["out"].parent.glob(".BUNDLE.*"))  # no temp folders left behind


def test_examples_hold_the_keras_probability(built):
    from edgerec.runtime.preprocess import Preprocessor

    lines = [json.loads(x) for x in (built["out"] / "examples.jsonl").read_text().splitlines()]
    assert len(lines) == 32 and all("history" in x and "item" in x for x in lines)
    arrays = Preprocessor(built["spec"]).encode_requests([{k: v for k, v in x.items() if k != "expected"}
                                                          for x in lines])
    probs = np.asarray(built["model"](arrays, training=False)).reshape(-1)
    np.testing.assert_allclose([x["expected"] for x in lines], probs, atol=1e-6)


def test_tampered_file_fails_the_sha256_check(built, tmp_path):
    import shutil

    from edgerec.runtime.errors import IntegrityError
    from edgerec.runtime.manifest import load_manifest

    copy = tmp_path / "copy"
    shutil.copytree(built["out"], copy)
    path = copy / "fused.dynamic.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="fused.dynamic.tflite"):
        load_manifest(copy, verify=True)


def test_archive_extracts_to_the_same_bundle(built, tmp_path):
    from edgerec.runtime.manifest import load_manifest, safe_extract

    dest = safe_extract(built["root"] / "out" / "b.tar.gz", tmp_path / "x")
    assert load_manifest(dest, verify=True).to_dict() == built["manifest"].to_dict()


def test_no_pickle_anywhere(built):
    for path in built["out"].rglob("*"):
        head = path.read_bytes()[:2]
        assert head not in (b"\x80\x04", b"\x80\x05", b"\x80\x03"), path  # pickle protocol headers
    assert not list(built["out"].rglob("*.pkl")) and not list(built["out"].rglob("*.npy"))


def test_rewrite_replaces_atomically_and_refuses_foreign_folders(built, tmp_path):
    from edgerec.converters.bundle import write_bundle
    from edgerec.runtime.errors import BundleError

    kwargs = dict(artifacts=built["cands"], report=built["report"], selection=built["selection"],
                  examples=built["examples"], feature_spec_path=built["out"] / "feature_spec.json")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="non-bundle folder"):
        write_bundle(foreign, **kwargs)
    assert (foreign / "notes.txt").read_text() == "mine"
    again = tmp_path / "again"
    write_bundle(again, **kwargs)
    first = (again / "manifest.json").read_text()
    write_bundle(again, **kwargs)  # replaces the old bundle
    assert json.loads((again / "manifest.json").read_text())["artifacts"] == json.loads(first)["artifacts"]
    with pytest.raises(BundleError, match="overwrite"):
        write_bundle(again, overwrite=False, **kwargs)
    with pytest.raises(BundleError, match="example"):
        write_bundle(tmp_path / "y", **{**kwargs, "examples": []})
