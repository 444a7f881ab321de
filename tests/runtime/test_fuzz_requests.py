"""hypothesis over JSON-lines request lines: through `parse_line`, the `Preprocessor` and
`predict_lines`, every line gets a result or a typed RequestError, never another exception."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgerec.runtime as er
from edgerec.runtime.errors import RequestError
from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.requests_io import BLANK, parse_line, predict_lines

from .conftest import ITEMS, SMALL_ITEMS, make_onnx_bundle, make_spec

pytest.importorskip("onnxruntime")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70), st.sampled_from([10**400, -2**64]),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(ITEMS + SMALL_ITEMS + ["", "ios", "timestamp"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=20)
ids = st.one_of(st.sampled_from(ITEMS + SMALL_ITEMS), scalars, st.lists(scalars, max_size=2))
keys = st.sampled_from(["timestamp", "hour", "weekday", "device", "price", "timestmap", "", "history"])
requests = st.fixed_dictionaries({}, optional={
    "user_id": ids, "history": st.one_of(st.lists(ids, max_size=7), json_values),
    "item": ids, "candidates": st.one_of(st.lists(ids, max_size=4), json_values),
    "context": st.one_of(st.dictionaries(keys, scalars, max_size=3), json_values),
    "dense": st.one_of(st.dictionaries(keys, scalars, max_size=2), json_values),
    "inputs": st.one_of(st.dictionaries(st.sampled_from(["hist_items", "cand_item"]), json_values), json_values),
    "expected": json_values, "request_id": json_values, "surprise": scalars})
lines = st.one_of(requests.map(lambda r: json.dumps(r).encode()), json_values.map(lambda v: json.dumps(v).encode()),
                  st.binary(max_size=40), st.text(max_size=40).map(str.encode),
                  st.integers(1, 6000).map(lambda n: b'{"history": [], "item": ' + b"7" * n + b"}"),
                  st.integers(1, 3000).map(lambda n: b'{"history": ' + b"[" * n + b"]" * n + b', "item": "100"}'))


def _typed(err: RequestError) -> None:
    assert "Expected" in str(err) and len(str(err)) < 5000


@SETTINGS
@given(line=lines)
def test_parse_line_gives_a_value_or_a_typed_error(line):
    value = parse_line(line, 7)
    if isinstance(value, RequestError):
        _typed(value)
        assert "line 7" in str(value)
    else:
        assert value is BLANK or json.dumps(value) is not None


@SETTINGS
@given(batch=st.lists(st.one_of(requests, json_values), min_size=1, max_size=4))
def test_preprocessor_encodes_or_refuses_with_a_typed_error(batch):
    pre = Preprocessor(make_spec())
    try:
        arrays = pre.encode_requests(batch)
    except RequestError as err:
        _typed(err)
        return
    assert all(len(v) == len(batch) for v in arrays.values())
    assert arrays["dense"].dtype == np.float32 and np.isfinite(arrays["dense"]).all()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    with er.load(make_onnx_bundle(tmp_path_factory.mktemp("fuzz") / "b"), backend="onnxruntime",
                 cache={"result_entries": 64}) as loaded:
        yield loaded


@SETTINGS
@given(batch=st.lists(lines, min_size=1, max_size=6), batch_size=st.integers(1, 4))
def test_predict_lines_answers_every_line(predictor, batch, batch_size):
    rows = [parse_line(line, i) for i, line in enumerate(batch, 1)]
    results = predict_lines(predictor, rows, batch_size)
    assert [r["line"] for r in results] == list(range(1, len(batch) + 1))
    for result in results:
        kinds = {"score", "scores", "outputs", "error", "skipped"} & set(result)
        assert len(kinds) == 1, result
        if "error" in result:
            assert result["error"]["type"] == "RequestError" and "Expected" in result["error"]["message"]
        if "score" in result:
            assert 0 <= result["score"] <= 1 and isinstance(result["oov"], bool)
        json.dumps(result)
