"""Integrity: every file the runtime reads is listed and verified, the bytes handed to a backend
are the bytes that were hashed, a corrupt model is a typed error, signatures are enforced when
asked for, and arrays in the wrong byte order are named as such."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgerec.runtime as er
import edgerec.runtime.loaded as loaded_module
from edgerec.runtime.errors import BundleError, IntegrityError, RequestError
from edgerec.runtime.io import atomic_write_bytes, sha256_file
from edgerec.runtime.loaded import LoadedBundle
from edgerec.runtime.manifest import Artifact, TensorSpec, load_manifest, write_manifest

from .conftest import SMALL_ITEMS, make_onnx_bundle, relist, scored_expected, scored_onnx_bytes, small_requests

pytest.importorskip("onnxruntime")


def _scores(model: LoadedBundle, requests) -> np.ndarray:
    return model.score_rows(model.preprocessor.encode_requests(requests))


# -- every file read is listed ---------------------------------------------------------------
def test_feature_spec_missing_from_files_is_refused(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    manifest = load_manifest(path)
    manifest.files = [f for f in manifest.files if f["file"] != "feature_spec.json"]
    write_manifest(path, manifest)
    with pytest.raises(BundleError, match="feature spec 'feature_spec.json' listed"):
        er.load(path, backend="onnxruntime")


def test_feature_spec_pointing_at_an_unlisted_file_is_refused(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    spec = json.loads((path / "feature_spec.json").read_text())
    spec["item_vocab"]["tokens"] = list(reversed(spec["item_vocab"]["tokens"]))   # scores would change
    (path / "other_spec.json").write_text(json.dumps(spec))
    manifest = load_manifest(path)
    manifest.feature_spec = "other_spec.json"
    write_manifest(path, manifest)
    with pytest.raises(BundleError, match="other_spec.json"):
        er.load(path, backend="onnxruntime")


def test_the_served_model_is_the_verified_one_even_if_swapped_after_verification(tmp_path, monkeypatch):
    """The file is replaced (by rename) after its sha256 was checked and before the backend is
    built: the backend must get the verified bytes, not re-open the path."""
    path = make_onnx_bundle(tmp_path / "b")
    evil = tmp_path / "evil.onnx"
    evil.write_bytes(scored_onnx_bytes(slope=-2.0))
    real = loaded_module.create_backend

    def swap_then_create(name, model_path, **options):
        os.replace(evil, model_path)          # the attacker wins the race
        return real(name, model_path, **options)

    monkeypatch.setattr(loaded_module, "create_backend", swap_then_create)
    model = LoadedBundle.open(path, "onnxruntime", share_sessions=False)
    try:
        requests = small_requests(8)
        got = _scores(model, requests)
        np.testing.assert_allclose(got, scored_expected([r["item"] for r in requests]), atol=1e-6)
    finally:
        model.close()
    assert sha256_file(path / "fused_fp32.onnx") != load_manifest(path, verify=False).artifacts[0].sha256


def test_the_feature_spec_used_is_the_verified_one(tmp_path, monkeypatch):
    """The feature spec is rewritten right after the last file was hashed: the spec in use must be
    the one that was verified (item "100" at index 2), not the rewritten one."""
    import edgerec.runtime.manifest as manifest_module

    path = make_onnx_bundle(tmp_path / "b")
    real = manifest_module.sha256_file

    def hash_then_tamper(file):
        digest = real(file)
        if Path(file).name == "examples.jsonl":
            spec = json.loads((path / "feature_spec.json").read_text())
            spec["item_vocab"]["tokens"] = list(reversed(spec["item_vocab"]["tokens"]))
            atomic_write_bytes(path / "feature_spec.json", json.dumps(spec).encode())
        return digest

    monkeypatch.setattr(manifest_module, "sha256_file", hash_then_tamper)
    model = LoadedBundle.open(path, "onnxruntime", share_sessions=False)
    try:
        assert model.spec.item_vocab.lookup(SMALL_ITEMS[0]) == 2
    finally:
        model.close()


def test_edgerec_check_fails_a_constant_model_whose_manifest_claims_a_loose_tolerance(tmp_path):
    from edgerec.sdk import cli

    path = make_onnx_bundle(tmp_path / "b", model=scored_onnx_bytes(slope=0.0), precision="int8",
                            validation={"max_abs_diff": 0.5, "mean_abs_diff": 0.5, "passed": True})
    assert cli.main(["check", str(path)]) == 1


# -- corrupt models with a matching sha256 -------------------------------------------------------
def _litert_bundle(tmp_path, model: bytes) -> Path:
    path = make_onnx_bundle(tmp_path / "b")
    atomic_write_bytes(path / "fused.tflite", model)
    manifest = load_manifest(path, verify=False)
    manifest.artifacts.append(Artifact(
        file="fused.tflite", format="tflite", precision="fp32", part="fused",
        sha256=sha256_file(path / "fused.tflite"), size_bytes=len(model),
        inputs=[TensorSpec("cand_item", "int32", [None]), TensorSpec("hist_items", "int32", [None, 4])],
        outputs=[TensorSpec("score", "float32", [None, 1])]))
    manifest.selected["litert"] = {"fused": "fused.tflite"}
    write_manifest(path, manifest)
    return path


def test_a_corrupt_tflite_with_a_rewritten_sha_is_a_bundle_error_naming_the_file(tmp_path, tiny_tflite):
    pytest.importorskip("ai_edge_litert")
    data = bytearray(tiny_tflite.read_bytes())
    data[528] = 0xFF          # a valid flatbuffer whose tensors cannot be set up: LiteRT raises RuntimeError
    path = _litert_bundle(tmp_path, bytes(data))
    with pytest.raises(BundleError, match="fused.tflite"):
        er.load(path, backend="litert")


def test_a_corrupt_onnx_with_a_rewritten_sha_is_a_bundle_error(tmp_path):
    path = make_onnx_bundle(tmp_path / "b", model=scored_onnx_bytes()[:200])
    with pytest.raises(BundleError, match="fused_fp32.onnx"):
        er.load(path, backend="onnxruntime")


# -- byte order ------------------------------------------------------------------------------
def test_big_endian_ids_are_named_as_a_byte_order_problem(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    with er.load(path, backend="onnxruntime") as predictor:
        feeds = {"hist_items": np.array([[3, 4, 5, 6]], dtype=">i4"), "cand_item": np.array([7], dtype=">i4")}
        with pytest.raises(RequestError, match="byte order") as err:
            predictor.predict_arrays(feeds)
        assert "range" not in str(err.value)
        backend = predictor._model.parts["fused"]
        with pytest.raises(RequestError, match="big-endian"):
            backend.run(feeds)


# -- loading through a symlinked (versioned) bundle ----------------------------------------------
def test_a_symlinked_bundle_loads_and_stays_confined(tmp_path):
    version = make_onnx_bundle(tmp_path / "b.versions" / "v1")
    (tmp_path / "b").symlink_to("b.versions/v1")
    with er.load(tmp_path / "b", backend="onnxruntime") as predictor:
        assert predictor.predict(small_requests(2)).shape == (2,)
    other = make_onnx_bundle(tmp_path / "b.versions" / "v2", model=scored_onnx_bytes(slope=-1.0))
    (version / "fused_fp32.onnx").unlink()
    (version / "fused_fp32.onnx").symlink_to(other / "fused_fp32.onnx")   # escapes the version folder
    relist(version)
    with pytest.raises(BundleError, match="inside the bundle"):
        er.load(tmp_path / "b", backend="onnxruntime")


# -- signatures ------------------------------------------------------------------------------
@pytest.fixture
def keys(tmp_path):
    pytest.importorskip("cryptography")
    from edgerec.runtime.signing import generate_key

    return generate_key(tmp_path / "keys" / "release.pem"), generate_key(tmp_path / "keys" / "other.pem")


def test_signing_round_trips_and_refuses_unsigned_tampered_or_foreign(tmp_path, keys):
    from edgerec.runtime.signing import SIGNATURE_NAME, sign_bundle

    (private, public), (other_private, other_public) = keys
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    path = make_onnx_bundle(tmp_path / "b")
    with pytest.raises(IntegrityError, match="unsigned"):
        er.load(path, backend="onnxruntime", trusted_keys=[public])
    sign_bundle(path, private)
    with er.load(path, backend="onnxruntime", trusted_keys=[public]) as predictor:
        assert predictor.predict(small_requests(2)).shape == (2,)
    with er.load(path, backend="onnxruntime", trusted_keys=[other_public, public.read_bytes()]):
        pass
    with pytest.raises(IntegrityError, match="trusted key"):
        er.load(path, backend="onnxruntime", trusted_keys=[other_public])
    # a re-listed (consistent) bundle with a new model: hashes match, the signature does not
    atomic_write_bytes(path / "fused_fp32.onnx", scored_onnx_bytes(slope=-1.0))
    relist(path)
    with pytest.raises(IntegrityError, match="trusted key"):
        er.load(path, backend="onnxruntime", trusted_keys=[public])
    er.load(path, backend="onnxruntime").close()                   # no keys asked for: not checked
    (path / SIGNATURE_NAME).write_text('{"algorithm": "ed25519", "signature": "!!"}')
    with pytest.raises(IntegrityError, match="base64"):
        er.load(path, backend="onnxruntime", trusted_keys=[public])
    with pytest.raises(BundleError, match="at least one trusted key"):
        er.load(path, backend="onnxruntime", trusted_keys=[])


def test_signed_archive_round_trips_through_pack_and_sign(tmp_path, keys):
    from edgerec.runtime.pack import pack_bundle
    from edgerec.runtime.signing import sign_bundle, verify_bundle

    (private, public), _ = keys
    archive = pack_bundle(make_onnx_bundle(tmp_path / "b"), "onnxruntime", tmp_path / "app.tar.gz")
    sign_bundle(archive, private)
    assert len(verify_bundle(archive, [public])) == 16
    with er.load(archive, backend="onnxruntime", trusted_keys=[public]) as predictor:
        assert predictor.predict(small_requests(1)).shape == (1,)


def test_sign_command_generates_signs_and_verifies(tmp_path, capsys):
    pytest.importorskip("cryptography")
    import argparse

    from edgerec.sdk.cli import sign

    def run(*argv):
        parser = argparse.ArgumentParser()
        sign.configure(parser)
        return sign.run(parser.parse_args(list(argv)))

    key = tmp_path / "k.pem"
    path = make_onnx_bundle(tmp_path / "b")
    assert run("--generate-key", str(key)) == 0
    assert run(str(path), "--key", str(key)) == 0
    assert run(str(path), "--verify", str(tmp_path / "k.pub.pem")) == 0
    assert "signature OK" in capsys.readouterr().out
    with pytest.raises(BundleError, match="exists"):
        run("--generate-key", str(key))


def test_loading_without_trusted_keys_never_imports_cryptography(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    code = ("import sys, edgerec.runtime as er\n"
            f"er.load({str(path)!r}, backend='onnxruntime').close()\n"
            "assert 'cryptography' not in sys.modules, 'imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
