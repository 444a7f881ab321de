"""The content encoder in the bundle: convert, validate by cosine similarity, select, add.

A content-family MODEL_DIR (``edgerec train --model context``) names a ``content_encoder`` part
(``item_tokens`` int32 [B, T] -> ``item_vector`` float32 [B, D]) in ``edgerec_model.json``.
`add_content_encoder` runs after the ranking parts are in the bundle:

1. converts the part with the export's own variant pipelines (`flows.convert_parts` with
   ``quantize=("dynamic",)``): TFLite fp32 + dynamic-range (int8 weights), ONNX fp32 + dynamic;
   only fp32 when the export asked for no compression;
2. refuses full-integer int8 / static QDQ for this part, recorded in ``manifest.rejected``:
   `INT8_REASON`;
3. validates every artifact by the cosine similarity of its vectors to the Keras encoder's on the
   catalogue's item texts (``validation: {cosine_min, cosine_mean, rows, min_cosine_required}``);
   an artifact passes when its smallest cosine reaches `MIN_COSINE` of its precision; a failing
   fp32 artifact is a broken conversion and stops the export;
4. adds the passing artifacts to the bundle and selects, per backend, the smallest passing one as
   ``manifest.selected[backend]["content_encoder"]``.

The item texts come from ``edgerec_model.json`` ``"content_encoder": {"item_text": FILE}`` (a JSON
list of strings, one per item index; rows 0/1 padding/OOV are skipped). A model dir without it is
validated on `VALIDATION_ROWS` texts drawn from the tokenizer's own whole-word vocabulary (seeded),
and ``lineage["content_encoder"]["rows_source"]`` says which. The tokenizer is the spec's
(`edgerec.runtime.text.tokenizer_for`), as on the device. ``"custom_objects_module"`` in the same
object names the module registering the encoder's layers (default: the model dir's).

Examples:
    >>> add_content_encoder(job, result, options, runner)          # doctest: +SKIP
    {'selected': {'litert': 'content_encoder_dynamic.tflite', ...}, 'rejected': 2}
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgerec.runtime.contract import BACKEND_FOR_FORMAT, CONTENT_ENCODER, ITEM_TOKENS, ITEM_VECTOR
from edgerec.runtime.errors import expected

from .errors import ConverterConfigError, ValidationError
from .select import Rejection

logger = logging.getLogger(__name__)

VALIDATION_ROWS = 1000
# smallest cosine to the Keras vectors an artifact may have, per precision
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "dynamic": 0.99}
INT8_REASON = ("full-integer int8 (TFLite int8, ONNX static QDQ) is not offered for the content encoder: the "
               "attention mask's -1e9 additive bias (Keras MultiHeadAttention) takes the int8 activation "
               "ranges, measured on all-MiniLM-L6-v2 as cosine to the Keras vectors of 0.14 / 0.35; "
               "dynamic-range (int8 weights, float activations) is exported instead")
_INT8_VARIANTS = (("content_encoder_int8.tflite", "tflite", "litert", "int8"),
                  ("content_encoder_qdq_int8.onnx", "onnx", "onnxruntime", "static_qdq"))
_WORD = re.compile(r"^[a-z0-9]+$")


def content_quantize(quantize) -> tuple:
    """The ``quantize`` the content encoder is converted with for an export's options."""
    return ("dynamic",) if set(quantize) & {"dynamic", "int8", "int4"} else ()


def validation_tokens(job, model_dir: Path, rows: int = VALIDATION_ROWS, seed: int = 0) -> tuple[np.ndarray, str]:
    """``(item_tokens [N, T], source)``: the catalogue's item texts when the model dir lists them,
    else texts drawn from the tokenizer's whole-word vocabulary; tokenised by the spec's tokenizer."""
    from edgerec.runtime.text import tokenizer_for

    text_spec = job.feature_spec.text if job.feature_spec is not None else None
    if text_spec is None:
        raise ConverterConfigError(expected("a feature spec with a text spec for the content encoder", None))
    tokenizer = tokenizer_for(text_spec)
    named = ((job.model_json or {}).get(CONTENT_ENCODER) or {}).get("item_text")
    if named:
        try:
            texts = json.loads((model_dir / named).read_text("utf-8"))
        except (OSError, ValueError) as err:
            raise ConverterConfigError(expected(f"a readable JSON list of item texts at {named}", str(err))) from None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ConverterConfigError(expected(f"a JSON list of str item texts in {named}", type(texts).__name__))
        texts = [t for t in texts[2:] if t.strip()]
        source = f"catalogue ({named})"
    else:
        texts, source = [], "vocabulary sample (the model dir lists no item_text)"
    if not texts:
        words = [w for w in text_spec.vocab if _WORD.match(w)] or list(text_spec.vocab)
        rng = np.random.default_rng(seed)
        longest = max(1, text_spec.max_tokens - 2)
        texts = [" ".join(rng.choice(words, size=int(rng.integers(1, longest + 1)))) for _ in range(rows)]
    if len(texts) > rows:
        texts = [texts[i] for i in np.linspace(0, len(texts) - 1, num=rows, dtype=int)]
    return tokenizer.encode_batch(texts), source


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair (two zero rows count as 1, one zero row as 0)."""
    a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-30)
    return np.where(both_zero, 1.0, cos)


def validate_encoders(reference: np.ndarray, artifacts, tokens: np.ndarray, say, stop_on_fp32: bool = True
                      ) -> list[dict]:
    """Each artifact's vectors against the Keras ones: ``{"artifact", "backend", "validation", "failure"}``
    (``stop_on_fp32``: a failing fp32 artifact raises ValidationError)."""
    from .validate import backend_outputs

    checks = []
    for art in artifacts:
        required = MIN_COSINE.get(art.precision, MIN_COSINE["dynamic"])
        failure = ""
        try:
            outputs, _ = backend_outputs(art, {ITEM_TOKENS: tokens})
            vectors = outputs[ITEM_VECTOR] if ITEM_VECTOR in outputs else next(iter(outputs.values()))
            cos = cosine_rows(vectors, reference)
            validation = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "rows": int(len(cos)),
                          "min_cosine_required": required}
            if not validation["cosine_min"] >= required:
                failure = f"cosine_min {validation['cosine_min']:.5f} < {required:g} to the Keras vectors"
        except (ValidationError, RuntimeError, ValueError, OSError) as err:
            validation, failure = {"rows": int(len(tokens))}, f"could not run: {type(err).__name__}: {err}"[:600]
        say(f"  {art.file}: " + (failure or f"cosine min {validation['cosine_min']:.5f}, "
                                             f"mean {validation['cosine_mean']:.5f}"))
        checks.append({"artifact": art, "backend": BACKEND_FOR_FORMAT[art.format], "validation": validation,
                       "failure": failure})
    broken = [c for c in checks if c["artifact"].precision == "fp32" and c["failure"]]
    if broken and stop_on_fp32:
        raise ValidationError(expected("every fp32 content encoder artifact to match Keras (a broken export "
                                       "otherwise)", "; ".join(f"{c['artifact'].file}: {c['failure']}" for c in broken)))
    return checks


def keras_reference(job, tokens: np.ndarray) -> np.ndarray:
    """The Keras content encoder's vectors of ``tokens`` (the job's model dir part)."""
    from .keras_io import load_keras_model
    from .validate import keras_outputs

    meta = job.model_json or {}
    source = Path(job.model_info["source"]) / meta["parts"][CONTENT_ENCODER]
    if not source.exists():
        raise ConverterConfigError(expected(f"the {CONTENT_ENCODER} part named in edgerec_model.json", str(source)))
    module = (meta.get(CONTENT_ENCODER) or {}).get("custom_objects_module") or job.custom_objects_module
    out = keras_outputs(load_keras_model(source, module), {ITEM_TOKENS: tokens}, chunk=256)
    return out[ITEM_VECTOR] if ITEM_VECTOR in out else next(iter(out.values()))


def recheck_content(model_dir, bundle_dir, manifest, backends=None, say: Callable[[str], None] | None = None
                    ) -> list[dict]:
    """Re-validate a bundle's content encoder artifacts against MODEL_DIR's Keras encoder (what
    ``edgerec validate --keras`` needs for them: the ranking validator has no cosine metric).

    Returns:
        one ``{"file", "backend", "validation", "failure"}`` per artifact of an installed backend
        among ``backends`` (default all); ``failure`` is "" when it passes.
    """
    from .jobs import load_job
    from .validate import DeployableArtifact

    arts = [a for a in manifest.artifacts if a.part == CONTENT_ENCODER
            and (backends is None or BACKEND_FOR_FORMAT[a.format] in backends)]
    if not arts:
        return []
    job = load_job(model_dir)
    if CONTENT_ENCODER not in (job.model_json or {}).get("parts", {}):
        raise ConverterConfigError(expected(f"--keras: a model dir with the {CONTENT_ENCODER} part the bundle holds",
                                            sorted((job.model_json or {}).get("parts", {}))))
    tokens, _ = validation_tokens(job, Path(model_dir))
    deployable = [DeployableArtifact(str(Path(bundle_dir) / a.file), a.format, a.precision, a.part) for a in arts]
    checks = validate_encoders(keras_reference(job, tokens), deployable, tokens, say or logger.info,
                               stop_on_fp32=False)
    return [{"file": c["artifact"].file, "backend": c["backend"], "validation": c["validation"],
             "failure": c["failure"]} for c in checks]


def select_smallest(checks: list[dict]) -> dict[str, str]:
    """backend -> the smallest passing artifact (ties: the more precise, by table order)."""
    chosen = {}
    for check in checks:
        if check["failure"]:
            continue
        art, backend = check["artifact"], check["backend"]
        size = Path(art.path).stat().st_size
        if backend not in chosen or size < chosen[backend][0]:
            chosen[backend] = (size, art.file)
    return {backend: file for backend, (_, file) in chosen.items()}


def add_content_encoder(job, result, options, runner, say: Callable[[str], None] | None = None) -> dict | None:
    """Convert, validate and add the job's content encoder to the written bundle ``result.bundle``
    (updating ``result.manifest``, and ``result.archive`` when one was written). Returns a summary,
    or None when the model has no content encoder (nothing is done)."""
    from edgerec.runtime.manifest import load_manifest

    from .flows import convert_parts
    from .pipeline import sha256_path

    meta = job.model_json or {}
    if CONTENT_ENCODER not in meta.get("parts", {}):
        return None
    say = say or logger.info
    model_dir = Path(job.model_info["source"])
    source = model_dir / meta["parts"][CONTENT_ENCODER]
    module = (meta.get(CONTENT_ENCODER) or {}).get("custom_objects_module") or job.custom_objects_module
    tokens, rows_source = validation_tokens(job, model_dir)
    reference = keras_reference(job, tokens)
    targets = tuple(t for t in options.artifact_targets if t in ("tflite", "onnx"))
    work = Path(tempfile.mkdtemp(prefix="edgerec-content-"))
    try:
        produced = convert_parts({CONTENT_ENCODER: str(source)}, targets, content_quantize(options.quantize), {},
                                 runner, work / "stage", custom_objects_module=module, say=say)
        say(f"validating {len(produced.artifacts)} content encoder artifact(s) on {len(tokens)} item texts "
            f"({rows_source})")
        checks = validate_encoders(reference, produced.artifacts, tokens, say)
        rejected = [r.to_dict() for r in produced.rejections]
        if "int8" in options.quantize:
            rejected += [Rejection(file, backend, INT8_REASON, CONTENT_ENCODER, mode, stage="policy").to_dict()
                         for file, target, backend, mode in _INT8_VARIANTS if target in targets]
        rejected += [Rejection(c["artifact"].file, c["backend"], c["failure"], CONTENT_ENCODER,
                               stage="validation").to_dict() for c in checks if c["failure"]]
        selected = select_smallest(checks)
        lineage = {"rows": int(len(tokens)), "rows_source": rows_source, "min_cosine": dict(MIN_COSINE),
                   "keras_sha256": sha256_path(source)}
        write_content(result.bundle, [c for c in checks if not c["failure"]], selected, rejected, lineage)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.manifest = load_manifest(result.bundle)
    if result.archive is not None:
        from .bundle import archive_bundle

        archive_bundle(result.bundle, result.archive)
    for backend, file in sorted(selected.items()):
        say(f"selected for {backend}: {CONTENT_ENCODER}={file}")
    return {"selected": selected, "rejected": len(rejected)}


def write_content(bundle: Path, checks: list[dict], selected: dict, rejected: list, lineage: dict) -> None:
    """Copy the passing artifacts into ``bundle`` and record them, the selection, the rejections
    and the content lineage in its manifest (written atomically, then read back verified)."""
    from edgerec.runtime.io import sha256_file
    from edgerec.runtime.manifest import Artifact, load_manifest, write_manifest

    from .bundle import artifact_signature
    from .shared_tables import share_bundle

    manifest = load_manifest(bundle, verify=False)
    names = {a.file for a in manifest.artifacts} | {f["file"] for f in manifest.files}
    for check in checks:
        art = check["artifact"]
        if art.file in names:
            raise ConverterConfigError(expected("content encoder artifact names new to the bundle", art.file))
        shutil.copyfile(art.path, bundle / art.file)
        inputs, outputs = artifact_signature(str(bundle / art.file), art.format)
        manifest.artifacts.append(Artifact(
            file=art.file, format=art.format, precision=art.precision, part=CONTENT_ENCODER,
            sha256=sha256_file(bundle / art.file), size_bytes=(bundle / art.file).stat().st_size, inputs=inputs,
            outputs=outputs, validation=_json_safe(check["validation"]), lineage=_json_safe(list(art.lineage)),
            details=_json_safe(dict(art.details))))
    for backend, file in selected.items():
        manifest.selected.setdefault(backend, {})[CONTENT_ENCODER] = file
    in_bundle = {c["artifact"].file for c in checks}
    manifest.rejected.extend({**r, "in_bundle": r["file"] in in_bundle} for r in rejected)
    manifest.model.pop("not_exported", None)
    manifest.lineage[CONTENT_ENCODER] = _json_safe(lineage)
    steps = manifest.lineage.setdefault("steps", [])
    known = {step.get("id") for step in steps}
    for check in checks:
        for step in check["artifact"].lineage:
            if step.get("id") not in known:
                known.add(step.get("id"))
                steps.append(_json_safe(dict(step)))
    write_manifest(bundle, manifest)
    # the encoder's tables, where its variants repeat them, stored once like the ranker's
    # (share_bundle verifies every file before and after)
    share_bundle(bundle)


def _json_safe(value):
    """A JSON round trip: numpy scalars, tuples and paths become plain JSON values."""
    return json.loads(json.dumps(value, default=lambda obj: obj.item() if isinstance(obj, np.generic) else str(obj)))
