"""Benchmark: ``nnseal watch --fleet`` over 50 endpoints — wall time, peak RSS and CPU of the watcher,
and whether every verdict is the right one.

50 prediction servers on 127.0.0.1 (``tests/fake_server.py``, V2 protocol, each its own HTTP server
thread in this process) serve the digits LeNet: 40 the model as fingerprinted, 5 a copy with one weight
edited (``modify-weights``), and 5 fail — 2 refuse connections (nothing listens), 2 answer HTTP 500,
1 hangs past the client's timeout. The command a user runs, ``nnseal watch --fleet FLEET.toml --runs 5``
(HMAC-signed fingerprint, a bearer token from an environment variable), watches them all in a fresh
child process, ``--interval`` seconds apart, ``--parallel`` at a time.

Checked (PASS/FAIL): each intact endpoint gets 5 *intact* runs, each tampered one a single *tampered*
run (then is no longer verified), each failing one 5 *inconclusive* runs, and the exit code is 1. Wall
time, peak RSS (``ru_maxrss``) and CPU seconds (user + system) are the watcher's, read as
``RUSAGE_CHILDREN`` in a small fresh process that only starts it and waits (``ru_maxrss`` survives
exec, so a child forked from this process would report this process's peak); the same for
``nnseal watch --help`` shows what starting the CLI alone costs. Failing endpoints set the wall time:
with backoff their 5 runs start 0, 2, 6, 14 and 22 intervals in.

Run from the repository root::

    .venv/bin/python benchmarks/bench_fleet.py [--interval 0.5] [--parallel 8] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import torch
from _machine import machine_info, print_table, write_report

from nnseal.attacks import run_attack
from nnseal.data import load_dataset
from nnseal.methods import SensitiveSampleFingerprinter
from nnseal.models import train_model
from nnseal.targets import TorchTarget

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from fake_server import FakeServer  # noqa: E402
from mlserver_rig import free_port  # noqa: E402

NAMES = [str(i) for i in range(10)]
KINDS = {  # endpoint kind: (how many, the verdict of every run; a tampered endpoint gets one)
    "intact": (40, "intact"),
    "tampered": (5, "tampered"),
    "refused": (2, "inconclusive"),
    "http-500": (2, "inconclusive"),
    "hang": (1, "inconclusive"),
}
STARTER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": time.perf_counter() - t, "code": p.returncode, "stdout": p.stdout,
                  "stderr": p.stderr[-2000:], "peak_rss_mb": r.ru_maxrss / 1024,
                  "cpu_user_s": r.ru_utime, "cpu_sys_s": r.ru_stime}))
"""


def run_cli(args: list[str], env: dict[str, str]) -> dict:
    """``nnseal ARGS`` in a fresh child: wall time, exit code, output, peak RSS and CPU seconds."""
    cli = [sys.executable, "-m", "nnseal", *args]
    done = subprocess.run(
        [sys.executable, "-c", STARTER, *cli], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(done.stdout)


def fleet_file(endpoints: dict[str, tuple[str, str]], args: argparse.Namespace) -> str:
    lines = [
        "[defaults]",
        'fingerprint = "fp.nnseal"',
        'model_name = "digits"',
        'returns = "logits"',
        'token_env = "BENCH_TOKEN"',
        f"interval = {args.interval}",
        f"timeout = {args.timeout}",
        "retries = 0",
    ]
    for name, (_, url) in endpoints.items():
        lines += ["", "[[targets]]", f'name = "{name}"', f'url = "{url}"']
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_fleet.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    model = train_model(train, "lenet", epochs=args.epochs, seed=args.seed, progress=False)
    fp = SensitiveSampleFingerprinter(n_queries=20, pool_size=200, steps=300, seed=args.seed).fingerprint(
        model, test
    )
    tampered = run_attack("modify-weights", model, {"index": -2, "relative": 0.5}).target()

    with tempfile.TemporaryDirectory() as work, ExitStack() as stack:
        env = {**os.environ, "NNSEAL_HMAC_KEY": "bench-fleet", "BENCH_TOKEN": "bench-token",
               "NNSEAL_HOME": str(Path(work) / "home")}  # fmt: skip
        fp.save(Path(work) / "fp.nnseal", hmac_key=b"bench-fleet")
        endpoints: dict[str, tuple[str, str]] = {}  # name: (kind, url)
        for kind, (count, _) in KINDS.items():
            for i in range(count):
                if kind == "refused":
                    url = f"http://127.0.0.1:{free_port()}"
                else:
                    server = FakeServer(
                        tampered if kind == "tampered" else TorchTarget(model),
                        NAMES,
                        timeout_sleep=3 * args.timeout,
                    )
                    server.fault = {"http-500": lambda: "http-500", "hang": lambda: "timeout"}.get(
                        kind, lambda: None
                    )
                    url = stack.enter_context(server).url
                endpoints[f"{kind}-{i:02d}"] = (kind, url)
        path = Path(work) / "fleet.toml"
        path.write_text(fleet_file(endpoints, args))
        baseline = run_cli(["watch", "--help"], env)
        flags = ["--fleet", str(path), "--runs", str(args.runs), "--parallel", str(args.parallel)]
        r = run_cli(["watch", *flags], env)

    records = [json.loads(line) for line in r["stdout"].splitlines()]
    rows, checks = [], []
    for kind, (count, expected) in KINDS.items():
        names = [n for n, (k, _) in endpoints.items() if k == kind]
        got = {n: [x["status"] for x in records if x["name"] == n] for n in names}
        runs = 1 if expected == "tampered" else args.runs
        ok = all(statuses == [expected] * runs for statuses in got.values())
        durations = [x["duration_s"] for x in records if x["name"] in names]
        checks.append(ok)
        rows.append({
            "kind": kind, "endpoints": count, "expected": expected, "runs": sum(map(len, got.values())),
            "median_run_s": statistics.median(durations) if durations else math.nan,
            "max_run_s": max(durations, default=math.nan), "pass": ok,
        })  # fmt: skip
    passed = all(checks) and r["code"] == 1
    cells = [[x["kind"], x["endpoints"], x["expected"], x["runs"], f"{x['median_run_s']:.3f}",
              f"{x['max_run_s']:.3f}", "PASS" if x["pass"] else "FAIL"] for x in rows]  # fmt: skip
    header = ["endpoints", "count", "expected verdict", "runs", "median run s", "max run s", "check"]
    print_table(header, cells, right=(1, 3, 4, 5))
    cpu = r["cpu_user_s"] + r["cpu_sys_s"]
    print(
        f"\nwatcher: exit {r['code']} (expected 1), {len(records)} runs in {r['wall_s']:.2f} s wall, "
        f"peak RSS {r['peak_rss_mb']:.0f} MB, CPU {cpu:.2f} s ({r['cpu_user_s']:.2f} user + "
        f"{r['cpu_sys_s']:.2f} sys)"
    )
    base_cpu = baseline["cpu_user_s"] + baseline["cpu_sys_s"]
    print(
        f"CLI start alone (watch --help): {baseline['wall_s']:.2f} s wall, "
        f"peak RSS {baseline['peak_rss_mb']:.0f} MB, CPU {base_cpu:.2f} s"
    )
    print(f"verdicts: {'PASS' if passed else 'FAIL'}")
    if r["stderr"].strip():
        print(f"watcher stderr: {r['stderr'].strip()[-400:]}")
    write_report(args.out, {
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "endpoints": {k: v[0] for k, v in KINDS.items()}, "spec": fp.specs[0]},
        "watcher": {k: r[k] for k in ("wall_s", "code", "peak_rss_mb", "cpu_user_s", "cpu_sys_s")}
        | {"cpu_s": cpu, "runs": len(records)},
        "cli_start": {k: baseline[k] for k in ("wall_s", "peak_rss_mb", "cpu_user_s", "cpu_sys_s")},
        "rows": rows,
        "pass": passed,
        "machine": machine_info(load_start),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })  # fmt: skip
    if not passed:
        raise SystemExit("error: some verdicts were wrong (see the table)")


if __name__ == "__main__":
    main()
