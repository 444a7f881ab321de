"""One verified, loaded bundle version: its manifest, feature spec and a backend per part.

`LoadedBundle.open` verifies every sha256 (and, given trusted keys, the manifest's signature)
and hands backends the very bytes it hashed, never a second read by path, with the verified
bytes of the shared tables those artifacts read (`shared_tables.SharedTables`). It accepts a
.tar/.tar.gz archive (extracted within `archives.ArchiveLimits`; the temp folder goes when the
bundle is closed or garbage-collected), and picks the artifacts the manifest selected for the
backend. It counts in-flight calls so a hot swap can retire it only after they finish.

`LoadedBundle.run` takes one user's 1-row state beside N candidate rows: a scorer that broadcasts
it in its graph gets it once (`scores.probe_scorer`, probed at open), a part that cannot
(an older export) gets it repeated to N rows. A scorer with free history positions gets that
state without its padded positions (`positions.trim_positions`).
"""
from __future__ import annotations

import hashlib
import shutil
import threading
import weakref
from pathlib import Path
from typing import Mapping

import numpy as np

from .backends.base import feeds_match
from .backends.registry import create_backend
from .cache import SESSIONS, SessionCache
from .errors import RequestError, expected
from .manifest import Manifest, extract_bundle, read_manifest, verify_files
from .preprocess import Preprocessor
from .positions import trim_positions
from .scores import has_state_row, probe_scorer, rows_of, spread_rows
from .shared_tables import SharedTables
from .selection import check_signature, choose_backend, selected_files, spec_from_bytes
from .spec import FeatureSpec
from .tensor_checks import check_tensor_ranges, encoded_fits, id_limits


class LoadedBundle:
    """A verified bundle with one backend per part. Use `open`; release with `close`."""

    def __init__(self):
        self.dir: Path | None = None
        self.manifest: Manifest | None = None
        self.backend_name = ""
        self.parts: dict = {}           # part -> Backend
        self.output_names: dict = {}    # part -> {backend output name: canonical name}
        self.spec: FeatureSpec | None = None
        self.preprocessor: Preprocessor | None = None
        self.version = ""
        self._tmp: str | None = None
        self._finalizer = None          # removes an archive's temp folder if close() is never called
        self._session_keys: list = []
        self._sessions: SessionCache | None = None
        self._owned: list = []
        self._run_plans: dict = {}      # part -> (input names, output renames or None), see `run`
        self._tensor_plans: dict = {}   # part -> (backend, feeds_match rows, fast, renames), see `run_tensors`
        self._encoded_fits: dict = {}   # part -> its signature takes Preprocessor arrays as they are
        self.shared_inputs: dict = {}   # part -> inputs it takes as 1 row for all rows (user state)
        self.position_inputs: dict = {}  # part -> state inputs it takes without padded positions
        self._mixed_plans: dict = {}    # (part, 1-row inputs) -> their feeds_match rows, the others'
        self.default_part = ""          # what `Predictor.predict_arrays` runs without a part
        self.request_inputs: frozenset = frozenset()   # inputs raw requests must be encoded into
        self._id_limits: dict | None = None
        self._calls: list = []          # one entry per in-flight call (see `enter`)
        self._retired = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, bundle_path, backend: str = "auto", share_sessions: bool = True, *, trusted_keys=None,
             archive_limits=None, **options) -> "LoadedBundle":
        """Verify and load ``bundle_path`` (a directory, or a .tar/.tar.gz archive).

        Args:
            bundle_path: the bundle.
            backend: "auto" | "onnxruntime" | "litert" | "tensorrt".
            share_sessions: reuse backends loaded from the same verified bytes (`cache.SESSIONS`).
            trusted_keys: Ed25519 public keys (paths, PEM bytes or key objects); when given, the
                manifest must carry a signature by one of them (`signing.verify_signature`).
            archive_limits: `archives.ArchiveLimits` (or a dict of its fields) for archives.
            **options: backend options (num_threads, providers, ...).
        """
        self = cls()
        try:
            self._open(bundle_path, backend, share_sessions, trusted_keys, archive_limits, options)
        except BaseException:
            self.close()
            raise
        return self

    def _open(self, bundle_path, backend, share_sessions, trusted_keys, archive_limits, options):
        path, tmp = extract_bundle(bundle_path, archive_limits)
        if tmp is not None:
            self._tmp = tmp
            self._finalizer = weakref.finalize(self, shutil.rmtree, tmp, True)
        # Resolved once: a bundle replaced by a symlink flip meanwhile cannot mix two versions.
        path = path.resolve()
        self.dir = path
        self.manifest, manifest_bytes = read_manifest(path)
        if trusted_keys is not None:
            from .signing import verify_signature
            verify_signature(path, manifest_bytes, trusted_keys)
        self.version = hashlib.sha256(manifest_bytes).hexdigest()[:16]
        self.backend_name = choose_backend(self.manifest, backend)
        chosen = selected_files(self.manifest, self.backend_name)
        spec_file = self.manifest.feature_spec
        blobs = SharedTables.files_for(self.manifest, chosen.values())
        verified = verify_files(path, self.manifest,
                                keep=[*chosen.values(), *blobs, *([spec_file] if spec_file is not None else [])])
        tables = SharedTables.from_manifest(self.manifest, verified)
        # The sessions keep what they need of the tables (ONNX Runtime: one OrtValue per table,
        # shared by every session); a session cache key needs no more than the artifact's sha256,
        # which covers the sha256 of each blob it names.
        load_options = dict(options) if tables is None else {**options, "shared_tables": tables}
        if spec_file is not None:
            self.spec = spec_from_bytes(verified[spec_file], spec_file)
            self.preprocessor = Preprocessor(self.spec)
        self._sessions = SESSIONS if share_sessions else None
        for part, file in chosen.items():
            artifact = self.manifest.artifact(file)
            make = lambda f=file: create_backend(self.backend_name, path / f, model_bytes=verified[f],  # noqa: E731
                                                 **load_options)
            if self._sessions is not None:
                key = SessionCache.key(self.backend_name, artifact.sha256, options)
                loaded = self._sessions.acquire(key, make)
                self._session_keys.append(key)
            else:
                loaded = make()
                self._owned.append(loaded)
            self.parts[part] = loaded
            self.output_names[part] = check_signature(part, artifact, loaded)
        if {"user_encoder", "scorer"} <= set(self.parts):
            probe = probe_scorer(self, chosen["scorer"], verified[chosen["scorer"]], load_options)
            self.shared_inputs["scorer"] = probe.shared
            if probe.positions:
                self.position_inputs["scorer"] = probe.positions
        del verified, tables, load_options
        self.default_part = "fused" if "fused" in self.parts else "scorer"
        row_parts = ("fused",) if "fused" in self.parts else ("user_encoder", "scorer")
        self.request_inputs = frozenset(t.name for p in row_parts for t in self.parts[p].inputs)
        if self.spec is not None and "fused" in self.parts:
            self._encoded_fits = {"fused": encoded_fits(self.spec.input_signature("fused"), self.parts["fused"])}

    # -- running -----------------------------------------------------------------------------
    def run(self, part: str, arrays: dict) -> dict:
        """Feed the inputs ``part`` declares (a model may ignore spec fields), canonical outputs.

        1-row arrays beside N-row ones (one user's state for N candidates) are taken once where
        the part broadcasts them (`shared_inputs`) and repeated to N rows otherwise; a part with
        `position_inputs` gets users' states without the positions no row's mask holds."""
        backend = self.parts[part]
        order, inputs, renames = self._run_plans.get(part) or self._run_plan(part)
        if type(arrays) is dict and arrays.keys() == inputs:
            feeds = arrays                           # exactly the declared inputs: no re-packing
        else:
            feeds = {name: arrays[name] for name in order if name in arrays}
            if len(feeds) != len(inputs):
                feeds = dict(arrays)
        positions = self.position_inputs.get(part)
        if positions:
            feeds = trim_positions(feeds, positions)
        if len({rows_of(v) for v in feeds.values()}) > 1:
            outputs = self._run_mixed(part, backend, feeds)
        else:
            outputs = backend.run(feeds)
        if renames is None:
            return outputs
        return {renames.get(k, k): v for k, v in outputs.items()}

    def _run_mixed(self, part: str, backend, feeds: dict) -> dict:
        """`run` for feeds of different batch sizes: the part's `shared_inputs` given as 1 row stay
        1 row (checked apart from the N-row feeds), every other 1-row array is repeated; anything
        else goes to the backend's full checks (and their typed errors)."""
        n = max((r for r in map(rows_of, feeds.values()) if r is not None), default=1)
        keep = frozenset(k for k in self.shared_inputs.get(part, ()) if rows_of(feeds.get(k)) == 1)
        feeds = spread_rows(feeds, n, keep)
        if keep and n > 1:
            plans = self._mixed_plans.get((part, keep))
            if plans is None:
                rows = backend.feed_plan()
                plans = self._mixed_plans[(part, keep)] = (tuple(r for r in rows if r[0] in keep),
                                                           tuple(r for r in rows if r[0] not in keep))
            once = {k: v for k, v in feeds.items() if k in keep}
            each = {k: v for k, v in feeds.items() if k not in keep}
            if backend.fast_checks and feeds_match(plans[0], once) and feeds_match(plans[1], each):
                return backend.run_validated(feeds)
            feeds = spread_rows(feeds, n)
        return backend.run(feeds)

    def _run_plan(self, part: str) -> tuple:
        """(input order, input names, output renames or None) of ``part``, computed once."""
        plan = self._run_plans.get(part)
        if plan is None:
            names = self.output_names[part]
            order = tuple(t.name for t in self.parts[part].inputs)
            renames = names if any(k != v for k, v in names.items()) else None
            plan = self._run_plans[part] = (order, frozenset(order), renames)
        return plan

    def run_encoded(self, part: str, arrays: dict) -> dict:
        """`run` for arrays the bundle's `Preprocessor` built with `request_inputs`: where the
        part's signature is the spec's (`encoded_fits`, checked at open) they match it by
        construction (int32/float32, C-contiguous, one batch of at least one row), so they go to
        the backend without a second check."""
        if self._encoded_fits.get(part) and arrays.keys() == self.request_inputs:
            outputs = self.parts[part].run_validated(arrays)
            renames = self._run_plan(part)[2]
            return outputs if renames is None else {renames.get(k, k): v for k, v in outputs.items()}
        return self.run(part, arrays)

    def run_tensors(self, part: str, feeds) -> dict:
        """`run` for caller-supplied arrays (`Predictor.predict_arrays`): exactly the declared
        inputs, ids inside the spec's tables and finite floats, checked in one pass
        (`feeds_match`); anything else gets the full checks and their typed errors."""
        plan = self._tensor_plans.get(part)
        if plan is None:
            plan = self._tensor_plan(part)
        backend, rows, fast, renames = plan
        if not (fast and feeds_match(rows, feeds)):
            shared = self.shared_inputs.get(part)
            if shared and has_state_row(feeds, shared):
                # one user's state as 1 row beside N candidates: the same checks, then `run` feeds it once
                return self.run(part, self._check_tensors(backend, feeds, shared))
            feeds = self._check_tensors(backend, feeds)
        outputs = backend.run_validated(feeds)
        if renames is None:
            return outputs
        return {renames.get(k, k): v for k, v in outputs.items()}

    def _tensor_plan(self, part: str) -> tuple:
        backend = self.parts[part]
        renames = self._run_plan(part)[2]
        with_spec = self.spec is not None
        rows = backend.feed_plan(self.id_limits if with_spec else None, finite=with_spec)
        plan = self._tensor_plans[part] = (backend, rows, backend.fast_checks, renames)
        return plan

    def _check_tensors(self, backend, feeds, shared=frozenset()) -> dict:
        """The full checks, in the order the errors are reported: feeds type, value ranges, signature
        (``shared`` inputs may hold 1 row beside the others' N)."""
        if type(feeds) is not dict:
            if not isinstance(feeds, Mapping):
                raise RequestError(expected("feeds as a dict of name -> numpy array", type(feeds).__name__))
            feeds = dict(feeds)
        if self.spec is not None:
            check_tensor_ranges(self.spec, feeds, self.id_limits)
        return backend.check_feeds(feeds, shared=shared)

    @property
    def id_limits(self) -> dict:
        """Input name -> table size for id inputs of the feature spec (empty without a spec)."""
        if self._id_limits is None:
            self._id_limits = id_limits(self.spec) if self.spec is not None else {}
        return self._id_limits

    def score_rows(self, arrays: dict) -> np.ndarray:
        """Fused-style rows -> scores, without caches (fused model, else user_encoder + scorer)."""
        n = len(arrays["cand_item"])
        if "fused" in self.parts:
            scores = self.run("fused", arrays)["score"]
        else:
            state = self.run("user_encoder", {"hist_items": arrays["hist_items"]})
            scores = self.run("scorer", {**arrays, **state})["score"]
        return np.asarray(scores, dtype=np.float32).reshape(n)

    def warmup(self) -> None:
        for part, backend in self.parts.items():
            feeds = {t.name: np.zeros([1 if d is None else d for d in t.shape], dtype=t.dtype) for t in backend.inputs}
            backend.run(feeds)

    # -- lifetime ----------------------------------------------------------------------------
    # (`Predictor._enter`/`_leave` inline `enter`/`exit`: keep the three in step.)
    # In-flight calls are counted as entries of a list: append/pop are atomic in CPython, so the
    # hot path takes no lock. retire/exit each re-read the other's state after their own write,
    # so the last of them sees "retired and idle" and closes (a second close is a no-op).
    def enter(self) -> None:
        self._calls.append(None)

    def exit(self) -> None:
        self._calls.pop()
        if self._retired and not self._calls:
            self.close()

    @property
    def inflight(self) -> int:
        return len(self._calls)

    def retire(self) -> None:
        """Close now if idle, else when the last in-flight call exits."""
        self._retired = True
        if not self._calls:
            self.close()

    def close(self) -> None:
        with self._lock:
            keys, self._session_keys = self._session_keys, []
            owned, self._owned = self._owned, []
            tmp, self._tmp = self._tmp, None
        for key in keys:
            self._sessions.release(key)
        for backend in owned:
            backend.close()
        if tmp is not None and self._finalizer is not None:
            self._finalizer()
