"""What a bundle holds, for people: `edgerec info BUNDLE`.

`describe_bundle` reads a bundle directory or archive (nothing is loaded into a backend) and
returns a JSON-ready dict: model family and version, parts, the artifacts each backend selected
with their validation figures, the model inputs, the request format with an example request, and
sizes (the whole bundle, and what an app of each backend needs: see `edgerec pack`).
`render_info` turns that dict into the text `edgerec info` prints.

Examples:
    >>> info = describe_bundle("demo-out/bundle")                              # doctest: +SKIP
    >>> info["selected"]["litert"]["size_bytes"], info["request"]["example"]["item"]
    (385123, '96')
"""
from __future__ import annotations

import hashlib
import json

from .backends.registry import is_available
from .contract import BACKENDS, FORMAT_FOR_BACKEND
from .errors import EdgeRecError
from .examples import ExampleSet
from .manifest import Manifest, bundle_directory, read_manifest, verify_files
from .selection import load_spec, selected_files
from .shared_tables import SharedTables, artifact_size
from .spec import FeatureSpec

# Validation figures shown per artifact, in this order.
FIGURES = ("delta_auc", "auc", "max_abs_diff", "mean_abs_diff", "recall_overlap@10")


def backend_files(manifest: Manifest, backend: str) -> list[str]:
    """Every file an app serving ``backend`` needs: its selected artifacts, the shared tables they
    read, and the bundle's other listed files (feature spec, examples.jsonl, vocabularies, ...)."""
    artifacts = list(dict.fromkeys(selected_files(manifest, backend).values()))
    tables = SharedTables.files_for(manifest, artifacts)
    every_table = {t["file"] for t in manifest.shared_tables.get("tables", ())}
    others = [f["file"] for f in manifest.files if isinstance(f, dict) and f.get("file") not in artifacts
              and f.get("file") not in every_table]
    return artifacts + tables + others


def describe_bundle(bundle_path) -> dict:
    """A JSON-ready description of a bundle directory or .tar.gz (TF-free, loads no model).

    The sha256 of every file is checked and reported (``integrity``) rather than raised, so a
    damaged bundle can still be described.
    """
    with bundle_directory(bundle_path) as directory:
        manifest, manifest_bytes = read_manifest(directory)
        try:
            verify_files(directory, manifest)
            integrity = "ok"
        except EdgeRecError as err:
            integrity = str(err)
        spec = None
        if manifest.feature_spec is not None:
            try:
                spec = load_spec(directory, manifest)
            except EdgeRecError:
                spec = None
        try:
            examples = ExampleSet.load(directory, manifest, spec=spec) if integrity == "ok" else None
        except EdgeRecError:
            examples = None
    sizes = {entry["file"]: int(entry.get("size_bytes", 0)) for entry in manifest.all_files()}
    selected = {}
    for backend in BACKENDS:
        try:
            chosen = selected_files(manifest, backend) if manifest.find(format=FORMAT_FOR_BACKEND[backend]) else {}
        except EdgeRecError:
            chosen = {}
        if not chosen:
            continue
        artifacts = {part: _artifact(manifest, file) for part, file in chosen.items()}
        needed = backend_files(manifest, backend)
        selected[backend] = {"installed": is_available(backend), "artifacts": artifacts,
                             "size_bytes": sum(sizes.get(f, 0) for f in needed),
                             "files": needed}
    tools = manifest.lineage.get("tools") if isinstance(manifest.lineage.get("tools"), dict) else {}
    return {
        "bundle": str(bundle_path),
        "version": hashlib.sha256(manifest_bytes).hexdigest()[:16],
        "model": {"family": manifest.model.get("family"), "version": manifest.model.get("version"),
                  "data_source": manifest.model.get("data_source"), "keras": manifest.model.get("keras")},
        "created": manifest.created, "bundle_version": manifest.bundle_version,
        "built_with": {k: tools[k] for k in ("edgerec", "tensorflow", "onnxruntime", "ai-edge-litert") if k in tools},
        "integrity": integrity,
        "parts": sorted({a.part for a in manifest.artifacts}),
        "artifacts": len(manifest.artifacts),
        "selected": selected,
        "inputs": _inputs(manifest, selected),
        "request": _request_format(spec, examples),
        "examples": {"rows": examples.rows, "kind": examples.kind} if examples is not None else None,
        "size_bytes": sum(sizes.values()) + len(manifest_bytes),
    }


def _artifact(manifest: Manifest, file: str) -> dict:
    art = manifest.artifact(file)
    figures = {k: art.validation[k] for k in FIGURES if isinstance(art.validation.get(k), (int, float))}
    # the artifact's bytes with the shared tables it reads: what it costs as one file
    return {"file": art.file, "format": art.format, "precision": art.precision,
            "size_bytes": artifact_size(manifest, file), "validation": figures}


def _inputs(manifest: Manifest, selected: dict) -> dict:
    """part -> [{name, dtype, shape}] of the first selected artifact of each part (all of a part's
    artifacts share the signature)."""
    out = {}
    for backend in selected.values():
        for part, art in backend["artifacts"].items():
            if part not in out:
                out[part] = [{"name": t.name, "dtype": t.dtype, "shape": t.shape}
                             for t in manifest.artifact(art["file"]).inputs]
    return out


def _request_format(spec: FeatureSpec | None, examples: ExampleSet | None) -> dict:
    """The keys a raw request takes and one example (the first example line, else built from the spec)."""
    if spec is None:
        example = None
        if examples is not None and examples.kind == "tensors":
            example = {"inputs": examples.lines[0]["inputs"]}
        return {"kind": "tensors", "keys": {"inputs": "{input name: one row}"}, "example": example}
    keys = {"user_id": "optional str; keys the user-state cache",
            "history": f"list of raw item ids, oldest first (the last {spec.max_seq_len} are used; unknown ids are OOV)",
            "item": f"raw candidate item id ({spec.item_vocab.size - 2} known)"}
    if spec.context:
        fields = ", ".join(f"{c.name} ({c.kind})" for c in spec.context)
        keys["context"] = f"object: timestamp (unix seconds) and/or {fields}"
    if spec.dense:
        keys["dense"] = "object of numbers: " + ", ".join(d.name for d in spec.dense)
    if examples is not None and examples.kind == "requests":
        example = {k: v for k, v in examples.lines[0].items() if k != "expected"}
    else:
        tokens = spec.item_vocab.tokens
        example = {"user_id": "42", "history": list(tokens[:3]), "item": tokens[3] if len(tokens) > 3 else "?"}
        if spec.context:
            example["context"] = {"timestamp": 1700000000}
        if spec.dense:
            example["dense"] = {d.name: d.default for d in spec.dense}
    return {"kind": "requests", "keys": keys, "example": example,
            "candidates": "add \"candidates\": [ids] to score many items for one user"}


# -- text ----------------------------------------------------------------------------------------
def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def _shape(shape: list) -> str:
    return "[" + ", ".join(("batch" if i == 0 else "?") if d is None else str(d) for i, d in enumerate(shape)) + "]"


def _figures(validation: dict) -> str:
    shown = []
    for key, label in (("delta_auc", "ΔAUC"), ("max_abs_diff", "max |Δ|"), ("mean_abs_diff", "mean |Δ|")):
        if key in validation:
            shown.append(f"{label} {validation[key]:+.4f}" if key == "delta_auc" else f"{label} {validation[key]:.2e}")
    return ", ".join(shown) or "no validation figures"


def render_info(info: dict) -> str:
    """The text `edgerec info` prints for a `describe_bundle` dict."""
    model = info["model"]
    lines = [f"bundle     {info['bundle']}  (version {info['version']}, integrity: {info['integrity']})",
             f"model      {model.get('family') or '?'}" + (f" {model['version']}" if model.get("version") else "")
             + (f", trained on {model['data_source']}" if model.get("data_source") else ""),
             f"parts      {', '.join(info['parts'])}  ({info['artifacts']} artifacts, {_size(info['size_bytes'])} in all)"]
    if info["built_with"]:
        lines.append("built with " + ", ".join(f"{k} {v}" for k, v in info["built_with"].items()))
    lines += ["", "selected artifacts (what each backend loads; `edgerec pack --backend B` keeps only these)"]
    for backend, sel in info["selected"].items():
        state = "installed" if sel["installed"] else "not installed here"
        lines.append(f"  {backend} ({state}): {_size(sel['size_bytes'])} with the files it needs (manifest aside)")
        for part, art in sel["artifacts"].items():
            lines.append(f"    {part:<13} {art['file']:<30} {art['precision']:<8} {_size(art['size_bytes']):>9}  "
                         f"{_figures(art['validation'])}")
    lines += ["", "inputs"]
    for part, inputs in info["inputs"].items():
        lines.append(f"  {part:<13} " + ", ".join(f"{t['name']} {t['dtype']}{_shape(t['shape'])}" for t in inputs))
    request = info["request"]
    lines += ["", f"request format ({request['kind']})"]
    lines += [f"  {key:<9} {text}" for key, text in request["keys"].items()]
    if request.get("candidates"):
        lines.append(f"  {'':<9} {request['candidates']}")
    if request.get("example") is not None:
        lines.append("  example  " + json.dumps(request["example"]))
    if info["examples"]:
        lines += ["", f"examples   {info['examples']['rows']} lines ({info['examples']['kind']}); "
                      "`edgerec check` replays them on this machine"]
    return "\n".join(lines)
