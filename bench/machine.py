"""What every benchmark prints about the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU"


def memory_gib() -> float:
    """Total memory in GiB (0 where /proc/meminfo is absent)."""
    total = _proc_field("/proc/meminfo", "MemTotal")
    return int(total.split()[0]) / 2**20 if total else 0.0


def describe() -> str:
    """One line: logical cores, CPU model, memory, Python version."""
    return (
        f"nproc {os.cpu_count()}, {cpu_name()}, {memory_gib():.1f} GiB RAM, "
        f"Python {platform.python_version()}"
    )
