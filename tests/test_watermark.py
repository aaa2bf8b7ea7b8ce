"""Frontier Stitching end to end on digits: embed → key file → verify, the paper's θ table, the
sequential test, calibrated nulls (stored in the key, conservative, hostile), automatic ε, corrupt
keys and the CLI round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fake_server import FakeServer

import nnseal.fingerprint
import nnseal.methods.frontier
from nnseal.cli import main
from nnseal.errors import FingerprintError, NnsealError, TargetError
from nnseal.fingerprint import Fingerprint
from nnseal.methods.frontier import METHOD, FrontierStitching, fgsm, key_accuracy
from nnseal.models import export_onnx, load_model, save_model, train_model
from nnseal.models.train import predict_logits
from nnseal.targets import OnnxTarget, Target, TorchTarget
from nnseal.watermark import (
    DEFAULT_ALPHA,
    PAPER_NULL,
    NullModel,
    Ownership,
    attach_null,
    calibrate_key,
    claim_rule,
    p_value,
    stored_null,
    threshold,
    verify_watermark,
)

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
    assert key_accuracy(wm, key) == 1.0 and report.epochs <= 5 + 2  # stitching, then 2 settle epochs
    assert report.accuracy_cost_pp is not None and report.accuracy_cost_pp <= 2.0
    assert np.abs(key.queries - digits[0].x[key.provenance["source_indices"]]).max() <= EPS + 1e-6
    assert key_accuracy(model, key) == 0.5, "embedding must not modify the input model"


def _key_gap(model: torch.nn.Module, key) -> np.ndarray:
    """Per key input: its label's logit minus the best other logit (> 0: right)."""
    z = predict_logits(model, key.queries).numpy()
    own = z[np.arange(len(z)), key.labels]
    z[np.arange(len(z)), key.labels] = -np.inf
    return own - z.max(1)


def test_settling_learns_the_key_deeper_than_only_just(model, digits, marked) -> None:
    wm, key, report = marked
    bare, bare_key, bare_report = FrontierStitching(key_size=KEY, epsilon=EPS, seed=0, settle=0).embed(
        model, digits[0]
    )
    np.testing.assert_array_equal(bare_key.queries, key.queries)  # the same key, learnt once or settled
    assert report.epochs >= bare_report.epochs + 2.0 and key.params["settle"] == 2.0
    assert bare_report.key_accuracy_after == 1.0 and bare_key.params["settle"] == 0.0
    assert np.median(_key_gap(wm, key)) > 1.5 * np.median(_key_gap(bare, bare_key)) > 0  # measured 3.3 vs 1.8
    with pytest.raises(ValueError, match="settle"):
        FrontierStitching(settle=-1)


def test_watermarked_model_is_detected_through_every_kind_of_target(model, marked, tmp_path) -> None:
    wm, key, _ = marked
    onnx = OnnxTarget(export_onnx(wm, tmp_path / "wm.onnx", wm.config.input_shape))
    for target in (TorchTarget(wm), onnx, LabelsOnly(wm)):
        v = verify_watermark(key, target, null=PAPER_NULL)
        assert v.status is Ownership.WATERMARKED and v.exit_code == 0, target.describe()
        assert v.errors == 0 and v.queries_used == KEY and v.theta == threshold(KEY, DEFAULT_ALPHA)
        assert v.null_source == "given"  # the paper's null, asked for: this key has none stored
        assert v.p_value == pytest.approx(0.5**KEY)  # P(all ℓ right) under the 1/2 null


def test_unwatermarked_models_are_not_detected(model, other, marked) -> None:
    _, key, _ = marked
    for m in (model, other):  # the source before stitching, and an independent model
        v = verify_watermark(key, TorchTarget(m), null=PAPER_NULL)
        assert v.status is Ownership.NOT_WATERMARKED and v.exit_code == 1
        assert v.errors >= v.theta and v.p_value >= 0.05


def test_sequential_agrees_with_the_full_test_and_uses_fewer_queries(model, other, marked) -> None:
    wm, key, _ = marked
    for m in (wm, model, other):
        full = verify_watermark(key, TorchTarget(m), null=PAPER_NULL)
        seq = verify_watermark(key, TorchTarget(m), sequential=True, batch_size=16, null=PAPER_NULL)
        assert seq.status is full.status
        assert seq.queries_used < full.queries_used == KEY
        assert (seq.p_value < 0.05) == (full.p_value < 0.05)
    # a watermarked model is decided after exactly ℓ − θ + 1 correct answers
    theta = threshold(KEY, DEFAULT_ALPHA)
    assert (
        verify_watermark(key, TorchTarget(wm), sequential=True, null=PAPER_NULL).queries_used
        == KEY - theta + 1
    )


def test_too_few_valid_answers_is_inconclusive_never_a_claim(marked) -> None:
    wm, key, _ = marked
    v = verify_watermark(key, LabelsOnly(wm, fail=True), null=PAPER_NULL)
    assert v.status is Ownership.INCONCLUSIVE and v.exit_code == 3
    assert len(v.failed) == KEY and "timed out" in v.reason and v.key_accuracy is None
    short = verify_watermark(key, TorchTarget(wm), budget=10, null=PAPER_NULL)
    assert short.status is Ownership.INCONCLUSIVE and "budget allowed 10 of 20" in short.reason
    enough = verify_watermark(
        key, TorchTarget(wm), budget=KEY - threshold(KEY, DEFAULT_ALPHA) + 1, null=PAPER_NULL
    )
    assert enough.status is Ownership.WATERMARKED and enough.p_value < DEFAULT_ALPHA  # unknowns = errors


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
    assert (
        verify_watermark(key, TorchTarget(other), alpha=0.05, null=PAPER_NULL).status is Ownership.WATERMARKED
    )  # false claim
    null = NullModel.calibrate([key_accuracy(m, key) for m in nulls], len(key))
    assert null.p > 0.6
    assert (
        verify_watermark(key, TorchTarget(other), null=null, alpha=0.05).status is Ownership.NOT_WATERMARKED
    )


def test_a_key_too_short_for_alpha_is_refused(marked) -> None:
    wm, key, _ = marked
    with pytest.raises(NnsealError, match="cannot reach alpha"):
        verify_watermark(key, TorchTarget(wm), alpha=1e-15, null=PAPER_NULL)


def test_key_round_trips_signed_and_corruption_is_a_clear_error(marked, tmp_path) -> None:
    wm, key, _ = marked
    path = key.save(tmp_path / "k.nnseal", hmac_key=b"owner")
    loaded = Fingerprint.load(path, hmac_key=b"owner")
    assert loaded.signature.verified
    np.testing.assert_array_equal(loaded.labels, key.labels)
    assert loaded.method == METHOD and loaded.provenance == key.provenance
    assert verify_watermark(loaded, TorchTarget(wm), null=PAPER_NULL).status is Ownership.WATERMARKED

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
        verify_watermark(tamper_fp, TorchTarget(wm), null=PAPER_NULL)


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
        FrontierStitching(key_size=20, epsilon=0.9).embed(model, digits[0])  # a number is used as is
    with pytest.raises(ValueError, match="'auto' or in"):
        FrontierStitching(epsilon="0.2")


def test_cli_embed_then_verify_round_trip_with_exit_codes(model, other, digits, tmp_path) -> None:
    runner = CliRunner()
    src, indep = save_model(model, tmp_path / "m.safetensors"), save_model(other, tmp_path / "o.safetensors")
    (tmp_path / "hmac").write_bytes(b"owner-secret")
    hmac = ["--hmac-key-file", str(tmp_path / "hmac")]
    args = ["--key-size", str(KEY), "--epsilon", str(EPS), "--references", "0", "--out",
            str(tmp_path / "wm.safetensors")]  # fmt: skip
    embed = runner.invoke(
        main, ["watermark", "embed", str(src), *args, "--key", str(tmp_path / "k.nnseal"), *hmac, "--json"]
    )
    assert embed.exit_code == 0, embed.output
    info = json.loads(embed.output)
    assert info["signed"] == ["hmac-sha256"] and info["key_accuracy_after"] == 1.0
    assert info["null"] is None and info["epsilon"] == EPS and info["epsilon_tried"] == [EPS]

    def verify(target, *extra):
        return runner.invoke(main, ["watermark", "verify", str(tmp_path / "k.nnseal"), str(target), *hmac,
                                    *extra])  # fmt: skip

    yes = verify(tmp_path / "wm.safetensors", "--json", "--sequential", "--paper-null")
    assert yes.exit_code == Ownership.WATERMARKED.exit_code == 0, yes.output
    out = json.loads(yes.output)
    theta = threshold(KEY, DEFAULT_ALPHA)
    assert out["status"] == "watermarked" and out["queries_used"] == KEY - theta + 1
    assert out["null_source"] == "given" and out["alpha"] == DEFAULT_ALPHA
    no = verify(indep, "--paper-null")
    assert no.exit_code == Ownership.NOT_WATERMARKED.exit_code == 1
    assert no.output.startswith("NOT-WATERMARKED")
    short = verify(tmp_path / "wm.safetensors", "--budget", "5", "--paper-null")
    assert short.exit_code == Ownership.INCONCLUSIVE.exit_code == 3
    # two null models bound the null's mean loosely (t quantile 6.3): a 20-key can then prove nothing
    cal = verify(tmp_path / "wm.safetensors", "--calibrate", str(indep), "--calibrate", str(src))
    assert cal.exit_code == 2 and "cannot reach alpha" in cal.stderr, cal.output

    names = [str(i) for i in range(10)]
    with (
        FakeServer(TorchTarget(load_model(tmp_path / "wm.safetensors")), names) as marked_api,
        FakeServer(TorchTarget(other), names, v2_output="label-names") as other_api,
    ):
        remote = ["--model-name", "digits", "--json"]
        yes = runner.invoke(main, ["watermark", "verify", str(tmp_path / "k.nnseal"), *hmac, "--paper-null",
                                   "--url", marked_api.url, "--returns", "logits", *remote])  # fmt: skip
        assert yes.exit_code == 0 and json.loads(yes.output)["target_stats"]["requests"] >= 1, yes.output
        no = runner.invoke(main, ["watermark", "verify", str(tmp_path / "k.nnseal"), *hmac, "--url",
                                  other_api.url, "--returns", "label-names", "--class-names", ",".join(names),
                                  "--paper-null", *remote])  # fmt: skip
        assert no.exit_code == 1 and json.loads(no.output)["kind"] == "ownership", no.output
        both = runner.invoke(main, ["watermark", "verify", str(tmp_path / "k.nnseal"), str(src), *hmac,
                                    "--url", marked_api.url])  # fmt: skip
        assert both.exit_code == 2 and "not both" in both.stderr

    (tmp_path / "k.nnseal").write_bytes(b"not a key at all")
    bad = verify(tmp_path / "wm.safetensors")
    assert bad.exit_code == 2 and bad.output.startswith("error:") and bad.output.count("\n") == 1


# --------------------------------------------------------------------------- calibrated by default


class Scripted(Target):
    """A labels-only endpoint that answers the key's labels except on its first ``wrong`` inputs."""

    provides = "labels"

    def __init__(self, key: Fingerprint, wrong: int) -> None:
        super().__init__()
        self.answers = key.labels.copy()
        self.answers[:wrong] = (self.answers[:wrong] + 1) % key.probabilities.shape[1]
        self.index = {q.tobytes(): i for i, q in enumerate(key.queries)}

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return self.answers[[self.index[q.tobytes()] for q in x]][:, None]

    def describe(self) -> str:
        return "scripted"


@pytest.fixture(scope="module")
def owned(model, tmp_path_factory):
    """`watermark embed` with its defaults (key 100, ε auto, references trained and stored in the
    signed key) except for 3 references instead of 8, to keep the test short."""
    d = tmp_path_factory.mktemp("owned")
    src = save_model(model, d / "m.safetensors")
    (d / "hmac").write_bytes(b"owner-secret")
    r = CliRunner().invoke(main, ["watermark", "embed", str(src), "--out", str(d / "wm.safetensors"),
                                  "--key", str(d / "k.nnseal"), "--hmac-key-file", str(d / "hmac"),
                                  "--references", "3", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return d, json.loads(r.output)


@pytest.fixture(scope="module")
def innocents(digits, other):
    """Three independently trained, never watermarked models: 2 LeNets (other seeds) and 1 MLP."""
    return [train_model(digits[0], "lenet", epochs=20, seed=s, progress=False) for s in (7, 8)] + [other]


def test_default_embed_picks_epsilon_and_stores_a_calibrated_null_in_the_signed_key(owned) -> None:
    d, info = owned
    key = Fingerprint.load(d / "k.nnseal", hmac_key=b"owner-secret")
    assert len(key) == 100 and key.signature.verified
    # ε = 0.25 flips almost every 8×8 digit: the automatic search settles on the next grid value
    assert key.params["epsilon"] == info["epsilon"] == 0.2 and key.params["epsilon_tried"] == [0.25, 0.2]
    assert key.params["epsilon_requested"] == "auto"
    null = stored_null(key)
    assert null is not None and null.calibrated and null.calibration_models == 3
    assert info["null"] == null.to_dict() and 0 < info["claim_key_accuracy"] < 1
    refs = key.provenance["null"]["references"]
    assert [r["arch"] for r in refs] == ["lenet", "mlp", "lenet"] and [r["seed"] for r in refs] == [
        1000,
        1001,
        1002,
    ]
    assert [r["key_accuracy"] for r in refs] == list(null.key_accuracies)
    assert all(r["model_id"] not in (key.model_id, key.provenance["source_model_id"]) for r in refs)


def test_verify_claims_the_watermarked_model_and_no_independent_one(owned, innocents, tmp_path) -> None:
    d, _ = owned
    hmac = ["--hmac-key-file", str(d / "hmac")]
    v = CliRunner().invoke(main, ["watermark", "verify", str(d / "k.nnseal"), str(d / "wm.safetensors"),
                                  *hmac, "--json"])  # fmt: skip
    assert v.exit_code == 0, v.output
    out = json.loads(v.output)
    assert (
        out["null_source"] == "key"
        and out["null"]["calibration_models"] == 3
        and out["p_value"] < DEFAULT_ALPHA
    )
    assert out["null_tested"]["p"] > out["null"]["p"]  # tested at the upper bound of the null's mean
    key = Fingerprint.load(d / "k.nnseal", hmac_key=b"owner-secret")
    files = []
    for i, m in enumerate(innocents):
        files.append(save_model(m, tmp_path / f"i{i}.safetensors"))
        r = CliRunner().invoke(main, ["watermark", "verify", str(d / "k.nnseal"), str(files[-1]), *hmac])
        assert r.exit_code == Ownership.NOT_WATERMARKED.exit_code, r.output
        lib = verify_watermark(key, TorchTarget(m))  # the library also takes the key's null by default
        assert lib.null_source == "key" and lib.status is Ownership.NOT_WATERMARKED
        assert lib.key_accuracy < lib.claim_accuracy
    # --calibrate (null models at verify time) overrides the stored null
    cal = [a for f in files for a in ("--calibrate", str(f))]
    r = CliRunner().invoke(main, ["watermark", "verify", str(d / "k.nnseal"), str(d / "wm.safetensors"),
                                  *hmac, *cal, "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["null_source"] == "given" and out["null"]["calibration_models"] == 3
    assert out["null"]["key_accuracies"] == [key_accuracy(m, key) for m in innocents]


def test_key_without_a_null_never_claims_unless_the_paper_null_is_asked_for(marked, tmp_path) -> None:
    wm, key, _ = marked
    path = key.save(tmp_path / "k.nnseal", hmac_key=b"owner")
    target = save_model(wm, tmp_path / "wm.safetensors")
    base = ["watermark", "verify", str(path), str(target), "--hmac-key-file", str(tmp_path / "h")]
    (tmp_path / "h").write_bytes(b"owner")
    r = CliRunner().invoke(main, base)
    assert r.exit_code == Ownership.INCONCLUSIVE.exit_code == 3, r.output
    assert (
        "no calibrated null" in r.output and "--paper-null" in r.output and "would be watermarked" in r.output
    )
    assert CliRunner().invoke(main, [*base, "--paper-null"]).exit_code == 0
    lib = verify_watermark(key, TorchTarget(wm))  # the library default: no null, no claim
    assert lib.status is Ownership.INCONCLUSIVE and lib.key_accuracy == 1.0 and lib.null_source == "paper"
    both = CliRunner().invoke(
        main, [*base, "--paper-null", "--calibrate", str(target), "--calibrate", str(target)]
    )
    assert both.exit_code == 2 and "not both" in both.stderr


def test_the_claim_threshold_is_conservative_on_a_calibrated_null(marked) -> None:
    """Nine references at 50 %, one at 70 %: the fitted beta-binomial alone claims 72 %, below the
    best reference plus the margin; the default rule needs more than 75 %."""
    _, key, _ = marked
    null = NullModel.calibrate([0.5] * 9 + [0.7], 100)
    assert null.kind == "beta-binomial" and threshold(100, DEFAULT_ALPHA, null) == 29  # claims >= 72 %
    rule = claim_rule(100, DEFAULT_ALPHA, null)
    assert rule.tested.p > null.p and rule.tested.a + rule.tested.b == pytest.approx(null.a + null.b)
    assert rule.theta_null == threshold(100, DEFAULT_ALPHA, rule.tested) < 29  # the upper bound's θ
    assert rule.theta_margin == 25 and rule.theta == 25 and rule.claim_accuracy == 0.76
    assert claim_rule(100, DEFAULT_ALPHA, null, margin=0.0).theta == rule.theta_null  # margin 0: ≥ best
    assert claim_rule(100, DEFAULT_ALPHA, PAPER_NULL).theta == threshold(100, DEFAULT_ALPHA)  # paper: as is

    long_key = Fingerprint(np.repeat(key.queries, 5, axis=0) + np.arange(100)[:, None, None, None] * 1e-4,
                           np.repeat(key.probabilities, 5, axis=0), ["top1"], "m", METHOD,
                           labels=np.repeat(key.labels, 5))  # fmt: skip
    for wrong, status in ((27, Ownership.NOT_WATERMARKED), (25, Ownership.NOT_WATERMARKED),
                          (24, Ownership.WATERMARKED)):  # fmt: skip
        plain = verify_watermark(long_key, Scripted(long_key, wrong), null=null, margin=0.0)
        v = verify_watermark(long_key, Scripted(long_key, wrong), null=null)
        assert v.status is status and v.errors == wrong, v.reason
        assert plain.p_value == v.p_value and v.reference_max == 0.7 and v.margin == 0.05
    assert p_value(27, 100, null) < DEFAULT_ALPHA  # the fitted null alone would have claimed 73 %

    everyone_knows_it = NullModel.calibrate([0.97, 1.0], len(key))
    with pytest.raises(NnsealError, match=r"best reference model already scores 100%|even 0 errors"):
        verify_watermark(key, TorchTarget(marked[0]), null=everyone_knows_it)


def _resave(key: Fingerprint, null: dict, path, monkeypatch=None, **sign) -> None:
    edited = Fingerprint(key.queries, key.probabilities, key.specs, key.model_id, key.method, key.params,
                         {**key.provenance, "null": null}, labels=key.labels)  # fmt: skip
    edited.save(path, **sign)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"p": float("nan")}, "p must be a finite number"),
        ({"p": 1.5}, r"p must be in \[0, 1\]"),
        ({"a": -1.0}, "a and b must be > 0"),
        ({"b": "12"}, "b must be a finite number"),
        ({"p": True}, "p must be a finite number"),
        ({"kind": "uniform"}, "kind must be"),
        ({"calibration_models": 2.0}, "calibration_models must be an integer"),
        ({"key_accuracies": [0.5, float("nan"), 0.6]}, r"numbers in \[0, 1\]"),
        ({"key_accuracies": [0.5, 0.6]}, "must list the 3 reference"),
        ({"references": "lenet"}, "references must list"),
        ({"extra": 1}, "unknown field"),
        ({"p": 0.1}, r"not the fit of its own key accuracies .*: it was edited"),
    ],
)
def test_a_hostile_stored_null_is_refused_with_a_clear_error(
    owned, edit, message, tmp_path, monkeypatch
) -> None:
    d, _ = owned
    key = Fingerprint.load(d / "k.nnseal", hmac_key=b"owner-secret")
    # even signed by the owner's own key (the canonical JSON writer refuses NaN: let it through here)
    monkeypatch.setattr(
        nnseal.fingerprint, "_canonical", lambda o: json.dumps(o, sort_keys=True, separators=(",", ":"))
    )
    _resave(key, {**key.provenance["null"], **edit}, tmp_path / "k.nnseal", hmac_key=b"owner-secret")
    loaded = Fingerprint.load(tmp_path / "k.nnseal", hmac_key=b"owner-secret")
    with pytest.raises(FingerprintError, match=message):
        stored_null(loaded)
    with pytest.raises(FingerprintError, match="the key's stored null is invalid"):
        verify_watermark(loaded, TorchTarget(load_model(d / "wm.safetensors")))
    r = CliRunner().invoke(main, ["watermark", "verify", str(tmp_path / "k.nnseal"),
                                  str(d / "wm.safetensors"), "--hmac-key-file", str(d / "hmac"),
                                  "--paper-null"])  # fmt: skip
    assert r.exit_code == 2 and "stored null is invalid" in r.stderr and r.stderr.count("\n") == 1


def test_an_edited_null_is_refused_if_resigned_by_another_key_and_taken_as_written_if_unsigned(
    owned, innocents, tmp_path
) -> None:
    d, _ = owned
    key = Fingerprint.load(d / "k.nnseal", hmac_key=b"owner-secret")
    lowered = NullModel.calibrate([0.1, 0.12, 0.11], len(key))  # consistent, but says innocents score ~11 %
    forged = attach_null(key, lowered, key.provenance["null"]["references"])
    forged.save(tmp_path / "resigned.nnseal", hmac_key=b"attacker")
    forged.save(tmp_path / "unsigned.nnseal")
    innocent = save_model(innocents[0], tmp_path / "innocent.safetensors")

    def verify(path, *extra):
        return CliRunner().invoke(main, ["watermark", "verify", str(path), str(innocent), "--hmac-key-file",
                                         str(d / "hmac"), *extra])  # fmt: skip

    r = verify(tmp_path / "resigned.nnseal")
    assert r.exit_code == 2 and r.output.startswith("error:"), r.output
    assert verify(tmp_path / "unsigned.nnseal").exit_code == 2  # unsigned: refused by default
    taken = verify(tmp_path / "unsigned.nnseal", "--allow-unsigned", "--json")  # the user's own risk
    out = json.loads(taken.output)
    assert out["null"]["p"] == pytest.approx(0.11) and out["signature"]["verified"] is False
    assert taken.exit_code == 0  # whoever edits an unsigned key decides the verdict, as documented


def test_auto_epsilon_searches_down_and_records_what_it_used(model, digits, monkeypatch) -> None:
    wm, key, report = FrontierStitching(key_size=50, seed=0).embed(model, digits[0])
    assert report.epsilon == key.params["epsilon"] == 0.2 and report.epsilon_tried == [0.25, 0.2]
    assert np.abs(key.queries - digits[0].x[key.provenance["source_indices"]]).max() <= 0.2 + 1e-6
    assert key_accuracy(wm, key) == 1.0 and np.array(key.provenance["true_adversary"]).sum() == 25
    with pytest.raises(NnsealError, match=r"false adversaries.*try a smaller epsilon"):
        FrontierStitching(key_size=50, epsilon=0.25).embed(model, digits[0])  # explicit: no search
    monkeypatch.setattr(nnseal.methods.frontier, "AUTO_EPSILON_TRIES", 1)
    with pytest.raises(NnsealError, match=r"no epsilon tried \(0\.25\) forms a balanced key of 50"):
        FrontierStitching(key_size=50).embed(model, digits[0])


def test_calibrate_key_on_given_references_and_attach_refuses_an_uncalibrated_null(marked, innocents) -> None:
    _, key, _ = marked
    calibrated, null = calibrate_key(
        key, references=[TorchTarget(m) for m in innocents], names=["a", "b", "c"]
    )
    assert null.key_accuracies == tuple(key_accuracy(m, key) for m in innocents)
    assert [r["name"] for r in calibrated.provenance["null"]["references"]] == ["a", "b", "c"]
    assert stored_null(calibrated) == null and stored_null(key) is None and "null" not in key.provenance
    with pytest.raises(ValueError, match="calibrated on >= 2"):
        attach_null(key, PAPER_NULL)
    with pytest.raises(ValueError, match="at least 2 reference models"):
        calibrate_key(key, references=[TorchTarget(innocents[0])])
