"""Benchmark: Conferrable Adversarial Examples tell models derived from the owner's from independent ones.

1. The owner trains a LeNet on the training data (``--subset``: a seeded random N of it) and watermarks it
   with Frontier Stitching (``watermark embed``'s defaults: 100 keys, ε auto, no null): that model
   is the *source*, so both ownership methods are scored on the same suspects.
2. :class:`nnseal.methods.conferrable.ConferrableExamples` makes a 100-example key from the source,
   with its own generation ensembles (surrogates: ``distill`` and ``extract-labels``, LeNet and
   MLP, attacker seeds 2000+; references: LeNet and MLP, seeds 3000+), and the null is calibrated on
   further independent references held out from the optimisation (seeds 1000+, stored in the key).
3. Suspects, none of them used in generation or calibration: surrogates of the source by label-only
   extraction (``extract-labels``; queries from each of ``--extract-sources``: the attacker's half
   of the training data, uniform noise, another dataset) and distillation (``distill``), LeNet and
   MLP (attacker seeds 1+); white-box derivatives ``ftal``, ``ftll``, ``adversarial-finetune``;
   independent models (LeNet and MLP, seeds 1–N).
4. Scores, each on the first ≤ 100 queries: agreement with the CAE key's labels (labels only), the
   Frontier-Stitching key accuracy, and agreement with the source on 100 natural test inputs.
   ROC AUC of extracted surrogates vs independents, and of all derived suspects vs independents;
   ``verify_watermark`` verdicts on the CAE key (stored null, α = 1e-3); the conferrability score
   distribution; generation time.

Prints the table and writes ``benchmarks/results/bench_conferrable[_DATA].json``::

    .venv/bin/python benchmarks/bench_conferrable.py                       # digits, ~10 min on 2 busy cores
    .venv/bin/python benchmarks/bench_conferrable.py --data mnist --root /work/shared/data/mnist \\
        --subset 10000 --lenet-epochs 1 --mlp-epochs 2 --source-epochs 2 --attack-epochs 2 --budget 5000 \\
        --finetune-epochs 1 --fs-epochs 2 --extract-sources train,fashion-mnist --other-root /work/shared/data

Options: ``--examples``, ``--epsilon``, ``--steps``, ``--independents``, ``--seed``, ``--threads``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import machine_info, print_table, write_report
from _roc import roc_auc as auc
from _roc import roc_points

from nnseal.attacks import run_attack
from nnseal.data import load_dataset
from nnseal.errors import NnsealError
from nnseal.evaluation.report import save_figure
from nnseal.methods import ConferrableExamples, FrontierStitching
from nnseal.methods.conferrable import AWAY_CAP, agreement
from nnseal.models.train import evaluate_accuracy, predict_logits, train_model
from nnseal.targets import TorchTarget
from nnseal.watermark import (
    DEFAULT_ALPHA,
    DEFAULT_REFERENCES,
    REFERENCE_SEED,
    calibrate_key,
    verify_watermark,
)

REPO = Path(__file__).resolve().parents[1]
QUERIES = 100


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--root", default=None)
    p.add_argument("--subset", type=int, default=None, help="a seeded random N training inputs")
    p.add_argument("--source-epochs", type=float, default=20.0)
    p.add_argument("--lenet-epochs", type=float, default=20.0, help="references and independents (LeNet)")
    p.add_argument("--mlp-epochs", type=float, default=20.0, help="references and independents (MLP)")
    p.add_argument("--attack-epochs", type=float, default=30.0, help="distill / extract-labels epochs")
    p.add_argument("--budget", type=int, default=1000, help="distill / extract-labels queries")
    p.add_argument("--finetune-epochs", type=float, default=5.0, help="ftal / ftll epochs")
    p.add_argument("--examples", type=int, default=QUERIES)
    p.add_argument("--epsilon", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--away-cap", type=float, default=AWAY_CAP, help="0: the paper's unclipped term")
    p.add_argument("--gen-surrogates", type=int, default=4)
    p.add_argument("--gen-references", type=int, default=6)
    p.add_argument("--pool-factor", type=int, default=3, help="candidate seeds per key example")
    p.add_argument(
        "--fs-epochs", type=float, default=5.0, help="Frontier Stitching's most fine-tuning epochs"
    )
    p.add_argument(
        "--extract-sources",
        default="train,noise",
        help="comma-separated query sources of the held-out extract-labels suspects (train, noise, a "
        "dataset name: its train split from --other-root)",
    )
    p.add_argument("--other-root", default="", help="folder of the other datasets (extract-labels source)")
    p.add_argument("--null-models", type=int, default=DEFAULT_REFERENCES)
    p.add_argument("--independents", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


SCORE_NAMES = {
    "cae_agreement": "CAE",
    "frontier_key_accuracy": "Frontier Stitching",
    "natural_agreement": "natural",
}
ROC_PANELS = (
    ("extracted vs independent", ("extracted",)),
    ("all derived vs independent", ("extracted", "distilled", "fine-tuned")),
)


def roc_plot(path: Path, results: list[dict[str, Any]], member: Any, data: str) -> None:
    """ROC curves per score: extracted surrogates, then all derived suspects, vs independent models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    neg = [r for r in results if member(r, ("independent",))]
    for ax, (title, groups) in zip(axes, ROC_PANELS, strict=True):
        pos = [r for r in results if member(r, groups)]
        for col, name in SCORE_NAMES.items():
            p, n = [r[col] for r in pos], [r[col] for r in neg]
            ax.step(*roc_points(p, n), where="post", label=f"{name} (AUC {auc(p, n):.2f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls=":")
        ax.set(title=f"{data}: {title}", xlabel="false positive rate", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("true positive rate")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t_all = time.perf_counter()
    train = load_dataset(args.data, args.root, "train")
    test = load_dataset(args.data, args.root, "test")
    if args.subset:
        train = train.sample(args.subset, args.seed)
    epochs = {"lenet": args.lenet_epochs, "mlp": args.mlp_epochs}
    timings: dict[str, float] = {}

    def timed(name: str, t: float) -> None:
        timings[name] = round(time.perf_counter() - t, 2)
        print(f"[{name}: {timings[name]:.0f} s]", flush=True)

    t = time.perf_counter()
    plain = train_model(train, "lenet", epochs=args.source_epochs, seed=args.seed, progress=False)
    timed("source", t)
    t = time.perf_counter()
    source, fs_key, fs_report = FrontierStitching(epochs=args.fs_epochs, seed=args.seed).embed(
        plain, train, test=test
    )
    timed("frontier_embed", t)

    attack = {"epochs": args.attack_epochs, "budget": args.budget}
    cae = ConferrableExamples(
        n_examples=args.examples, epsilon=args.epsilon, steps=args.steps, grid_steps=min(20, args.steps),
        away_cap=args.away_cap or None, pool_factor=args.pool_factor,
        surrogates=args.gen_surrogates, surrogate_params=attack, references=args.gen_references,
        reference_architectures=("lenet", "mlp"), reference_epochs=args.lenet_epochs, seed=args.seed,
    )  # fmt: skip
    t = time.perf_counter()
    gen_s = cae.train_surrogates(source, train)
    timed("generation_surrogates", t)
    t = time.perf_counter()
    gen_r = []
    for i in range(
        args.gen_references
    ):  # as ConferrableExamples.train_references, with per-architecture epochs
        arch, seed = ("lenet", "mlp")[i % 2], cae.reference_seed + i
        m = train_model(train, arch, epochs=epochs[arch], seed=seed, progress=False)
        gen_r.append(({"name": f"{arch}-s{seed}", "arch": arch, "seed": seed, "epochs": epochs[arch]}, m))
    timed("generation_references", t)
    t = time.perf_counter()
    key = cae.fingerprint(source, train, surrogates=gen_s, references=gen_r)
    timed("cae_optimisation", t)
    t = time.perf_counter()
    null_refs = [
        train_model(train, ("lenet", "mlp")[i % 2], epochs=epochs[("lenet", "mlp")[i % 2]],
                    seed=REFERENCE_SEED + i, progress=False)
        for i in range(args.null_models)
    ]  # fmt: skip
    key, null = calibrate_key(key, references=null_refs, names=[f"null-{i}" for i in range(args.null_models)])
    timed("null_references", t)

    suspects: list[tuple[str, str, Any]] = []  # (name, group, model)
    t = time.perf_counter()
    for k, src in enumerate(args.extract_sources.split(",")):
        for j, arch in enumerate(("lenet", "mlp")):
            s = 1 + 2 * k + j
            params = {**attack, "arch": arch, "source": src, "root": args.other_root}
            m = run_attack("extract-labels", source, params, train=train, seed=s).model
            suspects.append((f"extract-labels-{src}-{arch}-s{s}", f"extracted:{src}", m))
    for j, arch in enumerate(("lenet", "mlp")):
        m = run_attack("distill", source, {**attack, "arch": arch}, train=train, seed=1 + j).model
        suspects.append((f"distill-{arch}-s{1 + j}", "distilled", m))
    for name in ("ftal", "ftll"):
        m = run_attack(name, source, {"epochs": args.finetune_epochs}, train=train, seed=1).model
        suspects.append((f"{name}-s1", "fine-tuned", m))
    m = run_attack("adversarial-finetune", source, {}, train=train, seed=1).model
    suspects.append(("adversarial-finetune-s1", "fine-tuned", m))
    timed("derived_suspects", t)
    t = time.perf_counter()
    for i in range(args.independents):
        arch = ("lenet", "mlp")[i % 2]
        m = train_model(train, arch, epochs=epochs[arch], seed=1 + i, progress=False)
        suspects.append((f"independent-{arch}-s{1 + i}", "independent", m))
    timed("independents", t)

    natural = test.sample(QUERIES, args.seed)
    natural_labels = predict_logits(source, natural.x).argmax(1).numpy()
    rows, results = [], []
    for name, group, m in suspects:
        try:
            v = verify_watermark(key, TorchTarget(m), budget=QUERIES)
            verdict, pv = v.status.value, v.p_value
            needed = verify_watermark(key, TorchTarget(m), budget=QUERIES, sequential=True).queries_used
        except NnsealError as e:  # the null allows no claim at this key size
            verdict, pv, needed = "no decision", None, None
            print(f"{name}: no decision: {e}")
        r = {
            "suspect": name,
            "group": group,
            "accuracy": evaluate_accuracy(m, test),
            "cae_agreement": agreement(m, key),
            "frontier_key_accuracy": agreement(m, fs_key),
            "natural_agreement": float(
                (predict_logits(m, natural.x).argmax(1).numpy() == natural_labels).mean()
            ),
            "verdict": verdict,
            "p_value": pv,
            "queries_to_decide": needed,
        }
        results.append(r)
        rows.append([name, group, f"{r['accuracy']:.3f}", f"{r['cae_agreement']:.2f}",
                     f"{r['frontier_key_accuracy']:.2f}", f"{r['natural_agreement']:.2f}",
                     r["verdict"], str(needed)])  # fmt: skip
    print()
    print_table(["suspect", "group", "test acc", "CAE agree", "FS key acc", "natural agree", "CAE verdict",
           "queries"], rows)  # fmt: skip

    def member(r: dict[str, Any], groups: tuple[str, ...]) -> bool:
        return any(r["group"] == g or r["group"].startswith(g + ":") for g in groups)

    def scores(groups: tuple[str, ...], col: str) -> list[float]:
        return [r[col] for r in results if member(r, groups)]

    cols = ("cae_agreement", "frontier_key_accuracy", "natural_agreement")
    aucs = {}
    for label, groups in (
        *((f"extracted ({s}) vs independent", (f"extracted:{s}",)) for s in args.extract_sources.split(",")),
        ("extracted (all) vs independent", ("extracted",)),
        ("extracted+distilled vs independent", ("extracted", "distilled")),
        ("all derived vs independent", ("extracted", "distilled", "fine-tuned")),
    ):
        aucs[label] = {c: auc(scores(groups, c), scores(("independent",), c)) for c in cols}
    print()
    print_table(["ROC AUC", "CAE", "Frontier Stitching", "natural"],
          [[k, *(f"{v[c]:.3f}" for c in cols)] for k, v in aucs.items()])  # fmt: skip
    groups_seen = list(dict.fromkeys(r["group"] for r in results))
    claimed = {g: sum(r["verdict"] == "watermarked" for r in results if r["group"] == g) for g in groups_seen}
    totals = {g: sum(r["group"] == g for r in results) for g in claimed}
    conf = key.provenance["conferrability"]
    gen_seconds = key.provenance["seconds"]
    print(
        f"\nCAE verdicts (stored null on {len(null_refs)} held-out references, alpha={DEFAULT_ALPHA:g}, "
        f"<= {QUERIES} queries): claimed "
        + ", ".join(f"{g} {claimed[g]}/{totals[g]}" for g in claimed)
        + f"\nnull agreement {[round(a, 2) for a in null.key_accuracies]}; "
        f"generation surrogates {[round(agreement(m, key), 2) for _, m in gen_s]}, "
        f"references {[round(agreement(m, key), 2) for _, m in gen_r]}"
        f"\nconferrability of the {len(key)} kept: mean {np.mean(conf):.2f}, min {min(conf):.2f}; "
        f"of all {key.provenance['fooled']} candidates that fooled the source (of "
        f"{key.provenance['candidates']}): {key.provenance['conferrability_candidates']}"
        f"\ngeneration: {gen_seconds} s; source test accuracy {evaluate_accuracy(source, test):.3f} "
        f"(FS embed: {fs_report.accuracy_before:.3f} -> {fs_report.accuracy_after:.3f})"
    )
    out = args.out or REPO / "benchmarks" / "results" / (
        "bench_conferrable.json" if args.data == "digits" else f"bench_conferrable_{args.data}.json"
    )
    roc_plot(out.with_suffix(".png"), results, member, args.data)
    write_report(out, {
        "benchmark": "bench_conferrable",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {**vars(args), "train_size": len(train), "test_size": len(test), "queries": QUERIES,
                   "cae": cae.config(), "frontier": fs_key.params},
        "machine": machine_info(load_start),
        "timings_s": {**timings, "total": round(time.perf_counter() - t_all, 2)},
        "generation_seconds": gen_seconds,
        "conferrability": {"kept": {"n": len(conf), "mean": float(np.mean(conf)), "min": float(min(conf)),
                                    "median": float(np.median(conf)), "max": float(max(conf))},
                           "candidates": key.provenance["conferrability_candidates"],
                           "fooled": key.provenance["fooled"], "seeds": key.provenance["candidates"]},
        "null": null.to_dict(),
        "roc_auc": aucs,
        "claimed": claimed,
        "totals": totals,
        "suspects": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()
