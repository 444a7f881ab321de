"""`Predictor.swap`: load, check and switch in a new bundle while calls keep being served.

The new bundle is verified, loaded, warmed up and its examples.jsonl replayed with the rule of
`edgerec check` (`examples.replay_loaded`) BEFORE the switch; any failure raises and the old
bundle keeps serving. Items registered with ``add_items`` are re-encoded by the new bundle under
the cold-start lock before it serves (`cold_start.ColdStartItems.rebind`). The switch itself is
one assignment under the Predictor's swap lock; calls in flight on the old bundle finish on it
and the last of them closes it (`LoadedBundle.retire`).
"""
from __future__ import annotations

from .errors import BundleError, RequestError, expected
from .examples import replay_loaded


def swap_bundle(predictor, new_bundle, check_examples: bool = True, tolerance: float | None = None) -> str:
    """Switch ``predictor`` to ``new_bundle`` (see `edgerec.runtime.predictor.Predictor.swap`);
    returns the new version."""
    if predictor._closed:
        raise RequestError(expected("an open Predictor", "closed"))
    count = predictor._count
    try:
        new = predictor._open(new_bundle)
    except BaseException:
        count("failed_swaps", 1)
        raise
    try:
        if check_examples:
            failed = [r for r in replay_loaded(new, tolerance=tolerance) if not r.passed]
            if failed:
                raise BundleError(expected("every served artifact to reproduce examples.jsonl within its "
                                           "replay tolerance", "; ".join(r.describe() for r in failed)))
    except BaseException:
        new.close()
        count("failed_swaps", 1)
        raise
    cold = predictor._cold
    with cold.lock:             # added items are re-encoded by the new bundle before it serves
        try:
            table, dropped = cold.rebind(new)
        except BaseException:
            new.close()
            count("failed_swaps", 1)
            raise
        with predictor._swap_lock:
            closed = predictor._closed
            if not closed:
                old, predictor._model = predictor._model, new
                cold.commit(old, new, table, dropped)
                predictor.user_cache.clear()
                predictor.result_cache.clear()
    if closed:                  # close() ran while the new bundle was being checked
        new.close()
        count("failed_swaps", 1)
        raise RequestError(expected("an open Predictor", "closed during the swap"))
    old.retire()
    count("swaps", 1)
    return new.version
