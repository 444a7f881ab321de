"""Predictor.recommend and edgerec recommend on a tiny cascade bundle (no TensorFlow)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgerec.runtime as rt
from edgerec.runtime.errors import RequestError

from .cascade_support import cascade_bundle, item_vectors, make_cascade_bundle  # noqa: F401  (fixture)
from .conftest import SMALL_ITEMS, make_onnx_bundle

INDEX_OF = {raw: i + 2 for i, raw in enumerate(SMALL_ITEMS)}


def _by_ranker(items):
    """The ranker of the tiny bundle scores higher indices higher."""
    return sorted(items, key=lambda raw: -INDEX_OF[raw])


def _retrieved(predictor, history, m):
    """What the index retrieves for ``history`` (seen excluded), by exact dot product."""
    retriever = _retriever(predictor)
    hist = predictor._model.preprocessor.encode_history([history])
    user = retriever.tower.run({"hist_items": hist})["user_vector"][0]
    scores = item_vectors() @ user
    scores[:2] = -np.inf
    for h in history:
        scores[INDEX_OF[h]] = -np.inf
    return [SMALL_ITEMS[i - 2] for i in np.argsort(-scores, kind="stable")[:m]]


def _retriever(predictor):
    from edgerec.runtime.recommend import retriever_for
    return retriever_for(predictor._model, {})


def test_recommend_ranks_the_retrieved_items_with_the_ranker(cascade_bundle):
    history = ["101", "105"]
    with rt.load(cascade_bundle) as predictor:
        found = predictor.recommend({"history": history}, k=3, m=8)
        expected = _by_ranker(_retrieved(predictor, history, 8))[:3]
    assert found.items == expected
    assert found.scores.dtype == np.float32 and list(found.scores) == sorted(found.scores, reverse=True)


def test_seen_items_are_excluded_unless_asked(cascade_bundle):
    history = SMALL_ITEMS[-3:]                 # the ranker's favourites
    with rt.load(cascade_bundle) as predictor:
        fresh = predictor.recommend({"history": history}, k=5, m=50)
        again = predictor.recommend({"history": history}, k=5, m=50, exclude_seen=False)
    assert not set(history) & set(fresh.items)
    assert again.items[:3] == _by_ranker(history)


def test_filter_as_allowed_ids_or_a_callable(cascade_bundle):
    allowed = {"103", "110", "111", "no-such-item"}
    with rt.load(cascade_bundle) as predictor:
        by_set = predictor.recommend({"history": ["110"]}, k=10, filter=allowed)
        by_call = predictor.recommend({"history": []}, k=4, m=4, filter=lambda raw: int(raw) % 2 == 0)
        with pytest.raises(RequestError, match="filter"):
            predictor.recommend({"history": []}, filter=42)
    assert by_set.items == ["111", "103"]
    assert len(by_call.items) == 4 and all(int(raw) % 2 == 0 for raw in by_call.items)


def test_k_beyond_the_catalogue_and_an_empty_history(cascade_bundle):
    with rt.load(cascade_bundle) as predictor:
        everything = predictor.recommend({"history": []}, k=1000, m=3)
        seen = predictor.recommend({"history": ["100", "101"]}, k=1000)
        with pytest.raises(RequestError, match="k as a positive int"):
            predictor.recommend({"history": []}, k=0)
    assert everything.items == _by_ranker(SMALL_ITEMS)        # m is raised to k: every item, OOV-free
    assert len(seen.items) == len(SMALL_ITEMS) - 2


def test_the_user_vector_is_computed_once_per_user_state(cascade_bundle):
    with rt.load(cascade_bundle) as predictor:
        first = predictor.recommend({"user_id": "u1", "history": ["104"]}, k=3)
        hits = predictor.user_cache.stats()["hits"]
        second = predictor.recommend({"user_id": "u1", "history": ["104"]}, k=3)
        assert predictor.user_cache.stats()["hits"] > hits
    assert first.items == second.items


def test_a_bundle_without_an_index_cannot_recommend(tmp_path):
    pytest.importorskip("onnxruntime")
    with rt.load(make_onnx_bundle(tmp_path / "plain")) as predictor:
        with pytest.raises(RequestError, match="item index"):
            predictor.recommend({"history": ["101"]})


def test_recommend_lines_answer_every_line(cascade_bundle, tmp_path):
    from edgerec.runtime.recommend import recommend_file

    source = tmp_path / "in.jsonl"
    source.write_text('{"history": ["101"], "request_id": "a"}\n\nnot json\n{"history": "x"}\n'
                      '{"history": [], "k": 2}\n')
    out = tmp_path / "out.jsonl"
    lines, failed = recommend_file(lambda: rt.load(cascade_bundle), source, out, k=3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert (lines, failed) == (5, 2) and [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    assert len(rows[0]["items"]) == 3 and rows[0]["request_id"] == "a" and len(rows[0]["scores"]) == 3
    assert rows[1] == {"line": 2, "skipped": "blank line"}
    assert rows[2]["error"]["type"] == rows[3]["error"]["type"] == "RequestError"
    assert len(rows[4]["items"]) == 2


def test_recommend_command_exit_codes(cascade_bundle, tmp_path, capsys):
    import argparse

    from edgerec.sdk.cli import recommend as command

    parser = argparse.ArgumentParser()
    command.configure(parser)
    good = tmp_path / "good.jsonl"
    good.write_text('{"history": ["101"]}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"history": ["101"]}\n{"hist": []}\n')
    assert command.run(parser.parse_args([str(cascade_bundle), "--input", str(good), "--k", "2"])) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[0])["items"]) == 2
    assert command.run(parser.parse_args([str(cascade_bundle), "--input", str(bad)])) == 1
    with pytest.raises(RequestError):
        command.run(parser.parse_args([str(cascade_bundle), "--input", str(tmp_path / "missing.jsonl")]))


def test_an_hnsw_cascade_bundle_recommends_like_the_exact_one(tmp_path):
    from edgerec.runtime.ann import ann_available

    pytest.importorskip("onnxruntime")
    if not ann_available():
        pytest.skip("usearch (the index extra) is not installed")
    exact, hnsw = make_cascade_bundle(tmp_path / "exact"), make_cascade_bundle(tmp_path / "hnsw", kind="hnsw")
    request = {"history": ["102", "107"]}
    with rt.load(exact) as a, rt.load(hnsw) as b:
        assert a.recommend(request, k=5, m=10).items == b.recommend(request, k=5, m=10).items


def test_a_packed_cascade_bundle_still_recommends(cascade_bundle, tmp_path):
    from edgerec.runtime.pack import pack_bundle

    request = {"user_id": "u1", "history": ["101", "105"]}
    with rt.load(cascade_bundle, backend="onnxruntime") as model:
        want = model.recommend(request, k=5, m=20)
    assert len(want.items) == 5
    packed = pack_bundle(cascade_bundle, "onnxruntime", tmp_path / "app")
    with rt.load(packed, backend="onnxruntime") as model:
        got = model.recommend(request, k=5, m=20)
    assert got.items == want.items and got.scores == pytest.approx(want.scores)


def test_a_stage_clock_books_every_stage_without_changing_the_answer(cascade_bundle):
    from edgerec.runtime.recommend import StageClock, recommend

    request = {"user_id": "u1", "history": ["101", "105"]}
    clock = StageClock()
    with rt.load(cascade_bundle) as predictor:
        plain = predictor.recommend(request, k=3, m=8)
        for _ in range(2):
            timed = recommend(predictor._model, predictor, request, 3, 8, stages=clock)
    assert timed.items == plain.items
    np.testing.assert_array_equal(timed.scores, plain.scores)
    assert list(clock.wall) == ["encode", "user_tower", "index", "user_state", "scorer", "combine", "result"]
    assert all(len(v) == 2 and min(v) >= 0 for v in (*clock.wall.values(), *clock.cpu.values()))


def test_recommend_batch_answers_like_recommend_one_user_at_a_time(cascade_bundle):
    requests = [{"history": ["101", "105"]}, {"history": []}, {"user_id": "u7", "history": SMALL_ITEMS[-3:]},
                {"history": ["110"]}]
    with rt.load(cascade_bundle) as predictor:
        alone = [predictor.recommend(r, k=4, m=8) for r in requests]
        together = predictor.recommend_batch(requests, k=4, m=8)
        seen_too = predictor.recommend_batch(requests[2:3], k=3, m=50, exclude_seen=False)
        allowed = {"103", "110", "111"}
        filtered = predictor.recommend_batch(requests, k=10, filter=allowed)
        filtered_alone = [predictor.recommend(r, k=10, filter=allowed) for r in requests]
    assert [r.items for r in together] == [r.items for r in alone]
    for got, want in zip(together, alone):
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6, atol=1e-6)
    assert seen_too[0].items == _by_ranker(SMALL_ITEMS[-3:])
    assert [r.items for r in filtered] == [r.items for r in filtered_alone]
    assert filtered[3].items == ["111", "103"]            # its own seen item 110 left out


def test_recommend_batch_refuses_bad_input_naming_the_request(cascade_bundle):
    with rt.load(cascade_bundle) as predictor:
        with pytest.raises(RequestError, match="sequence of user requests"):
            predictor.recommend_batch({"history": []})
        with pytest.raises(RequestError, match="at least one"):
            predictor.recommend_batch([])
        with pytest.raises(RequestError, match="request 1"):
            predictor.recommend_batch([{"history": []}, {"no_history": 1}])
        with pytest.raises(RequestError, match="k as a positive int"):
            predictor.recommend_batch([{"history": []}], k=0)


def test_recommend_batch_reuses_and_fills_the_user_vector_cache(cascade_bundle):
    request = {"user_id": "u1", "history": ["104"]}
    with rt.load(cascade_bundle) as predictor:
        single = predictor.recommend(request, k=3)
        hits = predictor.user_cache.stats()["hits"]
        batch = predictor.recommend_batch([request, {"user_id": "u2", "history": ["106"]}], k=3)
        assert predictor.user_cache.stats()["hits"] == hits + 1
        again = predictor.recommend({"user_id": "u2", "history": ["106"]}, k=3)
        assert predictor.user_cache.stats()["hits"] == hits + 2
    assert batch[0].items == single.items and batch[1].items == again.items


def test_recommend_batch_runs_a_batch_variant_part_one_user_per_call(cascade_bundle, monkeypatch):
    """A dynamically quantized part scales activations over the whole call: batched, a user's
    scores would depend on the other users, so such parts get one call per user."""
    import edgerec.runtime.recommend_batch as rb

    requests = [{"history": ["101", "105"]}, {"history": ["110"]}, {"history": []}]
    with rt.load(cascade_bundle) as predictor:
        model = predictor._model
        assert model.manifest.artifact("fused_fp32.onnx").precision == "fp32"
        assert rb._batch_invariant(model, "fused_fp32.onnx") and not rb._batch_invariant(model, "not-listed.onnx")
        alone = [predictor.recommend(r, k=4, m=8, use_cache=False) for r in requests]
        calls = []
        run = model.run
        monkeypatch.setattr(model, "run", lambda part, feeds: calls.append(part) or run(part, feeds))
        shared = predictor.recommend_batch(requests, k=4, m=8, use_cache=False)
        assert calls == ["fused"]
        calls.clear()
        monkeypatch.setattr(rb, "_batch_invariant", lambda model, file: False)
        apart = predictor.recommend_batch(requests, k=4, m=8, use_cache=False)
        assert calls == ["fused"] * len(requests)
    for got, same, want in zip(apart, shared, alone):
        assert got.items == same.items == want.items
        np.testing.assert_array_equal(got.scores, want.scores)
