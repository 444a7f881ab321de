"""FeatureSpec JSON round trip and Preprocessor encoding (OOV, padding, truncation, context, dense)."""
import datetime as dt
import json

import numpy as np
import pytest

from edgerec.runtime.errors import RequestError, SpecError
from edgerec.runtime.preprocess import Preprocessor, hour_of, weekday_of
from edgerec.runtime.spec import ContextField, DenseField, FeatureSpec, TextSpec, Vocabulary


def make_spec(max_seq_len=4) -> FeatureSpec:
    return FeatureSpec(
        max_seq_len=max_seq_len,
        item_vocab=Vocabulary("item", ("10", "20", "30", "40", "50")),
        context=(ContextField("hour", "hour"), ContextField("weekday", "weekday"),
                 ContextField("device", "categorical", Vocabulary("device", ("android", "ios")))),
        dense=(DenseField("gap", mean=2.0, std=4.0, default=2.0), DenseField("n", mean=1.0, std=0.5)),
        text=TextSpec(("toy", "story"), max_tokens=8),
    )


def test_spec_json_round_trip(tmp_path):
    spec = make_spec()
    path = spec.save(tmp_path / "feature_spec.json")
    loaded = FeatureSpec.load(path)
    assert loaded == spec
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.input_signature() == spec.input_signature()
    assert set(spec.input_signature("scorer")) == {"cand_item", "hour", "weekday", "device", "dense"}
    assert spec.input_signature("user_encoder") == {"hist_items": ("int32", (None, 4))}


def test_spec_rejects_bad_json(tmp_path):
    with pytest.raises(SpecError, match="Expected keys"):
        FeatureSpec.from_dict({"max_seq_len": 3})
    bad = tmp_path / "spec.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="valid JSON"):
        FeatureSpec.load(bad)
    with pytest.raises(SpecError, match="schema_version"):
        FeatureSpec.from_dict({**make_spec().to_dict(), "schema_version": 99})
    with pytest.raises(SpecError, match="unique tokens"):
        Vocabulary("item", ("1", "1"))


def test_history_oov_padding_and_truncation():
    pre = Preprocessor(make_spec(max_seq_len=4))
    hist = pre.encode_history([[], ["10"], ["99", 20], ["10", "20", "30", "40", "50"]])
    assert hist.dtype == np.int32 and hist.shape == (4, 4)
    assert hist[0].tolist() == [0, 0, 0, 0]                 # empty -> all padding
    assert hist[1].tolist() == [0, 0, 0, 2]                 # left padding, most recent last
    assert hist[2].tolist() == [0, 0, 1, 3]                 # unknown id -> OOV 1; int ids accepted
    assert hist[3].tolist() == [3, 4, 5, 6]                 # keeps the most recent 4
    assert pre.encode_items(["50", "nope"]).tolist() == [6, 1]


def test_context_from_timestamp_matches_calendar():
    pre = Preprocessor(make_spec())
    stamps = [0, 964982703, 1700000000, 1672531200 + 86400 * 3 + 3600 * 23]
    ctx = pre.encode_context([{"timestamp": t, "device": "ios"} for t in stamps])
    for row, t in enumerate(stamps):
        when = dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)
        assert ctx["hour"][row] == when.hour + 1 == hour_of(t) + 1
        assert ctx["weekday"][row] == when.weekday() + 1 == weekday_of(t) + 1
    assert ctx["device"].tolist() == [3, 3, 3, 3]
    explicit = pre.encode_context([{"hour": 0, "weekday": 6, "device": "tv"}, None, {}])
    assert explicit["hour"].tolist() == [1, 0, 0]           # 0 = missing
    assert explicit["weekday"].tolist() == [7, 0, 0]
    assert explicit["device"].tolist() == [1, 0, 0]         # unknown device -> OOV


def test_dense_standardised_with_defaults():
    pre = Preprocessor(make_spec())
    dense = pre.encode_dense([{"gap": 6.0, "n": 2.0}, {}, None])
    np.testing.assert_allclose(dense, [[1.0, 2.0], [0.0, -2.0], [0.0, -2.0]])
    assert dense.dtype == np.float32


def test_encode_requests_and_errors():
    pre = Preprocessor(make_spec())
    arrays = pre.encode_requests([{"history": ["10"], "item": "20", "context": {"timestamp": 0},
                                   "dense": {"gap": 2.0, "n": 1.0}}])
    assert set(arrays) == {"hist_items", "cand_item", "hour", "weekday", "device", "dense"}
    assert arrays["cand_item"].tolist() == [3] and arrays["dense"].tolist() == [[0.0, 0.0]]
    with pytest.raises(RequestError, match="request keys"):
        pre.encode_requests([{"hist": [], "item": "1"}])
    with pytest.raises(RequestError, match="history"):
        pre.encode_requests([{"history": "10", "item": "1"}])
    with pytest.raises(RequestError, match="timestamp"):
        pre.encode_requests([{"history": [], "item": "1", "context": {"timestamp": -5}}])
    with pytest.raises(RequestError, match="dense.gap"):
        pre.encode_requests([{"history": [], "item": "1", "dense": {"gap": "x"}}])
    with pytest.raises(RequestError, match="hour"):
        pre.encode_context([{"hour": 24}])
