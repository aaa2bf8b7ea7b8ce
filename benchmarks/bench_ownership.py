"""Benchmark: ownership claims with the default (calibrated) null never accuse an innocent model.

On scikit-learn digits (the default; 1,437 training / 360 test images, 8×8), MNIST or GTSRB
(``--data``; seeded random ``--train-subset`` / ``--test-subset`` images of the two splits):

1. Trains the owner's LeNet (seed 0, ``--epochs``) and watermarks it with the defaults of
   ``watermark embed``: a ``--key-size`` key (100), ε = auto, and the null calibrated on 8 reference
   models (LeNet and MLP in turn, seeds 1000–1007, ``--epochs``) stored in the key — the cost of that
   calibration is the ``calibration`` timing.
2. Suspects: the watermarked model; its derivatives by the registered removal attacks ``ftll``,
   ``ftal``, ``rtal``, ``fine-pruning``, ``distill``, ``extract-labels`` and ``overwrite`` at the
   light and strong settings of ``nnseal.attacks.removal.STRENGTHS`` (attacker seed 1, on the same
   training subset); the owner's source model before embedding (reported, not scored); and 20
   independently trained models (LeNet and MLP, seeds 1–10 each, ``--epochs``), held out from
   calibration.
3. Verifies every suspect with ``verify_watermark`` at the defaults (the key's null, α = 1e-3, margin
   0.05) and, for comparison, under the paper's Binomial(ℓ, 1/2) null at α = 0.05 and at 1e-3.
   Scores the key accuracy: ROC AUC of watermarked + derivatives (positives) against the independent
   models (negatives), TPR at FPR ≤ 1 % (no negative above the cut), and how many independent models
   each rule claims (the default must claim none).
4. Baselines on the same suspects and the same 8 reference models (their nulls calibrated alike):
   agreement with the watermarked model's labels on 100 natural test inputs, and on 100
   IPGuard/TamperNN-style boundary markers of it (:data:`BASELINES`) — score, p-value, claim, ROC AUC,
   TPR at FPR ≤ 1 %, queries.

Prints the tables and writes ``benchmarks/results/bench_ownership.json`` (digits) or
``bench_ownership_<data>.json`` (every choice is in its ``config``), a Markdown report (``.md``) and
the ROC curves (``.png``) beside it.

Run from the repository root::

    .venv/bin/python benchmarks/bench_ownership.py              # digits, about 4 min on 2 idle cores
    .venv/bin/python benchmarks/bench_ownership.py --quick      # 4 references, 6 independents, light attacks
    .venv/bin/python benchmarks/bench_ownership.py --data mnist # 10,000 train / 3,000 test, 3 epochs
    .venv/bin/python benchmarks/bench_ownership.py --data gtsrb # 20,000 train / 3,000 test, 8 epochs
    .venv/bin/python benchmarks/bench_ownership.py --data cifar10 # 20,000 / 3,000, 6 epochs; data: see below

Options: ``--data {digits,mnist,gtsrb,cifar10}``, ``--data-root PATH`` (default ``../shared/data/<data>``
from the repository root; for cifar10 ``benchmarks/data``, where ``bash scripts/fetch-cifar10.sh
benchmarks/data`` writes it), ``--train-subset N`` / ``--test-subset N`` (seeded random images of the
split; 0: all of it), ``--epochs`` (owner, references and independents; defaults in
:data:`DATA_DEFAULTS`), ``--key-size``, ``--epsilon`` (default auto), ``--seed``, ``--strengths light
[strong]`` (default both; ``--quick``: light), ``--threads`` (default 2), ``--out PATH``.
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
from _roc import roc_auc, roc_points, tpr_at_fpr

from nnseal._io import atomic_write_text
from nnseal.attacks import run_attack
from nnseal.attacks.removal import STRENGTHS
from nnseal.data import Dataset, load_dataset
from nnseal.evaluation.report import save_figure
from nnseal.methods.frontier import FrontierStitching
from nnseal.methods.markers import MarkerGenerator
from nnseal.models.train import evaluate_accuracy, train_model
from nnseal.targets import TorchTarget
from nnseal.watermark import (
    DEFAULT_ALPHA,
    DEFAULT_MARGIN,
    DEFAULT_REFERENCES,
    PAPER_NULL,
    REFERENCE_ARCHITECTURES,
    REFERENCE_EPOCHS,
    REFERENCE_SEED,
    NullModel,
    calibrate_key,
    claim_rule,
    p_value,
    train_references,
    verify_watermark,
)

REPO = Path(__file__).resolve().parents[1]
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"train_subset": 0, "test_subset": 0, "epochs": REFERENCE_EPOCHS},
    "mnist": {"train_subset": 10_000, "test_subset": 3_000, "epochs": 3.0},
    "gtsrb": {"train_subset": 20_000, "test_subset": 3_000, "epochs": 8.0},
    "cifar10": {"train_subset": 20_000, "test_subset": 3_000, "epochs": 6.0},
}
"""Per dataset: training and test images used (0: all) and epochs of the owner, reference and
independent models — sized so a full run fits about 30 minutes on 2 busy cores (each attack measures
accuracy and fidelity on the test images, which dominates its cost on a 10k test split)."""
INDEPENDENT_SEEDS = {"lenet": range(1, 11), "mlp": range(1, 11)}
QUICK_SEEDS = {"lenet": range(1, 4), "mlp": range(1, 4)}
ATTACKS = ("ftll", "ftal", "rtal", "fine-pruning", "distill", "extract-labels", "overwrite")
PAPER_ALPHA = 0.05


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 references, 6 independent models, light attacks")
    p.add_argument("--data", choices=tuple(DATA_DEFAULTS), default="digits")
    p.add_argument("--data-root", type=Path, help="the dataset's folder (default: ../shared/data/<data>)")
    p.add_argument("--train-subset", type=int, help="seeded random training images (0: all)")
    p.add_argument("--test-subset", type=int, help="seeded random test images (0: all)")
    p.add_argument("--epochs", type=float, help="owner/reference/independent epochs (per-data default)")
    p.add_argument("--key-size", type=int, default=100)
    p.add_argument(
        "--epsilon", default="auto", help="FGSM step of the key (default: auto, as watermark embed)"
    )
    p.add_argument("--strengths", nargs="+", choices=("light", "strong"), help="default: both")
    p.add_argument("--seed", type=int, default=0, help="the owner's model and embedding seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="default: benchmarks/results/bench_ownership[_<data>].json")
    args = p.parse_args()
    defaults = DATA_DEFAULTS[args.data]
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    args.epochs = defaults["epochs"] if args.epochs is None else args.epochs
    if args.data_root is None and args.data == "cifar10":  # where scripts/fetch-cifar10.sh is told to write
        args.data_root = REPO / "benchmarks" / "data"
    elif args.data_root is None and args.data != "digits":
        args.data_root = REPO.parent / "shared" / "data" / args.data
    if args.out is None:
        suffix = "" if args.data == "digits" else f"_{args.data}"
        args.out = REPO / "benchmarks" / "results" / f"bench_ownership{suffix}.json"
    if args.train_subset < 0 or args.test_subset < 0 or args.epochs <= 0:
        p.error("--train-subset and --test-subset must be >= 0, --epochs > 0")
    if args.epsilon != "auto":
        try:
            args.epsilon = float(args.epsilon)
        except ValueError:
            p.error(f"--epsilon must be 'auto' or a number in (0, 1], got {args.epsilon!r}")
    return args


def load(args: argparse.Namespace) -> tuple[Dataset, Dataset, dict[str, int]]:
    """The training and test subsets (seeded by ``--seed``), and the sizes of the whole splits."""
    rng = np.random.default_rng(args.seed)
    out, totals = [], {}
    for split, n in (("train", args.train_subset), ("test", args.test_subset)):
        full = load_dataset(args.data, args.data_root, split=split)
        totals[split] = len(full)
        keep = n and n < len(full)
        out.append(full.subset(np.sort(rng.choice(len(full), n, replace=False))) if keep else full)
    return out[0], out[1], totals


BASELINES = ("natural", "markers")
"""Fingerprints of the watermarked model scored beside the watermark: agreement with its labels on
natural test inputs, and on IPGuard/TamperNN-style boundary markers (PGD toward another class, then
bisection back to where its label wins by a relative margin of :data:`MARKER_MARGIN`)."""
MARKER_MARGIN = 0.1
"""Near a frontier, but not so near that a light fine-tune of the watermarked model flips them."""
SCORES = {"frontier-stitching": "key_accuracy", "natural": "natural_agreement", "markers": "marker_agreement"}


def baseline_keys(
    model: torch.nn.Module, test: Dataset, n: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(inputs, the model's top-1 labels) of each baseline fingerprint, from seeded test inputs."""
    pick = np.random.default_rng(seed + 7).permutation(len(test))
    natural = test.x[pick[:n]]
    gen = MarkerGenerator("adversarial", target_margin=MARKER_MARGIN, seed=seed)
    markers = gen.generate(model, test.x[pick[n : 3 * n]], levels=test.levels).x[:n]
    return {name: (x, agreement_labels(model, x)) for name, x in (("natural", natural), ("markers", markers))}


def agreement_labels(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return TorchTarget(model).predict(x).argmax(1)


def agreement(model: torch.nn.Module, key: tuple[np.ndarray, np.ndarray]) -> float:
    return float(np.mean(agreement_labels(model, key[0]) == key[1]))


def write_markdown(path: Path, report: dict[str, Any], png: Path) -> None:
    """The report's summary and per-suspect tables as Markdown beside the JSON, the ROC plot embedded."""
    c, sm = report["config"], report["summary"]
    emb, n_pos, n_neg = c["embedding"], sm["positives"], sm["independent"]
    lines = [
        f"# Ownership claims on {c['data']}",
        "",
        f"{c['train_inputs']} training / {c['test_inputs']} test images, {c['owner']['epochs']:g} epochs; "
        f"key {emb['key_size']} at ε {emb['epsilon_used']:g}; nulls calibrated on {c['references']['count']} "
        f"reference models, α = {c['alpha']:g}, margin {c['margin']:g}; {n_neg} held-out independent "
        f"models, {n_pos} watermarked + derivatives.",
        "",
        "| method | claim needs | ROC AUC | TPR at FPR ≤ 1 % | independents claimed | positives claimed "
        "| queries |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in report["methods"].items():
        need = "never" if m["claim_accuracy"] is None else f"≥ {m['claim_accuracy']:.2f}"
        claims = f"{m['claimed_independent']}/{n_neg}", f"{m['claimed_positives']}/{n_pos}"
        cells = [name, need, f"{m['roc_auc']:.3f}", f"{m['tpr_at_fpr_1pct']:.2f}", *claims, m["queries"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", f"![ROC curves]({png.name})", "",
              "| suspect | group | test acc | key acc | p | FS verdict | natural agr. | markers agr. |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["suspects"]:
        cells = [r["suspect"], r["group"], f"{r['test_accuracy']:.3f}", f"{r['key_accuracy']:.2f}",
                 f"{r['p_value']:.1e}", r["verdict"], f"{r['natural_agreement']:.2f}",
                 f"{r['marker_agreement']:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")


def roc_plot(path: Path, rows: list[dict[str, Any]], data: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for name, col in SCORES.items():
        pos = [r[col] for r in rows if r["group"] in ("watermarked", "derivative")]
        neg = [r[col] for r in rows if r["group"] == "independent"]
        ax.step(*roc_points(pos, neg), where="post", label=f"{name} (AUC {roc_auc(pos, neg):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls=":")
    ax.set(title=f"{data}: watermarked + derivatives vs independent", xlabel="false positive rate",
           ylabel="true positive rate", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    train, test, totals = load(args)
    print(f"{args.data}: {len(train)} of {totals['train']} training images, {len(test)} of {totals['test']} "
          f"test; {args.epochs:g} epochs", flush=True)  # fmt: skip
    n_refs = 4 if args.quick else DEFAULT_REFERENCES
    seeds = QUICK_SEEDS if args.quick else INDEPENDENT_SEEDS
    strengths = tuple(args.strengths or (("light",) if args.quick else ("light", "strong")))
    timings: dict[str, float] = {}

    t = time.perf_counter()
    owner = train_model(train, "lenet", epochs=args.epochs, seed=args.seed, progress=False)
    timings["owner_training"] = time.perf_counter() - t
    t = time.perf_counter()
    method = FrontierStitching(key_size=args.key_size, epsilon=args.epsilon, seed=args.seed)  # other defaults
    marked, key, rep = method.embed(owner, train, test=test)
    timings["embedding"] = time.perf_counter() - t
    print(f"embedded: ε {rep.epsilon:g} (tried {rep.epsilon_tried}), key {rep.key_accuracy_after:.2f}, test "
          f"accuracy {rep.accuracy_before:.4f} → {rep.accuracy_after:.4f} ({timings['embedding']:.1f} s)",
          flush=True)  # fmt: skip
    t = time.perf_counter()
    trained = train_references(
        train,
        count=n_refs,
        epochs=args.epochs,
        exclude=[key.model_id, str(key.provenance["source_model_id"])],
    )  # what calibrate_key trains itself; kept here so the baselines use the same reference models
    refs = [d for d, _ in trained]
    key, null = calibrate_key(key, references=[m for _, m in trained], names=[d["name"] for d in refs])
    timings["calibration"] = time.perf_counter() - t
    rule = claim_rule(len(key), DEFAULT_ALPHA, null, DEFAULT_MARGIN)
    t = time.perf_counter()
    baselines = baseline_keys(marked, test, len(key), args.seed)
    base_rules = {}
    for name, bkey in baselines.items():
        bnull = NullModel.calibrate([agreement(m, bkey) for _, m in trained], len(bkey[0]))
        base_rules[name] = (bnull, claim_rule(len(bkey[0]), DEFAULT_ALPHA, bnull, DEFAULT_MARGIN))
    timings["baselines"] = time.perf_counter() - t
    each = ", ".join(f"{r['name']} {r['seconds']:.1f} s" for r in refs)
    print(f"null calibrated on {n_refs} references in {timings['calibration']:.1f} s "
          f"({each}): {null.kind} p={null.p:.3f}, "
          f"accuracies {[round(a, 2) for a in null.key_accuracies]}; claim needs ≥ {rule.claim_accuracy:.0%}",
          flush=True)  # fmt: skip

    suspects: list[dict[str, Any]] = [{"suspect": "watermarked", "group": "watermarked", "model": marked}]
    t = time.perf_counter()
    for name in ATTACKS:
        for strength in strengths:
            t_a = time.perf_counter()
            res = run_attack(
                name, marked, STRENGTHS[name][strength], train=train, test=test, seed=args.seed + 1
            )
            suspects.append({"suspect": f"{name} ({strength})", "group": "derivative", "model": res.model,
                             "attack": name, "strength": strength, "params": res.record["params"],
                             "attack_seconds": time.perf_counter() - t_a})  # fmt: skip
            print(f"  {name} {strength}: {time.perf_counter() - t_a:.1f} s", flush=True)
    timings["attacks"] = time.perf_counter() - t
    suspects.append({"suspect": "source (before embedding)", "group": "source", "model": owner})
    t = time.perf_counter()
    for arch, arch_seeds in seeds.items():
        for s in arch_seeds:
            m = train_model(train, arch, epochs=args.epochs, seed=s, progress=False)
            suspects.append({"suspect": f"{arch} seed {s}", "group": "independent", "model": m, "arch": arch,
                             "seed": s})  # fmt: skip
    timings["independent_training"] = time.perf_counter() - t

    t = time.perf_counter()
    rows = []
    for s in suspects:
        m = s.pop("model")
        v = verify_watermark(key, TorchTarget(m))
        paper = verify_watermark(key, TorchTarget(m), null=PAPER_NULL, alpha=PAPER_ALPHA)
        paper_strict = verify_watermark(key, TorchTarget(m), null=PAPER_NULL)
        s.update(
            test_accuracy=evaluate_accuracy(m, test),
            key_accuracy=v.key_accuracy,
            p_value=v.p_value,
            verdict=v.status.value,
            queries=v.queries_used,
            p_paper=paper.p_value,
            verdict_paper_005=paper.status.value,
            verdict_paper_default_alpha=paper_strict.status.value,
        )
        for name, bkey in baselines.items():
            score, (_, brule) = agreement(m, bkey), base_rules[name]
            errors = len(bkey[0]) - round(score * len(bkey[0]))
            s[SCORES[name]] = score
            s[f"{name}_p_value"] = p_value(errors, len(bkey[0]), brule.tested)
            s[f"{name}_claimed"] = errors < brule.theta
        rows.append(s)
    timings["verification"] = time.perf_counter() - t

    pos = [r["key_accuracy"] for r in rows if r["group"] in ("watermarked", "derivative")]
    neg = [r["key_accuracy"] for r in rows if r["group"] == "independent"]
    auc = roc_auc(pos, neg)
    tpr, cut = tpr_at_fpr(pos, neg)
    indep = [r for r in rows if r["group"] == "independent"]
    positives = [r for r in rows if r["group"] in ("watermarked", "derivative")]
    claimed = {
        "default": sum(r["verdict"] == "watermarked" for r in indep),
        "paper_alpha_0.05": sum(r["verdict_paper_005"] == "watermarked" for r in indep),
        "paper_alpha_default": sum(r["verdict_paper_default_alpha"] == "watermarked" for r in indep),
    }
    detected = {
        "default": sum(r["verdict"] == "watermarked" for r in positives),
        "paper_alpha_0.05": sum(r["verdict_paper_005"] == "watermarked" for r in positives),
    }

    print(f"\nkey of {len(key)} at ε {rep.epsilon:g}; default rule: α={DEFAULT_ALPHA:g}, the key's null "
          f"(upper bound p={rule.tested.p:.3f}), margin {DEFAULT_MARGIN:g} over the best reference "
          f"({rule.reference_max:.2f}): claim iff key accuracy ≥ {rule.claim_accuracy:.2f}")  # fmt: skip
    print_table(
        ["suspect", "group", "test acc", "key acc", "p (default)", "verdict (default)", "p (1/2 null)",
         "1/2 null, α=0.05"],
        [[r["suspect"], r["group"], f"{r['test_accuracy']:.3f}", f"{r['key_accuracy']:.2f}",
          f"{r['p_value']:.1e}", r["verdict"], f"{r['p_paper']:.1e}", r["verdict_paper_005"]] for r in rows],
    )  # fmt: skip
    print(f"\nROC AUC (watermarked + {len(pos) - 1} derivatives vs {len(neg)} independent, key accuracy): "
          f"{auc:.3f}; TPR at FPR ≤ 1 %: {tpr:.2f} (cut: key accuracy > {cut:.2f})")  # fmt: skip
    print(
        f"claimed independent models: default {claimed['default']}/{len(neg)}, paper null α=0.05 "
        f"{claimed['paper_alpha_0.05']}/{len(neg)}, paper null α={DEFAULT_ALPHA:g} "
        f"{claimed['paper_alpha_default']}/{len(neg)}; detected watermarked + derivatives: default "
        f"{detected['default']}/{len(pos)}, paper null α=0.05 {detected['paper_alpha_0.05']}/{len(pos)}"
    )
    methods: dict[str, dict[str, Any]] = {}
    for name, col in SCORES.items():
        p_s = [r[col] for r in positives]
        n_s = [r[col] for r in indep]
        t_s, _ = tpr_at_fpr(p_s, n_s)
        fs = name == "frontier-stitching"
        won = (lambda r: r["verdict"] == "watermarked") if fs else (lambda r, n=name: r[f"{n}_claimed"])
        need = rule.claim_accuracy if fs else base_rules[name][1].claim_accuracy
        methods[name] = {
            "roc_auc": roc_auc(p_s, n_s),
            "tpr_at_fpr_1pct": t_s,
            "claim_accuracy": need,
            "claimed_independent": sum(map(won, indep)),
            "claimed_positives": sum(map(won, positives)),
            "queries": len(key) if fs else len(baselines[name][0]),
            **({} if fs else {"null": base_rules[name][0].to_dict()}),
        }
    print_table(
        ["method (same suspects)", "claim needs", "ROC AUC", "TPR at FPR ≤ 1 %", "independents claimed",
         "positives claimed"],
        [[k, "never" if m["claim_accuracy"] is None else f"≥ {m['claim_accuracy']:.2f}",
          f"{m['roc_auc']:.3f}", f"{m['tpr_at_fpr_1pct']:.2f}", f"{m['claimed_independent']}/{len(neg)}",
          f"{m['claimed_positives']}/{len(pos)}"] for k, m in methods.items()],
    )  # fmt: skip
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s")

    report = {
        "config": {
            "quick": args.quick,
            "seed": args.seed,
            "attacker_seed": args.seed + 1,
            "threads": args.threads,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "data": args.data,
            "data_root": str(args.data_root) if args.data_root else None,
            "train_subset": args.train_subset,
            "test_subset": args.test_subset,
            "subset_seed": args.seed,
            "train_total": totals["train"],
            "test_total": totals["test"],
            "train_inputs": len(train),
            "test_inputs": len(test),
            "owner": {"arch": "lenet", "epochs": args.epochs, "seed": args.seed},
            "embedding": {**method.config(), "epsilon_used": rep.epsilon, "epsilon_tried": rep.epsilon_tried},
            "references": {
                "count": n_refs,
                "architectures": list(REFERENCE_ARCHITECTURES),
                "epochs": args.epochs,
                "first_seed": REFERENCE_SEED,
            },
            "independent": {"epochs": args.epochs, "seeds": {a: list(s) for a, s in seeds.items()}},
            "strengths": list(strengths),
            "attacks": {a: {st: STRENGTHS[a][st] for st in strengths} for a in ATTACKS},
            "alpha": DEFAULT_ALPHA,
            "margin": DEFAULT_MARGIN,
            "paper_alpha": PAPER_ALPHA,
            "machine": machine_info(load_start),
        },
        "embedding": rep.to_dict(),
        "null": {
            **null.to_dict(),
            "references": refs,
            "tested": rule.tested.to_dict(),
            "claim_key_accuracy": rule.claim_accuracy,
            "theta": rule.theta,
            "theta_null": rule.theta_null,
            "theta_margin": rule.theta_margin,
        },
        "baselines": {
            "marker_margin": MARKER_MARGIN,
            "marker_strategy": "adversarial",
            "inputs": "test split",
        },
        "methods": methods,
        "suspects": rows,
        "summary": {
            "roc_auc": auc,
            "tpr_at_fpr_1pct": tpr,
            "cut": cut,
            "independent": len(neg),
            "positives": len(pos),
            "claimed_independent": claimed,
            "detected_positives": detected,
        },
        "timings": {**timings, "total_s": total},
    }
    write_report(args.out, report)
    png = args.out.with_suffix(".png")
    roc_plot(png, rows, args.data)
    write_markdown(args.out.with_suffix(".md"), report, png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
