"""Queries a dishonest server cannot recognise: every query on the pixel grid, PNG transport, the
provider's detectors, the covert method, and servers that route recognised queries to the original."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_server import FakeServer
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nnseal import grid
from nnseal.attacks import run_attack
from nnseal.data import Dataset
from nnseal.detectors import DETECTORS, roc_auc, sensitivity_score, stealth_scores
from nnseal.errors import NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.methods import METHODS, FrontierStitching, Method, Pool, SensitiveSampleGenerator
from nnseal.models.inference import probabilities
from nnseal.targets import OnnxTarget, Target, TorchTarget
from nnseal.targets.http import HttpTarget
from nnseal.targets.protocols import TFServingProtocol, V2Protocol, png_base64
from nnseal.verification import Status, verify

NAMES = [str(i) for i in range(10)]
FAST = {
    "natural": {},
    "sensitive-sample": {"steps": 30},
    "tampernn-markers": {"strategy": "flip-rate", "noise_onnx": False},
    "covert": {},
}


# ----------------------------------------------------------------------------- the grid itself


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, (3, 1, 4, 4), elements=st.floats(0, 1, width=32)), st.integers(1, 255))
def test_to_grid_is_an_idempotent_projection_onto_loader_values(x: np.ndarray, levels: int) -> None:
    g = grid.to_grid(x, levels)
    assert grid.is_on_grid(g, levels) and np.array_equal(grid.to_grid(g, levels), g)
    assert np.abs(g - x).max() <= 0.5 / levels + 1e-6
    assert np.array_equal(g, grid.from_pixels(grid.pixels(g, levels), levels))  # bit-identical to a decode


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, (2, 1, 4, 4), elements=st.floats(0, 1, width=32)),
    arrays(np.float32, (2, 1, 4, 4), elements=st.floats(-0.25, 0.25, width=32)),
    st.sampled_from([16, 255]),
    st.sampled_from(["linf", "l2"]),
)
def test_snap_stays_on_grid_in_the_box_and_in_the_ball(
    seed: np.ndarray, step: np.ndarray, levels: int, norm: str
) -> None:
    from nnseal.methods.sensitive import project

    center = torch.from_numpy(grid.to_grid(seed, levels))
    eps = 0.1 if norm == "linf" else 0.5
    x = project(center + torch.from_numpy(step), center, eps, norm, (0.0, 1.0))  # as the ascent does
    out = grid.snap(x, center, eps, norm, levels)
    assert grid.is_on_grid(out.numpy(), levels)
    assert out.min() >= 0 and out.max() <= 1
    d = (out - center).flatten(1)
    dist = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert (dist <= eps + 1e-5).all()


def test_grid_levels_are_checked_on_datasets_and_fingerprints(fingerprint: Fingerprint) -> None:
    x = np.zeros((2, 1, 2, 2), np.float32)
    for bad in (0, 256, True, 2.5):
        with pytest.raises(NnsealError, match="grid levels"):
            Dataset("d", x, np.zeros(2, np.int64), ("a", "b"), levels=bad)  # type: ignore[arg-type]
    assert fingerprint.levels == 16  # made from digits
    with pytest.raises(NnsealError, match="grid levels"):
        Fingerprint(**{**_fields(fingerprint), "levels": 300})


def _fields(fp: Fingerprint) -> dict:
    keep = ("queries", "probabilities", "specs", "model_id", "method", "serving")
    return {k: getattr(fp, k) for k in keep}


# ----------------------------------------------------------------------------- every method on the grid


@pytest.fixture(scope="module")
def fingerprints(model: torch.nn.Module, digits: tuple[Dataset, Dataset]) -> dict[str, Fingerprint]:
    _, test = digits
    return {
        name: METHODS[name](
            n_queries=8, pool_size=80, specs=("top1", "top1-p4"), **FAST.get(name, {})
        ).fingerprint(model, test)
        for name in METHODS
    }


def test_every_method_sends_only_on_grid_queries(fingerprints: dict[str, Fingerprint]) -> None:
    assert set(fingerprints) == set(METHODS)  # a new method is checked too
    for name, fp in fingerprints.items():
        assert grid.off_grid_fraction(fp.queries, 16).max() == 0, name
        assert fp.levels == 16


@pytest.mark.parametrize("strategy", ["adversarial", "bisection", "hybrid"])
def test_every_marker_strategy_is_on_grid(
    strategy: str, model: torch.nn.Module, digits: tuple[Dataset, Dataset]
) -> None:
    fp = METHODS["tampernn-markers"](
        n_queries=5, pool_size=40, strategy=strategy, ss_steps=20, noise_onnx=False
    ).fingerprint(model, digits[1])
    assert grid.is_on_grid(fp.queries, 16)


def test_watermark_keys_are_on_grid(model: torch.nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    train, test = digits
    _, key, _ = FrontierStitching(key_size=20, epochs=0.2, seed=0).embed(model, train, test=test)
    assert grid.is_on_grid(key.queries, 16) and key.levels == 16


def test_on_grid_fingerprints_verify_intact_in_every_serving_setup(
    model: torch.nn.Module, fingerprints: dict[str, Fingerprint], tmp_path
) -> None:
    from nnseal.models import export_onnx

    onnx = tmp_path / "m.onnx"
    export_onnx(model, onnx, (1, 8, 8))
    threads = torch.get_num_threads()
    try:
        for name, fp in fingerprints.items():
            for n in (1, 2):
                torch.set_num_threads(n)
                for batch in (1, 7, 64):
                    for spec in fp.specs:
                        v = verify(fp, TorchTarget(model), spec=spec, batch_size=batch)
                        assert v.status is Status.INTACT, (name, n, batch, spec)
            for spec in fp.specs:
                assert verify(fp, OnnxTarget(onnx), spec=spec).status is Status.INTACT, (name, spec)
    finally:
        torch.set_num_threads(threads)


def test_a_method_that_leaves_the_grid_is_refused(
    model: torch.nn.Module, digits: tuple[Dataset, Dataset]
) -> None:
    class OffGrid(Method):
        name = "off-grid"

        def own_params(self) -> dict:
            return {}

        def candidates(self, model, data, rng) -> Pool:  # type: ignore[no-untyped-def]
            x = data.x[:20] + np.float32(1e-3)
            return Pool(x, probabilities(model, x))

    with pytest.raises(NnsealError, match="off the data's pixel grid"):
        OffGrid(n_queries=2, pool_size=20).fingerprint(model, digits[1])


# ----------------------------------------------------------------------------- adversarial servers


class Router(Target):
    """A dishonest server: inputs it recognises as queries go to the original model, the rest to a
    tampered copy."""

    provides = "probabilities"

    def __init__(self, honest: torch.nn.Module, tampered: torch.nn.Module, recognise) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.honest, self.tampered, self.recognise = TorchTarget(honest), TorchTarget(tampered), recognise
        self.routed = 0

    def describe(self) -> str:
        return "router"

    def _predict(self, x: np.ndarray) -> np.ndarray:
        out, known = self.tampered.predict(x), self.recognise(x)
        self.routed += int(known.sum())
        if known.any():
            out[known] = self.honest.predict(x[known])
        return out


@pytest.fixture(scope="module")
def tampered(model: torch.nn.Module, digits: tuple[Dataset, Dataset]) -> torch.nn.Module:
    train, test = digits
    return run_attack("quantize-bits", model, {"bits": 6}, train=train, test=test, seed=0).model


def test_grid_router_is_fooled_by_on_grid_queries_not_by_off_grid_ones(
    model: torch.nn.Module, tampered: torch.nn.Module, digits: tuple[Dataset, Dataset],
    fingerprints: dict[str, Fingerprint],
) -> None:  # fmt: skip
    def router() -> Router:
        return Router(model, tampered, lambda x: grid.off_grid_fraction(x, 16) > 0)

    off = SensitiveSampleGenerator(steps=100).generate(model, digits[1].x[:10])  # the old, off-grid way
    old = Fingerprint(queries=off.x, probabilities=probabilities(model, off.x), specs=["top1-p4"],
                      model_id="m", method="off-grid")  # fmt: skip
    assert verify(old, TorchTarget(tampered), spec="top1-p4").status is Status.TAMPERED
    assert verify(old, router(), spec="top1-p4").status is Status.INTACT  # the weakness, shown
    fp = fingerprints["sensitive-sample"]
    r = router()
    assert verify(fp, r, spec="top1-p4").status is Status.TAMPERED and r.routed == 0


def test_sensitivity_router_routes_sensitive_samples_but_not_covert_queries(
    model: torch.nn.Module, tampered: torch.nn.Module, digits: tuple[Dataset, Dataset],
    fingerprints: dict[str, Fingerprint],
) -> None:  # fmt: skip
    cut = np.quantile(sensitivity_score(model, digits[1].x), 0.9)  # flags 10 % of natural traffic

    def router() -> Router:
        return Router(model, tampered, lambda x: sensitivity_score(model, x) > cut)

    ss, covert = router(), router()
    verify(fingerprints["sensitive-sample"], ss, spec="top1-p4")
    v = verify(fingerprints["covert"], covert, spec="top1-p4")
    assert ss.routed > covert.routed
    assert covert.routed <= 2 and v.status is Status.TAMPERED


# ----------------------------------------------------------------------------- detectors


def test_roc_auc_matches_its_definition() -> None:
    assert roc_auc([0, 1], [2, 3]) == 1.0 and roc_auc([2, 3], [0, 1]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    with pytest.raises(ValueError):
        roc_auc([], [1])


def test_detectors_see_sensitive_samples_and_not_natural_or_covert_ones(
    model: torch.nn.Module, digits: tuple[Dataset, Dataset]
) -> None:
    train, test = digits
    scores = {}
    for name in ("natural", "sensitive-sample", "covert"):
        method = METHODS[name](n_queries=1, pool_size=120, **FAST.get(name, {}))
        queries = method.pool(model, test).x
        provider = method.pool(model, train, np.random.default_rng(7)).x
        scores[name] = stealth_scores(
            model, test.x, queries, levels=16, provider_natural=train.x, provider_queries=provider
        ).auc
        assert set(scores[name]) == set(DETECTORS) and scores[name]["grid"] == 0.5
    assert max(scores["sensitive-sample"].values()) > 0.8
    assert max(scores["covert"].values()) <= 0.65
    assert max(scores["natural"].values()) <= 0.65


def test_covert_selection_spreads_over_suspicion_strata(model: torch.nn.Module, digits) -> None:  # type: ignore[no-untyped-def]
    method = METHODS["covert"](n_queries=10, pool_size=200)
    pool = method.pool(model, digits[1])
    picks = method.select(pool, 10, np.random.default_rng(0))
    suspicion = np.sort(pool.details["suspicion"][picks])
    assert len(set(picks.tolist())) == 10
    ranks = np.searchsorted(np.sort(pool.details["suspicion"]), suspicion) / len(pool)
    assert np.all(np.abs(ranks - (np.arange(10) + 0.5) / 10) <= 0.1)  # one pick per decile


# ----------------------------------------------------------------------------- PNG transport


def test_png_inputs_round_trip_losslessly_and_verify_intact(
    model: torch.nn.Module, fingerprint: Fingerprint
) -> None:
    with FakeServer(TorchTarget(model), NAMES, v2_output="probabilities", png_levels=16) as server:
        for protocol in (V2Protocol("digits"), TFServingProtocol("digits")):
            target = HttpTarget(server.url, protocol.send_png(fingerprint.levels), num_classes=10)
            assert verify(fingerprint, target).status is Status.INTACT
    decoded = [server.png(b) for b in png_base64(fingerprint.queries, 16)]
    assert np.array_equal(np.stack(decoded), fingerprint.queries)


def test_png_needs_one_or_three_channels() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        png_base64(np.zeros((1, 2, 4, 4), np.float32))


def test_fresh_fingerprints_differ_every_run_and_send_png_reaches_the_server(
    model: torch.nn.Module, tmp_path
) -> None:
    from click.testing import CliRunner

    from nnseal.cli import main
    from nnseal.models import save_model

    save_model(model, tmp_path / "m.safetensors")
    made = []
    for i in range(2):
        out = tmp_path / f"fp{i}.nnseal"
        args = ["fingerprint", str(tmp_path / "m.safetensors"), "--method", "natural", "-n", "5"]
        r = CliRunner().invoke(main, [*args, "--pool-size", "100", "--fresh", "--quiet", "--out", str(out)])
        assert r.exit_code == 0, r.output
        made.append(Fingerprint.load(out))
    assert made[0].params["seed"] != made[1].params["seed"]
    assert not np.array_equal(made[0].queries, made[1].queries)
    with FakeServer(TorchTarget(model), NAMES, v2_output="probabilities", png_levels=16) as server:
        r = CliRunner().invoke(
            main, ["verify", str(tmp_path / "fp0.nnseal"), "--url", server.url, "--model-name", "digits",
                   "--send", "png"],
        )  # fmt: skip
    assert r.exit_code == 0, r.output
