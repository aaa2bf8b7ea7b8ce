from __future__ import annotations

import itertools
import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnseal.cli import main
from nnseal.errors import NnsealError
from nnseal.evaluation import config_from_dict, evaluate, load_config
from nnseal.evaluation.stats import (
    first_detection,
    missing_rate_exact,
    missing_rate_monte_carlo,
    missing_rate_ordered,
    queries_needed,
)


def test_exact_missing_rate_matches_enumeration() -> None:
    pool, detecting = 9, 3
    detects = np.array([True] * detecting + [False] * (pool - detecting))
    curve = missing_rate_exact(pool, detecting, 7)
    for n in range(1, 8):
        combos = list(itertools.combinations(range(pool), n))
        brute = sum(not detects[list(c)].any() for c in combos) / len(combos)
        assert curve[n - 1] == pytest.approx(brute)
        assert curve[n - 1] == pytest.approx(comb(pool - detecting, n) / comb(pool, n))
    assert missing_rate_exact(5, 0, 5).tolist() == [1.0] * 5
    assert missing_rate_exact(5, 5, 2).tolist() == [0.0, 0.0]


def test_monte_carlo_agrees_with_exact_and_scales_in_chunks() -> None:
    exact = missing_rate_exact(500, 20, 10)[-1]
    sim = missing_rate_monte_carlo(500, 20, 10, repetitions=2_000_000, seed=0, chunk=250_000)
    assert sim == pytest.approx(exact, rel=0.01)
    assert missing_rate_monte_carlo(500, 0, 3, repetitions=10) == 1.0


def test_ordered_selection_and_queries_needed() -> None:
    order = np.array([4, 2, 0, 1, 3])
    assert first_detection(order, np.array([0, 0, 1, 0, 0], bool)) == 1
    assert first_detection(order, np.zeros(5, bool)) == 5
    curve = missing_rate_ordered(np.array([0, 1, 1, 3]), 4)
    np.testing.assert_allclose(curve, [0.75, 0.25, 0.25, 0.0])
    assert queries_needed(curve, 0.3) == 2 and queries_needed(curve, 0.0) == 4
    assert queries_needed(curve, -1) is None


TINY = {
    "name": "tiny",
    "seed": 0,
    "model": {"epochs": 5},
    "fingerprint": {"pool": 60, "bag": 30, "steps": 40, "natural_pool": 60},
    "evaluation": {
        "specs": ["top1", "top1-p2"],
        "n_max": 20,
        "manc_bags": 3,
        "seeds_per_attack": 2,
        "false_alarm_batch_sizes": [1, 64],
        "false_alarm_threads": [1],
        "monte_carlo_repetitions": 10000,
        "false_alarm_fingerprints": 3,
        "accuracy_models": 1,
    },
    "markers": {
        "strategies": ["adversarial", "bisection", "flip-rate", "hybrid"],
        "pool": 60,
        "ss_steps": 40,
    },
    "attacks": [
        {"name": "big-edit", "kind": "modify-weights", "params": {"k": 40, "relative": 0.5}},
        {"name": "4bit", "kind": "quantize-bits", "params": {"bits": 4}, "paper": "compression"},
    ],
}


def test_experiment_end_to_end(tmp_path) -> None:
    cfg = config_from_dict({**TINY, "out": str(tmp_path / "out")})
    results = evaluate(cfg, progress=False)
    assert set(results.curves) == {"big-edit", "4bit"}
    for by_sel in results.curves.values():
        assert set(by_sel) == {"natural", "ss-random", "ss-manc"} | {
            f"marker-{s}" for s in ("adversarial", "bisection", "flip-rate", "hybrid")
        }
        for curve in (c for by_spec in by_sel.values() for c in by_spec.values()):
            assert len(curve) == 20 and all(0 <= m <= 1 for m in curve)
            assert all(a >= b - 1e-12 for a, b in itertools.pairwise(curve)), (
                "missing rate must not grow with N"
            )
    # probabilities carry more information than labels: never a higher missing rate
    for by_sel in results.curves.values():
        for sel in ("natural", "ss-random"):
            assert all(
                p <= t + 1e-12 for p, t in zip(by_sel[sel]["top1-p2"], by_sel[sel]["top1"], strict=True)
            )
    assert len(results.attacks) == 4 and {a["seed"] for a in results.attacks} == {0, 1000}
    # what the trials support: the random edit has 2 independent models, the deterministic 4-bit
    # rounding (identical answers from both seeds) one trial per bag drawn
    assert results.trials["big-edit"]["trials"] == 2 and not results.trials["big-edit"]["deterministic"]
    assert results.trials["4bit"]["deterministic"] and results.trials["4bit"]["trials"] == 3
    for attack, by_sel in results.supported.items():
        exact = results.trials[attack]["deterministic"]  # random picks of a fixed model: exact rates
        for sel in (s for s in by_sel if not exact or s in ("ss-manc", "marker-flip-rate")):
            for bound in by_sel[sel].values():
                assert all(b >= results.trials[attack]["smallest_supported"] - 1e-12 for b in bound), sel
    assert [a["metrics"].get("accuracy_after") is None for a in results.attacks] == [False, True] * 2
    assert results.false_alarms and all(x["changed_answers"] == 0 for x in results.false_alarms)
    assert all(x["not_intact"] == 0 and x["verifications"] == 3 * 2 for x in results.false_alarms)
    assert {x["pool"] for x in results.false_alarms} == {"natural", "sensitive"} | {
        f"marker-{s}" for s in ("adversarial", "bisection", "flip-rate", "hybrid")
    }
    for name, m in results.markers.items():
        assert 20 <= m["pool"] <= m["candidates"] <= 60, name
        assert m["margin"] >= 2e-5 and m["max_noise"] >= 0
    # a 40-weight 50 % edit moves boundary markers more often than natural inputs
    big = results.curves["big-edit"]
    assert big["marker-adversarial"]["top1"][0] < big["natural"]["top1"][0]
    assert {x["target"] for x in results.false_alarms} >= {"onnxruntime", "torch batch 1 threads 1"}
    for m in results.monte_carlo:
        assert abs(m["simulated"] - m["exact"]) < 0.03
    out = tmp_path / "out"
    for name in (
        "results.json",
        "curves.csv",
        "report.md",
        "missing_rate.png",
        "queries_needed.png",
        "samples.png",
    ):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["seed"] == 0 and saved["environment"]["torch"]
    report = (out / "report.md").read_text()
    assert "paper compression: SS + MANC" in report and "(Table 5)" in report
    assert "## Attacks and trials" in report and "first 1 models" in report and "(deterministic)" in report
    assert "markers: flip-rate cover" in report and "## Marker pools" in report
    assert (out / "curves.csv").read_text().splitlines()[0] == "attack,selection,spec,n_queries,missing_rate"


def test_config_errors(tmp_path) -> None:
    with pytest.raises(NnsealError, match="unknown key"):
        config_from_dict({**TINY, "fingerprint": {"pool": 10, "bags": 3}})
    with pytest.raises(NnsealError, match="unknown marker strategies"):
        config_from_dict({**TINY, "markers": {"strategies": ["fgsm"]}})
    with pytest.raises(NnsealError, match="at least one"):
        config_from_dict({k: v for k, v in TINY.items() if k != "attacks"})
    with pytest.raises(NnsealError, match="cannot exceed pool"):
        config_from_dict({**TINY, "fingerprint": {"pool": 10, "bag": 30}})
    (tmp_path / "bad.toml").write_text("name = [unclosed")
    with pytest.raises(NnsealError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml")
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "cannot read config" in r.stderr
    cifar = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "cifar10.toml"
    r = CliRunner().invoke(main, ["evaluate", str(cifar), "--root", str(tmp_path / "nowhere"), "--quiet"])
    assert r.exit_code == 2 and f"dataset folder {tmp_path / 'nowhere'} does not exist" in r.stderr


def test_cifar10_config_parses() -> None:
    """The benchmark config reads the folder the fetch script makes and evaluates a VGG."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "cifar10.toml")
    assert cfg.data.name == "cifar10" and cfg.model.arch == "vgg"
    assert Path(cfg.data.root).name == "data" and cfg.markers.strategies
    assert {a.paper for a in cfg.attacks} == {"trojan", "error-generic", "error-specific", "compression"}


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "configs").glob("*.toml")),
    ids=lambda p: p.stem,
)
def test_every_benchmark_config_parses(path: Path) -> None:
    """A config the READMEs tell users to run must at least load."""
    cfg = load_config(path)
    assert cfg.name == path.stem and cfg.attacks and cfg.methods is not None


def test_example_config_parses_with_paths_relative_to_it() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "digits.toml"
    cfg = load_config(path)
    assert [a.paper for a in cfg.attacks] == ["trojan", "error-generic", "error-specific", "compression"]
    assert Path(cfg.out).resolve() == (path.parent / "../evaluation-digits").resolve()
