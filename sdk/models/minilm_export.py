"""Export the all-MiniLM-L6-v2 content encoder for the device and measure what each artifact costs.

The Keras encoder of `edgerec.sdk.models.minilm` goes through the converters' own variant table
(`edgerec.converters.flows.variant_pipeline`: TFLite fp32 / dynamic-range / full-int8, ONNX fp32 /
ORT dynamic / static QDQ), each artifact is loaded with the runtime backends the device uses
(LiteRT, onnxruntime; one thread) and measured: file size, per-text latency at batch 1 and 64,
and the cosine similarity of its vectors to the fp32 Keras vectors on the given texts.
A variant the converters cannot produce is reported with their reason, not dropped.

Examples:
    >>> from edgerec.sdk.models.minilm_export import measure_export, movielens_texts
    >>> report = measure_export("/tmp/minilm", movielens_texts("data/ml-latest-small"))   # doctest: +SKIP
    >>> report["variants"]["tflite_dynamic"]["cosine_mean"] >= 0.99                      # doctest: +SKIP
    True
"""
from __future__ import annotations

import csv
import logging
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.io import atomic_write_json

from . import minilm
from .content import ITEM_TOKENS, ITEM_VECTOR

logger = logging.getLogger(__name__)

# (target, mode) rows of converters.flows.VARIANTS measured by default
MEASURED = (("tflite", "fp32"), ("tflite", "dynamic"), ("tflite", "int8"),
            ("onnx", "fp32"), ("onnx", "dynamic"), ("onnx", "static_qdq"))
REPORT_FILE = "minilm_export.json"
CALIBRATION_ROWS = 200


def movielens_texts(folder: str | Path, with_genres: bool = True) -> list[str]:
    """One text per MovieLens movie: its title, followed by its genres (``|`` -> spaces) by default."""
    path = Path(folder) / "movies.csv"
    if not path.is_file():
        raise SpecError(expected("a MovieLens folder holding movies.csv", str(folder)))
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    genres = (lambda r: " " + r["genres"].replace("|", " ") if r["genres"] != "(no genres listed)" else "")
    return [r["title"] + (genres(r) if with_genres else "") for r in rows]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[N, D]`` arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def per_text_latency_ms(run, tokens: np.ndarray, batch: int, repeats: int) -> float:
    """Median over ``repeats`` calls of ``run(tokens[:batch])``, divided by ``batch`` (one warm-up call)."""
    feed = np.ascontiguousarray(tokens[:batch])
    run(feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / len(feed)


def _backend(art, threads: int):
    from edgerec.runtime.backends.litert import LiteRTBackend
    from edgerec.runtime.backends.ort import OrtBackend

    if art.format == "tflite":
        return LiteRTBackend(art.path, num_threads=threads)
    return OrtBackend(art.path, num_threads=threads, providers=["CPUExecutionProvider"])


def _vectors(run, tokens: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([run(tokens[i:i + batch]) for i in range(0, len(tokens), batch)])


def measure_export(out_dir: str | Path, texts: Sequence[str], *, max_tokens: int = minilm.DEFAULT_MAX_TOKENS,
                   rows: int = 1000, variants: Sequence[tuple[str, str]] = MEASURED, repeats: int = 20,
                   threads: int = 1, checkpoint: minilm.MiniLMCheckpoint | None = None,
                   cache_dir: str | Path | None = None) -> dict:
    """Export the MiniLM encoder in each variant and measure size, latency and cosine to Keras fp32.

    Args:
        out_dir: where ``content_encoder.keras``, the calibration rows and ``minilm_export.json`` go.
        texts: item texts; the first ``rows`` (spread over the list) are measured, 200 others calibrate.
        max_tokens: T of the encoder and tokenizer.
        rows: texts whose vectors are compared with the Keras fp32 vectors.
        variants: ``(target, mode)`` rows of `edgerec.converters.flows.VARIANTS`.
        repeats: timed calls per latency figure (batch 1 and batch 64).
        threads: intra-op threads of every backend (and of TensorFlow for the Keras baseline).
        checkpoint: a loaded checkpoint (default: `minilm.load_checkpoint()`).
        cache_dir: the converters' pass cache (default: theirs).

    Returns:
        the report written to ``out_dir/minilm_export.json``: checkpoint facts, the Keras baseline,
        and per variant ``file, size_bytes, size_vs_fp32, cosine_mean, cosine_min, cosine_p01,
        latency_ms_b1, latency_ms_b64`` or ``error``.
    """
    from edgerec.converters.flows import VARIANTS, variant_pipeline
    from edgerec.converters.pipeline import ExportedArtifact, PassRunner

    texts = list(texts)
    if len(texts) < 2:
        raise SpecError(expected("at least two texts to measure and calibrate on", len(texts)))
    table = {(v.target, v.mode): v for v in VARIANTS if not v.tables}
    unknown = [tuple(v) for v in variants if tuple(v) not in table]
    if unknown:
        raise SpecError(expected(f"variants among {sorted(table)}", unknown))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint or minilm.load_checkpoint()
    tokenizer = checkpoint.tokenizer(max_tokens)
    every = np.linspace(0, len(texts) - 1, num=min(rows, len(texts)), dtype=int)
    measured = tokenizer.encode_batch([texts[i] for i in every])
    chosen = set(every.tolist())
    others = [t for i, t in enumerate(texts) if i not in chosen] or texts
    calibration = out / "calibration_content_encoder.npz"
    np.savez(calibration, **{ITEM_TOKENS: tokenizer.encode_batch(others[:: max(1, len(others) // CALIBRATION_ROWS)]
                                                                  [:CALIBRATION_ROWS])})

    limited = _limit_tf_threads(threads)           # before the first TensorFlow op, or it cannot be changed
    encoder = minilm.build_minilm_encoder(checkpoint, max_tokens)
    keras_path = out / "content_encoder.keras"
    encoder.save(keras_path)
    reference, keras = _keras_baseline(encoder, measured, repeats, threads)
    keras["threads"] = threads if limited else "tensorflow default"
    report = {"checkpoint": checkpoint.facts(), "max_tokens": max_tokens, "rows": len(measured), "threads": threads,
              "keras": {**keras, "size_bytes": keras_path.stat().st_size}, "variants": {}}
    runner = PassRunner(cache_dir) if cache_dir is not None else PassRunner()
    source = ExportedArtifact.from_keras(keras_path, part="content_encoder")
    fp32_size = {}
    for target, mode in variants:
        name = f"{target}_{mode}"
        logger.info("MiniLM %s: converting", name)
        pipeline = variant_pipeline(table[(target, mode)], runner, str(calibration), minilm.CUSTOM_OBJECTS_MODULE)
        try:
            art = pipeline.run(source, part="content_encoder")
        except Exception as err:  # noqa: BLE001 - a converter's untyped error (e.g. onnx's checker) is a result
            report["variants"][name] = {"error": f"{type(err).__name__}: {err}"[:600]}
            logger.warning("MiniLM %s: not produced (%s)", name, report["variants"][name]["error"][:200])
            continue
        report["variants"][name] = entry = _measure(art, measured, reference, repeats, threads)
        if mode == "fp32":
            fp32_size[target] = entry["size_bytes"]
        logger.info("MiniLM %s: %s", name, entry)
    for target, mode in variants:
        entry = report["variants"][f"{target}_{mode}"]
        if "size_bytes" in entry and target in fp32_size:
            entry["size_vs_fp32"] = entry["size_bytes"] / fp32_size[target]
    atomic_write_json(out / REPORT_FILE, report)
    return report


def _limit_tf_threads(threads: int) -> bool:
    from .layers import tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:          # TensorFlow already ran an op in this process: its threads stay
        logger.info("TensorFlow already initialised; the Keras latency uses its own thread count")
        return False
    return True


def _keras_baseline(encoder, tokens: np.ndarray, repeats: int, threads: int) -> tuple[np.ndarray, dict]:
    from .layers import tf

    call = tf.function(lambda ids: encoder(ids, training=False)[ITEM_VECTOR], reduce_retracing=True)
    run = (lambda ids: call(tf.constant(ids)).numpy())
    reference = _vectors(run, tokens)
    return reference, {"latency_ms_b1": per_text_latency_ms(run, tokens, 1, repeats),
                       "latency_ms_b64": per_text_latency_ms(run, tokens, 64, max(3, repeats // 5))}


def _measure(art, tokens: np.ndarray, reference: np.ndarray, repeats: int, threads: int) -> dict:
    backend = _backend(art, threads)
    try:
        run = (lambda ids: backend.run({ITEM_TOKENS: ids})[ITEM_VECTOR])
        cosine = cosine_rows(_vectors(run, tokens), reference)
        return {"file": Path(art.path).name, "precision": art.precision, "size_bytes": art.size_bytes,
                "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
                "cosine_p01": float(np.percentile(cosine, 1)),
                "latency_ms_b1": per_text_latency_ms(run, tokens, 1, repeats),
                "latency_ms_b64": per_text_latency_ms(run, tokens, 64, max(3, repeats // 5))}
    finally:
        backend.close()
