"""The manifest's JSON Schema (docs/manifest.schema.json) and the runtime's own structural check
agree, real manifests conform, and every malformed manifest is refused with a BundleError."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgerec.runtime.errors import BundleError, EdgeRecError
from edgerec.runtime.manifest import MANIFEST_NAME, Manifest, load_manifest, read_manifest
from edgerec.runtime.manifest_schema import MANIFEST_SCHEMA, manifest_problems, schema_text

from .conftest import make_onnx_bundle

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
DEMO = Path(__file__).parent / "data" / "demo_manifest.json"


def strict_validator():
    """jsonschema with the schema's stated rule that an integer is written as one (no 3.0)."""
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(base, type_checker=checker)(MANIFEST_SCHEMA)


def good_manifest(tmp_path) -> dict:
    return json.loads((make_onnx_bundle(tmp_path / "good") / MANIFEST_NAME).read_text())


def test_published_schema_is_the_code_schema_and_is_valid():
    assert (ROOT / "docs" / "manifest.schema.json").read_text() == schema_text()
    jsonschema.Draft202012Validator.check_schema(MANIFEST_SCHEMA)


def test_real_manifests_conform(tmp_path, bundle):
    validator = strict_validator()
    for path in (DEMO, make_onnx_bundle(tmp_path / "b") / MANIFEST_NAME, bundle / MANIFEST_NAME):
        data = json.loads(path.read_text())
        assert list(validator.iter_errors(data)) == [], path
        assert manifest_problems(data) == [], path


def _mutations(good: dict) -> list:
    """(description, manifest) pairs, each departing from the schema in one way."""
    art = good["artifacts"][0]
    sha = art["sha256"]

    def edit(fn):
        data = copy.deepcopy(good)
        fn(data)
        return data

    return [
        ("schema_version true", edit(lambda d: d.update(schema_version=True))),
        ("schema_version 1.0", edit(lambda d: d.update(schema_version=1.0))),
        ("schema_version 2", edit(lambda d: d.update(schema_version=2))),
        ("float size", edit(lambda d: d["artifacts"][0].update(size_bytes=123.5))),
        ("integral float size", edit(lambda d: d["artifacts"][0].update(size_bytes=float(art["size_bytes"])))),
        ("huge size", edit(lambda d: d["artifacts"][0].update(size_bytes=10 ** 400))),
        ("inf size", edit(lambda d: d["artifacts"][0].update(size_bytes=float("inf")))),
        ("negative size", edit(lambda d: d["files"][0].update(size_bytes=-1))),
        ("bool size", edit(lambda d: d["files"][0].update(size_bytes=True))),
        ("files ints", edit(lambda d: d.update(files=[1, 2]))),
        ("files object", edit(lambda d: d.update(files={"a": 1}))),
        ("artifacts missing", edit(lambda d: d.pop("artifacts"))),
        ("artifacts string", edit(lambda d: d.update(artifacts="abc"))),
        ("selected string", edit(lambda d: d["selected"].update(onnxruntime="abc"))),
        ("selected unknown backend", edit(lambda d: d["selected"].update(coreml={"fused": "x"}))),
        ("selected unknown part", edit(lambda d: d["selected"]["onnxruntime"].update(head="x"))),
        ("selected file int", edit(lambda d: d["selected"]["onnxruntime"].update(fused=3))),
        ("format unknown", edit(lambda d: d["artifacts"][0].update(format="pickle"))),
        ("sha short", edit(lambda d: d["artifacts"][0].update(sha256=sha[:10]))),
        ("sha upper", edit(lambda d: d["artifacts"][0].update(sha256=sha.upper()))),
        ("shape string", edit(lambda d: d["artifacts"][0]["inputs"][0].update(shape="abc"))),
        ("shape float", edit(lambda d: d["artifacts"][0]["inputs"][0].update(shape=[None, 4.5]))),
        ("dtype unknown", edit(lambda d: d["artifacts"][0]["inputs"][0].update(dtype="object"))),
        ("unknown top key", edit(lambda d: d.update(feture_spec="feature_spec.json"))),
        ("unknown artifact key", edit(lambda d: d["artifacts"][0].update(path="/etc/passwd"))),
        ("feature_spec int", edit(lambda d: d.update(feature_spec=7))),
        ("file name empty", edit(lambda d: d["files"][0].update(file=""))),
        ("validation list", edit(lambda d: d["artifacts"][0].update(validation=[1]))),
        ("manifest list", [good]),
        ("manifest null", None),
    ]


def test_schema_and_runtime_agree_and_refuse_bad_manifests(tmp_path):
    validator = strict_validator()
    good = good_manifest(tmp_path)
    assert manifest_problems(good) == [] and not list(validator.iter_errors(good))
    for name, data in _mutations(good):
        schema_says = not list(validator.iter_errors(data))
        runtime_says = not manifest_problems(data) if isinstance(data, dict) else False
        assert schema_says is False and runtime_says is False, name
        with pytest.raises(BundleError):
            Manifest.from_dict(data)


def _write(tmp_path, text: str) -> Path:
    folder = make_onnx_bundle(tmp_path / "b")
    (folder / MANIFEST_NAME).write_text(text)
    return folder


@pytest.mark.parametrize("text", [
    "[" * 200_000 + "]" * 200_000,                                  # RecursionError before
    '{"schema_version": 1, "artifacts": [], "model": ' + '{"a": ' * 100 + "1" + "}" * 101,
    '{"schema_version": 1, "artifacts": [], "files": [1, 2]}',      # TypeError before
    '{"schema_version": 1, "schema_version": 1, "artifacts": []}',  # duplicate keys accepted before
    '{"schema_version": true, "artifacts": []}',                    # passed before
    '{"schema_version": 1, "artifacts": [], "bundle_version": 1' + "0" * 5000 + "}",
    "\xff\xfe not utf-8",
    "",
    "{",
])
def test_malformed_manifest_text_is_a_bundle_error(tmp_path, text):
    folder = _write(tmp_path, text)
    with pytest.raises(BundleError):
        load_manifest(folder)


def test_size_1e400_and_selected_string_are_bundle_errors(tmp_path):
    folder = make_onnx_bundle(tmp_path / "b")
    text = (folder / MANIFEST_NAME).read_text()
    data = json.loads(text)
    size = data["artifacts"][0]["size_bytes"]
    (folder / MANIFEST_NAME).write_text(text.replace(f'"size_bytes": {size}', '"size_bytes": 1e400', 1))
    with pytest.raises(BundleError, match="size_bytes"):
        load_manifest(folder)                                     # OverflowError before
    data["selected"]["onnxruntime"] = "abc"
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="selected"):
        load_manifest(folder)                                     # ValueError before


def test_oversized_manifest_is_refused_before_parsing(tmp_path, monkeypatch):
    import edgerec.runtime.manifest as manifest_module

    folder = make_onnx_bundle(tmp_path / "b")
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(BundleError, match="at most 100 bytes"):
        read_manifest(folder)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
_KEYS = ["schema_version", "artifacts", "files", "selected", "feature_spec", "size_bytes", "sha256", "file",
         "format", "precision", "part", "inputs", "shape", "dtype", "name"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.sampled_from(_KEYS) | st.integers(0, 3), max_size=4), value=_json)
def test_fuzzed_manifests_get_bundle_errors_and_schema_agrees(tmp_path, path, value):
    """A good manifest with one value replaced somewhere: parsed -> either a Manifest or a
    BundleError (never another exception), and the runtime agrees with jsonschema."""
    data = json.loads(DEMO.read_text())
    node = data
    for step in path[:-1]:
        nxt = node[step] if isinstance(node, dict) and step in node else (
            node[step] if isinstance(node, list) and isinstance(step, int) and step < len(node) else None)
        if not isinstance(nxt, (dict, list)):
            break
        node = nxt
    if path:
        last = path[-1]
        if isinstance(node, dict) and isinstance(last, str):
            node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
    else:
        data = value
    schema_ok = isinstance(data, dict) and not list(strict_validator().iter_errors(data))
    runtime_ok = isinstance(data, dict) and not manifest_problems(data)
    assert schema_ok == runtime_ok
    try:
        Manifest.from_dict(data)
    except EdgeRecError:
        pass


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_fuzzed_manifest_text_never_escapes_untyped(text):
    from edgerec.runtime.io import strict_json_loads

    try:
        data = strict_json_loads(text.encode("utf-8", "surrogatepass"), "manifest.json", error=BundleError)
        Manifest.from_dict(data)
    except BundleError:
        pass


def test_the_cli_reports_a_malformed_manifest_without_a_traceback(tmp_path, capsys):
    from edgerec.sdk import cli

    folder = _write(tmp_path, "[" * 200_000 + "]" * 200_000)
    assert cli.main(["info", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "BundleError" in err and "Traceback" not in err


def test_a_shared_tables_record_conforms_and_malformed_ones_are_refused(tmp_path, bundle):
    import shutil

    share_bundle = pytest.importorskip("edgerec.converters.shared_tables").share_bundle
    folder = Path(shutil.copytree(bundle, tmp_path / "shared"))
    share_bundle(folder, min_bytes=256)
    good = json.loads((folder / MANIFEST_NAME).read_text())
    validator = strict_validator()
    assert good["shared_tables"]["tables"]
    assert manifest_problems(good) == [] and not list(validator.iter_errors(good))

    def edit(fn):
        data = copy.deepcopy(good)
        fn(data["shared_tables"])
        return data

    bad = [("table name not a sha", edit(lambda r: r["tables"][0].update(file="../evil.bin"))),
           ("no uses", edit(lambda r: r["tables"][0].update(uses=[]))),
           ("use without tensor", edit(lambda r: r["tables"][0]["uses"][0].pop("tensor"))),
           ("unknown key", edit(lambda r: r.update(shared=True))),
           ("tables missing", edit(lambda r: r.pop("tables"))),
           ("float shape", edit(lambda r: r["tables"][0]["uses"][0].update(shape=[1.5])))]
    for name, data in bad:
        assert list(validator.iter_errors(data)) and manifest_problems(data), name
        with pytest.raises(BundleError):
            Manifest.from_dict(data)
