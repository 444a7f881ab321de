"""Split bundles serve one user's state once: a scorer exported from `build_model` broadcasts the
1-row state in its graph (LiteRT and ONNX Runtime, fp32 and int8) with the scores of the state
repeated; an older scorer that cannot gets it repeated (the fallback). ONNX scorers exported with
free history positions get that state without its padded positions where the scores stay the same
(the attention families), and whole where they would not (none here) or cannot (LiteRT)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgerec.runtime.io import sha256_file
from edgerec.runtime.manifest import Artifact, Manifest, file_entry, write_manifest

from .conftest import make_requests, make_spec

pytestmark = pytest.mark.slow
pytest.importorskip("tf_keras")
pytest.importorskip("tf2onnx")

BACKENDS = ("litert", "onnxruntime")
N_CANDIDATES = 9


def _keras_parts(family: str):
    from edgerec.converters.tfenv import import_tf
    from edgerec.sdk.models import ModelConfig, build_model

    _, keras = import_tf()
    keras.utils.set_random_seed(3)
    config = ModelConfig(embedding_dim=8, hidden_units=(8,), attention_units=(8, 4), gru_units=8,
                         context_dim=2, use_content=False)
    return build_model(family, make_spec(), config)


def _convert(model_path: Path, part: str, fmt: str, precision: str, work: Path, calibration: Path, free_axes=()):
    from edgerec.converters.passes.onnx import OnnxExportConfig, OnnxExportPass
    from edgerec.converters.passes.onnx_quant import OrtQuantizeConfig, OrtQuantizePass
    from edgerec.converters.passes.tflite import TFLiteConfig, TFLitePass

    module = "edgerec.sdk.models.layers"
    if fmt == "tflite":
        mode = {"fp32": "fp32", "int8": "int8"}[precision]
        config = TFLiteConfig(mode=mode, data=str(calibration) if mode == "int8" else None,
                              custom_objects_module=module)
        return TFLitePass().run(model_path, config, work / f"{part}-{fmt}-{precision}", part=part)
    fp32 = OnnxExportPass().run(model_path, OnnxExportConfig(custom_objects_module=module, free_axes=free_axes),
                                work / f"{part}-onnx-fp32", part=part)
    if precision == "fp32":
        return fp32
    return OrtQuantizePass().run(fp32, OrtQuantizeConfig(mode="dynamic"), work / f"{part}-onnx-{precision}", part=part)


def _write_bundle(directory: Path, parts, precision: str) -> Path:
    """user_encoder + scorer, tflite and onnx, of one precision (int8: full-integer TFLite and
    dynamic-range ONNX); the ONNX scorer with free history positions, as `export` writes it."""
    from edgerec.converters.keras_io import input_specs
    from edgerec.converters.specs import position_axes
    from edgerec.runtime.preprocess import Preprocessor

    work = directory.parent / f"{directory.name}-work"
    directory.mkdir(parents=True)
    work.mkdir()
    spec = parts.spec
    spec.save(directory / "feature_spec.json")
    arrays = Preprocessor(spec).encode_requests(make_requests(64, seed=1))
    user = {k: v.numpy() for k, v in parts.user_encoder({"hist_items": arrays["hist_items"]}).items()}
    calibration = {"user_encoder": work / "user_encoder.npz", "scorer": work / "scorer.npz"}
    np.savez(calibration["user_encoder"], **arrays)
    np.savez(calibration["scorer"], **arrays, **user)
    artifacts, selected = [], {backend: {} for backend in BACKENDS}
    for part in ("user_encoder", "scorer"):
        model_path = work / f"{part}.keras"
        getattr(parts, part).save(model_path)
        for fmt, backend in (("tflite", "litert"), ("onnx", "onnxruntime")):
            free = position_axes(input_specs(parts.scorer)) if part == "scorer" else ()
            made = _convert(model_path, part, fmt, precision, work, calibration[part], free)
            name = f"{part}.{precision}.{fmt}"
            shutil.copyfile(made.path, directory / name)
            artifacts.append(Artifact(file=name, format=fmt, precision=made.precision, part=part,
                                      sha256=sha256_file(directory / name), size_bytes=(directory / name).stat().st_size,
                                      inputs=made.inputs, outputs=made.outputs))
            selected[backend][part] = name
    write_manifest(directory, Manifest(artifacts=artifacts, selected=selected,
                                       files=[file_entry(directory, "feature_spec.json", "feature_spec")],
                                       model={"family": parts.family, "keras": "tf_keras"},
                                       feature_spec="feature_spec.json"))
    return directory


@pytest.fixture(scope="module", params=[("context", "fp32"), ("din", "int8"), ("gru", "int8")],
                ids=lambda p: "-".join(p))
def split_bundle(request, tmp_path_factory):
    family, precision = request.param
    parts = _keras_parts(family)
    path = _write_bundle(tmp_path_factory.mktemp("split") / f"{family}-{precision}", parts, precision)
    return parts, path, precision


def _request():
    request = make_requests(1, seed=4)[0]
    request["history"] = ["12", "15", "18"]
    return request


def _backend_rows(model, part: str) -> list:
    """Records the batch of every feed reaching ``part``'s backend."""
    backend, seen = model.parts[part], []
    for method in ("run", "run_validated"):
        original = getattr(backend, method)

        def spy(feeds, _original=original):
            seen.append({k: v.shape[0] for k, v in feeds.items()})
            return _original(feeds)

        setattr(backend, method, spy)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_scorer_takes_the_user_state_once(split_bundle, backend):
    from edgerec.runtime.loaded import LoadedBundle
    from edgerec.runtime.predictor import Predictor

    parts, path, precision = split_bundle
    candidates = [str(i) for i in range(10, 10 + N_CANDIDATES)]
    model = LoadedBundle.open(path, backend=backend, share_sessions=False)
    try:
        user_outputs = set(model.output_names["user_encoder"].values())
        assert model.shared_inputs["scorer"] == user_outputs
        pre = model.preprocessor
        state = model.run("user_encoder", {"hist_items": pre.encode_history([_request()["history"]])})
        feeds = {**pre.encode_candidates(candidates, _request()["context"], _request()["dense"])}
        seen = _backend_rows(model, "scorer")
        once = model.run("scorer", {**feeds, **state})["score"].reshape(-1)
        assert all(seen[-1][name] == 1 for name in user_outputs)
        repeated = model.run("scorer", {**feeds, **{k: np.repeat(v, N_CANDIDATES, 0) for k, v in state.items()}})
        np.testing.assert_allclose(once, repeated["score"].reshape(-1), rtol=0, atol=1e-6)
    finally:
        model.close()
    keras_rows = {**feeds, "hist_items": np.repeat(pre.encode_history([_request()["history"]]), N_CANDIDATES, 0)}
    want = parts.fused(parts.select_inputs(keras_rows), training=False).numpy().reshape(-1)
    tolerance = 1e-5 if precision == "fp32" else 0.05
    np.testing.assert_allclose(once, want, rtol=0, atol=tolerance)
    with Predictor(path, backend=backend) as predictor:
        scores = predictor.score_candidates(_request(), candidates, use_cache=False)
    np.testing.assert_allclose(scores, once, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_scorer_takes_the_state_without_its_padded_positions(split_bundle, backend):
    """A 3-item history in 5 positions: the attention families' ONNX scorer is fed the 3 valid
    positions (the probe found the scores unchanged), with the scores of the whole state; LiteRT
    artifacts (fixed sizes) and the GRU scorer (no positions) get the state whole."""
    from edgerec.runtime.loaded import LoadedBundle

    parts, path, _ = split_bundle
    model = LoadedBundle.open(path, backend=backend, share_sessions=False)
    try:
        trims = backend == "onnxruntime" and parts.family != "gru"
        positions = model.position_inputs.get("scorer", ())
        assert bool(positions) == trims
        if trims:
            assert positions[0] == "user_mask" and set(positions) <= model.shared_inputs["scorer"]
        pre = model.preprocessor
        state = model.run("user_encoder", {"hist_items": pre.encode_history([_request()["history"]])})
        feeds = pre.encode_candidates([str(i) for i in range(10, 10 + N_CANDIDATES)], _request()["context"],
                                      _request()["dense"])
        backend_impl, lengths = model.parts["scorer"], []
        original = backend_impl.run_validated
        backend_impl.run_validated = lambda f: lengths.append(f.get("user_mask", np.zeros((1, 0))).shape[1]) \
            or original(f)
        once = model.run("scorer", {**feeds, **state})["score"].reshape(-1)
        backend_impl.run_validated = original
        rows = {**feeds, **{k: np.repeat(v, N_CANDIDATES, 0) for k, v in state.items()}}
        whole = original({t.name: rows[t.name] for t in backend_impl.inputs})
        np.testing.assert_allclose(once, whole["score"].reshape(-1), rtol=0, atol=1e-6)
        if "user_mask" in state:
            assert lengths == [3 if trims else state["user_mask"].shape[1]]
    finally:
        model.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_older_scorer_gets_the_state_repeated(bundle, backend):
    """The hand-made conftest scorer concatenates the state with the candidate: it cannot take a
    1-row state, so the state is repeated (same scores as full rows through score_rows)."""
    from edgerec.runtime.loaded import LoadedBundle

    model = LoadedBundle.open(bundle, backend=backend, share_sessions=False)
    try:
        assert model.shared_inputs["scorer"] == frozenset()
        pre = model.preprocessor
        request = make_requests(1, seed=2)[0]
        candidates = [str(i) for i in range(10, 10 + N_CANDIDATES)]
        feeds = pre.encode_candidates(candidates, request["context"], request["dense"])
        hist = pre.encode_history([request["history"]])
        state = model.run("user_encoder", {"hist_items": hist})
        seen = _backend_rows(model, "scorer")
        once = model.run("scorer", {**feeds, **state})["score"].reshape(-1)
        assert seen and all(rows == N_CANDIDATES for rows in seen[-1].values())
        full = model.score_rows({**feeds, "hist_items": np.repeat(hist, N_CANDIDATES, 0)})
        np.testing.assert_allclose(once, full, rtol=0, atol=1e-6)
    finally:
        model.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_arrays_takes_a_one_row_state(split_bundle, backend):
    """Caller tensors get the broadcast too: the user-encoder outputs as 1 row beside N candidates
    score as the state repeated, still under the tensor path's checks."""
    from edgerec.runtime.errors import RequestError
    from edgerec.runtime.predictor import Predictor

    _, path, _ = split_bundle
    request = _request()
    with Predictor(path, backend=backend) as predictor:
        pre = predictor._model.preprocessor
        state = predictor.predict_arrays({"hist_items": pre.encode_history([request["history"]])}, part="user_encoder")
        feeds = pre.encode_candidates([str(i) for i in range(10, 10 + N_CANDIDATES)], request["context"],
                                      request["dense"])
        feeds = {t.name: feeds[t.name] for t in predictor.input_specs("scorer") if t.name not in state}
        once = predictor.predict_arrays({**feeds, **state}, part="scorer")["score"]
        repeated = predictor.predict_arrays({**feeds, **{k: np.repeat(v, N_CANDIDATES, 0) for k, v in state.items()}},
                                            part="scorer")["score"]
        assert once.shape == (N_CANDIDATES, 1)
        np.testing.assert_allclose(once, repeated, rtol=0, atol=1e-6)
        unknown_ids = np.full(N_CANDIDATES, pre.spec.item_vocab.size, np.int32)
        with pytest.raises(RequestError, match="ids in"):
            predictor.predict_arrays({**feeds, **state, "cand_item": unknown_ids}, part="scorer")
        name = sorted(state)[0]
        with pytest.raises(RequestError, match="finite"):
            predictor.predict_arrays({**feeds, **state, name: np.full_like(state[name], np.nan)}, part="scorer")
        two_rows = {k: np.repeat(v, 2, 0) for k, v in state.items()}
        with pytest.raises(RequestError, match="one batch size"):
            predictor.predict_arrays({**feeds, **two_rows}, part="scorer")


def test_predict_arrays_refuses_a_one_row_state_the_scorer_cannot_broadcast(bundle):
    from edgerec.runtime.errors import RequestError
    from edgerec.runtime.predictor import Predictor

    with Predictor(bundle, backend="onnxruntime") as predictor:
        pre = predictor._model.preprocessor
        request = make_requests(1, seed=2)[0]
        state = predictor.predict_arrays({"hist_items": pre.encode_history([request["history"]])}, part="user_encoder")
        feeds = pre.encode_candidates([str(i) for i in range(10, 13)], request["context"], request["dense"])
        feeds = {t.name: feeds[t.name] for t in predictor.input_specs("scorer") if t.name not in state}
        with pytest.raises(RequestError, match="one batch size"):
            predictor.predict_arrays({**feeds, **state}, part="scorer")
