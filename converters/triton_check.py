"""Checker of a Triton model repository against its bundle's manifest.

    from edgerec.converters.triton_check import check_triton_repository
    for problem in check_triton_repository("triton_repo/", "bundle/"):
        print(problem)          # "scorer: input hour.data_type: Expected 'TYPE_INT32', received: 'TYPE_FP32'"

Every problem is collected (none stops the check), so one run lists all of them.
"""
from __future__ import annotations

from pathlib import Path

from edgerec.runtime.errors import BundleError, expected
from edgerec.runtime.io import sha256_file
from edgerec.runtime.manifest import Artifact, load_manifest

from .passes.tensorrt import is_tensorrt_ready
from .triton_format import (KINDS, MODEL_FILE, PRECISION_MODES, TRITON_DTYPES, TRITON_PARTS, Problem,  # noqa: F401
                            TritonRepositoryError, parse_pbtxt, tensor_dims)


# -- checking -------------------------------------------------------------------------------------
def check_triton_repository(repo_dir, bundle_dir, *, prefix: str = "") -> list[Problem]:
    """Validate a repository against the bundle's manifest; returns EVERY problem found ([] = consistent).

    Checks: a model per part with an ONNX artifact, config.pbtxt parses, name/backend, a numeric
    version folder holding the model file whose sha256 equals the source artifact's, input/output
    names, data types and dims (batch handling included), batching/instance settings, the ONNX
    graph's own tensor names (when ``onnx`` is installed), and any ensemble's wiring.
    """
    repo = Path(repo_dir)
    if not repo.is_dir():
        return [Problem("<repository>", "path", expected("a repository folder", str(repo)))]
    try:
        manifest = load_manifest(bundle_dir, verify=True)
    except BundleError as err:
        return [Problem("<bundle>", "manifest", str(err))]
    problems: list[Problem] = []
    parts = [p for p in TRITON_PARTS if manifest.find(format="onnx", part=p)]
    signatures = {}
    for part in parts:
        name = prefix + part
        if not (repo / name).is_dir():
            problems.append(Problem(name, "model", expected(f"a model folder for part {part!r}", "missing")))
            continue
        msg = _load_config(repo / name, problems)
        if msg is not None:
            art = _check_part(name, part, msg, repo / name, manifest, problems)
            if art is not None:
                signatures[name] = (_one(msg, "max_batch_size", 0), art)
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name in {prefix + p for p in parts}:
            continue
        msg = _load_config(folder, problems)
        if msg is None:
            continue
        if _one(msg, "platform") == "ensemble":
            _check_ensemble(folder.name, msg, folder, signatures, problems)
        else:
            problems.append(Problem(folder.name, "model", expected("only models for the bundle's parts "
                                                                   f"{[prefix + p for p in parts]} or an ensemble", folder.name)))
    return problems


def _one(msg: dict, key: str, default=None):
    values = msg.get(key) or [default]
    return values[0]


def _load_config(folder: Path, problems: list) -> dict | None:
    path = folder / "config.pbtxt"
    if not path.is_file():
        problems.append(Problem(folder.name, "config.pbtxt", expected("a config.pbtxt", "missing")))
        return None
    try:
        msg = parse_pbtxt(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        problems.append(Problem(folder.name, "config.pbtxt", f"does not parse: {err}"))
        return None
    if _one(msg, "name", folder.name) != folder.name:
        problems.append(Problem(folder.name, "name", expected(f"name {folder.name!r} (the folder name)", _one(msg, "name"))))
    return msg


def _check_part(name, part, msg, folder, manifest, problems) -> Artifact | None:
    add = lambda field_, text: problems.append(Problem(name, field_, text))  # noqa: E731
    if _one(msg, "backend") != "onnxruntime" and _one(msg, "platform") != "onnxruntime_onnx":
        add("backend", expected('backend "onnxruntime"', _one(msg, "backend", _one(msg, "platform"))))
    params = {p.get("key", [None])[0]: _one(p.get("value", [{}])[0], "string_value")
              for p in msg.get("parameters", []) if isinstance(p, dict) and p.get("value") and isinstance(p["value"][0], dict)}
    candidates = manifest.find(format="onnx", part=part)
    if params.get("edgerec_artifact"):
        try:
            art = manifest.artifact(params["edgerec_artifact"])
        except BundleError as err:
            add("parameters.edgerec_artifact", str(err))
            return None
        if art.format != "onnx" or art.part != part:
            add("parameters.edgerec_artifact", expected(f"an ONNX artifact of part {part!r}", f"{art.file} ({art.format}, {art.part})"))
            return None
        candidates = [art]
    art = candidates[0]
    versions = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        add("version", expected("a numeric version folder such as 1/", sorted(p.name for p in folder.iterdir())))
    filename = _one(msg, "default_model_filename", MODEL_FILE)
    for version in versions:
        path = version / filename
        if not path.is_file():
            add(f"{version.name}/{filename}", expected("the model file", "missing"))
            continue
        digest = sha256_file(path)
        match = [a for a in candidates if a.sha256 == digest]
        if not match:
            add(f"{version.name}/{filename}", expected(f"sha256 of bundle artifact {[a.file for a in candidates]} "
                                                       f"({candidates[0].sha256[:12]}…)", digest[:12] + "…"))
        else:
            art = match[0]
            _check_onnx_graph(name, path, art, problems)
    batch = _one(msg, "max_batch_size", 0)
    if not isinstance(batch, int) or batch < 0:
        add("max_batch_size", expected("an int >= 0", batch))
        batch = 0
    _check_tensors(name, "input", msg.get("input", []), art.inputs, batch, problems)
    _check_tensors(name, "output", msg.get("output", []), art.outputs, batch, problems)
    batching = _one(msg, "dynamic_batching")
    if batching is not None:
        sizes = batching.get("preferred_batch_size", [])
        if batch == 0:
            add("dynamic_batching", expected("max_batch_size > 0 with dynamic_batching", batch))
        elif any(not isinstance(s, int) or not 1 <= s <= batch for s in sizes):
            add("dynamic_batching.preferred_batch_size", expected(f"sizes in [1, {batch}]", sizes))
    kinds = []
    for group in msg.get("instance_group", []):
        kind, count = _one(group, "kind", "KIND_AUTO"), _one(group, "count", 1)
        kinds.append(kind)
        if kind not in KINDS + ("KIND_AUTO",) or not isinstance(count, int) or count < 1:
            add("instance_group", expected(f"kind in {KINDS} and count >= 1", f"kind {kind}, count {count}"))
    accelerators = [a for o in msg.get("optimization", []) for e in o.get("execution_accelerators", [])
                    for a in e.get("gpu_execution_accelerator", [])]
    for acc in accelerators:
        if _one(acc, "name") != "tensorrt":
            continue
        if "KIND_CPU" in kinds:
            add("optimization", expected("GPU instances with the TensorRT accelerator", "KIND_CPU"))
        mode = {_one(p, "key"): _one(p, "value") for p in acc.get("parameters", [])}.get("precision_mode", "FP32")
        if mode not in PRECISION_MODES:
            add("optimization.precision_mode", expected(f"one of {PRECISION_MODES}", mode))
        elif mode == "INT8" and not is_tensorrt_ready(art):
            add("optimization.precision_mode", expected("a TensorRT-ready QDQ artifact for INT8", art.file))
    return art


def _check_tensors(name, kind, blocks, specs, batch, problems, reshape_ok: bool = True) -> None:
    got = {_one(b, "name"): b for b in blocks if isinstance(b, dict)}
    want = {t.name: t for t in specs}
    for missing in sorted(set(want) - set(got)):
        problems.append(Problem(name, f"{kind} {missing}", expected("declared in config.pbtxt", "missing")))
    for extra in sorted(set(got) - set(want)):
        problems.append(Problem(name, f"{kind} {extra}", expected(f"only {kind}s {sorted(want)}", extra)))
    for tname in sorted(set(got) & set(want)):
        block, spec = got[tname], want[tname]
        dtype = TRITON_DTYPES.get(spec.dtype, f"<unsupported {spec.dtype}>")
        if _one(block, "data_type") != dtype:
            problems.append(Problem(name, f"{kind} {tname}.data_type", expected(dtype, _one(block, "data_type"))))
        try:
            dims, reshape = tensor_dims(spec.shape, batch)
            reshape = reshape if reshape_ok else None
        except TritonRepositoryError as err:
            problems.append(Problem(name, f"{kind} {tname}.dims", str(err)))
            continue
        got_reshape = _one(block, "reshape")
        got_reshape = None if got_reshape is None else got_reshape.get("shape", [])
        if block.get("dims", []) != dims or got_reshape != reshape:
            problems.append(Problem(name, f"{kind} {tname}.dims", expected(
                f"dims {dims}" + (f" with reshape {reshape}" if reshape is not None else "") + f" (manifest shape {spec.shape})",
                f"dims {block.get('dims', [])}" + (f" with reshape {got_reshape}" if got_reshape is not None else ""))))


def _check_onnx_graph(name, path, art, problems) -> None:
    try:
        import onnx
    except ImportError:
        return
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # noqa: BLE001 - any parse failure is a problem to report
        problems.append(Problem(name, "model.onnx", expected("a loadable ONNX model", str(err)[:200])))
        return
    inits = {i.name for i in graph.initializer}
    inputs = sorted(i.name for i in graph.input if i.name not in inits)
    outputs = sorted(o.name for o in graph.output)
    if inputs != sorted(t.name for t in art.inputs) or outputs != sorted(t.name for t in art.outputs):
        problems.append(Problem(name, "model.onnx", expected(
            f"graph tensors {sorted(t.name for t in art.inputs)} -> {sorted(t.name for t in art.outputs)}",
            f"{inputs} -> {outputs}")))


def _check_ensemble(name, msg, folder, signatures, problems) -> None:
    add = lambda field_, text: problems.append(Problem(name, field_, text))  # noqa: E731
    if not any(p.is_dir() and p.name.isdigit() for p in folder.iterdir()):
        add("version", expected("a numeric version folder such as 1/ (empty for an ensemble)", "none"))
    batch = _one(msg, "max_batch_size", 0)
    steps = [s for sched in msg.get("ensemble_scheduling", []) for s in sched.get("step", [])]
    if not steps:
        add("ensemble_scheduling", expected("at least one step", "none"))
    produced, consumed, specs, broken = set(), {}, {}, False
    for i, step in enumerate(steps):
        model = _one(step, "model_name")
        if model not in signatures:
            add(f"step {i}", expected(f"a model among {sorted(signatures)}", model))
            broken = True
            continue
        model_batch, art = signatures[model]
        if model_batch != batch:
            add(f"step {i}", expected(f"max_batch_size {batch} in {model}", model_batch))
        in_map = {_one(m, "key"): _one(m, "value") for m in step.get("input_map", [])}
        out_map = {_one(m, "key"): _one(m, "value") for m in step.get("output_map", [])}
        if set(in_map) != {t.name for t in art.inputs}:
            add(f"step {i}.input_map", expected(sorted(t.name for t in art.inputs), sorted(in_map)))
        if not set(out_map) <= {t.name for t in art.outputs}:
            add(f"step {i}.output_map", expected(f"outputs of {model}", sorted(out_map)))
        for t in art.inputs:
            if t.name in in_map and in_map[t.name] not in produced:
                consumed[in_map[t.name]] = t
        for t in art.outputs:
            if t.name in out_map:
                produced.add(out_map[t.name])
                specs[out_map[t.name]] = t
    if broken:   # the wiring cannot be followed past an unknown model
        return
    declared_in = {_one(b, "name") for b in msg.get("input", [])}
    if declared_in != set(consumed):
        add("input", expected(f"ensemble inputs {sorted(consumed)}", sorted(declared_in)))
    _check_tensors(name, "input", [b for b in msg.get("input", []) if _one(b, "name") in consumed],
                   list(consumed.values()), batch, problems, reshape_ok=False)
    outs = list(msg.get("output", []))
    unproduced = [_one(b, "name") for b in outs if _one(b, "name") not in produced]
    if unproduced:
        add("output", expected(f"outputs produced by a step {sorted(produced)}", unproduced))
    _check_tensors(name, "output", [b for b in outs if _one(b, "name") in produced],
                   [specs[_one(b, "name")] for b in outs if _one(b, "name") in produced], batch, problems, reshape_ok=False)
