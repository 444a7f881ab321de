"""Entry point of one worker of a local cluster: ``python -m edgerec.sdk.training.worker JOB_JSON``.

`train_and_save` starts these processes (one per worker, each with its own ``TF_CONFIG``) and
passes the `TrainJob` as JSON. A worker trains, prints its summary and one
``EDGEREC_WORKER_RESULT {…}`` line to stdout (what the launching process collects), and exits 0;
a typed error is printed to stderr with exit status 2.
"""
from __future__ import annotations

import json
import logging
import os
import sys

from edgerec.runtime.errors import EdgeRecError, SpecError, expected


def _show_edgerec_logs() -> None:
    """edgerec's own INFO lines on stderr; the libraries' only with ``EDGEREC_VERBOSE=1`` (the
    launching ``edgerec --verbose`` sets it), as in the ``edgerec`` command."""
    verbose = os.environ.get("EDGEREC_VERBOSE") == "1"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    target = logging.getLogger() if verbose else logging.getLogger("edgerec")
    target.addHandler(handler)
    target.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    from .job import TrainJob, train_and_save

    argv = list(sys.argv[1:] if argv is None else argv)
    _show_edgerec_logs()
    try:
        if len(argv) != 1:
            raise SpecError(expected("one argument: the TrainJob as JSON", argv))
        try:
            job = TrainJob.from_dict(json.loads(argv[0]))
        except json.JSONDecodeError as err:
            raise SpecError(expected("the TrainJob as JSON", str(err))) from None
        outcome = train_and_save(job)
    except EdgeRecError as err:
        print(f"edgerec worker: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    for line in outcome.report_lines():
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
