"""Adversarial training on item-embedding outputs: perturbation norms, training step, robustness report."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from edgerec.runtime.errors import SpecError

pytest.importorskip("tf_keras")

from edgerec.sdk.training.adversarial import (AdversarialConfig, EmbeddingForward, adversarial_fit,  # noqa: E402
                                              compare_robustness, format_comparison, robustness_report)

TINY = dict(embedding_dim=8, hidden_units=(16,), attention_units=(8,), gru_units=8, ff_dim=16)


@pytest.fixture(scope="module")
def dataset():
    from edgerec.sdk.data import load_dataset

    return load_dataset("synthetic", num_users=150, num_items=120, num_events=3000, max_seq_len=8,
                        negatives=2, seed=3, progress=False)


def _parts(dataset, family="din", seed=0):
    from edgerec.converters.tfenv import import_tf
    from edgerec.sdk.models import ModelConfig, build_model

    import_tf()[1].utils.set_random_seed(seed)
    return build_model(family, dataset.spec, ModelConfig(**TINY))


def _batch(parts, split, n=48):
    """``n`` rows spread over the split (different users, short and full histories)."""
    rows = np.linspace(0, len(split) - 1, n).astype(int)
    inputs = parts.select_inputs(split.inputs)
    return {k: v[rows] for k, v in inputs.items()}, split.labels[rows].reshape(-1, 1)


def test_config_rejects_bad_values():
    for kwargs in ({"attack": "cw"}, {"eps": 0}, {"eps": -1.0}, {"weight": -0.5}, {"norm": "l1"},
                   {"steps": 0}, {"eps": float("nan")}):
        with pytest.raises(SpecError, match="Expected"):
            AdversarialConfig(**kwargs)
    assert AdversarialConfig(attack="pgd", steps=4).pgd_step == pytest.approx(2.5 / 4)


@pytest.mark.parametrize("family", ["din", "gru", "lstm", "bst"])
def test_forward_from_embeddings_equals_fused(dataset, family):
    parts = _parts(dataset, family)
    forward = EmbeddingForward(parts)
    x, _ = _batch(parts, dataset.test)
    expected = parts.fused(x).numpy()
    np.testing.assert_allclose(forward.score(x, *forward.embed(x)).numpy(), expected, atol=1e-6)


def test_fgsm_l2_has_norm_eps_per_vector_and_spares_padding(dataset):
    parts = _parts(dataset)
    forward = EmbeddingForward(parts)
    x, y = _batch(parts, dataset.train)
    radius = 0.3 * float(forward.embedding_scale())
    r_hist, r_cand = forward.perturbation(x, y, *forward.embed(x), AdversarialConfig(eps=0.3))
    cand_norm = np.linalg.norm(r_cand.numpy(), axis=-1)
    np.testing.assert_allclose(cand_norm, radius, rtol=1e-4)
    hist_norm = np.linalg.norm(r_hist.numpy(), axis=-1)
    real = x["hist_items"] != 0
    assert real.any() and (~real).any()
    np.testing.assert_allclose(hist_norm[real], radius, rtol=1e-4)
    assert np.all(hist_norm[~real] == 0.0)


def test_fgsm_linf_is_eps_sign(dataset):
    parts = _parts(dataset)
    forward = EmbeddingForward(parts)
    x, y = _batch(parts, dataset.test)
    radius = 0.2 * float(forward.embedding_scale())
    _, r_cand = forward.perturbation(x, y, *forward.embed(x), AdversarialConfig(eps=0.2, norm="linf"))
    np.testing.assert_allclose(np.abs(r_cand.numpy()), radius, rtol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_stays_in_ball_and_raises_loss(dataset, norm):
    parts = _parts(dataset)
    forward = EmbeddingForward(parts)
    x, y = _batch(parts, dataset.test)
    hist_emb, cand_emb = forward.embed(x)
    config = AdversarialConfig(attack="pgd", eps=0.5, norm=norm, steps=4)
    r_hist, r_cand = forward.perturbation(x, y, hist_emb, cand_emb, config)
    radius = 0.5 * float(forward.embedding_scale())
    for r in (r_hist.numpy(), r_cand.numpy()):
        size = np.abs(r).max(axis=-1) if norm == "linf" else np.linalg.norm(r, axis=-1)
        assert size.max() <= radius * (1 + 1e-5)
        assert size.max() > 0.5 * radius          # the attack actually moved

    def loss(probs):
        p = np.clip(probs.numpy(), 1e-7, 1 - 1e-7)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

    clean = loss(forward.score(x, hist_emb, cand_emb))
    attacked = loss(forward.score(x, hist_emb + r_hist, cand_emb + r_cand))
    assert attacked > clean


@pytest.mark.slow
def test_adversarial_fit_trains_and_exports_plain_parts(dataset, tmp_path):
    from edgerec.sdk.training import TrainConfig, evaluate, load_model_dir, save_model_dir

    parts = _parts(dataset)
    plain_layers = [layer.name for layer in parts.fused.layers]
    before = [w.copy() for w in parts.fused.get_weights()]
    history = adversarial_fit(parts, dataset, TrainConfig(epochs=1, batch_size=256, verbose=0, max_train_rows=3000),
                              AdversarialConfig(attack="pgd", eps=0.3, steps=2))
    assert history["adversarial"]["attack"] == "pgd" and len(history["epochs"]) == 1
    row = history["epochs"][0]
    assert np.isfinite(row["loss"]) and row["adversarial_loss"] >= row["loss"] - 1e-3
    after = parts.fused.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))

    x, _ = _batch(parts, dataset.test, 64)
    fused = parts.fused(x).numpy()
    user = parts.user_encoder(parts.select_inputs(x, "user_encoder"))
    split = parts.scorer({**{k: v for k, v in x.items() if k in parts.scorer.input_names}, **user}).numpy()
    np.testing.assert_allclose(split, fused, atol=1e-5)

    out = save_model_dir(parts, dataset, tmp_path / "adv", evaluate(parts, dataset))
    loaded = load_model_dir(out)
    assert [layer.name for layer in loaded.fused.layers] == plain_layers   # no attack in the saved graph
    np.testing.assert_allclose(loaded.fused(x).numpy(), fused, atol=1e-6)


@pytest.mark.slow
def test_robustness_report_is_consistent(dataset):
    from edgerec.sdk.training import TrainConfig, fit

    parts = _parts(dataset)
    fit(parts, dataset, TrainConfig(epochs=1, batch_size=256, verbose=0))
    report = robustness_report(parts, dataset, [0.0, 0.2, 1.0], attack="fgsm")
    aucs = [r["auc"] for r in report["results"]]
    assert report["rows"] == len(dataset.test)
    assert aucs[0] == pytest.approx(report["clean_auc"], abs=1e-6)
    assert aucs[2] < aucs[1] < aucs[0]                       # larger eps, lower AUC
    assert report["results"][1]["eps_abs"] == pytest.approx(0.2 * report["embedding_scale"])
    pgd = robustness_report(parts, dataset, [0.0, 0.2], attack="pgd", steps=3)
    assert pgd["results"][1]["auc"] < pgd["clean_auc"]
    rows = compare_robustness(report, report)
    assert rows[2]["drop_ratio"] == pytest.approx(1.0) and "plain AUC" in format_comparison(rows)
    with pytest.raises(SpecError, match="Expected"):
        robustness_report(parts, dataset, [0.1], attack="deepfool")
    with pytest.raises(SpecError, match="Expected"):
        robustness_report(parts, dataset, [-0.1])


def test_train_flags_build_the_config():
    from edgerec.sdk.cli import train

    parser = argparse.ArgumentParser()
    train.configure(parser)
    assert train.job_from_args(parser.parse_args(["--out", "x"])).adversarial is None
    job = train.job_from_args(parser.parse_args(["--out", "x", "--adversarial", "pgd", "--eps", "0.25",
                                                 "--adv-weight", "0.5", "--pgd-steps", "5"]))
    assert job.adversarial == AdversarialConfig(attack="pgd", eps=0.25, weight=0.5, steps=5)
    assert AdversarialConfig.from_dict(job.adversarial.to_dict()) == job.adversarial
    with pytest.raises(SpecError, match="Expected"):
        train.job_from_args(parser.parse_args(["--out", "x", "--adversarial", "fgsm", "--eps", "0"]))
    with pytest.raises(SpecError, match="--adversarial or --strategy, not both"):
        train.job_from_args(parser.parse_args(["--out", "x", "--adversarial", "fgsm", "--strategy", "mirrored"]))
