"""What benchmarks share: the machine they ran on, recorded beside their results, writing them, and
printing their tables."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from collections.abc import Sequence
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


def run_config(
    args: argparse.Namespace, load_start: tuple[float, float, float], **extra: Any
) -> dict[str, Any]:
    """What a run was asked to do and where it ran: its arguments, ``extra``, the date and the machine."""
    return {
        **vars(args),
        "out": str(args.out),
        **extra,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(load_start),
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's JSON results atomically and say where."""
    atomic_write_text(path, json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def finish(
    args: argparse.Namespace, load_start: tuple[float, float, float], t0: float, config: dict[str, Any],
    **report: Any,
) -> None:  # fmt: skip
    """Print the total time; write ``report`` with its config (:func:`run_config`) to ``args.out``."""
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s")
    write_report(args.out, {"config": run_config(args, load_start, **config), **report, "total_s": total})


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> None:
    """A plain-text table: header, a rule, the rows; columns in ``right`` are right-aligned."""
    lines = [[str(c) for c in r] for r in (header, *rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        cells = (
            c.rjust(w) if j in right else c.ljust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
