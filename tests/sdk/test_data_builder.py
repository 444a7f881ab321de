"""Next-item CTR builder: split invariants, negatives, padding, parity with the runtime Preprocessor."""
import numpy as np
import pytest

from edgerec.runtime.preprocess import Preprocessor
from edgerec.runtime.spec import OOV_INDEX, PAD_INDEX
from edgerec.sdk.data import DataError, InteractionLog, ItemsTable, build_dataset, load_dataset
from edgerec.sdk.data.synthetic import SyntheticConfig, generate_log


def items_table(ids):
    ids = list(ids)
    return ItemsTable(ids, [f"item {i}" for i in ids], [["tag"] for _ in ids], ["c"] * len(ids))


@pytest.fixture(scope="module")
def built():
    log = generate_log(SyntheticConfig(num_users=150, num_items=300, num_events=6000, seed=11))
    return build_dataset(log, max_seq_len=12, negatives=4, test_negatives=100, seed=5,
                         progress=False, return_trace=True)


def user_items(trace):
    log = trace.log
    out = {}
    for u, i in zip(log.user_ids.tolist(), log.item_ids.tolist()):
        out.setdefault(u, set()).add(str(i))
    return out


def test_shapes_dtypes_and_sizes(built):
    ds, _ = built
    assert ds.name == "synthetic"
    n_users = 150
    assert len(ds.test) == n_users * 101 and len(ds.valid) == n_users * 5
    _, trace = built
    assert len(ds.train) == (len(trace.log) - 2 * n_users) * 5
    for split in (ds.train, ds.valid, ds.test):
        assert set(split.inputs) == {"hist_items", "cand_item", "hour", "weekday", "device", "dense"}
        assert split.inputs["hist_items"].dtype == np.int32 and split.inputs["hist_items"].shape[1] == 12
        assert split.inputs["dense"].dtype == np.float32 and split.inputs["dense"].shape[1] == 2
        assert split.labels.dtype == np.float32 and split.groups.dtype == np.int64
    assert ds.train.labels.mean() == pytest.approx(0.2)
    assert len(ds.item_text) == ds.spec.item_vocab.size and ds.item_text[:2] == ["", ""]
    assert ds.item_popularity.shape == (ds.spec.item_vocab.size,)
    assert ds.spec.text is not None and len(ds.spec.text.vocab) > 50
    # dense features are standardised with the training statistics
    assert abs(float(ds.train.inputs["dense"][:, 1].mean())) < 0.05


def test_popularity_counts_training_positives(built):
    ds, _ = built
    positives = ds.train.inputs["cand_item"][ds.train.labels == 1]
    assert np.array_equal(ds.item_popularity, np.bincount(positives, minlength=ds.spec.item_vocab.size))


def test_leave_last_out_by_time(built):
    ds, trace = built
    log = trace.log
    for split, from_end in (("test", 1), ("valid", 2)):
        events, _ = trace.rows[split]
        labels = getattr(ds, split).labels
        for e in events[labels == 1].tolist():
            mine = np.flatnonzero(log.user_ids == log.user_ids[e])
            # the last (second-to-last) event in (timestamp, item id) order
            order = mine[np.lexsort((log.item_ids[mine], log.timestamps[mine]))]
            assert order[-from_end] == e
    train_events = trace.rows["train"][0]
    last_two = set(trace.rows["test"][0].tolist()) | set(trace.rows["valid"][0].tolist())
    assert not set(train_events.tolist()) & last_two


def test_test_groups_and_no_leakage(built):
    ds, trace = built
    test = ds.test
    for g in np.unique(test.groups)[:60]:
        rows = np.flatnonzero(test.groups == g)
        assert test.labels[rows].sum() == 1 and rows.size == 101
        cands = test.inputs["cand_item"][rows]
        assert np.unique(cands).size == cands.size                          # distinct negatives
        positive = cands[test.labels[rows] == 1][0]
        history = test.inputs["hist_items"][rows[0]]
        assert positive not in history[history > OOV_INDEX]                 # test item not in own history
        assert (test.inputs["hist_items"][rows] == history).all()           # one history per group


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_negatives_were_never_interacted(built, split):
    ds, trace = built
    seen = user_items(trace)
    events, raw = trace.rows[split]
    labels = getattr(ds, split).labels
    for row in np.flatnonzero(labels == 0)[:3000].tolist():
        user = int(trace.log.user_ids[events[row]])
        assert raw[row] not in seen[user]
        assert getattr(ds, split).inputs["cand_item"][row] >= 2            # a known item, never pad/OOV


def test_left_padding_and_truncation(built):
    ds, trace = built
    hist = ds.train.inputs["hist_items"]
    nonzero = hist != PAD_INDEX
    # once an item appears, every later slot is an item: padding only on the left
    assert (np.logical_or.accumulate(nonzero, axis=1) == nonzero).all()
    lengths = nonzero.sum(1)
    assert lengths.min() == 0 and lengths.max() == 12                        # first events and truncated ones
    events = trace.rows["train"][0]
    assert np.array_equal(lengths, np.minimum(trace.event_pos[events], 12))


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_arrays_equal_preprocessor_on_raw_requests(built, split):
    ds, trace = built
    data = getattr(ds, split)
    rows = np.random.default_rng(0).choice(len(data), size=400, replace=False)
    requests = [trace.raw_request(split, int(r)) for r in rows]
    encoded = Preprocessor(ds.spec).encode_requests(requests)
    assert set(encoded) == set(data.inputs)
    for name, column in encoded.items():
        np.testing.assert_array_equal(column, data.inputs[name][rows], err_msg=name)


def test_examples_are_raw_requests_of_distinct_test_users(built):
    ds, trace = built
    assert len(ds.examples) == 32
    assert len({e["user_id"] for e in ds.examples}) == 32
    encoded = Preprocessor(ds.spec).encode_requests(ds.examples)
    assert encoded["hist_items"].shape == (32, 12)
    assert all({"timestamp", "device"} <= set(e["context"]) for e in ds.examples)
    assert all(set(e["dense"]) <= {f.name for f in ds.spec.dense} for e in ds.examples)


def test_oov_item_only_seen_in_test_and_timestamp_ties():
    # user 1: items 5, 3, 4 at the same second -> order 3, 4, 5 (ties by item id), then 6 (valid), 7 (test).
    # user 2's last item 9 and user 1's 7 appear nowhere in training, so they are out of vocabulary.
    log = InteractionLog(
        user_ids=[1, 1, 1, 1, 1, 2, 2, 2, 2] + [3] * 11,
        item_ids=[5, 3, 4, 6, 7, 3, 4, 5, 9] + list(range(10, 21)),
        timestamps=[100, 100, 100, 200, 300, 10, 20, 30, 40] + list(range(1, 12)),
        items=items_table(range(1, 40)))
    ds, trace = build_dataset(log, max_seq_len=3, negatives=2, test_negatives=5, seed=0,
                              progress=False, return_trace=True)
    v = ds.spec.item_vocab
    assert set(v.tokens) == {"3", "4", "5"} | {str(i) for i in range(10, 19)}   # training items only
    assert v.tokens[:2] == ("3", "4")                                        # most popular first
    test = ds.test
    positives = test.inputs["cand_item"][test.labels == 1]
    assert positives.tolist() == [1, 1, v.lookup("20")]                      # 7 and 9 are OOV
    assert trace.raw_request("test", 0)["history"] == ["4", "5", "6"]        # 3,4,5 tie-broken, then 6
    assert test.inputs["hist_items"][0].tolist() == [v.lookup("4"), v.lookup("5"), OOV_INDEX]
    assert test.inputs["hour"][0] == 1 and test.inputs["weekday"][0] == 4    # 1970-01-01 00:05 was a Thursday
    assert "device" not in test.inputs
    first = ds.train.inputs["hist_items"][(ds.train.labels == 1) & (ds.train.groups == 0)]
    assert sorted(first[:, -1].tolist()) == [0, v.lookup("3"), v.lookup("4")]


def test_user_who_saw_every_known_item_is_a_clear_error():
    log = InteractionLog([1, 1, 1, 1], [1, 2, 3, 4], [1, 2, 3, 4], items_table(range(1, 6)))
    with pytest.raises(DataError, match="never interacted with"):
        build_dataset(log, progress=False)


def test_same_seed_same_dataset(tiny_synthetic_dataset):
    again = load_dataset("synthetic", num_users=300, num_items=400, num_events=9000, max_seq_len=20,
                         seed=7, progress=False)
    for name in ("train", "valid", "test"):
        a, b = getattr(again, name), getattr(tiny_synthetic_dataset, name)
        for key, value in a.to_npz_dict().items():
            np.testing.assert_array_equal(value, b.to_npz_dict()[key], err_msg=f"{name}.{key}")
    assert again.spec == tiny_synthetic_dataset.spec and again.examples == tiny_synthetic_dataset.examples


@pytest.mark.parametrize("source, message", [
    ("imagenet", "data source among"),
    ("synthetic:x", "data source among"),
    ("", "data source among"),
])
def test_unknown_source_is_a_clear_error(source, message):
    with pytest.raises(DataError, match=message):
        load_dataset(source, progress=False)


def test_bad_builder_arguments():
    log = generate_log(SyntheticConfig(num_users=20, num_items=60, num_events=200))
    with pytest.raises(DataError, match="max_seq_len"):
        build_dataset(log, max_seq_len=0, progress=False)
    with pytest.raises(DataError, match="negatives"):
        build_dataset(log, negatives=-1, progress=False)
    with pytest.raises(DataError, match="generator options"):
        load_dataset("synthetic", num_userz=3, progress=False)


@pytest.mark.movielens
@pytest.mark.slow
def test_movielens_dataset_sizes(movielens_dataset):
    ds = movielens_dataset
    assert len(ds.test) == 61_610 and int(ds.test.labels.sum()) == 610
    assert len(ds.valid) == 610 * 5
    assert len(ds.train) == (100_836 - 2 * 610) * 5
    assert [c.name for c in ds.spec.context] == ["hour", "weekday"]
    assert ds.spec.max_seq_len == 50 and len(ds.examples) == 32


def test_built_spec_round_trips_through_json(built, tmp_path):
    from edgerec.runtime.spec import FeatureSpec
    ds, _ = built
    loaded = FeatureSpec.load(ds.spec.save(tmp_path / "feature_spec.json"))
    assert loaded == ds.spec
    assert [c.name for c in loaded.context] == ["hour", "weekday", "device"]
    assert loaded.context[2].vocab.tokens == ("android", "ios", "web")       # by training frequency
    assert [d.name for d in loaded.dense] == ["log_seconds_since_prev", "log_history_len"]


def test_missing_movielens_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="MovieLens folder"):
        load_dataset(f"movielens:{tmp_path / 'absent'}", progress=False)
    with pytest.raises(DataError, match="no generator options"):
        load_dataset(f"movielens:{tmp_path}", num_users=3, progress=False)


def test_sampler_finds_the_last_unseen_item_of_a_near_exhausted_user():
    from edgerec.sdk.data.negatives import NegativeSampler
    # user 0 saw item indices 2..100 except 57; user 1 saw only index 2
    items0 = np.array([i for i in range(2, 101) if i != 57])
    event_item = np.concatenate((items0, [2]))
    event_user = np.concatenate((np.zeros(items0.size, int), [1]))
    sampler = NegativeSampler(event_user, event_item, [0, items0.size], [items0.size, 1], 101,
                              np.random.default_rng(0), ["a", "b"])
    negatives = sampler.sample(np.arange(items0.size))
    assert set(negatives.tolist()) == {57}
    _, candidates, labels = sampler.ranking(np.array([0, items0.size]), negatives=5)
    assert candidates[:2].tolist() == [2, 57] and labels[:2].tolist() == [1.0, 0.0]   # fewer when the pool is small
    assert 2 not in candidates[3:].tolist() and len(set(candidates[3:].tolist())) == 5


def test_ranking_negatives_are_the_pool_draw_without_building_the_pool():
    from edgerec.sdk.data.negatives import NegativeSampler, unseen_at
    rng = np.random.default_rng(3)
    vocab, counts = 3000, np.array([5, 40, 1500, 7])
    event_item = np.concatenate([rng.choice(np.arange(1, vocab), c, replace=False) for c in counts])
    event_user = np.repeat(np.arange(counts.size), counts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    sampler = NegativeSampler(event_user, event_item, starts, counts, vocab, np.random.default_rng(9), list("abcd"))
    events, candidates, labels = sampler.ranking(starts + counts - 1, negatives=100)
    reference = np.random.default_rng(9)
    for user, start in enumerate(starts.tolist()):
        pool = sampler.unseen_pool(user)
        assert np.array_equal(unseen_at(sampler.known_seen(user), np.arange(pool.size)), pool)
        mine = candidates[events == start + counts[user] - 1]
        assert np.array_equal(mine[1:], reference.choice(pool, size=min(100, pool.size), replace=False))
        assert labels[events == start + counts[user] - 1].tolist() == [1.0] + [0.0] * (mine.size - 1)
