"""Prune pass: target sparsity reached and reported per layer, skips listed, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from edgerec.converters.errors import ConverterConfigError, ModelLoadError
from edgerec.converters.pipeline import PassRunner


@pytest.mark.slow
def test_din_pruned_to_target_with_per_layer_report(model_dir, rows_npz, cache_dir, rows_for):
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.converters.passes.prune import PruneConfig, PrunePass

    # batch 8 → 64 steps: frequency 6 > 1, end_step 42; the shared item embedding steps twice per batch.
    config = PruneConfig(sparsity=0.5, data=str(rows_npz), epochs=2, batch_size=8)
    art = PassRunner(cache_dir).run(PrunePass(), model_dir / "din.keras", config)
    details = art.details
    assert (details["steps"], details["end_step"], details["frequency"]) == (64, 42, 6)
    assert abs(details["achieved_sparsity"] - 0.5) <= 0.01
    assert {"item_embedding", "att_hidden", "mlp_1", "mlp_2", "score", "hour_embedding"} <= set(details["layers"])
    for name, layer in details["layers"].items():
        # pair blocks: pruning counts blocks, and an odd dimension's last blocks hold one weight
        assert abs(layer["sparsity"] - 0.5) <= 0.01 + 1 / layer["weights"], name
    assert [s["layer"] for s in details["skipped_layers"]] == ["pool_scale"]   # custom layer with a weight
    assert "tfmot cannot prune LearnedScale" in details["skipped_layers"][0]["reason"]
    # Count zeros in the saved file ourselves: the report is not taken on trust.
    pruned = load_keras_model(art.path)
    table = pruned.get_layer("item_embedding").get_weights()[0]
    assert abs(np.mean(table == 0) - 0.5) <= 0.01
    assert np.all(pruned.get_layer("pool_scale").get_weights()[0] != 0)
    # pair blocks: the two values a 4-bit format packs into one byte are pruned together
    assert details["blocks"]["item_embedding"] == [1, 2] and details["blocks"]["mlp_1"] == [2, 1]
    assert "score" not in details["blocks"]                      # a [k, 1] kernel stays element-wise
    assert np.array_equal(table[:, 0::2] == 0, table[:, 1::2] == 0)
    kernel = pruned.get_layer("mlp_1").get_weights()[0]
    even = kernel.shape[0] // 2 * 2                               # an odd last input row is a block of its own
    assert abs(np.mean(kernel == 0) - 0.5) <= 0.01
    assert np.array_equal(kernel[0:even:2] == 0, kernel[1:even:2] == 0), kernel.shape
    rows = rows_for(32, seed=2)
    names = ["hist_items", "cand_item", "hour", "dense"]
    probs = np.asarray(pruned({n: rows[n] for n in names}))
    assert probs.shape == (32, 1) and np.all((probs >= 0) & (probs <= 1))
    assert art.format == "keras" and art.lineage[-1]["config"]["sparsity"] == 0.5


@pytest.mark.slow
def test_attention_model_prunes_mha_kernels(model_dir, rows_npz, cache_dir):
    from edgerec.converters.passes.prune import PruneConfig, PrunePass

    art = PassRunner(cache_dir).run(PrunePass(), model_dir / "mha.keras",
                                    PruneConfig(sparsity=0.3, data=str(rows_npz), epochs=1))
    assert abs(art.details["achieved_sparsity"] - 0.3) <= 0.01
    assert "mha" in art.details["layers"] and art.details["skipped_layers"] == []


@pytest.mark.slow
def test_pruned_model_flows_into_export(model_dir, rows_npz, cache_dir):
    from edgerec.converters.passes.prune import PruneConfig, PrunePass
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass
    from edgerec.converters.pipeline import Pipeline

    steps = [(PrunePass(), PruneConfig(sparsity=0.5, data=str(rows_npz), epochs=1)),
             (TFLitePass(), TFLiteConfig(mode="dynamic"))]
    result = Pipeline(steps, PassRunner(cache_dir)).run(model_dir / "gru.keras")
    assert result.format == "tflite" and [s["pass"] for s in result.lineage] == ["prune", "tflite"]
    assert abs(result.details["achieved_sparsity"] - 0.5) <= 0.01


def test_schedule_is_computed_from_real_steps():
    from edgerec.converters.passes.prune import PruneConfig, schedule_steps

    assert schedule_steps(2000, PruneConfig(data="x", epochs=1, batch_size=64)) == (32, 21, 3)
    assert schedule_steps(100, PruneConfig(data="x", epochs=1, batch_size=64)) == (2, 1, 1)
    total, end, frequency = schedule_steps(61610, PruneConfig(data="x", epochs=2, batch_size=64))
    assert frequency == 100 and end % frequency == 0 and end < total
    with pytest.raises(ConverterConfigError, match="at least 2 fine-tuning steps"):
        schedule_steps(10, PruneConfig(data="x", epochs=1, batch_size=64))


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.5"])
def test_sparsity_outside_0_1_is_refused(bad):
    from edgerec.converters.passes.prune import PruneConfig

    with pytest.raises(ConverterConfigError, match="sparsity strictly between 0 and 1"):
        PruneConfig(sparsity=bad, data="x.npz")


def test_missing_data_is_refused():
    from edgerec.converters.passes.prune import PruneConfig

    with pytest.raises(ConverterConfigError, match="training rows"):
        PruneConfig(sparsity=0.5)


@pytest.mark.slow
def test_keras3_model_is_refused_clearly(model_dir, rows_npz, cache_dir):
    from edgerec.converters.passes.prune import PruneConfig, PrunePass

    with pytest.raises(ModelLoadError, match="tf_keras .*Keras 3"):
        PassRunner(cache_dir).run(PrunePass(), model_dir / "keras3.keras",
                                  PruneConfig(sparsity=0.5, data=str(rows_npz)))


@pytest.mark.slow
def test_npz_without_labels_is_refused(model_dir, tmp_path, cache_dir, rows_for):
    from edgerec.converters.passes.prune import PruneConfig, PrunePass

    rows = rows_for(64)
    rows.pop("labels")
    np.savez(tmp_path / "nolabels.npz", **rows)
    with pytest.raises(ConverterConfigError, match="missing \\['labels'\\]"):
        PassRunner(cache_dir).run(PrunePass(), model_dir / "gru.keras",
                                  PruneConfig(sparsity=0.5, data=str(tmp_path / "nolabels.npz")))


@pytest.mark.slow
def test_split_parts_take_the_pruned_fused_weights(model_dir, rows_npz, cache_dir, rows_for):
    from edgerec.converters.keras_io import load_keras_model
    from edgerec.converters.passes.prune import PrunedPartConfig, PrunedPartPass, PruneConfig, PrunePass
    from edgerec.converters.pipeline import ExportedArtifact

    runner = PassRunner(cache_dir)
    pruned = runner.run(PrunePass(), model_dir / "shared_fused.keras",
                        PruneConfig(sparsity=0.5, data=str(rows_npz), epochs=1))
    config = PrunedPartConfig(pruned_model=pruned.path)
    user = runner.run(PrunedPartPass(), ExportedArtifact.from_keras(model_dir / "shared_user_encoder.keras",
                                                                    "user_encoder"), config)
    scorer = runner.run(PrunedPartPass(), ExportedArtifact.from_keras(model_dir / "shared_scorer.keras", "scorer"),
                        config)
    assert user.part == "user_encoder" and sorted(user.details["copied_layers"]) == ["item_embedding", "user_proj"]
    assert abs(scorer.details["achieved_sparsity"] - 0.5) <= 0.01
    rows = rows_for(16, seed=4)
    state = load_keras_model(user.path)({"hist_items": rows["hist_items"]})
    split = np.asarray(load_keras_model(scorer.path)({"user_state": state["user_state"],
                                                      "cand_item": rows["cand_item"]}))
    fused = np.asarray(load_keras_model(pruned.path)({"hist_items": rows["hist_items"],
                                                      "cand_item": rows["cand_item"]}))
    assert np.allclose(split, fused, atol=1e-6)
    # a layer the prune pass skipped is copied but kept out of the part's sparsity report
    skipped = runner.run(PrunedPartPass(), ExportedArtifact.from_keras(model_dir / "shared_scorer.keras", "scorer"),
                         PrunedPartConfig(pruned_model=pruned.path, unpruned_layers=("mlp_1",)))
    assert "mlp_1" in skipped.details["copied_layers"] and "mlp_1" not in skipped.details["layers"]
    assert "mlp_1" in scorer.details["layers"]
    with pytest.raises(ConverterConfigError, match="missing or different"):
        runner.run(PrunedPartPass(), ExportedArtifact.from_keras(model_dir / "scorer.keras", "scorer"), config)


@pytest.mark.slow
def test_pair_blocks_make_the_pruned_4bit_table_of_a_byom_model_compress(byom_zoo, cache_dir):
    """A bring-your-own DIN pruned in pairs: every pruned byte of its row-wise 4-bit ONNX table is 0x00,
    so gzip shrinks the table more than the element-wise pruned one (same sparsity)."""
    import gzip

    import onnx

    from edgerec.converters.flows import VARIANTS, variant_pipeline
    from edgerec.converters.passes.prune import PruneConfig, PrunePass

    runner = PassRunner(cache_dir)
    variant = next(v for v in VARIANTS if v.target == "onnx" and v.suffix == "fp32_t4")
    gzipped = {}
    for pairs in (True, False):
        pruned = runner.run(PrunePass(), byom_zoo["din"], PruneConfig(sparsity=0.5, data=str(byom_zoo["rows"]),
                                                                      epochs=1, pair_blocks=pairs))
        assert abs(pruned.details["achieved_sparsity"] - 0.5) <= 0.01
        assert ("item_table" in pruned.details["blocks"]) == pairs
        art = variant_pipeline(variant, runner, str(byom_zoo["rows"]), None).run(pruned.path)
        table = next(t for t in onnx.load(art.path).graph.initializer if t.data_type == onnx.TensorProto.INT4)
        packed = np.frombuffer(table.raw_data, np.uint8)
        # pruned in pairs, half the bytes are 0x00 (a kept value may round to 0 too); element-wise about a quarter
        assert np.mean(packed == 0) >= (0.49 if pairs else 0.2), (pairs, np.mean(packed == 0))
        gzipped[pairs] = len(gzip.compress(table.raw_data, 9)) / len(table.raw_data)
    assert gzipped[True] < gzipped[False] - 0.05, gzipped
