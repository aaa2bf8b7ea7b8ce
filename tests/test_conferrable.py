"""Conferrable Adversarial Examples on digits: the examples' invariants (ε-ball, pixel grid, source
fooled, the source's labels stored), surrogates agree more than references, the key through
save/load + signature and verify_watermark, the CLI end to end (HTTP included), hostile keys."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from fake_server import FakeServer

from nnseal.cli import main
from nnseal.errors import FingerprintError, NnsealError
from nnseal.fingerprint import Fingerprint
from nnseal.grid import is_on_grid
from nnseal.methods import OWNERSHIP_METHODS, ConferrableExamples, FrontierStitching
from nnseal.methods.conferrable import MAX_POOL_GROWTH, METHOD, agreement, conferrability
from nnseal.models import save_model, train_model
from nnseal.models.train import predict_logits
from nnseal.targets import TorchTarget
from nnseal.watermark import Ownership, calibrate_key, verify_watermark

EPS = 0.25
SMALL = {"epochs": 8.0}  # surrogates: about a quarter of the attacks' default epochs


@pytest.fixture(scope="module")
def cae() -> ConferrableExamples:
    return ConferrableExamples(
        n_examples=20, epsilon=EPS, steps=60, lr=0.02, grid_steps=10, pool_factor=3, surrogates=2,
        surrogate_architectures=("lenet", "mlp"), surrogate_params=SMALL, references=2, reference_epochs=8.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ensembles(cae, model, digits):
    train = digits[0]
    return cae.train_surrogates(model, train), cae.train_references(model, train)


@pytest.fixture(scope="module")
def key(cae, model, digits, ensembles) -> Fingerprint:
    return cae.fingerprint(model, digits[0], surrogates=ensembles[0], references=ensembles[1])


@pytest.fixture(scope="module")
def held_out(digits):
    """Independent models held out from the optimisation: the null's references."""
    return [
        train_model(digits[0], a, epochs=8, seed=40 + i, progress=False) for i, a in enumerate(("mlp",) * 3)
    ]


def test_registry_and_repr() -> None:
    assert OWNERSHIP_METHODS == {"frontier-stitching": FrontierStitching, "conferrable": ConferrableExamples}
    assert "epsilon=0.25" in repr(ConferrableExamples())


def test_examples_in_the_ball_on_the_grid_and_fool_the_source(key, model, digits) -> None:
    assert key.method == METHOD and len(key) == 20 and key.seeds is not None
    assert np.abs(key.queries - key.seeds).max() <= EPS + 1e-6
    assert key.queries.min() >= 0 and key.queries.max() <= 1
    assert is_on_grid(key.queries, digits[0].levels) and is_on_grid(key.seeds, digits[0].levels)
    source = predict_logits(model, key.queries).argmax(1).numpy()
    assert np.array_equal(key.labels, source)  # the labels stored are the source's
    assert np.array_equal(key.labels, key.probabilities.argmax(1))
    assert (source != np.array(key.provenance["seed_labels"])).all()  # every example fools the source
    assert agreement(model, key) == 1.0


def test_surrogates_agree_more_than_references(key, ensembles) -> None:
    surrogates, references = ensembles
    s = np.mean([agreement(m, key) for _, m in surrogates])
    r = np.mean([agreement(m, key) for _, m in references])
    assert s > r, (s, r)
    hard, soft = conferrability(
        key.queries, key.labels, [m for _, m in surrogates], [m for _, m in references]
    )
    assert np.allclose(hard, key.provenance["conferrability"]) and ((soft >= 0) & (soft <= 1)).all()
    assert key.provenance["conferrability_candidates"]["n"] == key.provenance["fooled"] >= 20


def test_key_round_trip_and_verify(key, model, held_out, tmp_path) -> None:
    calibrated, null = calibrate_key(key, references=held_out, names=["a", "b", "c"])
    path = calibrated.save(tmp_path / "k.nnseal", hmac_key=b"owner")
    loaded = Fingerprint.load(path, hmac_key=b"owner")
    assert loaded.signature.verified and loaded.method == METHOD
    assert np.array_equal(loaded.queries, key.queries) and np.array_equal(loaded.labels, key.labels)
    assert loaded.provenance["null"]["key_accuracies"] == list(null.key_accuracies)
    v = verify_watermark(loaded, TorchTarget(model))
    assert v.status is Ownership.WATERMARKED and v.key_accuracy == 1.0 and v.null_source == "key", v.reason
    short = verify_watermark(loaded, TorchTarget(model), budget=3)
    assert short.status is Ownership.INCONCLUSIVE


def test_hostile_keys_are_refused(key, model, tmp_path) -> None:
    relabelled = dataclasses.replace(key, labels=(key.labels + 1) % 10)
    with pytest.raises(NnsealError, match="not the source's recorded answers"):
        verify_watermark(relabelled, TorchTarget(model))
    unlabelled = dataclasses.replace(key, labels=None)
    with pytest.raises(NnsealError, match="labels missing"):
        verify_watermark(unlabelled, TorchTarget(model))
    renamed = dataclasses.replace(key, method="conferrable-x")
    with pytest.raises(NnsealError, match="not a frontier-stitching watermark key or a conferrable"):
        verify_watermark(renamed, TorchTarget(model))
    path = key.save(tmp_path / "k.nnseal", hmac_key=b"owner")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 1  # one query value changed after signing
    (tmp_path / "edited.nnseal").write_bytes(bytes(raw))
    with pytest.raises(FingerprintError, match="edited after signing"):
        Fingerprint.load(tmp_path / "edited.nnseal", hmac_key=b"owner")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0.0}, "epsilon must be in"),
        ({"epsilon": True}, "epsilon must be in"),
        ({"references": 1}, "references must be an integer >= 2"),
        ({"surrogate_attacks": ("ftal",)}, "surrogate_attacks must be among"),
        ({"grid_steps": 500}, "grid_steps must be in"),
        ({"dropout": 1.0}, "dropout must be in"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ConferrableExamples(**kwargs)


def test_epsilon_below_one_grid_step_is_refused(model, digits, ensembles) -> None:
    with pytest.raises(ValueError, match="less than one grid step"):
        ConferrableExamples(epsilon=0.05).generate(model, digits[0], *ensembles)


def test_cli_help_and_end_to_end(model, held_out, tmp_path) -> None:
    runner = CliRunner()
    helped = runner.invoke(main, ["watermark", "fingerprint", "--help"])
    assert helped.exit_code == 0 and "--method [conferrable]" in helped.output
    assert "--pool-factor" in helped.output
    src = save_model(model, tmp_path / "m.safetensors")
    other = save_model(held_out[0], tmp_path / "o.safetensors")
    (tmp_path / "hmac").write_bytes(b"owner-secret")
    hmac = ["--hmac-key-file", str(tmp_path / "hmac")]
    k = str(tmp_path / "k.nnseal")
    made = runner.invoke(main, ["watermark", "fingerprint", str(src), "--examples", "16", "--steps", "60",
                                "--pool-factor", "4", "--surrogates", "1", "--surrogate-epochs", "4",
                                "--gen-references", "2",
                                "--references", "3", "--reference-arch", "mlp", "--reference-epochs", "4",
                                "--key", k, *hmac, "--json"])  # fmt: skip
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    assert info["method"] == METHOD and info["examples"] == 16 and len(info["references"]) == 3
    assert not list(tmp_path.glob("*.safetensors"))[2:]  # no model written: only the two saved here
    yes = runner.invoke(main, ["watermark", "verify", k, str(src), *hmac, "--json"])
    assert yes.exit_code == 0, yes.output
    assert json.loads(yes.output)["key_accuracy"] == 1.0
    with FakeServer(TorchTarget(model), [str(i) for i in range(10)]) as api:
        remote = runner.invoke(main, ["watermark", "verify", k, *hmac, "--url", api.url,
                                      "--model-name", "digits",
                                      "--returns", "logits", "--json"])  # fmt: skip
        assert remote.exit_code == 0, remote.output
    no = runner.invoke(main, ["watermark", "verify", k, str(other), *hmac])
    assert no.exit_code in (1, 3), no.output  # an innocent model is never claimed


def test_more_seeds_are_drawn_while_too_few_fool_the_source(cae, model, digits, ensembles) -> None:
    """With one seed per example, rounding leaves some that no longer fool the source: generation
    draws further seeds (up to MAX_POOL_GROWTH pools) instead of failing, and keeps only fooling ones."""
    one = ConferrableExamples(n_examples=10, epsilon=EPS, steps=60, lr=0.02, grid_steps=10, pool_factor=1)
    gen = one.generate(model, digits[0], *ensembles)
    assert one.n_examples < gen.candidates <= MAX_POOL_GROWTH * one.n_examples
    assert gen.fooled >= one.n_examples and len(gen.x) == one.n_examples
    assert (predict_logits(model, gen.x).argmax(1).numpy() != gen.seed_labels).all()
    weak = ConferrableExamples(n_examples=10, epsilon=EPS, steps=1, lr=1e-4, grid_steps=1, pool_factor=1)
    with pytest.raises(NnsealError, match=r"only \d+ of 40 candidates still fool the source"):
        weak.generate(model, digits[0], *ensembles)
