"""The machine a benchmark ran on, recorded beside its results (shared by the HTTP benchmarks)."""

from __future__ import annotations

import os
import platform
from typing import Any

import httpx
import torch


def machine_info(load_start: tuple[float, float, float]) -> dict[str, Any]:
    """Platform, cores, versions, and the load average at the start and now."""
    return {
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "torch": torch.__version__,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
