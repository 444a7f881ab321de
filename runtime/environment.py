"""What this machine offers edgerec: `edgerec env`.

Versions of edgerec, Python and numpy; each backend (installed, version, and for ONNX Runtime the
execution providers it lists); each pip extra with the packages it still lacks and the command
that installs them. Everything is read from package metadata and module specs: TensorFlow is
never imported (importing it takes seconds and prints CUDA probes), ONNX Runtime only to ask for
its providers.

Examples:
    >>> report = environment_report()                                         # doctest: +SKIP
    >>> report["backends"]["onnxruntime"]["installed"], report["extras"]["train"]["missing"]
    (True, [])
"""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import platform
import re
import sys

from .backends.registry import BACKEND_EXTRAS, BACKEND_MODULES, BACKENDS

PACKAGE = "edgerec"
PROVIDER_NOTE = ("ONNX Runtime lists the providers its build contains, not the ones this machine can run: "
                 "onnxruntime-gpu lists CUDA/TensorRT without a GPU and falls back to CPU. The session reports "
                 "the providers it activated (Predictor.stats()['backend_info']).")
# The TensorRT Python package is not an edgerec extra (NVIDIA ships it per CUDA version).
INSTALL_HINTS = {"tensorrt": "pip install tensorrt (NVIDIA GPU machines; match the CUDA version)"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _distributions_of(modules) -> list[str]:
    """Installed distributions that provide the given top-level modules."""
    provided = metadata.packages_distributions()
    return sorted({dist for module in modules for dist in provided.get(module, [])})


def extras_requirements() -> dict[str, list[str]] | None:
    """extra -> the distributions it installs, from edgerec's own metadata (None: not installed)."""
    try:
        requires = metadata.requires(PACKAGE) or []
    except metadata.PackageNotFoundError:
        return None
    extras: dict[str, list[str]] = {}
    for requirement in requires:
        name, extra = _NAME.match(requirement), _EXTRA.search(requirement)
        if name and extra and name.group(1).lower() != PACKAGE:
            extras.setdefault(extra.group(1), []).append(name.group(1))
    return extras


def _backend(name: str) -> dict:
    modules = BACKEND_MODULES[name]
    found = [m for m in modules if _module_found(m)]
    dists = _distributions_of(found)
    entry = {"installed": bool(found), "modules": found,
             "versions": {d: _version(d) for d in dists},
             "install": INSTALL_HINTS.get(name, f"pip install '{PACKAGE}[{BACKEND_EXTRAS[name]}]'")}
    if name == "onnxruntime" and found:
        entry["providers_listed"] = _ort_providers()
        entry["note"] = PROVIDER_NOTE
    return entry


def _ort_providers() -> list[str] | str:
    try:
        import onnxruntime
    except Exception as err:  # noqa: BLE001 - a broken install is reported, not raised
        return f"unavailable: {type(err).__name__}: {err}"
    return list(onnxruntime.get_available_providers())


def environment_report() -> dict:
    """A JSON-ready report of versions, backends and missing extras (imports no TensorFlow)."""
    extras = extras_requirements()
    report_extras = {}
    for extra, dists in sorted((extras or {}).items()):
        missing = [d for d in dists if _version(d) is None]
        report_extras[extra] = {"packages": dists, "missing": missing,
                                "install": f"pip install '{PACKAGE}[{extra}]'" if missing else None}
    return {
        "edgerec": _version(PACKAGE) or "unknown (not installed: run from a checkout)",
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "numpy": _version("numpy"),
        "backends": {name: _backend(name) for name in BACKENDS},
        "extras": report_extras if extras is not None else "unknown: edgerec's package metadata is not installed",
        "tensorflow": _version("tensorflow"),
    }


def render_environment(report: dict) -> str:
    """The text `edgerec env` prints for an `environment_report` dict."""
    lines = [f"edgerec    {report['edgerec']}",
             f"python     {report['python']} ({report['platform']}, {report['cpus']} CPUs)",
             f"numpy      {report['numpy']}",
             f"tensorflow {report['tensorflow'] or 'not installed (needed only to train and export)'}", "",
             "backends"]
    for name, entry in report["backends"].items():
        if entry["installed"]:
            versions = ", ".join(f"{d} {v}" for d, v in entry["versions"].items()) or ", ".join(entry["modules"])
            lines.append(f"  {name:<12} installed: {versions}")
            if "providers_listed" in entry:
                providers = entry["providers_listed"]
                shown = ", ".join(providers) if isinstance(providers, list) else providers
                lines.append(f"  {'':<12} providers listed: {shown}")
                lines.append(f"  {'':<12} (listed is not proof of a GPU: the session reports what it activated)")
        else:
            lines.append(f"  {name:<12} not installed: {entry['install']}")
    lines += ["", "extras"]
    if isinstance(report["extras"], str):
        lines.append(f"  {report['extras']}")
    else:
        for extra, entry in report["extras"].items():
            state = "complete" if not entry["missing"] else f"missing {', '.join(entry['missing'])}: {entry['install']}"
            lines.append(f"  {extra:<8} {state}")
    return "\n".join(lines)
