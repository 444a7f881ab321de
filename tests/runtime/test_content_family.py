"""Cold start through a bundle of edgerec's own ``context`` family (untrained, tiny): the content
encoder exported with it, and an added item scored exactly like its vector fed with the OOV id."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow
NEW_TEXT = "Space Cowboys (2000) Action|Adventure"


@pytest.fixture(scope="module")
def family_bundle(tmp_path_factory, tiny_synthetic_dataset):
    from edgerec.converters.export import export_model
    from edgerec.converters.select import LatencyConfig
    from edgerec.runtime.spec import TextSpec
    from edgerec.runtime.text import build_text_vocab
    from edgerec.sdk.models import ContentParts, ModelConfig, build_content_encoder, build_model, content_table
    from edgerec.sdk.models.content import tokenize_items

    ds = tiny_synthetic_dataset
    config = ModelConfig(embedding_dim=8, hidden_units=(16,), attention_units=(8,), context_dim=4, content_dim=8,
                         text_heads=1, text_ff_dim=16, text_blocks=1, text_max_tokens=8)
    text = TextSpec(build_text_vocab(ds.item_text[2:], max_size=500), 8, content_dim=8)
    spec = type(ds.spec)(ds.spec.max_seq_len, ds.spec.item_vocab, ds.spec.context, ds.spec.dense, text)
    encoder = build_content_encoder(spec, config)
    parts = build_model("context", spec, config, ContentParts(encoder, content_table(encoder, tokenize_items(spec, ds.item_text))))
    assert "cand_content" in parts.fused.input_names and "cand_content" in parts.scorer.input_names
    root = tmp_path_factory.mktemp("content-family")
    model_dir = root / "model"
    model_dir.mkdir()
    names = {}
    for name, model in parts.parts().items():
        names[name] = f"{name}.keras"
        model.save(model_dir / names[name])
    spec.save(model_dir / "feature_spec.json")
    (model_dir / "item_text.json").write_text(json.dumps(list(ds.item_text)))
    for file, split, n in (("calibration.npz", ds.train, 300), ("validation.npz", ds.test, 400)):
        arrays = {k: np.asarray(v[:n]) for k, v in split.inputs.items()}
        arrays["cand_content"] = np.zeros((len(arrays["cand_item"]), 8), np.float32)
        np.savez(model_dir / file, labels=split.labels[:n], groups=split.groups[:n], **arrays)
    with open(model_dir / "examples.jsonl", "w") as handle:
        for example in ds.examples[:16]:
            handle.write(json.dumps({k: v for k, v in example.items() if k != "expected"}) + "\n")
    (model_dir / "edgerec_model.json").write_text(json.dumps({
        "format_version": 1, "family": "context", "keras": "tf_keras", "parts": names,
        "custom_objects_module": "edgerec.sdk.models.layers", "feature_spec": "feature_spec.json",
        "data": {"calibration": "calibration.npz", "validation": "validation.npz"}, "examples": "examples.jsonl",
        "content_encoder": {"item_text": "item_text.json"}, "config": {}, "data_source": "synthetic"}))
    manifest = export_model(model_dir, root / "bundle", quantize=("none",),
                            latency=LatencyConfig(batch_sizes=(1, 64), rounds=3, min_time_s=0.002, warmup=1))
    return {"bundle": root / "bundle", "manifest": manifest, "example": dict(ds.examples[0])}


def test_the_context_bundle_holds_a_validated_content_encoder(family_bundle):
    from edgerec.runtime.examples import check_bundle

    manifest = family_bundle["manifest"]
    for backend in ("litert", "onnxruntime"):
        chosen = manifest.artifact(manifest.selected[backend]["content_encoder"])
        assert chosen.validation["cosine_min"] >= chosen.validation["min_cosine_required"]
    results = check_bundle(family_bundle["bundle"])
    assert results and all(r.passed for r in results), [r.describe() for r in results if not r.passed]


@pytest.mark.parametrize("backend", ("litert", "onnxruntime"))
def test_added_item_through_the_split_and_fused_parts(family_bundle, backend):
    import edgerec.runtime as er
    from edgerec.runtime.preprocess import Preprocessor

    example = family_bundle["example"]
    user = {k: example[k] for k in ("history", "context", "dense") if k in example}
    with er.load(family_bundle["bundle"], backend=backend) as predictor:
        plain = predictor.predict([{**user, "item": "brand-new"}])
        plain_split = predictor.score_candidates(user, ["brand-new"])
        predictor.add_items({"brand-new": NEW_TEXT})
        fused = predictor.predict([{**user, "item": "brand-new"}], return_oov=True)
        split = predictor.score_candidates(user, ["brand-new", example["item"]], return_oov=True)
        assert fused.oov.tolist() == [False] and split.oov.tolist()[0] is False
        assert abs(float(fused.scores[0]) - float(plain[0])) > 1e-5
        assert abs(float(split.scores[0]) - float(plain_split[0])) > 1e-5
        np.testing.assert_allclose(split.scores[0], fused.scores[0], atol=0.05)   # scorer vs fused artifacts
        arrays = Preprocessor(predictor.spec).encode_requests([{**user, "item": "brand-new"}])
        arrays["cand_content"] = predictor.item_vectors([NEW_TEXT])
        direct = predictor.predict_arrays({t.name: arrays[t.name] for t in predictor.input_specs("fused")})["score"]
        np.testing.assert_allclose(fused.scores[0], np.asarray(direct).reshape(-1)[0], atol=1e-6)
