"""Pass pipeline and its cache, on light text-transforming passes (no TensorFlow needed)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgerec.converters.errors import ConverterConfigError
from edgerec.converters.pipeline import ExportedArtifact, Pass, PassRunner, Pipeline, Step, merged_lineage, sha256_path


@dataclass(frozen=True)
class UpperConfig:
    suffix: str = "!"
    data: str | None = None


class UpperPass(Pass):
    """Upper-cases the text and appends the suffix and the extra input file's text."""

    name = "upper"
    Config = UpperConfig
    path_fields = ("data",)
    calls = 0

    def _run_impl(self, source, config, out_dir):
        text = Path(source.path).read_text().upper() + config.suffix
        if config.data:
            text += Path(config.data).read_text()
        out = out_dir / "model.keras"
        out.write_text(text)
        return ExportedArtifact(path=out, format="keras", part=source.part, details={"chars": len(text)})


@dataclass(frozen=True)
class RepeatConfig:
    times: int = 2


class RepeatPass(Pass):
    name = "repeat"
    Config = RepeatConfig
    calls = 0

    def _run_impl(self, source, config, out_dir):
        out = out_dir / "model.onnx"
        out.write_text(Path(source.path).read_text() * config.times)
        return ExportedArtifact(path=out, format="onnx", precision="int8", part=source.part)


class CrashPass(UpperPass):
    name = "crash"
    calls = 0

    def _run_impl(self, source, config, out_dir):
        (out_dir / "model.keras").write_text("half")
        raise RuntimeError("power cut")


@pytest.fixture()
def source(tmp_path):
    path = tmp_path / "src.keras"
    path.write_text("abc")
    return path


@pytest.fixture(autouse=True)
def reset_counters():
    UpperPass.calls = RepeatPass.calls = CrashPass.calls = 0


def pipeline(cache, suffix="!", times=2, data=None):
    return Pipeline([(UpperPass(), UpperConfig(suffix=suffix, data=data)), (RepeatPass(), RepeatConfig(times))],
                    PassRunner(cache))


def test_pipeline_chains_passes_and_records_lineage(source, cache_dir):
    results = pipeline(cache_dir).run_all(source, part="scorer")
    assert Path(results[-1].path).read_text() == "ABC!ABC!"
    assert results[-1].format == "onnx" and results[-1].precision == "int8" and results[-1].part == "scorer"
    first, second = results[-1].lineage
    assert (first["pass"], first["config"], first["parent"]) == ("upper", {"suffix": "!", "data": None}, None)
    assert (second["pass"], second["config"], second["parent"]) == ("repeat", {"times": 2}, first["id"])
    assert first["id"] != second["id"] and results[0].lineage == [first]
    assert Path(results[0].path).is_relative_to(cache_dir)


def test_merged_lineage_keeps_run_order_and_shares_common_steps(source, cache_dir):
    a = pipeline(cache_dir, times=2).run(source)
    b = pipeline(cache_dir, times=3).run(source)
    steps = merged_lineage([a, b])
    assert [s["pass"] for s in steps] == ["upper", "repeat", "repeat"]     # the shared first step once
    assert steps[1]["parent"] == steps[2]["parent"] == steps[0]["id"]


def test_optional_step_failure_keeps_previous_output(source, cache_dir, caplog):
    steps = [(UpperPass(), UpperConfig()), Step(CrashPass(), UpperConfig(), optional=True)]
    results = Pipeline(steps, PassRunner(cache_dir)).run_all(source)
    assert len(results) == 1 and Path(results[0].path).read_text() == "ABC!"
    assert results[0].details["skipped_steps"][0]["pass"] == "crash"
    assert "power cut" in results[0].details["skipped_steps"][0]["reason"]
    assert "crash of" in caplog.text and "power cut" in caplog.text
    with pytest.raises(RuntimeError, match="power cut"):     # a required step's failure propagates
        Pipeline([(UpperPass(), UpperConfig()), (CrashPass(), UpperConfig())], PassRunner(cache_dir)).run(source)


def test_a_failed_pass_is_not_retried_by_the_same_runner(source, cache_dir):
    runner = PassRunner(cache_dir)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="power cut"):
            runner.run(CrashPass(), source, UpperConfig())
    assert CrashPass.calls == 1
    with pytest.raises(RuntimeError):           # a new runner (a new export) tries again
        PassRunner(cache_dir).run(CrashPass(), source, UpperConfig())
    assert CrashPass.calls == 2


def test_second_run_does_no_work(source, cache_dir):
    first = pipeline(cache_dir).run(source)
    assert (UpperPass.calls, RepeatPass.calls) == (1, 1)
    again = pipeline(cache_dir)
    second = again.run(source)
    assert (UpperPass.calls, RepeatPass.calls) == (1, 1)
    assert (again.runner.hits, again.runner.misses) == (2, 0)
    assert second.path == first.path and second.lineage == first.lineage


def test_changed_option_redoes_only_downstream(source, cache_dir):
    pipeline(cache_dir).run(source)
    result = pipeline(cache_dir, times=3).run(source)   # only the second pass changed
    assert (UpperPass.calls, RepeatPass.calls) == (1, 2)
    assert Path(result.path).read_text() == "ABC!" * 3
    pipeline(cache_dir, suffix="?").run(source)         # first pass changed: both rerun
    assert (UpperPass.calls, RepeatPass.calls) == (2, 3)


def test_changed_input_file_misses(source, cache_dir):
    pipeline(cache_dir).run(source)
    source.write_text("xyz")
    assert Path(pipeline(cache_dir).run(source).path).read_text() == "XYZ!XYZ!"
    assert UpperPass.calls == 2


def test_extra_inputs_are_hashed_by_content_not_path(source, cache_dir, tmp_path):
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    first.write_text("rows1")
    second.write_text("rows1")
    pipeline(cache_dir, data=str(first)).run(source)
    pipeline(cache_dir, data=str(second)).run(source)   # same content elsewhere: cache hit
    assert UpperPass.calls == 1
    second.write_text("rows2")
    out = pipeline(cache_dir, data=str(second)).run(source)
    assert UpperPass.calls == 2 and Path(out.path).read_text().endswith("rows2")


def test_corrupted_cache_entry_is_detected_and_rebuilt(source, cache_dir):
    first = pipeline(cache_dir).run(source)
    Path(first.path).write_text("tampered")
    runner = PassRunner(cache_dir)
    again = runner.run(RepeatPass(), pipeline(cache_dir).run_all(source)[0], RepeatConfig(2))
    assert Path(again.path).read_text() == "ABC!ABC!"
    assert RepeatPass.calls == 2
    record = json.loads((Path(again.path).parent / "result.json").read_text())
    assert record["sha256"] == sha256_path(again.path)


def test_crash_leaves_no_cache_entry(source, cache_dir):
    runner = PassRunner(cache_dir)
    with pytest.raises(RuntimeError, match="power cut"):
        runner.run(CrashPass(), source, UpperConfig())
    assert not [p for p in (cache_dir / "crash").iterdir()]   # temp folder removed, nothing cached
    with pytest.raises(RuntimeError):
        PassRunner(cache_dir).run(CrashPass(), source, UpperConfig())
    assert CrashPass.calls == 2


def test_use_cache_false_recomputes(source, cache_dir):
    runner = PassRunner(cache_dir, use_cache=False)
    runner.run(UpperPass(), source, UpperConfig())
    runner.run(UpperPass(), source, UpperConfig())
    assert UpperPass.calls == 2


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEREC_CACHE", str(tmp_path / "c"))
    assert PassRunner().cache_dir == tmp_path / "c"


def test_bad_inputs_raise_typed_errors(source, cache_dir, tmp_path):
    runner = PassRunner(cache_dir)
    with pytest.raises(ConverterConfigError, match="Expected a UpperConfig"):
        runner.run(UpperPass(), source, RepeatConfig())
    with pytest.raises(ConverterConfigError, match="Expected an existing Keras model"):
        runner.run(UpperPass(), tmp_path / "missing.keras", UpperConfig())
    with pytest.raises(ConverterConfigError, match="existing file for upper.data"):
        runner.run(UpperPass(), source, UpperConfig(data=str(tmp_path / "none.npz")))
    with pytest.raises(ConverterConfigError, match="a keras input for pass 'upper'"):
        onnx_art = runner.run(RepeatPass(), runner.run(UpperPass(), source, UpperConfig()), RepeatConfig())
        UpperPass.accepts = ("keras",)
        try:
            runner.run(UpperPass(), onnx_art, UpperConfig())
        finally:
            del UpperPass.accepts
    with pytest.raises(ConverterConfigError, match="model part"):
        ExportedArtifact.from_keras(source, part="encoder")
    with pytest.raises(ConverterConfigError):
        Pipeline([])


def test_artifact_round_trip(source):
    art = ExportedArtifact(path=source, format="tflite", precision="int8", part="user_encoder",
                           inputs=[{"name": "hist_items", "dtype": "int32", "shape": [None, 8]}],
                           details={"a": 1}, lineage=[{"pass": "x", "config": {}}])
    again = ExportedArtifact.from_dict(json.loads(json.dumps(art.to_dict())))
    assert again == art and again.inputs[0].name == "hist_items" and again.size_bytes == 3


@dataclass(frozen=True)
class LayersConfig:
    custom_objects_module: str | None = None


class LayersPass(UpperPass):
    name = "layers"
    Config = LayersConfig
    path_fields = ()

    def _run_impl(self, source, config, out_dir):
        out = out_dir / "model.keras"
        out.write_text(Path(source.path).read_text())
        return ExportedArtifact(path=out, format="keras", part=source.part)


def test_changed_custom_layer_code_misses(source, cache_dir, tmp_path, monkeypatch):
    """Same model file and config, but a custom layer's code changed (in the module or a sibling it
    imports): the cached conversion of the old code must not be reused."""
    package = tmp_path / "mylayers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("from .cells import Cell\n")
    (package / "cells.py").write_text("class Cell:\n    scale = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    LayersPass.calls = 0
    runner, config = PassRunner(cache_dir), LayersConfig(custom_objects_module="mylayers.layers")
    runner.run(LayersPass(), source, config)
    runner.run(LayersPass(), source, config)
    assert LayersPass.calls == 1
    (package / "cells.py").write_text("class Cell:\n    scale = 2\n")
    runner.run(LayersPass(), source, config)
    assert LayersPass.calls == 2
