"""Frontier Stitching end to end on digits: embed → key file → verify, the paper's θ table, the
sequential test, calibrated nulls, corrupt keys and the CLI round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fake_server import FakeServer

from nnseal.cli import main
from nnseal.errors import FingerprintError, NnsealError, TargetError
from nnseal.fingerprint import Fingerprint
from nnseal.methods.frontier import METHOD, FrontierStitching, fgsm, key_accuracy
from nnseal.models import export_onnx, load_model, save_model, train_model
from nnseal.targets import OnnxTarget, Target, TorchTarget
from nnseal.watermark import NullModel, Ownership, p_value, threshold, verify_watermark

EPS = 0.2  # on 8x8 digits ε = 0.25 flips nearly every input: too few false adversaries for a key
KEY = 20


@pytest.fixture(scope="module")
def marked(model, digits):
    return FrontierStitching(key_size=KEY, epsilon=EPS, seed=0).embed(model, digits[0], test=digits[1])


@pytest.fixture(scope="module")
def other(digits):
    """Independently trained on the same data: another architecture and seed, never watermarked."""
    return train_model(digits[0], "mlp", epochs=20, seed=5, progress=False)


class LabelsOnly(Target):
    """A labels-only endpoint (ranked top-3), or one that fails on every call."""

    provides = "labels"

    def __init__(self, model: torch.nn.Module, fail: bool = False) -> None:
        super().__init__()
        self.inner, self.fail = TorchTarget(model), fail

    def _predict(self, x: np.ndarray) -> np.ndarray:
        if self.fail:
            raise TargetError("endpoint timed out")
        return np.argsort(-self.inner.predict(x), axis=1)[:, :3]

    def describe(self) -> str:
        return "labels-only"


@pytest.mark.parametrize(("key_size", "theta", "tail"), [(10, 2, 0.0107), (20, 6, 0.0207), (50, 19, 0.0325),
                                                         (100, 42, 0.0443)])  # fmt: skip
def test_theta_matches_the_papers_table(key_size, theta, tail) -> None:
    assert threshold(key_size, 0.05) == theta
    exact = sum(math.comb(key_size, z) for z in range(theta)) / 2**key_size
    assert p_value(theta - 1, key_size) == pytest.approx(exact, rel=1e-9)
    assert round(exact, 4) == tail < 0.05 <= p_value(theta, key_size)


def test_fgsm_is_one_signed_step_inside_the_box(model, digits) -> None:
    x, y = digits[1].x[:32], digits[1].y[:32]
    adv = fgsm(model, x, y, 0.1)
    assert adv.min() >= 0 and adv.max() <= 1
    assert np.abs(adv - x).max() <= 0.1 + 1e-6
    moved = np.abs(adv - x) > 1e-6
    assert moved.mean() > 0.5  # every pixel steps by ε unless the box clips it


def test_embedding_builds_a_balanced_key_and_learns_it(model, digits, marked) -> None:
    wm, key, report = marked
    assert key.method == METHOD and len(key) == KEY and key.labels is not None
    flipped = np.array(key.provenance["true_adversary"])
    assert flipped.sum() == KEY // 2
    original = TorchTarget(model).predict(key.queries).argmax(1)
    np.testing.assert_array_equal(original != key.labels, flipped)  # true adversaries fooled the original
    assert report.key_accuracy_before == 0.5 and report.key_accuracy_after == 1.0
    assert key_accuracy(wm, key) == 1.0 and report.epochs <= 5
    assert report.accuracy_cost_pp is not None and report.accuracy_cost_pp <= 2.0
    assert np.abs(key.queries - digits[0].x[key.provenance["source_indices"]]).max() <= EPS + 1e-6
    assert key_accuracy(model, key) == 0.5, "embedding must not modify the input model"


def test_watermarked_model_is_detected_through_every_kind_of_target(model, marked, tmp_path) -> None:
    wm, key, _ = marked
    onnx = OnnxTarget(export_onnx(wm, tmp_path / "wm.onnx", wm.config.input_shape))
    for target in (TorchTarget(wm), onnx, LabelsOnly(wm)):
        v = verify_watermark(key, target)
        assert v.status is Ownership.WATERMARKED and v.exit_code == 0, target.describe()
        assert v.errors == 0 and v.queries_used == KEY and v.theta == threshold(KEY)
        assert v.p_value == pytest.approx(0.5**KEY)  # P(all ℓ right) under the 1/2 null


def test_unwatermarked_models_are_not_detected(model, other, marked) -> None:
    _, key, _ = marked
    for m in (model, other):  # the source before stitching, and an independent model
        v = verify_watermark(key, TorchTarget(m))
        assert v.status is Ownership.NOT_WATERMARKED and v.exit_code == 1
        assert v.errors >= v.theta and v.p_value >= 0.05


def test_sequential_agrees_with_the_full_test_and_uses_fewer_queries(model, other, marked) -> None:
    wm, key, _ = marked
    for m in (wm, model, other):
        full = verify_watermark(key, TorchTarget(m))
        seq = verify_watermark(key, TorchTarget(m), sequential=True, batch_size=16)
        assert seq.status is full.status
        assert seq.queries_used < full.queries_used == KEY
        assert (seq.p_value < 0.05) == (full.p_value < 0.05)
    # a watermarked model is decided after exactly ℓ − θ + 1 correct answers
    assert verify_watermark(key, TorchTarget(wm), sequential=True).queries_used == KEY - threshold(KEY) + 1


def test_too_few_valid_answers_is_inconclusive_never_a_claim(marked) -> None:
    wm, key, _ = marked
    v = verify_watermark(key, LabelsOnly(wm, fail=True))
    assert v.status is Ownership.INCONCLUSIVE and v.exit_code == 3
    assert len(v.failed) == KEY and "timed out" in v.reason and v.key_accuracy is None
    short = verify_watermark(key, TorchTarget(wm), budget=10)
    assert short.status is Ownership.INCONCLUSIVE and "budget allowed 10 of 20" in short.reason
    enough = verify_watermark(key, TorchTarget(wm), budget=KEY - threshold(KEY) + 1)
    assert enough.status is Ownership.WATERMARKED and enough.p_value < 0.05  # unknowns counted as errors


def test_calibrated_null_raises_the_bar_when_null_models_agree_with_the_key() -> None:
    null = NullModel.calibrate([0.70, 0.75, 0.80, 0.62, 0.90, 0.71], 100)
    assert null.kind == "beta-binomial" and null.p == pytest.approx(0.7467, abs=1e-3)
    assert null.correct_pmf(100).sum() == pytest.approx(1.0)
    assert threshold(100, 0.05, null) < threshold(100, 0.05)  # fewer errors allowed than at p = 1/2
    tight = NullModel.calibrate([0.5, 0.5, 0.5], 100)  # no spread beyond binomial: binomial at 1/2
    assert tight.kind == "binomial" and threshold(100, 0.05, tight) == 42
    with pytest.raises(ValueError, match="at least 2 null models"):
        NullModel.calibrate([0.5], 100)


def test_where_the_half_null_fails_a_calibrated_null_refuses_the_false_claim(model, other, digits) -> None:
    """At a small ε the key sits so close to the original frontier that independent models get most
    of it right: the paper's 1/2 null would claim them. Calibrated on other null models, it does not."""
    _, key, _ = FrontierStitching(key_size=40, epsilon=0.1).embed(model, digits[0])
    nulls = [train_model(digits[0], "mlp", epochs=20, seed=s, progress=False) for s in (6, 7, 8)]
    assert verify_watermark(key, TorchTarget(other)).status is Ownership.WATERMARKED  # a false claim
    null = NullModel.calibrate([key_accuracy(m, key) for m in nulls], len(key))
    assert null.p > 0.6
    assert verify_watermark(key, TorchTarget(other), null=null).status is Ownership.NOT_WATERMARKED


def test_a_key_too_short_for_alpha_is_refused(marked) -> None:
    wm, key, _ = marked
    with pytest.raises(NnsealError, match="cannot reach alpha"):
        verify_watermark(key, TorchTarget(wm), alpha=1e-15)


def test_key_round_trips_signed_and_corruption_is_a_clear_error(marked, tmp_path) -> None:
    wm, key, _ = marked
    path = key.save(tmp_path / "k.nnseal", hmac_key=b"owner")
    loaded = Fingerprint.load(path, hmac_key=b"owner")
    assert loaded.signature.verified
    np.testing.assert_array_equal(loaded.labels, key.labels)
    assert loaded.method == METHOD and loaded.provenance == key.provenance
    assert verify_watermark(loaded, TorchTarget(wm)).status is Ownership.WATERMARKED

    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # a byte of the last stored tensor
    (tmp_path / "edited.nnseal").write_bytes(raw)
    with pytest.raises(FingerprintError, match="edited after signing"):
        Fingerprint.load(tmp_path / "edited.nnseal", hmac_key=b"owner")
    (tmp_path / "cut.nnseal").write_bytes(path.read_bytes()[:100])
    with pytest.raises(FingerprintError, match=r"truncated or not a fingerprint|corrupt") as e:
        Fingerprint.load(tmp_path / "cut.nnseal", hmac_key=b"owner")
    assert "\n" not in str(e.value)
    tamper_fp = Fingerprint(key.queries, key.probabilities, ["top1"], key.model_id, "sensitive-sample")
    with pytest.raises(NnsealError, match="not a frontier-stitching watermark key"):
        verify_watermark(tamper_fp, TorchTarget(wm))


def test_fingerprint_labels_are_validated(marked) -> None:
    _, key, _ = marked
    with pytest.raises(FingerprintError, match=r"labels must lie in 0\.\.9"):
        Fingerprint(key.queries, key.probabilities, ["top1"], "m", METHOD, labels=key.labels + 10)
    with pytest.raises(FingerprintError, match="one per query"):
        Fingerprint(key.queries, key.probabilities, ["top1"], "m", METHOD, labels=key.labels[:-1])


def test_embed_refuses_impossible_settings(model, digits) -> None:
    with pytest.raises(ValueError, match="even number"):
        FrontierStitching(key_size=7)
    with pytest.raises(NnsealError, match=r"false adversaries.*try a smaller epsilon"):
        FrontierStitching(key_size=20, epsilon=0.9).embed(model, digits[0])


def test_cli_embed_then_verify_round_trip_with_exit_codes(model, other, digits, tmp_path) -> None:
    runner = CliRunner()
    src, indep = save_model(model, tmp_path / "m.safetensors"), save_model(other, tmp_path / "o.safetensors")
    (tmp_path / "hmac").write_bytes(b"owner-secret")
    hmac = ["--hmac-key-file", str(tmp_path / "hmac")]
    args = ["--key-size", str(KEY), "--epsilon", str(EPS), "--out", str(tmp_path / "wm.safetensors")]
    embed = runner.invoke(
        main, ["watermark", "embed", str(src), *args, "--key", str(tmp_path / "k.nnseal"), *hmac, "--json"]
    )
    assert embed.exit_code == 0, embed.output
    info = json.loads(embed.output)
    assert info["signed"] == ["hmac-sha256"] and info["key_accuracy_after"] == 1.0

    def verify(target, *extra):
        return runner.invoke(main, ["watermark", "verify", str(tmp_path / "k.nnseal"), str(target), *hmac,
                                    *extra])  # fmt: skip

    yes = verify(tmp_path / "wm.safetensors", "--json", "--sequential")
    assert yes.exit_code == Ownership.WATERMARKED.exit_code == 0, yes.output
    out = json.loads(yes.output)
    assert out["status"] == "watermarked" and out["queries_used"] == KEY - threshold(KEY) + 1
    no = verify(indep)
    assert no.exit_code == Ownership.NOT_WATERMARKED.exit_code == 1
    assert no.output.startswith("NOT-WATERMARKED")
    short = verify(tmp_path / "wm.safetensors", "--budget", "5")
    assert short.exit_code == Ownership.INCONCLUSIVE.exit_code == 3
    cal = verify(tmp_path / "wm.safetensors", "--calibrate", str(indep), "--calibrate", str(src), "--json")
    assert cal.exit_code == 0 and json.loads(cal.output)["null"]["calibration_models"] == 2

    names = [str(i) for i in range(10)]
    with (
        FakeServer(TorchTarget(load_model(tmp_path / "wm.safetensors")), names) as marked_api,
        FakeServer(TorchTarget(other), names, v2_output="label-names") as other_api,
    ):
        remote = ["--model-name", "digits", "--json"]
        yes = runner.invoke(main, ["watermark", "verify", str(tmp_path / "k.nnseal"), *hmac, "--url",
                                   marked_api.url, "--returns", "logits", *remote])  # fmt: skip
        assert yes.exit_code == 0 and json.loads(yes.output)["target_stats"]["requests"] >= 1, yes.output
        no = runner.invoke(main, ["watermark", "verify", str(tmp_path / "k.nnseal"), *hmac, "--url",
                                  other_api.url, "--returns", "label-names", "--class-names", ",".join(names),
                                  *remote])  # fmt: skip
        assert no.exit_code == 1 and json.loads(no.output)["kind"] == "ownership", no.output
        both = runner.invoke(main, ["watermark", "verify", str(tmp_path / "k.nnseal"), str(src), *hmac,
                                    "--url", marked_api.url])  # fmt: skip
        assert both.exit_code == 2 and "not both" in both.stderr

    (tmp_path / "k.nnseal").write_bytes(b"not a key at all")
    bad = verify(tmp_path / "wm.safetensors")
    assert bad.exit_code == 2 and bad.output.startswith("error:") and bad.output.count("\n") == 1
