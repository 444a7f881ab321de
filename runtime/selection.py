"""What a bundle's manifest selects to load: the backend, one artifact per part, the feature spec.

`choose_backend` resolves ``"auto"`` to an installed backend the bundle has artifacts for;
`selected_files` gives each part its file for that backend (the manifest's selection, else the
first fp32 artifact) and refuses a selection that cannot serve; `check_signature` compares a loaded
backend's tensors with the manifest's record of them; `load_spec` parses the feature spec from bytes
verified against the manifest.
"""
from __future__ import annotations

from .backends.registry import BACKEND_EXTRAS, BACKEND_FORMATS, BACKEND_MODULES, BACKENDS, is_available
from .errors import BackendUnavailableError, BundleError, MissingDependencyError, SpecError, expected
from .io import strict_json_loads
from .manifest import Manifest, read_verified
from .spec import FeatureSpec

RUN_PARTS = ("fused", "user_encoder", "scorer", "content_encoder")
# feature specs embed vocabularies; the largest real ones are a few MB
MAX_SPEC_BYTES = 256 << 20


def choose_backend(manifest: Manifest, backend: str) -> str:
    """"auto" -> onnxruntime if importable and it has artifacts, else litert; names are checked."""
    def usable(name):
        return bool(manifest.selected.get(name)) or bool(manifest.find(format=BACKEND_FORMATS[name]))

    if not manifest.artifacts:
        raise BundleError(expected("at least one artifact in the manifest", 0))
    if backend == "auto":
        for name in ("onnxruntime", "litert"):
            if is_available(name) and usable(name):
                return name
        raise BackendUnavailableError(expected(
            "an installed backend with artifacts in the bundle (pip install 'edgerec[onnx]' or 'edgerec[litert]')",
            {"installed": [n for n in BACKENDS if is_available(n)], "formats": sorted({a.format for a in manifest.artifacts})}))
    if backend not in BACKENDS:
        raise BackendUnavailableError(expected(f"backend 'auto' or one of {sorted(BACKENDS)}", backend))
    if not usable(backend):
        raise BackendUnavailableError(expected(f"{BACKEND_FORMATS[backend]} artifacts in the bundle for {backend}",
                                               sorted({a.format for a in manifest.artifacts})))
    if not is_available(backend):
        raise MissingDependencyError(BACKEND_MODULES[backend][0], BACKEND_EXTRAS[backend], f"the {backend} backend")
    return backend


def selected_files(manifest: Manifest, backend: str) -> dict[str, str]:
    """part -> file for ``backend``: the manifest's selection, else the first fp32 (or any) artifact."""
    chosen = dict(manifest.selected.get(backend) or {})
    if not chosen:
        fmt = BACKEND_FORMATS[backend]
        for part in RUN_PARTS:
            arts = manifest.find(format=fmt, part=part)
            arts.sort(key=lambda a: a.precision != "fp32")
            if arts:
                chosen[part] = arts[0].file
    unknown = set(chosen) - set(RUN_PARTS)
    if unknown or not chosen:
        raise BundleError(expected(f"selected parts among {RUN_PARTS}", sorted(chosen)))
    for part, file in chosen.items():
        art = manifest.artifact(file)
        if art.format != BACKEND_FORMATS[backend] or art.part != part:
            raise BundleError(expected(f"a {BACKEND_FORMATS[backend]} '{part}' artifact for {backend}",
                                       f"{file} ({art.format}, {art.part})"))
    if "fused" not in chosen and not {"user_encoder", "scorer"} <= set(chosen):
        raise BundleError(expected("a fused model or a user_encoder + scorer pair", sorted(chosen)))
    return chosen


def check_signature(part: str, artifact, backend) -> dict:
    """Backend inputs must be the manifest's; returns backend output name -> canonical name."""
    declared_in = {t.name for t in artifact.inputs}
    actual_in = {t.name for t in backend.inputs}
    if declared_in and declared_in != actual_in:
        raise BundleError(expected(f"{artifact.file} inputs {sorted(declared_in)} (manifest)", sorted(actual_in)))
    declared_out = [t.name for t in artifact.outputs]
    actual_out = [t.name for t in backend.outputs]
    if not declared_out or set(declared_out) == set(actual_out):
        return {n: n for n in actual_out}
    if len(declared_out) == len(actual_out) == 1:
        return {actual_out[0]: declared_out[0]}
    raise BundleError(expected(f"{artifact.file} outputs {sorted(declared_out)} (manifest)", sorted(actual_out)))


def spec_from_bytes(data: bytes, name: str = "feature_spec.json") -> FeatureSpec:
    """A `FeatureSpec` from the verified bytes of a bundle's feature spec (bounded strict JSON)."""
    return FeatureSpec.from_dict(strict_json_loads(data, name, error=SpecError, max_bytes=MAX_SPEC_BYTES))


def load_spec(bundle_dir, manifest: Manifest) -> FeatureSpec | None:
    """The bundle's feature spec, parsed from bytes verified against its manifest entry (None for
    bring-your-own-model bundles)."""
    if manifest.feature_spec is None:
        return None
    return spec_from_bytes(read_verified(bundle_dir, manifest, manifest.feature_spec), manifest.feature_spec)
