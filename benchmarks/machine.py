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
_STATM = "/proc/self/statm"
_STATUS = "/proc/self/status"


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


def _total_memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def machine_info() -> dict:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": physical,
        "cores_usable": affinity,
        "memory_gb": _total_memory_gb(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "rss_source": rss_source(),
    }


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, in MiB (monotonic over the process life).

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own memory.
    ``getrusage``'s ``ru_maxrss`` is the fallback only: Linux carries it across exec(), so a child
    started by a big parent would report the parent's size. None without either."""
    try:
        with open(_STATUS, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024          # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return current_rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # KiB on Linux, bytes on macOS


def rss_source() -> str | None:
    """How `current_rss_mb` measures: ``"psutil"``, ``"/proc/self/statm"``, or None (it cannot)."""
    try:
        import psutil  # noqa: F401

        return "psutil"
    except ImportError:
        return _STATM if os.path.exists(_STATM) else None


def current_rss_mb() -> float | None:
    """Resident set size right now, in MiB: psutil, else /proc/self/statm, else None."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pass
    try:
        with open(_STATM, encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None
