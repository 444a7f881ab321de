"""Hostile input: property tests over raw requests and tensors (a typed error or a correct
answer, never a crash), and tampered bundles/archives (refused before anything is loaded)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgerec.runtime as er
from edgerec.runtime.errors import BundleError, IntegrityError, RequestError
from edgerec.runtime.manifest import safe_extract

from .conftest import ITEMS, SEQ

pytestmark = pytest.mark.slow
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

ids = st.one_of(st.sampled_from(ITEMS), st.integers(-2**63, 2**63), st.text(max_size=6),
                st.floats(allow_nan=True), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                    st.text(max_size=3), st.none())
contexts = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "timestamp": numbers, "hour": numbers, "device": st.one_of(st.sampled_from(["ios", "android"]), ids)}),
    st.lists(st.integers(), max_size=2))
requests = st.fixed_dictionaries({}, optional={
    "user_id": ids, "history": st.one_of(st.lists(ids, max_size=SEQ + 3), st.text(max_size=3), st.none()),
    "item": ids, "context": contexts, "dense": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"price": numbers})),
    "expected": st.floats(), "surprise": st.integers()})


@pytest.fixture(scope="module")
def predictors(bundle):
    onnx = er.load(bundle, backend="onnxruntime", cache={"result_entries": 64})
    lite = er.load(bundle, backend="litert")
    yield onnx, lite
    onnx.close()
    lite.close()


def _typed_or_correct(call_onnx, call_lite, n):
    try:
        got = call_onnx()
    except RequestError as err:
        assert str(err).startswith("Expected") or "Expected" in str(err)
        with pytest.raises(RequestError):
            call_lite()            # both backends refuse the same input
        return None
    assert got.shape == (n,) and np.isfinite(got).all() and ((got >= 0) & (got <= 1)).all()
    np.testing.assert_allclose(got, call_lite(), atol=1e-5)   # and agree on the answer
    return got


@SETTINGS
@given(batch=st.lists(requests, min_size=0, max_size=4))
def test_predict_never_crashes(predictors, batch):
    onnx, lite = predictors
    _typed_or_correct(lambda: onnx.predict(batch), lambda: lite.predict(batch), len(batch))


@SETTINGS
@given(user=requests, candidates=st.one_of(st.lists(ids, max_size=5), st.text(max_size=3), st.none()),
       k=st.one_of(st.integers(-2, 8), st.floats(), st.none()))
def test_score_candidates_and_top_k_never_crash(predictors, user, candidates, k):
    onnx, lite = predictors
    n = len(candidates) if isinstance(candidates, list) else 0
    got = _typed_or_correct(lambda: onnx.score_candidates(user, candidates),
                            lambda: lite.score_candidates(user, candidates), n)
    try:
        top = onnx.top_k(user, candidates, k)
    except RequestError:
        return
    assert got is not None and len(top) == min(int(k), n)


DTYPES = st.sampled_from([np.int32, np.int64, np.float32, np.float64, np.uint8, np.bool_])


@SETTINGS
@given(batch=st.integers(0, 3), seq=st.sampled_from([SEQ, SEQ - 1, SEQ + 1]), hist_dtype=DTYPES,
       low=st.sampled_from([-5, 0]), high=st.sampled_from([3, len(ITEMS) + 2, 10**6]),
       drop=st.sampled_from([None, "hour", "dense"]), dense_value=st.sampled_from([0.5, np.nan, np.inf, 1e39]),
       rank_error=st.booleans())
def test_tensor_path_never_crashes(predictors, batch, seq, hist_dtype, low, high, drop, dense_value, rank_error):
    onnx, lite = predictors
    rng = np.random.default_rng(0)
    feeds = {"hist_items": rng.integers(low, high, size=(batch, seq)).astype(hist_dtype),
             "cand_item": rng.integers(low, high, size=batch).astype(np.int32),
             "hour": np.ones(batch, np.int32), "device": np.ones(batch, np.int32),
             "dense": np.full((batch, 1), dense_value, np.float32)}
    if rank_error:
        feeds["cand_item"] = feeds["cand_item"].reshape(-1, 1)
    if drop:
        feeds.pop(drop)
    run = lambda p: p.predict_arrays(dict(feeds))["score"].reshape(-1)  # noqa: E731
    _typed_or_correct(lambda: run(onnx), lambda: run(lite), batch)


@pytest.mark.parametrize("price", [1e300, -1e39, float("inf"), float("nan")])
def test_dense_overflow_is_refused(predictors, price):
    for p in predictors:
        with pytest.raises(RequestError, match="dense.price"):
            p.predict([{"history": [], "item": ITEMS[0], "dense": {"price": price}}])
        with pytest.raises(RequestError, match="dense.price"):
            p.score_candidates({"history": [], "dense": {"price": price}}, ITEMS[:2])


def test_very_large_batch(predictors):
    onnx, _ = predictors
    rows = [{"history": ITEMS[:3], "item": ITEMS[i % len(ITEMS)]} for i in range(20_000)]
    scores = onnx.predict(rows, use_cache=False)
    assert scores.shape == (20_000,) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores[:len(ITEMS)], scores[len(ITEMS):2 * len(ITEMS)])


# -- bundles ------------------------------------------------------------------------------------
def _rewrite(path: Path, mutate):
    data = json.loads((path / "manifest.json").read_text())
    mutate(data)
    (path / "manifest.json").write_text(json.dumps(data))


def test_truncated_file_refused(copy_bundle):
    path = copy_bundle()
    data = (path / "fused.tflite").read_bytes()
    (path / "fused.tflite").write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="fused.tflite"):
        er.load(path, backend="litert")


def test_sha256_mismatch_refused(copy_bundle):
    path = copy_bundle()
    _rewrite(path, lambda d: d["artifacts"][0].update(sha256="0" * 64))
    with pytest.raises(IntegrityError, match="sha256"):
        er.load(path)


@pytest.mark.parametrize("target", ["../outside.onnx", "/etc/passwd", "sub/../../x.onnx", "C:/x.onnx"])
def test_manifest_pointing_outside_refused(copy_bundle, target):
    path = copy_bundle()
    (path.parent / "outside.onnx").write_bytes((path / "fused.onnx").read_bytes())

    def mutate(d):
        d["artifacts"][1]["file"] = target
        d["selected"]["onnxruntime"]["fused"] = target
    _rewrite(path, mutate)
    with pytest.raises(BundleError):
        er.load(path, backend="onnxruntime")


def test_feature_spec_outside_and_symlink_escape_refused(copy_bundle, tmp_path):
    path = copy_bundle()
    _rewrite(path, lambda d: d.update(feature_spec="../feature_spec.json"))
    with pytest.raises(BundleError):
        er.load(path)
    path2 = copy_bundle("link")
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes((path2 / "fused.onnx").read_bytes())
    (path2 / "fused.onnx").unlink()
    (path2 / "fused.onnx").symlink_to(outside)
    with pytest.raises(BundleError):
        er.load(path2, backend="onnxruntime")


@pytest.mark.parametrize("text", ["not json", "[]", '{"schema_version": 99, "artifacts": []}',
                                  '{"schema_version": 1, "artifacts": [{"file": "x"}]}',
                                  '{"schema_version": 1, "artifacts": []}'])
def test_malformed_manifest_refused(copy_bundle, text):
    path = copy_bundle()
    (path / "manifest.json").write_text(text)
    with pytest.raises(BundleError):
        er.load(path)


def _archive(tmp_path, members):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = 4
                tar.addfile(info, io.BytesIO(b"data"))
    return archive


@pytest.mark.parametrize("members", [
    [("/tmp/abs_member.txt", "file")], [("../escape.txt", "file")], [("ok/../../escape.txt", "file")],
    [("link", "symlink")], [("C:evil.txt", "file")]])
def test_evil_archives_refused_before_extraction(tmp_path, members):
    archive = _archive(tmp_path, members)
    dest = tmp_path / "out"
    with pytest.raises(BundleError):
        er.load(archive)
    with pytest.raises(BundleError):
        safe_extract(archive, dest)
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()


def test_runtime_never_unpickles():
    root = Path(er.__file__).parent
    sources = "\n".join(p.read_text() for p in root.rglob("*.py"))
    assert "import pickle" not in sources and "allow_pickle=True" not in sources
    assert "eval(" not in sources.replace("_eval(", "")
    # arrays (the item index's .npz) are read only with pickles refused, from verified bytes
    loads = sources.split("np.load(")[1:]
    assert all("allow_pickle=False" in call.split(")")[0] + call.split(")")[1] for call in loads), loads


@pytest.fixture(scope="module")
def scratch_bundle(bundle, tmp_path_factory):
    import shutil
    return Path(shutil.copytree(bundle, tmp_path_factory.mktemp("scratch") / "b"))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_flipped_or_truncated_byte_is_refused(scratch_bundle, data):
    """Whatever file and offset: a flipped bit or a cut file fails the sha256/size check before loading."""
    files = sorted(p.name for p in scratch_bundle.iterdir() if p.name != "manifest.json")
    name = data.draw(st.sampled_from(files))
    target = scratch_bundle / name
    original = target.read_bytes()
    offset = data.draw(st.integers(0, len(original) - 1))
    truncate = data.draw(st.booleans())
    try:
        if truncate:
            target.write_bytes(original[:offset])
        else:
            changed = bytearray(original)
            changed[offset] ^= 1 << data.draw(st.integers(0, 7))
            target.write_bytes(bytes(changed))
        with pytest.raises(IntegrityError, match=name.replace(".", r"\.")):
            er.load(scratch_bundle, warmup=False)
    finally:
        target.write_bytes(original)
