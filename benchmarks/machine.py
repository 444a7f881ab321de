"""What the numbers were measured on: CPU, cores, OS, Python, package versions, and memory.

Examples:
    >>> info = machine_info()
    >>> sorted(info)[:3]
    ['cores_logical', 'cores_physical', 'cpu_model']
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("edgerec", "numpy", "onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "onnx", "tensorflow",
            "tf-keras", "tensorflow-model-optimization", "tf2onnx", "matplotlib", "psutil")


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, `platform.processor()` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_versions(names=PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape the numbers (absent ones are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_info() -> dict:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        physical, memory_gb = None, None
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": physical,
        "cores_usable": affinity,
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (monotonic over the process life)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # KiB on Linux, bytes on macOS
    except (ImportError, OSError):
        return current_rss_mb()


def current_rss_mb() -> float:
    """Resident set size right now, in MiB (psutil; falls back to /proc/self/statm)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
