"""The bring-your-own test models: two Gathers of one table, custom layers, saved without edgerec."""
from __future__ import annotations

import numpy as np

from edgerec.converters.keras_io import input_specs, load_keras_model


def test_byom_models_load_without_their_classes_and_score_rows(byom_zoo):
    with np.load(byom_zoo["rows"]) as npz:
        rows = {k: npz[k] for k in npz.files}
    assert set(rows) == {"clicked_ids", "target_id", "labels", "groups"}
    assert rows["target_id"].shape[1:] == (1,)
    for kind in ("din", "bst"):
        model = load_keras_model(byom_zoo[kind])
        specs = input_specs(model)
        assert specs["target_id"] == ("int32", (None, 1)) and specs["clicked_ids"][1][1] == rows["clicked_ids"].shape[1]
        tables = [w for w in model.weights if "item_table" in w.name]
        assert len(tables) == 1                                   # one table read by history and candidate
        scores = model({"clicked_ids": rows["clicked_ids"][:64], "target_id": rows["target_id"][:64]}).numpy()
        assert scores.shape == (64, 1) and np.all((scores > 0) & (scores < 1)) and np.std(scores) > 1e-4
