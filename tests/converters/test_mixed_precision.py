"""Accuracy-aware float fallback: the shared driver, and a TFLite int8 model whose one sensitive
layer must stay float to fit the budget."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError
from edgerec.converters.mixed_precision import fallback_until_within
from edgerec.converters.pipeline import PassRunner


def _measure(errors):
    return lambda nodes: (errors(len(nodes)), 1000 + 100 * len(nodes))


def test_smallest_fitting_prefix_is_chosen_and_recorded():
    ranked = [f"op{i}" for i in range(10)]
    result = fallback_until_within(ranked, lambda nodes: nodes, _measure(lambda n: 0.01 if n < 5 else 0.001), 0.003)
    assert result.within_budget and result.kept_float == tuple(ranked[:5])
    assert (result.size_bytes, result.base_size_bytes, result.base_error) == (1500, 1000, 0.01)
    record = result.to_dict()
    assert record["size_cost_bytes"] == 500 and record["kept_float"] == ranked[:5]
    assert [t["kept_float"] for t in record["trials"]][:5] == [0, 1, 2, 4, 8]


def test_no_fallback_when_the_quantized_model_fits():
    calls = []
    result = fallback_until_within(["a", "b"], lambda nodes: calls.append(nodes) or nodes,
                                   _measure(lambda n: 0.001), 0.003)
    assert result.kept_float == () and calls == [()] and result.within_budget


def test_nothing_fits_returns_the_least_error_and_says_so():
    errors = {0: 0.05, 1: 0.02, 2: 0.03, 3: 0.04}
    result = fallback_until_within(["a", "b", "c"], lambda nodes: nodes, _measure(errors.get), 0.003)
    assert not result.within_budget and result.kept_float == ("a",) and result.error == 0.02


def test_bad_budget_is_refused():
    with pytest.raises(ConverterConfigError, match="budget"):
        fallback_until_within(["a"], lambda nodes: nodes, _measure(lambda n: 0.0), -1)


def _sensitive_model(k):
    """``wide`` carries one huge channel beside the informative one: its int8 output (one scale per
    tensor) rounds the informative channel to zero, so only a float ``wide`` keeps the AUC."""
    x = k.Input((8,), dtype="float32", name="dense")
    wide = k.layers.Dense(8, use_bias=False, name="wide")
    h = wide(x)
    score = k.layers.Dense(1, activation="sigmoid", name="score")
    out = score(h)
    model = k.Model(x, out)
    kernel = np.eye(8, dtype=np.float32)
    kernel[7, 7] = 2000.0
    wide.set_weights([kernel])
    head = np.zeros((8, 1), np.float32)
    head[0, 0], head[7, 0] = 4.0, 1e-6
    score.set_weights([head, np.zeros(1, np.float32)])
    return model


@pytest.mark.slow
def test_sensitive_layer_stays_float_until_the_budget_fits(tmp_path, cache_dir):
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass
    from edgerec.converters.tfenv import import_tf

    _, k = import_tf()
    _sensitive_model(k).save(tmp_path / "sensitive.keras")
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(2000, 8)).astype(np.float32)
    labels = (dense[:, 0] + 0.3 * rng.normal(size=2000) > 0).astype(np.float32)
    np.savez(tmp_path / "rows.npz", dense=dense, labels=labels)
    runner = PassRunner(cache_dir)
    config = dict(mode="int8", data=str(tmp_path / "rows.npz"))
    plain = runner.run(TFLitePass(), tmp_path / "sensitive.keras", TFLiteConfig(**config))
    fitted = runner.run(TFLitePass(), tmp_path / "sensitive.keras", TFLiteConfig(**config, accuracy_budget=0.003))
    mixed = fitted.details["mixed_precision"]
    assert mixed["base_error"] > 0.05                               # plain int8 loses the signal
    assert mixed["within_budget"] and mixed["error"] <= 0.003
    assert any("wide" in name for name in mixed["kept_float"]), mixed["kept_float"]
    assert mixed["size_cost_bytes"] == fitted.size_bytes - mixed["base_size_bytes"]
    assert mixed["base_size_bytes"] == plain.size_bytes
    assert set(mixed["kept_float"]) <= set(fitted.details["float_nodes"])
    assert mixed["rows"] == len(labels)                             # all 2,000 labelled rows measured


def test_a_lazy_ranking_runs_only_when_the_quantized_artifact_misses_the_budget():
    from edgerec.converters.mixed_precision import fallback_until_within

    calls = []

    def ranking():
        calls.append(1)
        return ["a", "b"]

    errors = {(): 0.001, ("a",): 0.0005, ("a", "b"): 0.0}
    fits = fallback_until_within(ranking, lambda ops: ops, lambda ops: (errors[ops], 10 - len(ops)), 0.003)
    assert fits.within_budget and fits.kept_float == () and calls == []
    errors[()] = 0.01
    missed = fallback_until_within(ranking, lambda ops: ops, lambda ops: (errors[ops], 10 - len(ops)), 0.003)
    assert missed.within_budget and missed.kept_float == ("a",) and calls == [1]


def test_an_empty_ranking_keeps_the_fully_quantized_artifact_over_budget():
    from edgerec.converters.mixed_precision import fallback_until_within

    result = fallback_until_within(lambda: [], lambda ops: ops, lambda ops: (0.01, 10), 0.003)
    assert not result.within_budget and result.kept_float == () and result.artifact == ()


def test_score_budget_bounds_the_shift_of_probabilities_and_only_auc_otherwise():
    from edgerec.converters.mixed_precision import ScoreBudget

    labels = np.array([0, 0, 1, 1], np.float32)
    reference = np.array([0.1, 0.3, 0.5, 0.7])
    bound = ScoreBudget(labels, reference, budget=0.003, shift=0.01)
    error, record = bound.error(reference + 0.02)                  # the same order, every score moved
    assert record["delta_auc"] == 0 and np.isclose(record["mean_abs_dp"], 0.02)
    assert np.isclose(error, 2.0) and bound.fallback_budget == 1.0
    swapped = np.array([0.1, 0.5, 0.3, 0.7])                          # one pair swapped, no shift on average
    assert np.isclose(bound.error(swapped)[0], max(0.25 / 0.003, 0.1 / 0.01))
    logits = ScoreBudget(labels, reference * 10 - 3, budget=0.003)    # not probabilities: ΔAUC alone
    assert logits.shift is None and logits.fallback_budget == 0.003
    assert logits.error(reference * 10 - 2)[0] == 0.0
    exact = ScoreBudget(labels, reference, budget=0.0, shift=0.01)
    assert exact.error(swapped)[0] == np.inf and exact.error(reference)[0] == 0.0
    assert exact.to_dict() == {"budget": 0.0, "shift_budget": 0.01}
