"""Benchmark: Sensitive-Sample generation on the MNIST-size CNN (LeNet, 1x28x28, 10 classes).

Measured in one run, so the ratios are comparable, as seconds per sample-step
(wall time / (samples x steps), median of a few repeats after a warm-up):

1. Algorithm 1 as written: ``sensitivity_reference`` per sample (loop over the 10 outputs, double
   backprop) plus an Adam step and the projection, a few samples x a few steps; for the last
   layer and for each any-layer W of (4).
2. nnseal, last-layer W: ``SensitiveSampleGenerator(...).generate`` on one batch (closed form).
3. floor: the same batch, one plain forward + backward w.r.t. the input per step, same Adam step
   and projection. Also the bare inner step (``_value_and_grad`` vs plain forward+backward).
4. per parameter set W (last layer, hidden FC + head weights, both conv layers, all parameters):
   the inner step (S and dS/dx) of nnseal's factored any-layer path (the default for every W but
   the last layer, timed on the last layer too), of the earlier torch.func path
   (``_functional_sensitivity_and_grad``), and Algorithm 1 as written for that W; Adam and the
   projection are negligible beside them. Ratios are to Algorithm 1 and to the bare inner floor.
5. a 500-sample bag at 1000 iterations, end to end, in a child process: wall time and peak RSS
   (the child's VmHWM), also as the increase over an idle child that only imports
   torch + nnseal and builds the model.

Targets: >= 30x faster than (1), <= 1.2x the floor, bag < 120 s and < 2048 MB peak; any-layer:
the factored path >= 4x faster than torch.func and faster than Algorithm 1 for every W.
The LeNet is trained for one epoch on 10k MNIST images; without MNIST (``--data``), random seeds
and random weights are used instead, and the output says so.

Run from the repository root::

    .venv/bin/python benchmarks/bench_sensitive.py [--quick] [--threads 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nnseal._io import atomic_write_text
from nnseal.methods.sensitive import (
    SensitiveSampleGenerator,
    _functional_sensitivity_and_grad,
    _sensitivity_and_grad,
    project,
    resolve_params,
    sensitivity_reference,
)
from nnseal.models.architectures import Classifier, ModelConfig, build_model

REPO = Path(__file__).resolve().parents[1]
EPS, LR = 0.1, 1e-2
CONFIG = ModelConfig("lenet", (1, 28, 28), tuple("0123456789"), mean=(0.1307,), std=(0.3081,))


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each function after one warm-up run each. The repeats take turns
    (round robin), so a change in machine load hits all of them alike and the ratios stay fair."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def frozen(model: Classifier, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(not flag)


def alg1(model: Classifier, seeds: torch.Tensor, steps: int, params: list[str] | None = None) -> None:
    """Algorithm 1 as written: each sample on its own, S and dS/dx by double backprop."""
    for v0 in seeds:
        x = v0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=LR)
        for _ in range(steps):
            _, g = sensitivity_reference(model, x, params)
            x.grad = -g
            opt.step()
            with torch.no_grad():
                x.copy_(project(x[None], v0[None], EPS, "linf", (0.0, 1.0))[0])


def floor(model: Classifier, v0: torch.Tensor, steps: int) -> None:
    """One plain forward + backward w.r.t. the input per step, same Adam step and projection."""
    frozen(model, True)  # as generate() does: no weight gradients
    x = v0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=LR)
    for _ in range(steps):
        (g,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
        x.grad = -g
        opt.step()
        with torch.no_grad():
            x.copy_(project(x, v0, EPS, "linf", (0.0, 1.0)))
    frozen(model, False)


def inner_floor(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
    return g


def load_inputs(data: Path, n: int, seed: int) -> tuple[Classifier, np.ndarray, str]:
    """A briefly trained LeNet and ``n`` MNIST test seeds (or random ones if MNIST is missing)."""
    torch.manual_seed(seed)
    model = build_model(CONFIG)
    try:
        from nnseal.data import load_dataset
        from nnseal.models.train import fit

        train, test = load_dataset("mnist", data, "train"), load_dataset("mnist", data, "test")
    except Exception as e:  # any failure to read MNIST means the fallback
        print(f"MNIST not usable at {data} ({e}); FALLBACK: random weights and random seeds in [0, 1]")
        return model.eval(), np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32), "random"
    idx = np.random.default_rng(seed).permutation(len(train.x))[:10_000]
    fit(model, train.x[idx], train.y[idx], epochs=1, seed=seed)
    return model.eval(), test.x[:n], f"mnist:{data}"


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the address space made at exec; ru_maxrss (KiB on
    Linux) survives exec, so a child would report its parent's peak at fork time."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, state: str, steps: int) -> None:
    """Hidden entry point: idle baseline or one bag generation; prints JSON with peak RSS."""
    blob = torch.load(state)
    model = build_model(CONFIG)
    model.load_state_dict(blob["state"])
    out: dict[str, float] = {}
    if mode == "bag":
        seeds = blob["seeds"].numpy()
        t = time.perf_counter()
        gen = SensitiveSampleGenerator(epsilon=EPS, lr=LR, steps=steps, batch_size=len(seeds))
        gen.generate(model, seeds)
        out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def run_child(args: argparse.Namespace, mode: str, state: str, steps: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--_child", mode, "--_state", state, "--_steps", str(steps)]
    res = subprocess.run([*cmd, "--threads", str(args.threads)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    ap.add_argument("--quick", action="store_true", help="small sizes for a fast look")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_sensitive.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_state", help=argparse.SUPPRESS)
    ap.add_argument("--_steps", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._child:
        return child(args._child, args._state, args._steps)

    q = args.quick
    sz = {"alg1_samples": 4 if q else 8, "alg1_steps": 3 if q else 5, "batch": 100 if q else 500,
          "steps": 20 if q else 50, "any_batch": 8 if q else 32, "factored_batch": 100 if q else 500,
          "any_repeats": 1 if q else 3,
          "bag_samples": 500, "bag_steps": 100 if q else 1000, "repeats": 2 if q else 3}  # fmt: skip
    model, seeds, source = load_inputs(args.data, max(sz["batch"], sz["bag_samples"]), args.seed)
    v0 = torch.from_numpy(seeds[: sz["batch"]])
    B, K, reps = sz["batch"], sz["steps"], sz["repeats"]
    rows: dict[str, dict[str, float]] = {}

    def row(name: str, n: int, k: int, seconds: float) -> None:
        rows[name] = {"samples": n, "steps": k, "seconds": seconds, "s_per_sample_step": seconds / (n * k)}
        print(f"  {name}: {seconds / (n * k) * 1e3:.4f} ms/sample-step", flush=True)

    load_start = os.getloadavg()  # other work on the machine skews timings; recorded in the JSON
    print(f"timing (threads={args.threads}, data={source}, load average {load_start[0]:.2f})", flush=True)
    n1, k1 = sz["alg1_samples"], sz["alg1_steps"]
    gen = SensitiveSampleGenerator(epsilon=EPS, lr=LR, steps=K, batch_size=B)
    names, xr = resolve_params(model, None), v0.clone()
    t = timed({"alg1": lambda: alg1(model, v0[:n1], k1), "nnseal": lambda: gen.generate(model, seeds[:B]),
               "floor": lambda: floor(model, v0, K)}, reps)  # fmt: skip
    row("alg1 (as written)", n1, k1, t["alg1"])
    row("nnseal last-layer", B, K, t["nnseal"])
    row("floor (fwd+bwd)", B, K, t["floor"])
    frozen(model, True)  # the bare inner steps, as inside generate(): no weight gradients
    inner = {"nnseal": lambda: gen._value_and_grad(model, xr, names), "floor": lambda: inner_floor(model, xr)}
    t = timed(inner, 5 * reps)
    frozen(model, False)
    row("inner step: nnseal", B, 1, t["nnseal"])
    row("inner step: floor", B, 1, t["floor"])
    all_names = [n for n, _ in model.named_parameters()]
    anys = {
        "last layer": ["head.weight", "head.bias"],
        "fc+head weights": ["features.7.weight", "head.weight"],
        "conv layers": ["features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"],
        "all params": all_names,
    }
    na, nf, n2 = sz["any_batch"], sz["factored_batch"], max(2, n1 // 2)

    def unfrozen(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> None:  # Algorithm 1 needs weight gradients; the other paths run as in generate()
            frozen(model, False)
            fn()
            frozen(model, True)

        return run

    frozen(model, True)
    for label, ps in anys.items():  # one step = one (S, dS/dx) evaluation
        sel = resolve_params(model, ps)
        fns = {
            "alg1": unfrozen(lambda ps=ps: alg1(model, v0[:n2], k1, ps)),
            "factored": lambda sel=sel: _sensitivity_and_grad(model, v0[:nf], sel, "probs"),
            "torch.func": lambda sel=sel: _functional_sensitivity_and_grad(model, v0[:na], sel, "probs"),
        }
        t = timed(fns, sz["any_repeats"])
        row(f"alg1 (as written, {label})", n2, k1, t["alg1"])
        row(f"nnseal factored step ({label})", nf, 1, t["factored"])
        row(f"torch.func step ({label})", na, 1, t["torch.func"])
    frozen(model, False)

    print(f"bag: {sz['bag_samples']} samples x {sz['bag_steps']} steps in a child process ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        state = str(Path(tmp) / "state.pt")
        bag_seeds = torch.from_numpy(seeds[: sz["bag_samples"]])
        torch.save({"state": model.state_dict(), "seeds": bag_seeds}, state)
        idle = run_child(args, "idle", state, 0)
        bag = run_child(args, "bag", state, sz["bag_steps"])
    bag["peak_rss_increase_mb"] = bag["peak_rss_mb"] - idle["peak_rss_mb"]
    bag["idle_rss_mb"] = idle["peak_rss_mb"]

    per = {k: v["s_per_sample_step"] for k, v in rows.items()}
    a1, fl, nn_ll = per["alg1 (as written)"], per["floor (fwd+bwd)"], per["nnseal last-layer"]

    inner_fl = per["inner step: floor"]
    ratios = {
        "speedup_vs_alg1": a1 / nn_ll,
        "floor_ratio": nn_ll / fl,
        "alg1_over_floor": a1 / fl,
        "inner_step_floor_ratio": per["inner step: nnseal"] / inner_fl,
    }
    for k in anys:
        a1k, fk = per[f"alg1 (as written, {k})"], per[f"nnseal factored step ({k})"]
        tk = per[f"torch.func step ({k})"]
        ratios |= {
            f"factored[{k}]_speedup_vs_alg1": a1k / fk,
            f"factored[{k}]_over_floor": fk / inner_fl,
            f"factored[{k}]_speedup_vs_torch_func": tk / fk,
            f"torch_func[{k}]_speedup_vs_alg1": a1k / tk,
            f"torch_func[{k}]_over_floor": tk / inner_fl,
            f"alg1[{k}]_over_floor": a1k / inner_fl,
        }
    ratios["closed_form[last layer]_speedup_vs_alg1"] = (
        per["alg1 (as written, last layer)"] / per["inner step: nnseal"]
    )
    checks = {
        "speedup >= 30x vs Algorithm 1": ratios["speedup_vs_alg1"] >= 30,
        "last-layer <= 1.2x floor": ratios["floor_ratio"] <= 1.2,
        "bag < 120 s": bag["seconds"] < 120,
        "bag peak RSS < 2048 MB": bag["peak_rss_mb"] < 2048,
        **{f"factored >= 4x faster than torch.func ({k})": ratios[f"factored[{k}]_speedup_vs_torch_func"] >= 4
           for k in anys if k != "last layer"},
        **{f"factored faster than Algorithm 1 ({k})": ratios[f"factored[{k}]_speedup_vs_alg1"] > 1
           for k in anys},
    }  # fmt: skip

    def note(name: str) -> str:
        if name == "nnseal last-layer":
            return f"alg1/this {ratios['speedup_vs_alg1']:.1f}x, this/floor {ratios['floor_ratio']:.2f}x"
        if name == "floor (fwd+bwd)":
            return f"alg1/this {ratios['alg1_over_floor']:.1f}x"
        if name == "inner step: nnseal":
            return f"this/floor {ratios['inner_step_floor_ratio']:.2f}x"
        if "(" in name:
            k = name.split("(")[1][:-1].removeprefix("as written, ")
            if name.startswith("nnseal factored"):
                return (f"alg1/this {ratios[f'factored[{k}]_speedup_vs_alg1']:.1f}x, "
                        f"torch.func/this {ratios[f'factored[{k}]_speedup_vs_torch_func']:.1f}x, "
                        f"this/floor {ratios[f'factored[{k}]_over_floor']:.1f}x")  # fmt: skip
            if name.startswith("torch.func"):
                return (f"alg1/this {ratios[f'torch_func[{k}]_speedup_vs_alg1']:.2f}x, "
                        f"this/floor {ratios[f'torch_func[{k}]_over_floor']:.0f}x")  # fmt: skip
            if name.startswith("alg1") and k in anys:
                return f"this/floor {ratios[f'alg1[{k}]_over_floor']:.1f}x"
        return ""

    print(f"\n{'path':<44}{'samples':>8}{'steps':>7}{'ms/sample-step':>16}  ratios")
    for name, r in rows.items():
        ms = r["s_per_sample_step"] * 1e3
        print(f"{name:<44}{r['samples']:>8}{r['steps']:>7}{ms:>16.4f}  {note(name)}".rstrip())
    print(f"{'bag (child process)':<44}{sz['bag_samples']:>8}{sz['bag_steps']:>7}"
          f"{bag['seconds'] / (sz['bag_samples'] * sz['bag_steps']) * 1e3:>16.4f}"
          f"  {bag['seconds']:.1f} s, {bag['peak_rss_mb']:.0f} MB peak RSS")  # fmt: skip
    print(f"  peak RSS over idle (torch+nnseal+model = {idle['peak_rss_mb']:.0f} MB): "
          f"+{bag['peak_rss_increase_mb']:.0f} MB")  # fmt: skip
    print(f"\nper W, ms per sample-step (inner step; floor = bare fwd+bwd, {inner_fl * 1e3:.4f} ms)")
    print(f"{'W':<18}{'alg1':>9}{'torch.func':>12}{'factored':>10}{'closed':>9}"
          f"{'alg1/fact':>11}{'tf/fact':>9}{'fact/floor':>12}{'alg1/floor':>12}")  # fmt: skip
    for k in anys:
        closed = f"{per['inner step: nnseal'] * 1e3:>9.3f}" if k == "last layer" else f"{'—':>9}"
        keys = (f"alg1 (as written, {k})", f"torch.func step ({k})", f"nnseal factored step ({k})")
        ms = [per[key] * 1e3 for key in keys]
        parts = ("factored[{}]_speedup_vs_alg1", "factored[{}]_speedup_vs_torch_func",
                 "factored[{}]_over_floor", "alg1[{}]_over_floor")  # fmt: skip
        r = [ratios[f.format(k)] for f in parts]
        print(f"{k:<18}{ms[0]:>9.3f}{ms[1]:>12.3f}{ms[2]:>10.3f}{closed}"
              f"{r[0]:>10.1f}x{r[1]:>8.1f}x{r[2]:>11.1f}x{r[3]:>11.1f}x")  # fmt: skip
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    if source == "random":
        print("NOTE: FALLBACK run (no MNIST): random weights and seeds")

    result = {
        "config": {"threads": args.threads, "torch": torch.__version__, "seed": args.seed, "quick": q,
                   "sizes": sz, "data": source, "epsilon": EPS, "lr": LR,
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "processor": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                   "python": platform.python_version(), "loadavg_start": load_start,
                   "loadavg_end": os.getloadavg()},
        "timings": rows, "ratios": ratios, "bag": bag, "checks": checks,
    }  # fmt: skip
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
