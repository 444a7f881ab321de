"""Cold-start evaluation: items first seen late are held out of the dataset, their rows are built
as a device would see them (OOV id, the user's earlier history), and scored with and without
their content vectors."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.runtime.contract import CAND_CONTENT, CAND_ITEM, HIST_ITEMS
from edgerec.runtime.errors import EdgeRecError
from edgerec.runtime.spec import OOV_INDEX

WARM, COLD, USERS = 40, 6, 30


def crafted_log(seed: int = 0):
    """USERS users x 20 events over WARM items, then COLD new items, each seen only after every
    warm event (the last events of the timeline)."""
    from edgerec.sdk.data import InteractionLog, ItemsTable

    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(USERS):
        for k, item in enumerate(rng.choice(WARM, 20, replace=False)):
            users.append(u)
            items.append(100 + int(item))
            times.append(1_000_000 + 1000 * k + u)
    for u in range(0, USERS, 2):                              # half the users each see two new items
        for k, item in enumerate(rng.choice(COLD, 2, replace=False)):
            users.append(u)
            items.append(900 + int(item))
            times.append(2_000_000 + 1000 * k + u)
    ids = [100 + i for i in range(WARM)] + [900 + i for i in range(COLD)]
    genres = [["Comedy"] if i % 2 else ["Drama"] for i in range(len(ids))]
    table = ItemsTable(np.asarray(ids), [f"movie {i}" for i in ids], genres, [g[0] for g in genres])
    return InteractionLog(np.asarray(users), np.asarray(items), np.asarray(times), table, name="crafted")


def test_late_items_are_those_first_seen_in_the_last_share_of_events():
    from edgerec.sdk.data.builder import late_items

    log = crafted_log()
    cold_events = USERS // 2 * 2
    assert late_items(log, cold_events / len(log)).tolist() == sorted(set(log.item_ids[log.item_ids >= 900].tolist()))
    assert late_items(log, 0.0).size == 0


def test_held_out_items_leave_the_dataset_and_become_oov_rows_with_their_history():
    from edgerec.sdk.data.builder import build_dataset

    log = crafted_log()
    ds = build_dataset(log, max_seq_len=8, negatives=2, progress=False, cold_start_fraction=0.05)
    rows = ds.meta["cold_start"]
    cold = {str(i) for i in log.item_ids[log.item_ids >= 900].tolist()}
    assert set(rows.item_ids) == cold
    assert not cold & set(ds.spec.item_vocab.tokens)
    positives = rows.split.labels > 0.5
    assert positives.sum() == (log.item_ids >= 900).sum()
    assert (rows.split.inputs[CAND_ITEM] == OOV_INDEX).all()
    assert rows.texts == [f"movie {i} {'Comedy' if (WARM + int(i) - 900) % 2 else 'Drama'}" for i in rows.item_ids]
    # a row's history: the user's warm items before the event, never a cold one (they are OOV: index 1)
    assert not (rows.split.inputs[HIST_ITEMS] == OOV_INDEX).any()
    for request, label, row in zip(rows.requests, rows.split.labels, rows.item_rows):
        assert request["item"] == rows.item_ids[row]
        assert not set(request["history"]) & cold
        if label < 0.5:      # a negative: a new item this user never interacted with
            seen = log.item_ids[(log.user_ids == int(request["user_id"]))].astype(str)
            assert request["item"] not in seen
    with pytest.raises(EdgeRecError, match="cold_start_fraction"):
        build_dataset(log, progress=False, cold_start_fraction=0.7)


class _ContentScorer:
    """A stand-in content model whose score is the first component of cand_content."""

    def __init__(self, width: int):
        from edgerec.converters.tfenv import import_tf

        _, keras = import_tf()
        content = keras.Input(shape=(width,), name=CAND_CONTENT)
        cand = keras.Input(shape=(), dtype="int32", name=CAND_ITEM)
        score = keras.layers.Dense(1, use_bias=False, trainable=False, name="score")(content)
        self.fused = keras.Model({CAND_ITEM: cand, CAND_CONTENT: content}, score)
        self.fused.get_layer("score").set_weights([np.eye(width, 1, dtype=np.float32)])

    def select_inputs(self, arrays, part="fused"):
        return {n: arrays[n] for n in self.fused.input_names}


def test_cold_start_metrics_score_each_row_with_its_items_vector_and_with_zeros():
    from edgerec.runtime.metrics import auc
    from edgerec.sdk.data.builder import build_dataset
    from edgerec.sdk.metrics.cold_start import cold_start_metrics

    rows = build_dataset(crafted_log(), max_seq_len=8, negatives=2, progress=False,
                         cold_start_fraction=0.05).meta["cold_start"]
    vectors = np.random.default_rng(0).normal(size=(len(rows.item_ids), 3)).astype(np.float32)
    block = cold_start_metrics(_ContentScorer(3), rows, vectors)
    assert block["auc_with_content"] == pytest.approx(auc(rows.split.labels, vectors[rows.item_rows, 0]))
    assert block["auc_without_content"] == pytest.approx(0.5)        # every row ties without content
    assert block["rows"] == len(rows) and block["items"] == COLD
    assert block["positives"] == int(rows.split.labels.sum())
    with pytest.raises(EdgeRecError, match="content vectors of shape"):
        cold_start_metrics(_ContentScorer(3), rows, vectors[:, :2])


@pytest.mark.slow
def test_a_trained_content_model_reports_cold_start(tmp_path):
    """`train_model` on a dataset with held-out items adds the cold_start block."""
    from edgerec.sdk.data.builder import build_dataset
    from edgerec.sdk.models import ModelConfig
    from edgerec.sdk.training import TrainConfig
    from edgerec.sdk.training.pipeline import train_model

    ds = build_dataset(crafted_log(), max_seq_len=8, negatives=2, progress=False, cold_start_fraction=0.05)
    config = ModelConfig(embedding_dim=8, hidden_units=(8,), attention_units=(8,), content_dim=8, text_ff_dim=8,
                         content_epochs=1, content_dropout=0.5)
    _, _, metrics = train_model(ds, "context", config, TrainConfig(epochs=1, verbose=0, full_catalogue_rows=0))
    block = metrics["cold_start"]
    assert block["items"] == COLD and block["rows"] == len(ds.meta["cold_start"])
    assert 0.0 <= block["auc_with_content"] <= 1.0
    assert block["auc_without_content"] == pytest.approx(0.5, abs=0.05)
