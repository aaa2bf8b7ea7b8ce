"""TamperNN boundary markers: each strategy lands near a frontier, survives benign numerics, and
catches weight changes that natural inputs miss."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nnseal.attacks import run_attack
from nnseal.cli import main
from nnseal.data import Dataset
from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.methods import METHODS, STRATEGIES, MarkerFingerprinter, MarkerGenerator
from nnseal.methods.markers import (
    Perturbation,
    bisect_labels,
    bisect_margin,
    flip_matrix,
    measure_noise,
    pgd,
    target_labels,
    top1_margin,
)
from nnseal.models import save_model
from nnseal.targets import TorchTarget
from nnseal.targets.base import Target
from nnseal.verification import Status, verify


class LabelsOnly(Target):
    """A model the owner can only query for its top-1 label."""

    provides = "labels"

    def __init__(self, model) -> None:
        super().__init__()
        self.inner = TorchTarget(model)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return self.inner.predict(x).argmax(1)[:, None]

    def describe(self) -> str:
        return "labels only"


@pytest.fixture(scope="module")
def seeds(digits) -> np.ndarray:
    return digits[1].x[:60]


def _probs(model, x):
    return TorchTarget(model).predict(x)


def test_pgd_stays_in_the_ball_and_flips_labels(model, seeds) -> None:
    adv = pgd(model, seeds, epsilon=0.3, steps=20)
    assert np.abs(adv - seeds).max() <= 0.3 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    flipped = _probs(model, adv).argmax(1) != _probs(model, seeds).argmax(1)
    assert flipped.mean() > 0.9


def test_bisection_lands_just_inside_the_seed_class(model, seeds) -> None:
    adv = pgd(model, seeds, epsilon=0.3, steps=20)
    x, ok = bisect_margin(model, seeds, adv, target_margin=1e-3)
    p, p_seed = _probs(model, x[ok]), _probs(model, seeds[ok])
    assert ok.mean() > 0.9
    assert (p.argmax(1) == p_seed.argmax(1)).all()
    margin = top1_margin(p)
    assert (margin >= 1e-3).all() and np.median(margin) < 2e-3  # close to the frontier, not at the seed
    assert np.median(top1_margin(p_seed)) > 0.5


def test_labels_only_bisection_needs_only_labels(model, seeds) -> None:
    oracle = LabelsOnly(model)
    partners = seeds[::-1].copy()
    x, ok = bisect_labels(target_labels(oracle), seeds, partners, iters=25, backoff=0.05)
    assert oracle.queries > 0 and ok.sum() > 40
    la = _probs(model, seeds).argmax(1)
    assert (_probs(model, x).argmax(1)[ok] == la[ok]).all()
    # twice the backoff further along the segment lies across the frontier for most markers
    direction = (partners - seeds).reshape(len(seeds), -1)
    step = (0.1 * direction / np.linalg.norm(direction, axis=1, keepdims=True)).reshape(seeds.shape)
    beyond = _probs(model, (x + step).astype(np.float32)).argmax(1)
    assert (beyond[ok] != la[ok]).mean() > 0.8


def test_flip_matrix_and_perturbations(model, seeds) -> None:
    nothing = flip_matrix(model, seeds, [Perturbation("gauss", 0.0), Perturbation("round", bits=16)])
    assert not nothing.any()
    markers = MarkerGenerator("adversarial").generate(model, seeds)
    strong = [Perturbation("gauss", 0.05, seed=s) for s in range(4)]
    assert flip_matrix(model, markers.x, strong).mean() > flip_matrix(model, seeds, strong).mean()
    with pytest.raises(ValueError, match="unknown marker strategy"):
        MarkerGenerator("fgsm")  # type: ignore[arg-type]


def test_noise_is_measured_for_every_serving_setup(model, seeds) -> None:
    noise = measure_noise(model, seeds[:20], ["cpu-fp32", "onnxruntime"])
    assert set(noise) == {"cpu-fp32", "onnxruntime"} and all(v.shape == (20,) for v in noise.values())
    assert all(0 <= v.max() < 1e-4 for v in noise.values())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_fingerprints_and_stays_intact(model, digits, strategy) -> None:
    onnx = strategy == "adversarial"  # ONNX export costs seconds; one strategy covers that path
    fp = MarkerFingerprinter(
        n_queries=10, pool_size=80, strategy=strategy, ss_steps=50, specs=("top1", "top1-p2"), noise_onnx=onnx
    ).fingerprint(model, digits[1])
    assert len(fp) == 10 and fp.method == "tampernn-markers" and fp.params["strategy"] == strategy
    assert fp.provenance["noise_margin"] >= 2e-5 and ("onnxruntime" in fp.provenance["noise"]) == onnx
    for target in (TorchTarget(model, batch_size=1, threads=1), TorchTarget(model, batch_size=7, threads=2)):
        for spec in fp.specs:
            assert verify(fp, target, spec).status is Status.INTACT


def test_boundary_markers_catch_what_natural_inputs_miss(model, digits) -> None:
    tampered = run_attack("quantize-int8", model, {}, seed=0).model
    caught = {}
    for strategy in ("natural", "adversarial", "flip-rate"):
        fp = MarkerFingerprinter(
            n_queries=20, pool_size=100, strategy=strategy, noise_onnx=False
        ).fingerprint(model, digits[1])
        caught[strategy] = len(verify(fp, TorchTarget(tampered)).mismatches)
    assert caught["natural"] == 0  # int8 keeps every natural top-1 label here
    assert caught["adversarial"] >= 2 and caught["flip-rate"] >= 2


def test_flip_rate_orders_most_fragile_first(model, digits) -> None:
    fp = MarkerFingerprinter(n_queries=5, pool_size=100, strategy="flip-rate", noise_onnx=False).fingerprint(
        model, digits[1]
    )
    rates = fp.provenance["flip_rate"]
    assert rates[0] == max(rates) and rates[0] > 0


def test_fingerprint_round_trip_and_errors(model, digits, tmp_path) -> None:
    fp = MarkerFingerprinter(n_queries=5, pool_size=40, noise_onnx=False).fingerprint(model, digits[1])
    fp.save(tmp_path / "m.nnseal", hmac_key=b"k")
    back = Fingerprint.load(tmp_path / "m.nnseal", hmac_key=b"k")
    assert back.method == "tampernn-markers" and np.array_equal(back.queries, fp.queries)
    assert METHODS["tampernn-markers"] is MarkerFingerprinter
    with pytest.raises(NnsealError, match="clear the noise margin"):
        MarkerFingerprinter(n_queries=5, pool_size=40, min_margin=0.9, noise_onnx=False).fingerprint(
            model, digits[1]
        )
    with pytest.raises(ValueError, match="n_queries <= pool_size"):
        MarkerFingerprinter(n_queries=50, pool_size=40)
    with pytest.raises(NnsealError, match=r"data inputs are 1×4×4 but the model takes 1×8×8"):
        wrong = Dataset(
            "tiny", np.zeros((10, 1, 4, 4), np.float32), np.zeros(10, np.int64), digits[1].classes
        )
        MarkerFingerprinter(n_queries=5, pool_size=10).fingerprint(model, wrong)


def test_cli_markers_fingerprint_and_verify(model, tmp_path) -> None:
    save_model(model, tmp_path / "m.safetensors")
    runner = CliRunner()
    args = [
        "fingerprint",
        str(tmp_path / "m.safetensors"),
        "--method",
        "tampernn-markers",
        "-p",
        "strategy=flip-rate",
    ]
    r = runner.invoke(
        main, [*args, "-n", "6", "--pool-size", "60", "--out", str(tmp_path / "fp.nnseal"), "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["params"]["strategy"] == "flip-rate"
    r = runner.invoke(main, ["verify", str(tmp_path / "fp.nnseal"), str(tmp_path / "m.safetensors")])
    assert r.exit_code == 0, r.output


def test_marker_generation_shows_its_progress(model, digits, capsys) -> None:
    """Marker fingerprints take tens of seconds; with progress on, each stage says what it does."""
    MarkerGenerator("flip-rate", pgd_steps=2, iters=4).generate(model, digits[1].x[:6], progress=True)
    err = capsys.readouterr().err
    assert "markers (flip-rate)" in err and "simulated tamperings" in err
    MarkerGenerator("flip-rate", pgd_steps=2, iters=4).generate(model, digits[1].x[:6])
    assert capsys.readouterr().err == ""
