"""Benchmark: ``nnseal verify --url`` against hostile servers — peak memory, wall time, verdict.

The server being verified may be the adversary. Each case runs the command a user runs,
``nnseal verify FP --url … --timeout 2 --retries 0``, in a fresh child process against a server on
127.0.0.1 (``tests/fake_server.py``) that answers:

1. honestly (the digits LeNet behind a V2 API): the baseline, showing the cost of starting the CLI;
2. with 100,000-deep JSON;
3. with a 1 MB gzip bomb (1 GB of zeros once inflated);
4. with a 200 MB body, streamed without a Content-Length;
5. one byte a second (the whole response, headers included);
6. with headers and half the body 0.1 s before the deadline, then a 5 s stall;
7. the trickle again with ``--retries 2``.

Peak RSS is the CLI process's ``ru_maxrss``, read as ``RUSAGE_CHILDREN`` in a small fresh
process that only starts the CLI and waits (``ru_maxrss`` survives exec, so the CLI's figure
includes that starter's ~10 MB but not this script's). Wall time is shown as measured and as the
excess over the honest baseline (median of ``--baseline-runs``), which is what the server can add:
starting the CLI takes ~2 s of imports whatever it talks to. Targets, checked (PASS/FAIL): peak
RSS < 400 MB, excess wall time < (retries + 1) × timeout + 2 s, and the right verdict (intact for
the honest server, inconclusive for the others), in every case.

Run from the repository root::

    .venv/bin/python benchmarks/bench_hostile.py [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _machine import machine_info

from nnseal._io import atomic_write_text
from nnseal.data import load_dataset
from nnseal.methods import SensitiveSampleFingerprinter
from nnseal.models import train_model
from nnseal.targets import TorchTarget

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from fake_server import FakeServer, HostileServer  # noqa: E402

TIMEOUT, RSS_LIMIT_MB = 2.0, 400
NAMES = [str(i) for i in range(10)]
CASES = {  # name: (server mode or "honest", server options, retries, expected verdict)
    "honest (baseline)": ("model", {}, 0, "intact"),
    "deep JSON (100,000)": ("deep-json", {}, 0, "inconclusive"),
    "gzip bomb (1 MB)": ("gzip-bomb", {}, 0, "inconclusive"),
    "200 MB body": ("huge-body", {"huge_bytes": 200 << 20}, 0, "inconclusive"),
    "trickle 1 B/s": ("trickle", {"interval": 1.0}, 0, "inconclusive"),
    "stall before deadline": ("stall", {"stall_at": TIMEOUT - 0.1, "stall_for": 5.0}, 0, "inconclusive"),
    "trickle 1 B/s, 2 retries": ("trickle", {"interval": 1.0}, 2, "inconclusive"),
}
STARTER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"wall_s": time.perf_counter() - t, "code": p.returncode, "stdout": p.stdout,
                  "stderr": p.stderr[-2000:],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_cli(args: list[str]) -> dict:
    """``nnseal ARGS`` in a fresh child; its wall time, exit code, output and peak RSS."""
    cli = [sys.executable, "-m", "nnseal", *args]
    done = subprocess.run([sys.executable, "-c", STARTER, *cli], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=5)
    ap.add_argument("--n-queries", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_hostile.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    model = train_model(train, "lenet", epochs=args.epochs, seed=args.seed, progress=False)
    method = SensitiveSampleFingerprinter(
        n_queries=args.n_queries, pool_size=2 * args.n_queries, steps=200, seed=args.seed, specs=["top1"]
    )
    fp = method.fingerprint(model, test)
    help_text = run_cli(["verify", "--help"])["stdout"]
    unsigned = ["--allow-unsigned"] if "--allow-unsigned" in help_text else []

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as work:
        fp_path = fp.save(Path(work) / "fp.nnseal")
        for name, (mode, options, retries, expected) in CASES.items():
            flags = ["--returns", "logits", "--timeout", str(TIMEOUT), "--retries", str(retries), "--json"]
            server: FakeServer | HostileServer = (
                FakeServer(TorchTarget(model), NAMES) if mode == "model" else HostileServer(mode, **options)
            )
            with server:
                url = ["--url", server.url, "--model-name", "digits"]
                runs = [
                    run_cli(["verify", str(fp_path), *unsigned, *url, *flags])
                    for _ in range(args.baseline_runs if mode == "model" else 1)
                ]
            r = sorted(runs, key=lambda run: run["wall_s"])[len(runs) // 2]
            try:
                verdict = json.loads(r["stdout"])
                status, problems = verdict["status"], verdict["problems"]
            except (json.JSONDecodeError, KeyError):
                status, problems = f"no verdict (exit {r['code']}): {r['stderr'].strip()[-200:]}", {}
            wall_limit = (retries + 1) * TIMEOUT + 2
            extra = r["wall_s"] - (rows["honest (baseline)"]["wall_s"] if rows else r["wall_s"])
            rows[name] = {
                "server": mode,
                "retries": retries,
                "exit_code": r["code"],
                "status": status,
                "problems": problems,
                "wall_s": r["wall_s"],
                "over_baseline_s": extra,
                "peak_rss_mb": r["peak_rss_mb"],
                "wall_limit_s": wall_limit,
                "pass": status == expected and r["peak_rss_mb"] < RSS_LIMIT_MB and extra < wall_limit,
            }

    head = f"{'case':<26}{'exit':>5}  {'verdict':<13}{'problem':<20}{'wall s':>7}{'excess':>7}{'limit':>6}"
    print(f"\n{head}{'RSS MB':>7}")
    for name, row in rows.items():
        problem = ", ".join(row["problems"]) or "-"
        print(
            f"{name:<26}{row['exit_code']:>5}  {row['status']:<13}{problem:<20}{row['wall_s']:>7.2f}"
            f"{row['over_baseline_s']:>7.2f}{row['wall_limit_s']:>6.0f}{row['peak_rss_mb']:>7.0f}"
            f"  {'PASS' if row['pass'] else 'FAIL'}"
        )
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")

    result = {
        "config": vars(args) | {"out": str(args.out), "timeout_s": TIMEOUT, "rss_limit_mb": RSS_LIMIT_MB},
        "rows": rows,
        "all_pass": all(row["pass"] for row in rows.values()),
        "machine": machine_info(load_start),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
