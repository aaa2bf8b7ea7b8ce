"""Results → JSON, CSV, PNG plots and a Markdown report with the SSF paper's tables beside ours."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from nnseal._io import atomic_write_text
from nnseal.detectors import DETECTORS
from nnseal.evaluation.experiment import Results
from nnseal.methods import Pool
from nnseal.report import image_grid, markdown_table, save_png

# SSF paper (He, Zhang & Lee, CVPR 2019), top-1. Table 3: SS+MANC missing rate (%) at N_S.
PAPER_TABLE3_N = (1, 2, 3, 4, 5, 8)
PAPER_TABLE3 = {
    "trojan": (5.93, 0.22, 0.00, 0.00, 0.00, 0.00),
    "error-generic": (12.26, 0.04, 0.01, 0.00, 0.00, 0.00),
    "error-specific": (2.20, 0.01, 0.00, 0.00, 0.00, 0.00),
    "compression": (48.93, 15.56, 4.72, 1.81, 0.83, 0.04),
}
# Table 5: samples needed for missing rate α (non-sensitive, SS, SS+MANC).
PAPER_ALPHAS = ("1e-08", "1e-07", "1e-06", "1e-05", "0.0001", "0.001", "0.01")
PAPER_TABLE5 = {
    "trojan": ((74, 65, 56, 47, 38, 28, 21), (10, 9, 8, 7, 6, 4, 3), (4, 4, 3, 3, 3, 2, 2)),
    "error-generic": ((332, 291, 249, 208, 166, 125, 83), (14, 12, 11, 9, 7, 6, 4), (4, 4, 4, 4, 3, 2, 2)),
    "error-specific": ((309, 270, 232, 193, 155, 116, 77), (11, 9, 8, 7, 6, 4, 3), (3, 3, 3, 3, 3, 2, 2)),
    "compression": (
        (502, 439, 376, 314, 252, 189, 126),
        (78, 70, 59, 51, 40, 29, 20),
        (31, 31, 30, 28, 25, 18, 8),
    ),
}
PAPER_COLUMNS = ("natural", "ss-random", "ss-manc")
"""The selections the SSF paper's Table 5 reports, in its column order."""
LABELS = {
    "natural": "natural (non-sensitive)",
    "ss-random": "SS + random",
    "ss-manc": "SS + MANC",
    "marker-adversarial": "markers: adversarial + bisection",
    "marker-bisection": "markers: pairwise bisection (labels only)",
    "marker-flip-rate": "markers: flip-rate cover",
    "marker-hybrid": "markers: SS pushed to frontier",
    "covert": "covert (natural, stratified)",
}


def _label(selection: str) -> str:
    """The report's name for a selection: the paper's for its own columns, else the config's label."""
    return LABELS.get(selection, selection)


def write_outputs(results: Results, pools: dict[str, Pool], out: str | Path) -> Path:
    """Write results.json, curves.csv, plots and report.md into ``out``; returns the report path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(dataclasses.asdict(results), indent=1))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["attack", "selection", "spec", "n_queries", "missing_rate"])
    for attack, by_sel in results.curves.items():
        for sel, by_spec in by_sel.items():
            for spec, curve in by_spec.items():
                w.writerows([attack, sel, spec, n + 1, f"{m:.6g}"] for n, m in enumerate(curve))
    atomic_write_text(out / "curves.csv", buf.getvalue())
    sensitive, natural = pools["sensitive"], pools["natural"]
    picks = min(10, len(sensitive), len(natural))
    save_png(
        image_grid(
            [sensitive.seeds[:picks], sensitive.x[:picks], natural.x[:picks]],  # type: ignore[index]
            scale=3,
            labels=["seeds", "sensitive samples", "natural inputs"],
        ),
        out / "samples.png",
    )
    _plots(results, out)
    report = out / "report.md"
    atomic_write_text(report, _markdown(results))
    return report


def _plots(results: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = results.config["evaluation"]["specs"][0]
    attacks = list(results.curves)
    fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.4), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        for sel in results.curves[attack]:
            curve = np.array(results.curves[attack][sel][spec])
            n = np.arange(1, len(curve) + 1)
            ax.semilogy(n[curve > 0], curve[curve > 0], label=_label(sel))
        ax.set_title(attack)
        ax.set_xlabel("queries N_S")
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"missing rate ({spec})")
    axes[0][0].legend(fontsize=8)
    save_figure(fig, out / "missing_rate.png")

    alphas = results.config["evaluation"]["alphas"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for attack in attacks:
        for sel, style in (("natural", ":"), ("ss-manc", "-")):
            need = [results.needed[attack][sel][spec][f"{a:g}"] for a in alphas]
            xs = [a for a, q in zip(alphas, need, strict=True) if q is not None]
            axes[0].plot(
                xs, [q for q in need if q is not None], style, marker="o", label=f"{attack} {_label(sel)}"
            )
        nat = [results.needed[attack]["natural"][spec][f"{a:g}"] for a in alphas]
        manc = [results.needed[attack]["ss-manc"][spec][f"{a:g}"] for a in alphas]
        ratio = [(a, n / m) for a, n, m in zip(alphas, nat, manc, strict=True) if n and m]
        axes[1].plot([a for a, _ in ratio], [r for _, r in ratio], marker="o", label=attack)
    for ax, title in zip(axes, ("queries needed", "efficiency: natural / SS+MANC"), strict=True):
        if _has_points(ax):  # a log axis with nothing on it cannot be drawn
            ax.set_xscale("log")
            ax.invert_xaxis()
        ax.set_xlabel("missing rate α")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    if _has_points(axes[0]):
        axes[0].set_yscale("log")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=7)
    save_figure(fig, out / "queries_needed.png")
    if results.stealth:
        _stealth_plot(results, out, plt)


def _has_points(ax: Any) -> bool:
    return any(len(line.get_xdata()) for line in ax.lines) or any(
        len(c.get_offsets()) for c in ax.collections
    )


def _stealth_plot(results: Results, out: Path, plt: Any) -> None:
    """The stealth–power trade-off: per selection, its most revealing detector's AUC against the
    queries it needs (top1, α = STEALTH_ALPHA), one marker per attack."""
    spec, alpha = results.config["evaluation"]["specs"][0], f"{STEALTH_ALPHA:g}"
    fig, ax = plt.subplots(figsize=(6, 4))
    for attack, need in results.needed.items():
        pts = [(st["worst"], need[sel][spec].get(alpha)) for sel, st in results.stealth.items()]
        ax.scatter([w for w, q in pts if q], [q for _, q in pts if q], label=attack, s=18)
    for sel, st in results.stealth.items():
        ax.annotate(_label(sel), (st["worst"], 1), fontsize=6, rotation=90, va="bottom")
    ax.set_xlabel("worst detector ROC AUC (0.5 = indistinguishable from traffic)")
    ax.set_ylabel(f"queries needed ({spec}, α = {alpha})")
    if _has_points(ax):
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out / "stealth_power.png")


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    from nnseal._io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _rate(estimate: float, bound: float) -> str:
    """A missing rate (%) as the trials support it: the estimate and, where it is above it, the bound."""
    if bound <= estimate:
        return _pct(estimate)
    return f"≤ {_pct(bound)}" if estimate == 0 else f"{_pct(estimate)} (≤ {_pct(bound)})"


def _by_attack(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for a in rows:
        out.setdefault(a["attack"], []).append(a)
    return out


def _attack_row(r: Results, name: str, rows: list[dict[str, Any]]) -> list[str]:
    """One attack's models summarised: accuracy mean (range), success, trials and what they support."""
    cfg = next(a for a in r.config["attacks"] if a["name"] == name)
    measured = [a for a in rows if a["metrics"].get("accuracy_after") is not None]
    before = measured[0]["metrics"]["accuracy_before"]
    after = np.array([a["metrics"]["accuracy_after"] for a in measured])
    success = [
        a["metrics"]["attack_success_rate"]
        for a in rows
        if a["metrics"].get("attack_success_rate") is not None
    ]
    spread = f" ({after.min():.2%}–{after.max():.2%})" if after.min() != after.max() else ""
    if len(measured) < len(rows):
        spread += f", first {len(measured)} models"
    trials = r.trials.get(name, {})
    held = {True: "yes", False: "no", None: "—"}[cfg.get("held_out")]
    return [
        f"{name} `{rows[0]['lineage']}`",
        str(len(rows)),
        held,
        f"{before:.2%} → {after.mean():.2%}{spread}",
        f"{np.mean(success):.1%}" if success else "—",
        f"{trials.get('trials', '—')}{' (deterministic)' if trials.get('deterministic') else ''}",
        f"{trials['smallest_supported']:.2g}" if trials else "—",
    ]


STEALTH_ALPHA = 1e-4
STEALTH_SPECS = ("top1", "top1-p4")


def _stealth_section(r: Results) -> list[str]:
    """Per selection: each provider detector's ROC AUC and the queries needed at top1 and top1-p4."""
    specs = [s for s in STEALTH_SPECS if s in r.config["evaluation"]["specs"]]
    attacks = list(r.needed)
    alpha = f"{STEALTH_ALPHA:g}"

    def needed(sel: str, spec: str) -> str:
        return " / ".join(str(r.needed[a][sel][spec].get(alpha) or "—") for a in attacks)

    rows = [
        [
            _label(sel),
            *[f"{st['auc'][d]:.2f}" for d in DETECTORS],
            str(st["queries"]),
            *[needed(sel, spec) for spec in specs],
        ]
        for sel, st in r.stealth.items()
    ]
    return [
        "## Stealth: what a dishonest provider can see",
        "",
        "ROC AUC of each detector a provider can run (`nnseal.detectors`), natural test traffic vs the "
        "queries a selection sends (ordered selections: the first picks of every bag); 0.5 = "
        "indistinguishable, 1 = every query recognised. *grid*: values off the pixel grid; *statistics*: "
        "logistic regression on input statistics, trained on the provider's own nnseal pools of the same "
        "method; *sensitivity* and *margin*: computed on the provider's copy of the model. Queries needed: "
        f"missing rate ≤ {alpha}, per attack ({' / '.join(attacks)}).",
        "",
        markdown_table(["selection", *DETECTORS, "queries scored", *[f"needed, {s}" for s in specs]], rows),
        "",
        "![stealth vs power](stealth_power.png)",
        "",
    ]


def _markdown(r: Results) -> str:
    cfg = r.config
    ev = cfg["evaluation"]
    spec = ev["specs"][0]
    paper_of = {a["name"]: a.get("paper") for a in cfg["attacks"]}
    res = r.resolution
    md = [
        f"# nnseal evaluation: {cfg['name']}",
        "",
        f"{cfg['data']['name']} · {cfg['model']['arch']} (test accuracy {r.model_accuracy:.2%}) · pool of "
        f"{res['pool_sensitive']} sensitive samples ({cfg['fingerprint']['steps']} steps, L∞ ε = "
        f"{cfg['fingerprint']['epsilon']}) and {res['pool_natural']} natural inputs · MANC bags of "
        f"{cfg['fingerprint']['bag']}. Missing rates are claimed only up to what the trials support: "
        f"the one-sided {res.get('confidence', 0.95):.0%} Clopper–Pearson upper bound (`≤ x`). Ordered "
        "selections (SS + MANC, flip-rate, boundary-sensitive, covert) are scored on independent trials "
        "(bag k with attacked model k; a deterministic attack: every bag with its one model); natural and "
        "SS + random rates are exact over the query draw, averaged over the attacked models, and never "
        "claimed below what that many models support. Queries needed at α count only where the bound "
        "reaches α.",
        "",
        "## Attacks and trials",
        "",
        markdown_table(
            [
                "attack",
                "models",
                "held out",
                "accuracy before → after",
                "attack success",
                "trials",
                "smallest supported",
            ],
            [_attack_row(r, name, rows) for name, rows in _by_attack(r.attacks).items()],
        ),
        "",
        f"## Missing rate (%) vs N_S, SS + MANC, {spec} (Table 3)",
        "",
    ]
    ns = [n for n in PAPER_TABLE3_N if n <= res["n_max"]]
    rows = []
    for attack, by_sel in r.curves.items():
        curve, bound = by_sel["ss-manc"][spec], r.supported[attack]["ss-manc"][spec]
        rows.append([f"{attack} (nnseal)", *[_rate(curve[n - 1], bound[n - 1]) for n in ns]])
        if paper_of.get(attack) in PAPER_TABLE3:
            rows.append(
                [
                    f"{attack} (paper: {paper_of[attack]})",
                    *[f"{v:.2f}" for v in PAPER_TABLE3[paper_of[attack]][: len(ns)]],
                ]
            )
    md += [
        markdown_table(["attack \\ N_S", *map(str, ns)], rows),
        "",
        "![missing rate](missing_rate.png)",
        "",
    ]

    md += ["## Missing rate (%) by output specification, SS + MANC (Table 4)", ""]
    for attack, by_sel in r.curves.items():
        bound = r.supported[attack]["ss-manc"]
        rows = [
            [str(n), *[_rate(by_sel["ss-manc"][s][n - 1], bound[s][n - 1]) for s in ev["specs"]]]
            for n in (1, 2, 3)
            if n <= res["n_max"]
        ]
        md += [f"**{attack}**", "", markdown_table(["N_S", *ev["specs"]], rows), ""]

    md += [
        f"## Queries needed for missing rate α, {spec} (Table 5)",
        "",
        "`—` = the supported missing rate (95 % upper bound) does not reach α within the pool (natural / "
        "SS + random) or within n_max (ordered selections); see the trials column above.",
        "",
    ]
    alphas = [f"{a:g}" for a in ev["alphas"]]
    for attack, need in r.needed.items():
        rows = [[_label(sel), *[str(need[sel][spec][a] or "—") for a in alphas]] for sel in need]
        eff = [
            need["natural"][spec][a] / need["ss-manc"][spec][a]
            if need["natural"][spec][a] and need["ss-manc"][spec][a]
            else None
            for a in alphas
        ]
        rows.append(["efficiency (natural / SS+MANC)", *[f"{e:.1f}×" if e else "—" for e in eff]])
        paper = paper_of.get(attack)
        if paper in PAPER_TABLE5:
            by_alpha = dict(zip(PAPER_ALPHAS, zip(*PAPER_TABLE5[paper], strict=True), strict=True))
            for i, sel in enumerate(PAPER_COLUMNS):
                rows.append(
                    [
                        f"paper {paper}: {_label(sel)}",
                        *[str(by_alpha[a][i]) if a in by_alpha else "" for a in alphas],
                    ]
                )
        md += [f"**{attack}**", "", markdown_table(["selection \\ α", *alphas], rows), ""]
    md += ["![queries needed](queries_needed.png)", ""]
    if r.stealth:
        md += _stealth_section(r)

    fa = r.false_alarms
    changed = sum(x["changed_answers"] for x in fa)
    checks = sum(x["comparisons"] for x in fa)
    setups = sorted({x["target"] for x in fa})
    pools = list(dict.fromkeys(x["pool"] for x in fa))
    md += [
        "## False alarms on the intact model",
        "",
        f"Every pool sample was queried through {len(setups)} serving setups ({', '.join(setups)}) and "
        f"compared under {len(ev['specs'])} output specs: {checks} comparisons, "
        f"**{changed} changed answers** "
        f"(false-alarm rate {changed / max(checks, 1):.2g} per query). Then random 10-query fingerprints of "
        "each pool were verified through every setup under every spec.",
        "",
        markdown_table(
            ["pool", "comparisons", "changed answers", "verifications", "not intact"],
            [
                [
                    p,
                    sum(x["comparisons"] for x in fa if x["pool"] == p),
                    sum(x["changed_answers"] for x in fa if x["pool"] == p),
                    sum(x["verifications"] for x in fa if x["pool"] == p),
                    sum(x["not_intact"] for x in fa if x["pool"] == p),
                ]
                for p in pools
            ],
        ),
        "",
    ]
    if r.markers:
        md += [
            "## Marker pools",
            "",
            "Noise = largest relative change of a top-2 probability between the full batch and any serving "
            "setup; markers whose answers would not survive the margin were dropped.",
            "",
            markdown_table(
                ["strategy", "candidates", "kept", "measured noise", "margin", "generation (s)"],
                [
                    [
                        LABELS.get(k, k),
                        m["candidates"],
                        m["pool"],
                        f"{m['max_noise']:.2g}",
                        f"{m['margin']:.2g}",
                        f"{m['generation_s']:.1f}",
                    ]
                    for k, m in r.markers.items()
                ],
            ),
            "",
        ]
    if r.monte_carlo:
        md += [
            "## Monte Carlo check of the exact formula (SS + random)",
            "",
            markdown_table(
                ["attack", "spec", "N", "exact", "simulated", "repetitions"],
                [
                    [
                        m["attack"],
                        m["spec"],
                        m["n"],
                        f"{m['exact']:.3g}",
                        f"{m['simulated']:.3g}",
                        m["repetitions"],
                    ]
                    for m in r.monte_carlo
                ],
            ),
            "",
        ]
    md += [
        "## Samples",
        "",
        "Rows: seeds, their sensitive samples, natural inputs.",
        "",
        "![samples](samples.png)",
        "",
        "## Configuration and environment",
        "",
        "```json",
        json.dumps({"config": cfg, "environment": r.environment, "timings_s": r.timings}, indent=1),
        "```",
        "",
    ]
    return "\n".join(md)
