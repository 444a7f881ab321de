"""The demo pipeline (`edgerec demo`): raw data → trained DIN → prune 50 % + int8 → TFLite + ONNX →
validate → select → examples replay → benchmark → summary table and report folder.

The report folder holds ``model/`` (MODEL_DIR), ``bundle/`` (the validated bundle),
``bench/bench.json``, ``bench/bench.md``, ``bench/*.png`` and ``summary.txt``. Stage lines are
printed (this runs as a command); library logs go through `logging`.

Examples:
    >>> report = run_demo("synthetic", Path("/tmp/demo"), DemoSettings.tiny())   # doctest: +SKIP
    >>> report.passed
    True
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgerec.runtime.errors import SpecError, expected

# The embedded synthetic data at two sizes: the default demo and the CI-sized --tiny run.
SYNTHETIC_DEFAULT = {"num_users": 2000, "num_items": 1500, "num_events": 60000}
SYNTHETIC_TINY = {"num_users": 300, "num_items": 200, "num_events": 6000}


@dataclass(frozen=True)
class DemoSettings:
    """Every knob of a demo run: the defaults, or `tiny` (the CI-sized run)."""

    # Fewer epochs or a training subsample leave DIN below the popularity baseline here.
    epochs: int = 5
    max_train_rows: int | None = None
    max_seq_len: int = 50
    embedding_dim: int = 32
    budget_s: float = 1.0
    batches: tuple = (1, 256)
    candidates: tuple = (200, 1000)
    keras_predict: bool = True
    validation_groups: int | None = 300
    prune_epochs: int = 2
    latency_rounds: int = 5
    synthetic: dict | None = None
    # user x item rows scored for the full-catalogue metrics (a seeded user sample beyond)
    full_catalogue_rows: int = 500_000

    def __post_init__(self):
        for name in ("epochs", "max_seq_len", "embedding_dim", "prune_epochs", "latency_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(expected(f"{name} as a positive int", value))
        if isinstance(self.budget_s, bool) or not isinstance(self.budget_s, (int, float)) or not self.budget_s > 0:
            raise SpecError(expected("budget_s as a positive number", self.budget_s))

    @classmethod
    def tiny(cls) -> "DemoSettings":
        return cls(epochs=1, max_train_rows=4000, max_seq_len=20, embedding_dim=16, budget_s=0.1,
                   batches=(1, 32), candidates=(200,), keras_predict=False, validation_groups=40,
                   prune_epochs=1, latency_rounds=3, synthetic=SYNTHETIC_TINY, full_catalogue_rows=50_000)


class Steps:
    """Prints ``[i/n] step …`` with elapsed time, so progress is visible throughout."""

    def __init__(self, total: int, stream=None):
        self.total, self.index, self.stream = total, 0, stream
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def __call__(self, title: str) -> None:
        self._close()
        self.index += 1
        self._current = (title, time.perf_counter())
        print(f"\n[{self.index}/{self.total}] {title}  (t+{time.perf_counter() - self.start:.0f} s)",
              file=self.stream or sys.stdout, flush=True)

    def _close(self) -> None:
        if self._current:
            title, began = self._current
            self.timings[title] = round(time.perf_counter() - began, 1)
            self._current = None

    def done(self) -> float:
        self._close()
        return time.perf_counter() - self.start


@dataclass(frozen=True)
class DemoReport:
    """What `run_demo` did: the summary text and the bundle's examples replay on this machine.

    Attributes:
        summary: the summary (also in ``out/summary.txt``).
        replay: one `ReplayResult` per artifact (or part pair) each installed backend serves.
    """

    summary: str
    replay: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every replayed artifact answered its examples within tolerance."""
        return bool(self.replay) and all(result.passed for result in self.replay)


def run_demo(data: str, out: Path, settings: DemoSettings | None = None, seed: int = 0) -> DemoReport:
    """Run every stage into the report folder ``out``.

    Args:
        data: ``"synthetic"`` or ``"movielens:PATH"``.
        out: the report folder (created when missing).
        settings: the `DemoSettings` (default: the full demo).
        seed: seeds data, training, pruning and export.

    Raises:
        SpecError: an unknown data source (before anything runs).
        MissingDependencyError: TensorFlow is not installed (before anything runs).
    """
    from edgerec.runtime.io import atomic_write_text
    from edgerec.sdk.training.job import require_train_extra

    settings = DemoSettings() if settings is None else settings
    options = {}
    if data == "synthetic":
        options = dict(settings.synthetic or SYNTHETIC_DEFAULT)
    elif not isinstance(data, str) or not data.startswith("movielens"):
        raise SpecError(expected("--data 'synthetic' or 'movielens:PATH'", data))
    require_train_extra()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(6)
    steps(f"data: {data}")
    from edgerec.sdk.data import load_dataset

    dataset = load_dataset(data, max_seq_len=settings.max_seq_len, negatives=4, seed=seed, progress=True, **options)
    print(f"  {dataset.name}: {len(dataset.train):,} train / {len(dataset.valid):,} valid / "
          f"{len(dataset.test):,} ranking rows, {dataset.spec.item_vocab.size - 2:,} items", flush=True)

    steps(f"train DIN ({settings.epochs} epoch(s), up to {settings.max_train_rows or 'all'} rows)")
    from edgerec.sdk.models import ModelConfig
    from edgerec.sdk.training import TrainConfig, save_model_dir, train_model

    train_config = TrainConfig(epochs=settings.epochs, seed=seed, verbose=1, max_train_rows=settings.max_train_rows,
                               patience=1, full_catalogue_rows=settings.full_catalogue_rows)
    parts, history, metrics = train_model(dataset, "din", ModelConfig(embedding_dim=settings.embedding_dim),
                                          train_config)
    model_dir = save_model_dir(parts, dataset, out / "model", metrics, train_config, history, data_source=data,
                               seed=seed)
    print(f"  test AUC {metrics['test']['auc']:.4f} (popularity {metrics['baseline']['auc']:.4f}), "
          f"recall@10 {metrics['test'].get('recall@10', float('nan')):.4f}; wrote {model_dir}", flush=True)
    if "full_catalogue" in metrics:
        users = metrics.get("full_catalogue_users", {})
        print(f"  full catalogue ({users.get('evaluated', '?')} users, all {users.get('items', '?')} items): "
              f"HR@10 {metrics['full_catalogue']['hr@10']:.4f} (popularity "
              f"{metrics['baseline_full_catalogue']['hr@10']:.4f}), recall@100 "
              f"{metrics['full_catalogue']['recall@100']:.4f}", flush=True)
    del parts

    steps("compress + export: prune 50 % → TFLite (fp32, dynamic, int8) + ONNX (fp32, int8)")
    bundle_dir, export_info = export_bundle(model_dir, out / "bundle", settings, seed)

    steps("validate + select (done by the exporter; re-read from the manifest)")
    from edgerec.runtime.manifest import load_manifest

    from edgerec.runtime.shared_tables import artifact_size

    manifest = load_manifest(bundle_dir, verify=True)
    for art in manifest.artifacts:
        v = art.validation
        print(f"  {art.file:<34} {art.precision:<8} {artifact_size(manifest, art.file) / 1024:9.1f} KB  "
              f"ΔAUC {_figure(v.get('delta_auc'), '+.4f'):>7}  max|Δp| {_figure(v.get('max_abs_diff'), '.2e')}")
    for rejected in manifest.rejected:
        print(f"  rejected {rejected.get('file')}: {rejected.get('reason')}")
    print(f"  selected: {manifest.selected}", flush=True)

    steps("check the bundle on this machine (examples.jsonl replay through the runtime)")
    replay = replay_bundle(bundle_dir)
    worst = max((r.worst for r in replay if r.worst == r.worst), default=float("nan"))
    replay_line = (f"{'passed' if DemoReport('', replay).passed else 'FAILED'}: "
                   f"{sum(r.passed for r in replay)}/{len(replay)} within tolerance (worst |Δ| {worst:.2e})")

    steps(f"benchmark (budget {settings.budget_s} s per configuration, batches {list(settings.batches)})")
    from edgerec.benchmarks.bench import benchmark_bundle
    from edgerec.benchmarks.summary import summary_table

    report = benchmark_bundle(bundle_dir, out / "bench", keras_dir=model_dir, budget_s=settings.budget_s,
                              batches=settings.batches, candidates=settings.candidates,
                              keras_predict=settings.keras_predict, progress=True)
    total = steps.done()
    stage_times = ", ".join(f"{_stage_name(k)} {v:.0f} s" for k, v in steps.timings.items())
    lines = [f"edgerec demo on {dataset.name} — {total:.0f} s in total ({stage_times})",
             f"model: DIN, test AUC {metrics['test']['auc']:.4f} vs popularity {metrics['baseline']['auc']:.4f}",
             f"bundle: {bundle_dir} — selected {manifest.selected}",
             f"examples replay: {replay_line}", "", artifact_table(manifest), "", summary_table(report), "",
             f"report: {out / 'bench' / 'bench.md'}, {out / 'bench' / 'bench.json'}, "
             f"plots: {', '.join(report.get('plots', []))}"]
    if export_info:
        lines.insert(3, f"export: {export_info}")
    text = "\n".join(lines)
    atomic_write_text(out / "summary.txt", text + "\n")
    return DemoReport(text, replay)


def _figure(value, spec: str) -> str:
    """A recorded figure, or "-" where the part has none (a user encoder has no AUC of its own)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return "-"
    return format(value, spec)


def _stage_name(title: str) -> str:
    return title.split(":")[0].split(" (")[0]


def artifact_table(manifest) -> str:
    """The bundle's artifacts, each sized as one file (with the shared tables it reads)."""
    from edgerec.runtime.shared_tables import artifact_size

    header = f"{'artifact':<34} {'format':<7} {'precision':<9} {'part':<13} {'size KB':>9} {'ΔAUC':>8} {'selected':>9}"
    chosen = {f for parts in manifest.selected.values() for f in parts.values()}
    rows = [header, "-" * len(header)]
    for art in sorted(manifest.artifacts, key=lambda a: (a.part, a.format, artifact_size(manifest, a.file))):
        delta = _figure(art.validation.get("delta_auc"), "+.4f")
        size = artifact_size(manifest, art.file)
        rows.append(f"{art.file:<34} {art.format:<7} {art.precision:<9} {art.part:<13} {size / 1024:>9.1f} "
                    f"{delta:>8} {'yes' if art.file in chosen else '':>9}")
    return "\n".join(rows)


def export_bundle(model_dir: Path, bundle_dir: Path, settings: DemoSettings, seed: int) -> tuple[Path, str]:
    """Prune 50 % + int8, export TFLite and ONNX, validate and select, write the bundle."""
    from edgerec.converters.export import export_model
    from edgerec.converters.select import LatencyConfig

    manifest = export_model(model_dir, bundle_dir, prune=0.5, quantize=("int8",), targets=("tflite", "onnx"),
                            max_groups=settings.validation_groups, prune_epochs=settings.prune_epochs, seed=seed,
                            latency=LatencyConfig(batch_sizes=tuple(settings.batches), rounds=settings.latency_rounds),
                            progress=lambda line: print(f"  {line}", flush=True))
    prune = manifest.lineage.get("prune") or {}
    sparsity = (f"fused model pruned to {prune['achieved_sparsity']:.1%} zeros"
                if prune.get("achieved_sparsity") is not None else "pruning not recorded")
    if prune.get("delta_auc") is not None:
        sparsity += f" (ΔAUC {prune['delta_auc']:+.4f} vs unpruned Keras)"
    return Path(bundle_dir), (f"{len(manifest.artifacts)} artifacts passed validation, "
                              f"{len(manifest.rejected)} rejected; {sparsity}")


def replay_bundle(bundle_dir: Path) -> list:
    """Replay examples.jsonl through what each installed backend serves from the bundle, under the
    runtime's one replay rule (`edgerec.runtime.examples`); prints one line per result."""
    from edgerec.runtime.examples import check_bundle

    results = check_bundle(bundle_dir, backend="all", num_threads=1)
    for result in results:
        print(f"  {result.describe()}", flush=True)
    return results
