"""The item index: int8 row quantization bound, exact search vs brute force, HNSW vs exact,
exclusions, save/load round trip and integrity of the index files in a bundle."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgerec.runtime.ann import ann_available
from edgerec.runtime.errors import BundleError, IntegrityError, RequestError, SpecError
from edgerec.runtime.index import META_FILE, ItemIndex, dequantize_rows, quantize_rows
from edgerec.runtime.index_config import IndexConfig
from edgerec.runtime.metrics import recall_at

from .cascade_support import make_cascade_bundle


def _need_usearch():
    # through the runtime, which imports onnxruntime before usearch (the other order crashes)
    if not ann_available():
        pytest.skip("usearch (the index extra) is not installed")


def _clustered(n: int, dim: int = 16, seed: int = 0, unit: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    vectors = (centres[rng.integers(0, 50, n)] + 0.4 * rng.normal(size=(n, dim))).astype(np.float32)
    if unit:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[:2] = 0
    return vectors


def _ids(n: int) -> list[str]:
    return ["", ""] + [f"i{i}" for i in range(n - 2)]


def _exact_top(vectors, query, m, exclude=()):
    scores = vectors @ query
    scores[:2] = -np.inf
    scores[list(exclude)] = -np.inf
    return np.argsort(-scores, kind="stable")[:m]


def test_int8_rows_stay_within_half_a_step_of_the_originals():
    rng = np.random.default_rng(1)
    vectors = rng.normal(scale=rng.uniform(0.01, 10, size=(300, 1)), size=(300, 24)).astype(np.float32)
    vectors[5] = 0
    codes, scales = quantize_rows(vectors)
    error = np.abs(dequantize_rows(codes, scales) - vectors)
    assert codes.dtype == np.int8 and np.all(np.abs(codes) <= 127)
    assert np.all(error <= scales[:, None] / 2 * (1 + 1e-5) + 1e-7)
    assert np.all(dequantize_rows(codes, scales)[5] == 0)
    with pytest.raises(SpecError, match="finite"):
        quantize_rows(np.array([[np.nan, 1.0]]))


def test_exact_search_is_brute_force_over_the_quantized_rows():
    vectors = _clustered(2000)
    index = ItemIndex.build(vectors, _ids(2000), IndexConfig(kind="exact"))
    table = dequantize_rows(*quantize_rows(vectors))
    query = np.random.default_rng(2).normal(size=16).astype(np.float32)
    rows, scores = index.search(query, 50, exclude=[7, 9])
    assert rows.tolist() == _exact_top(table, query, 50, [7, 9]).tolist()
    assert np.allclose(scores, table[rows] @ query, atol=1e-4)
    truth = [_exact_top(vectors, q, 200) for q in _clustered(20, seed=3)[2:] + 0.01]
    found = [index.search(q, 200)[0] for q in _clustered(20, seed=3)[2:] + 0.01]
    assert recall_at(found, truth) >= 0.95          # int8 rows keep the fp32 order at M = 200


@pytest.mark.parametrize("unit", [True, False])
def test_hnsw_agrees_with_exact_search(unit):
    _need_usearch()
    vectors = _clustered(4000, unit=unit)
    index = ItemIndex.build(vectors, _ids(4000), IndexConfig(kind="hnsw", ef_search=256))
    assert index.meta["ann"]["augmented"] is (not unit)
    queries = _clustered(42, seed=5)[2:]
    seen = list(range(2, 40))
    found = [index.search(q, 100, exclude=seen)[0] for q in queries]
    truth = [_exact_top(vectors, q, 100, seen) for q in queries]
    assert recall_at(found, truth) >= 0.95
    assert not any(set(f) & (set(seen) | {0, 1}) for f in found)
    rows, scores = index.search(queries[0], 10)
    assert np.allclose(scores, vectors[rows] @ queries[0], rtol=2e-2, atol=2e-2)


def test_save_and_load_from_bytes_give_the_same_results(tmp_path):
    vectors = _clustered(500)
    query = np.ones(16, np.float32)
    for kind in ("exact", "hnsw"):
        if kind == "hnsw":
            _need_usearch()
        folder = tmp_path / kind
        folder.mkdir()
        index = ItemIndex.build(vectors, _ids(500), IndexConfig(kind=kind))
        names = index.save(folder)
        meta = json.loads((folder / META_FILE).read_text())
        again = ItemIndex.from_bytes(meta, {n: (folder / n).read_bytes() for n in names[1:]})
        assert again.search(query, 20)[0].tolist() == index.search(query, 20)[0].tolist()
        assert again.ids[2] == "i0"


def test_search_refuses_bad_arguments_and_never_returns_padding():
    index = ItemIndex.build(_clustered(30), _ids(30), IndexConfig(kind="exact"))
    with pytest.raises(RequestError, match="user vector"):
        index.search(np.ones(3), 5)
    with pytest.raises(RequestError, match="m as a positive int"):
        index.search(np.ones(16), 0)
    rows, _ = index.search(np.ones(16), 1000)
    assert len(rows) == 28 and not {0, 1} & set(rows.tolist())
    assert index.search(np.ones(16), 5, allowed=[0, 1, 3])[0].tolist() == [3]
    with pytest.raises(SpecError, match="index kind"):
        IndexConfig(kind="lsh")


def test_a_tampered_index_file_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    import edgerec.runtime as rt
    from edgerec.runtime.manifest import load_manifest

    bundle = make_cascade_bundle(tmp_path / "cascade")
    assert ItemIndex.load(bundle, load_manifest(bundle)).num_items == 22
    data = bytearray((bundle / "item_index.npz").read_bytes())
    data[-40] ^= 0xFF
    (bundle / "item_index.npz").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="item_index.npz"):
        ItemIndex.load(bundle, load_manifest(bundle, verify=False))
    with pytest.raises(IntegrityError):
        rt.load(bundle)


def test_an_index_description_of_another_format_is_refused():
    with pytest.raises(BundleError, match="format_version"):
        ItemIndex.from_bytes({"format_version": 9, "kind": "exact"}, {})


def test_loading_the_ann_library_leaves_onnxruntime_importable():
    import subprocess
    import sys

    _need_usearch()
    pytest.importorskip("onnxruntime")
    code = "from edgerec.runtime.ann import ann_available; assert ann_available(); import onnxruntime; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-500:]


def test_the_search_width_set_at_export_is_saved_and_used_after_loading(tmp_path):
    _need_usearch()
    vectors = _clustered(3000, unit=True)
    index = ItemIndex.build(vectors, _ids(3000), IndexConfig(kind="hnsw", ef_search=64))
    index.set_ef_search(700)
    assert index.meta["ann"]["ef_search"] == 700
    names = index.save(tmp_path)
    files = {name: (tmp_path / name).read_bytes() for name in names[1:]}
    loaded = ItemIndex.from_bytes(json.loads((tmp_path / META_FILE).read_text()), files)
    assert loaded.ef_search == 700 and loaded._ann.expansion_search == 700
    query = vectors[10]
    assert np.array_equal(loaded.search(query, 50)[0], index.search(query, 50)[0])
    exact = ItemIndex.build(vectors, _ids(3000), IndexConfig(kind="exact"))
    with pytest.raises(SpecError, match="hnsw"):
        exact.set_ef_search(100)
    with pytest.raises(SpecError, match="ef_search"):
        index.set_ef_search(0)
    with pytest.raises(SpecError, match="target_recall"):
        IndexConfig(target_recall=1.5)
