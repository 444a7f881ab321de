"""CLI commands of the runtime (TF-free): `edgerec predict` and `edgerec check`.

    edgerec predict BUNDLE --input requests.jsonl [--output out.jsonl] [--backend auto]
    edgerec check BUNDLE [--backend all] [--tolerance 1e-4]

`predict` reads JSON lines (lines of examples.jsonl work: `expected` is ignored) and writes one
line per input: {"score": p} or, for a line with "candidates", {"scores": [...]}. `check`
replays BUNDLE/examples.jsonl per backend and fails when the worst |difference| from
`expected` exceeds the tolerance.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .errors import BundleError, EdgeRecError, RequestError, expected

EXAMPLES = "examples.jsonl"


def configure(name: str, parser) -> None:
    parser.add_argument("bundle", help="bundle directory or .tar.gz")
    parser.add_argument("--num-threads", type=int, default=None, help="backend threads")
    if name == "predict":
        parser.add_argument("--input", required=True, help="JSON-lines requests ('-' = stdin)")
        parser.add_argument("--output", default="-", help="JSON-lines output ('-' = stdout)")
        parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "litert", "tensorrt"])
        parser.add_argument("--batch-size", type=int, default=256, help="requests per model call")
    else:
        parser.add_argument("--backend", default="all", choices=["all", "auto", "onnxruntime", "litert", "tensorrt"])
        parser.add_argument("--tolerance", type=float, default=None,
                            help="max |diff| allowed (default: max(1e-4, 2 x the validator's max_abs_diff))")


def run(name: str, args) -> int:
    options = {"num_threads": args.num_threads} if args.num_threads else {}
    return run_predict(args, options) if name == "predict" else run_check(args, options)


# -- predict ----------------------------------------------------------------------------------
def read_jsonl(path) -> list[dict]:
    handle = sys.stdin if str(path) == "-" else None
    if handle is None:
        if not Path(path).is_file():
            raise RequestError(expected("an existing JSON-lines input file", str(path)))
        text = Path(path).read_text("utf-8")
    else:
        text = handle.read()
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise RequestError(expected(f"a JSON object on line {number}", str(err))) from None
    return rows


def predict_lines(predictor, rows: list, batch_size: int = 256) -> list[dict]:
    """One output dict per row; bad rows get {"error": …} and do not stop the others."""
    results: list = [None] * len(rows)
    pending = []

    def flush():
        if not pending:
            return
        try:
            scores = predictor.predict([rows[i] for i in pending])
            for i, s in zip(pending, scores):
                results[i] = {"score": float(s)}
        except EdgeRecError:
            for i in pending:          # find the culprit(s): score the batch row by row
                try:
                    results[i] = {"score": float(predictor.predict([rows[i]])[0])}
                except EdgeRecError as err:
                    results[i] = {"error": f"{type(err).__name__}: {err}"}
        pending.clear()

    for i, row in enumerate(rows):
        if isinstance(row, dict) and isinstance(row.get("inputs"), dict):     # tensor rows (BYOM)
            try:
                model = predictor._model
                part = "fused" if "fused" in model.parts else next(iter(model.parts))
                outs = predictor.predict_arrays(stack_tensor_rows(model.parts[part].inputs, [row]), part=part)
                results[i] = {"outputs": {k: v[0].tolist() for k, v in outs.items()}}
            except EdgeRecError as err:
                results[i] = {"error": f"{type(err).__name__}: {err}"}
            continue
        if isinstance(row, dict) and "candidates" in row:
            user = {k: v for k, v in row.items() if k not in ("candidates", "item", "expected")}
            try:
                results[i] = {"scores": [float(s) for s in predictor.score_candidates(user, row["candidates"])]}
            except EdgeRecError as err:
                results[i] = {"error": f"{type(err).__name__}: {err}"}
            continue
        pending.append(i)
        if len(pending) >= batch_size:
            flush()
    flush()
    for row, result in zip(rows, results):
        if isinstance(row, dict) and "request_id" in row:
            result["request_id"] = row["request_id"]
    return results


def run_predict(args, options) -> int:
    from .predictor import load

    if args.batch_size < 1:
        raise RequestError(expected("--batch-size >= 1", args.batch_size))
    rows = read_jsonl(args.input)
    with load(args.bundle, backend=args.backend, **options) as predictor:
        results = predict_lines(predictor, rows, args.batch_size)
    text = "".join(json.dumps(r) + "\n" for r in results)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        from .io import atomic_write_text
        atomic_write_text(args.output, text)
    errors = sum("error" in r for r in results)
    if errors:
        print(f"edgerec predict: {errors} of {len(rows)} lines failed", file=sys.stderr)
    return 1 if errors else 0


# -- check ------------------------------------------------------------------------------------
def stack_tensor_rows(specs, rows: list) -> dict:
    """BYOM example rows {"inputs": {name: row}} -> batched arrays of the declared dtypes."""
    arrays = {}
    for spec in specs:
        try:
            arrays[spec.name] = np.asarray([r["inputs"][spec.name] for r in rows], dtype=spec.dtype)
        except (KeyError, TypeError, ValueError) as err:
            raise RequestError(expected(f"'inputs.{spec.name}' rows of {spec.dtype}", str(err))) from None
    return arrays


def replay_examples(model) -> dict:
    """Replay a loaded bundle's examples.jsonl: worst and mean |output - expected|.

    edgerec bundles: raw requests + ``expected`` probability. Bring-your-own-model bundles:
    ``{"inputs": {name: row}, "expected": {output: row}}`` run on the fused (or only) part.
    """
    path = model.dir / EXAMPLES
    files = {part: Path(b.model_path).name for part, b in model.parts.items()}
    if not path.is_file():
        return {"backend": model.backend_name, "rows": 0, "worst": None, "mean": None, "files": files}
    rows = read_jsonl(path)
    if not rows:
        return {"backend": model.backend_name, "rows": 0, "worst": None, "mean": None, "files": files}
    if all(isinstance(r, dict) and isinstance(r.get("inputs"), dict) for r in rows):
        part = "fused" if "fused" in model.parts else next(iter(model.parts))
        outputs = model.run(part, stack_tensor_rows(model.parts[part].inputs, rows))
        diffs = []
        for name in rows[0].get("expected", {}):
            if name not in outputs:
                raise BundleError(expected(f"output '{name}' from the {part} model", sorted(outputs)))
            want = np.asarray([r["expected"][name] for r in rows], dtype=np.float64)
            diffs.append(np.abs(outputs[name].astype(np.float64).reshape(want.shape) - want).reshape(-1))
        if not diffs:
            raise BundleError(expected("'expected' outputs on the examples.jsonl lines", "none"))
        diff = np.concatenate(diffs)
    else:
        if model.preprocessor is None:
            raise BundleError(expected("a feature spec to replay raw-request examples.jsonl", "none"))
        want = np.asarray([r.get("expected", np.nan) if isinstance(r, dict) else np.nan for r in rows], dtype=np.float64)
        if np.isnan(want).any():
            raise BundleError(expected("an 'expected' number on every examples.jsonl line", "missing"))
        got = model.score_rows(model.preprocessor.encode_requests(
            [{k: v for k, v in r.items() if k != "expected"} for r in rows]))
        diff = np.abs(got.astype(np.float64) - want)
    return {"backend": model.backend_name, "rows": len(rows), "worst": float(diff.max()), "mean": float(diff.mean()),
            "files": files}


def default_tolerance(model) -> float:
    recorded = [model.manifest.artifact(Path(b.model_path).name).validation.get("max_abs_diff")
                for b in model.parts.values()]
    recorded = [float(r) for r in recorded if isinstance(r, (int, float))]
    return max([1e-4] + [2 * r for r in recorded])


def run_check(args, options) -> int:
    from .backends.registry import BACKENDS, is_available
    from .loaded import LoadedBundle

    names = [n for n in BACKENDS if is_available(n) and n != "tensorrt"] if args.backend == "all" else [args.backend]
    failed, checked = 0, 0
    for name in names:
        try:
            model = LoadedBundle.open(args.bundle, name, share_sessions=False, **options)
        except EdgeRecError as err:
            if args.backend == "all" and "artifacts in the bundle" in str(err):
                continue   # this backend has no artifacts here: nothing to check
            raise
        try:
            report = replay_examples(model)
            tolerance = args.tolerance if args.tolerance is not None else default_tolerance(model)
        finally:
            model.close()
        checked += 1
        if report["rows"] == 0:
            print(f"{report['backend']}: no {EXAMPLES} in the bundle: nothing to compare")
            failed += 1
            continue
        ok = report["worst"] <= tolerance
        failed += not ok
        print(f"{report['backend']}: {report['rows']} examples, worst |diff| {report['worst']:.3g}, "
              f"mean {report['mean']:.3g}, tolerance {tolerance:.3g}: {'OK' if ok else 'FAIL'} {report['files']}")
    if checked == 0:
        raise BundleError(expected("at least one installed backend with artifacts in the bundle", names))
    return 1 if failed else 0
