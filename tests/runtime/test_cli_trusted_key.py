"""`edgerec check` / `edgerec predict --trusted-key`: a signed bundle is served, others refused."""
from __future__ import annotations

import json

import pytest

from edgerec.sdk.cli import main

from .conftest import make_onnx_bundle, small_requests

pytest.importorskip("cryptography")


@pytest.fixture
def signed(tmp_path):
    from edgerec.runtime.signing import generate_key, sign_bundle

    bundle = make_onnx_bundle(tmp_path / "bundle")
    private, public = generate_key(tmp_path / "keys" / "release.pem")
    other_private, other_public = generate_key(tmp_path / "keys" / "other.pem")
    sign_bundle(bundle, private)
    return bundle, public, other_public


def test_check_with_the_signing_key_passes(signed, capsys):
    bundle, public, _ = signed
    assert main(["check", str(bundle), "--backend", "onnxruntime", "--trusted-key", str(public)]) == 0


def test_check_with_another_key_is_refused(signed, capsys):
    bundle, _, other = signed
    assert main(["check", str(bundle), "--backend", "onnxruntime", "--trusted-key", str(other)]) == 2
    assert "IntegrityError" in capsys.readouterr().err


def test_predict_refuses_a_signed_bundle_altered_after_signing(signed, tmp_path, capsys):
    bundle, public, _ = signed
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model"]["note"] = "edited after signing"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in small_requests(3)))
    code = main(["predict", str(bundle), "--input", str(requests), "--backend", "onnxruntime",
                 "--trusted-key", str(public)])
    assert code == 2
    assert "IntegrityError" in capsys.readouterr().err


def test_predict_with_the_signing_key_scores_every_line(signed, tmp_path, capsys):
    bundle, public, _ = signed
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in small_requests(3)))
    assert main(["predict", str(bundle), "--input", str(requests), "--backend", "onnxruntime",
                 "--trusted-key", str(public)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["line"] for x in lines] == [1, 2, 3] and all("score" in x for x in lines)
