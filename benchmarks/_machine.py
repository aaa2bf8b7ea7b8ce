"""What benchmarks share: the machine they ran on, recorded beside their results, and writing them."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import httpx
import torch

from nnseal._io import atomic_write_text


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


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's JSON results atomically and say where."""
    atomic_write_text(path, json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")
