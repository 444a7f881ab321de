"""Silent wrong answers and misuse of the request path, each refused or flagged: exact result-cache
keys, out-of-range ids, bool/""/typo'd ids and keys, out-of-vocabulary flags, close() during a
swap, and big batches scored in bounded chunks. Hand-made ONNX bundles: no TensorFlow needed."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import edgerec.runtime as er
import edgerec.runtime.hot_swap as hot_swap_module
import edgerec.runtime.predictor as predictor_module
from edgerec.runtime.cache import SESSIONS, request_key, result_keys
from edgerec.runtime.errors import RequestError
from edgerec.runtime.io import atomic_write_bytes, sha256_file
from edgerec.runtime.manifest import Artifact, Manifest, TensorSpec, file_entry, write_manifest
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.spec import FeatureSpec, Vocabulary

from .conftest import SMALL_ITEMS, make_onnx_bundle, make_spec, scored_onnx_bytes, small_requests

pytest.importorskip("onnxruntime")
LONG = 2000


def _history_sum_onnx_bytes(seq: int, centre: float) -> bytes:
    """score = sigmoid(0.01 * (sum(hist_items) - centre)) as [B, 1]: every history position counts."""
    import onnx
    from onnx import TensorProto, helper

    hist = helper.make_tensor_value_info("hist_items", TensorProto.INT32, ["batch", seq])
    cand = helper.make_tensor_value_info("cand_item", TensorProto.INT32, ["batch"])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("centre", TensorProto.FLOAT, [], [centre]),
             helper.make_tensor("scale", TensorProto.FLOAT, [], [0.01]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    nodes = [helper.make_node("Cast", ["hist_items"], ["hist_f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["hist_f", "axis1"], ["hist_sum"], keepdims=0),
             helper.make_node("Cast", ["cand_item"], ["cand_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["cand_f", "zero"], ["cand_zero"]),
             helper.make_node("Sub", ["hist_sum", "centre"], ["centred"]),
             helper.make_node("Add", ["centred", "cand_zero"], ["total"]),
             helper.make_node("Mul", ["total", "scale"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"]),
             helper.make_node("Unsqueeze", ["prob", "axis1"], ["score"])]
    model = helper.make_model(helper.make_graph(nodes, "history_sum", [hist, cand], [score], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _long_history_bundle(directory):
    """A fused ONNX bundle whose score depends on every one of LONG history positions."""
    directory.mkdir(parents=True)
    FeatureSpec(max_seq_len=LONG, item_vocab=Vocabulary("item", tuple(SMALL_ITEMS))).save(directory / "feature_spec.json")
    atomic_write_bytes(directory / "fused.onnx", _history_sum_onnx_bytes(LONG, centre=2.0 * LONG))
    artifact = Artifact(file="fused.onnx", format="onnx", precision="fp32", part="fused",
                        sha256=sha256_file(directory / "fused.onnx"), size_bytes=(directory / "fused.onnx").stat().st_size,
                        inputs=[TensorSpec("hist_items", "int32", [None, LONG]), TensorSpec("cand_item", "int32", [None])],
                        outputs=[TensorSpec("score", "float32", [None, 1])])
    write_manifest(directory, Manifest(artifacts=[artifact], selected={"onnxruntime": {"fused": "fused.onnx"}},
                                       files=[file_entry(directory, "feature_spec.json", "feature_spec")],
                                       model={"family": "din"}, feature_spec="feature_spec.json"))
    return directory


def _two_long_histories():
    a = np.array([SMALL_ITEMS[0]] * LONG)
    b = a.copy()
    b[-40:-5] = SMALL_ITEMS[1]          # differ at positions -40..-5 only
    return a, b


# -- result-cache keys -----------------------------------------------------------------------------
def test_long_histories_differing_near_the_end_get_their_own_cached_score(tmp_path):
    a, b = _two_long_histories()
    assert str(a) == str(b)                  # what the old key was built from: numpy summarises
    assert request_key("v", {"history": a, "item": "100"}) != request_key("v", {"history": b, "item": "100"})
    path = _long_history_bundle(tmp_path / "long")
    with er.load(path, backend="onnxruntime", cache={"result_entries": 100}) as predictor:
        want = predictor.predict([{"history": a, "item": "100"}, {"history": b, "item": "100"}], use_cache=False)
        assert want[0] != want[1]
        first = predictor.predict([{"history": a, "item": "100"}])
        second = predictor.predict([{"history": b, "item": "100"}])
        np.testing.assert_array_equal([first[0], second[0]], want)
        assert predictor.stats()["caches"]["result"]["hits"] == 0
        np.testing.assert_array_equal(predictor.predict([{"history": list(b), "item": "100"}]), want[1:])
        assert predictor.stats()["caches"]["result"]["hits"] == 1        # same encoded row: a hit


def test_result_keys_are_exact_per_row():
    hist = np.zeros((3, LONG), np.int32)
    hist[1, -7] = 5
    arrays = {"hist_items": hist, "cand_item": np.array([2, 2, 2], np.int32)}
    keys = result_keys("v", arrays)
    assert keys[0] == keys[2] != keys[1]
    assert result_keys("v", {k: v[1:2] for k, v in arrays.items()}) == [keys[1]]      # batch-1 path agrees
    assert result_keys("w", arrays)[0] != keys[0]


# -- out-of-range ids --------------------------------------------------------------------------------
def _gather_onnx_bytes(rows: int = 22) -> bytes:
    """score = sigmoid(table[cand_item]) with table[i] = i / rows: an embedding lookup."""
    import onnx
    from onnx import TensorProto, helper

    cand = helper.make_tensor_value_info("cand_item", TensorProto.INT32, ["batch"])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])
    table = helper.make_tensor("table", TensorProto.FLOAT, [rows, 1], [i / rows for i in range(rows)])
    nodes = [helper.make_node("Gather", ["table", "cand_item"], ["row"], axis=0),
             helper.make_node("Sigmoid", ["row"], ["score"])]
    model = helper.make_model(helper.make_graph(nodes, "gather", [cand], [score], [table]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_public_backend_run_refuses_a_negative_id(tmp_path):
    from edgerec.runtime.backends.registry import create_backend

    path = tmp_path / "gather.onnx"
    path.write_bytes(_gather_onnx_bytes())
    with create_backend("onnxruntime", path) as backend:
        assert backend.run({"cand_item": np.array([3], np.int32)})["score"].shape == (1, 1)
        with pytest.raises(RequestError, match="Expected"):
            backend.run({"cand_item": np.array([-1], np.int32)})
        with pytest.raises(RequestError, match="Expected"):
            backend.run({"cand_item": np.array([22], np.int32)})


def test_predictor_tensor_path_refuses_out_of_range_ids(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    with er.load(path, backend="onnxruntime") as predictor:
        hist = np.zeros((1, 4), np.int32)
        for bad in (-1, 22, 2**31 - 1):
            with pytest.raises(RequestError, match="ids in"):
                predictor.predict_arrays({"hist_items": hist, "cand_item": np.array([bad], np.int32)})


# -- ids and keys that used to pass silently ----------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    ({"item": True}, "candidate item id"),
    ({"item": np.bool_(True)}, "candidate item id"),
    ({"item": ""}, "candidate item id"),
    ({"item": 10 ** 5000}, "an int of"),
    ({"history": ["10", ""]}, "history item ids"),
    ({"history": ["10", False]}, "history item ids"),
    ({"context": {"timestmap": 964982703}}, "context keys"),
    ({"context": {"device": True}}, "context.device"),
    ({"dense": {"prize": 1.0}}, "dense keys"),
    ({"dense": {"price": 10 ** 400}}, "float range"),
])
def test_preprocessor_refuses_what_it_used_to_accept(change, words):
    pre = Preprocessor(make_spec())
    good = {"history": ["10", "11"], "item": "12", "context": {"timestamp": 964982703, "device": "ios"},
            "dense": {"price": 3.0}}
    pre.encode_requests([good])
    with pytest.raises(RequestError, match="Expected") as err:
        pre.encode_requests([{**good, **change}])
    assert words in str(err.value)
    if "item" in change:
        with pytest.raises(RequestError, match=words):
            pre.encode_candidates([change["item"]])


def test_dense_values_for_a_spec_without_dense_fields_are_refused(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")        # spec: items only
    with er.load(path, backend="onnxruntime") as predictor:
        predictor.predict([{"history": [], "item": "100", "dense": {}}])
        with pytest.raises(RequestError, match="dense keys"):
            predictor.predict([{"history": [], "item": "100", "dense": {"price": 1.0}}])
        with pytest.raises(RequestError, match="dense keys"):
            predictor.score_candidates({"history": [], "dense": {"price": 1.0}}, ["100"])
        with pytest.raises(RequestError, match="candidate item id"):
            predictor.predict([{"history": [], "item": True}])


def test_known_ids_of_every_accepted_type_still_encode():
    pre = Preprocessor(make_spec())
    arrays = pre.encode_requests([{"history": [10, np.int64(11), "12", np.str_("13")], "item": np.int32(14),
                                   "context": {"timestamp": 0, "device": ""}}])      # "" device = missing
    assert arrays["hist_items"].tolist() == [[0, 2, 3, 4, 5]] and arrays["cand_item"].tolist() == [6]
    assert arrays["device"].tolist() == [0]


# -- out-of-vocabulary flags ----------------------------------------------------------------------------
def test_out_of_vocabulary_candidates_are_flagged(tmp_path):
    path = make_onnx_bundle(tmp_path / "b")
    requests = [{"history": ["100"], "item": "101"}, {"history": [], "item": "not-an-item"},
                {"history": ["100"], "item": 999}]
    with er.load(path, backend="onnxruntime") as predictor:
        plain = predictor.predict(requests)
        assert isinstance(plain, np.ndarray) and plain.shape == (3,)       # existing callers unchanged
        scores, oov = predictor.predict(requests, return_oov=True)
        np.testing.assert_array_equal(scores, plain)
        assert oov.tolist() == [False, True, True] and scores[1] == scores[2]   # one shared OOV score
        flagged = predictor.score_candidates({"history": ["100"]}, ["100", "zzz", "119"], return_oov=True)
        assert flagged.oov.tolist() == [False, True, False] and flagged.oov_count == 1
        assert [t[2] for t in predictor.top_k({"history": []}, ["zzz", "119"], 2, return_oov=True)] == [False, True]
        assert predictor.stats()["oov_rows"] == 2 + 2 + 1 + 1     # predict twice, candidates, top_k


# -- close() while swap() runs ----------------------------------------------------------------------------
def test_close_during_a_swap_releases_the_new_bundle(tmp_path, monkeypatch):
    old = make_onnx_bundle(tmp_path / "old")
    new = make_onnx_bundle(tmp_path / "new", model=scored_onnx_bytes(slope=0.5))    # its own sessions
    checking, closed = threading.Event(), threading.Event()

    def slow_replay(model, tolerance=None):
        checking.set()
        assert closed.wait(30)
        return []                            # nothing failed: the swap goes on to switch

    monkeypatch.setattr(hot_swap_module, "replay_loaded", slow_replay)
    before = SESSIONS.stats()["references"]
    predictor = er.load(old, backend="onnxruntime")
    outcome = {}

    def swap():
        try:
            outcome["version"] = predictor.swap(new)
        except RequestError as err:
            outcome["error"] = err

    thread = threading.Thread(target=swap)
    thread.start()
    assert checking.wait(30)
    predictor.close()
    closed.set()
    thread.join(30)
    assert "closed" in str(outcome.get("error")), outcome
    assert SESSIONS.stats()["references"] == before           # neither bundle's sessions left open
    assert predictor.stats()["failed_swaps"] == 1 and predictor.stats()["swaps"] == 0
    with pytest.raises(RequestError, match="open Predictor"):
        predictor.predict(small_requests(1))


# -- big batches in chunks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [False, {"result_entries": 1000}])
def test_a_big_batch_is_scored_in_chunks_with_identical_scores(tmp_path, monkeypatch, cache):
    path = make_onnx_bundle(tmp_path / "b")
    requests = small_requests(53, seed=4)
    candidates = SMALL_ITEMS * 3
    with er.load(path, backend="onnxruntime", cache=cache) as predictor:
        whole = predictor.predict(requests, use_cache=False)
        whole_candidates = predictor.score_candidates({"history": ["100"]}, candidates)
        backend = predictor._model.parts["fused"]
        batches = []
        real_run = backend.run_validated

        def counting_run(feeds):
            batches.append(len(next(iter(feeds.values()))))
            return real_run(feeds)

        monkeypatch.setattr(backend, "run_validated", counting_run)
        monkeypatch.setattr(predictor_module, "CHUNK_ROWS", 8)
        chunked = predictor.predict(requests)
        assert max(batches) <= 8 and sum(batches) <= 53          # cache on: repeats in later chunks hit
        assert sum(batches) == 53 or cache
        np.testing.assert_array_equal(chunked, whole)
        scores, oov = predictor.predict(requests + [{"history": [], "item": "x"}], return_oov=True)
        np.testing.assert_array_equal(scores[:-1], whole)
        assert oov.tolist() == [False] * 53 + [True]
        batches.clear()
        np.testing.assert_array_equal(predictor.score_candidates({"history": ["100"]}, candidates), whole_candidates)
        assert max(batches) <= 8 and sum(batches) == len(candidates)
        assert predictor.stats()["predict_rows"] == 53 * 3 + 1
