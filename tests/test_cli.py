"""The command line end to end: train → fingerprint → verify, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnseal.cli import main
from nnseal.models import save_model


@pytest.fixture(scope="module")
def files(tmp_path_factory, model) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    runner = CliRunner()
    save_model(model, d / "model.safetensors")
    r = runner.invoke(main, ["export", str(d / "model.safetensors"), str(d / "model.onnx")])
    assert r.exit_code == 0, r.output
    (d / "hmac.key").write_text("s3cret\n")
    r = runner.invoke(
        main,
        [
            "fingerprint",
            str(d / "model.safetensors"),
            "--out",
            str(d / "fp.nnseal"),
            "-n",
            "8",
            "--pool-size",
            "60",
            "-p",
            "steps=200",
            "--hmac-key-file",
            str(d / "hmac.key"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["n_queries"] == 8 and info["signed"] == ["hmac-sha256"]
    return {
        "dir": d,
        "model": d / "model.safetensors",
        "onnx": d / "model.onnx",
        "fp": d / "fp.nnseal",
        "key": d / "hmac.key",
    }


def _verify(files, *args: str):
    return CliRunner().invoke(main, ["verify", str(files["fp"]), *args, "--hmac-key-file", str(files["key"])])


def test_verify_intact_torch_and_onnx(files) -> None:
    for target in ("model", "onnx"):
        r = _verify(files, str(files[target]), "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["status"] == "intact"


def test_verify_tampered_exit_code(files, model) -> None:
    from nnseal.attacks import run_attack

    run_attack("quantize-bits", model, {"bits": 4}).save(files["dir"] / "bad.safetensors")
    r = _verify(files, str(files["dir"] / "bad.safetensors"), "--spec", "top1-p4")
    assert r.exit_code == 1, r.output
    assert r.stdout.startswith("TAMPERED") and "mismatching queries" in r.stdout


def test_verify_budget_inconclusive_exit_code(files) -> None:
    r = _verify(files, str(files["model"]), "--budget", "3")
    assert r.exit_code == 3 and r.stdout.startswith("INCONCLUSIVE")


def test_wrong_key_is_one_line_error(files) -> None:
    (files["dir"] / "other.key").write_text("not the key")
    r = CliRunner().invoke(
        main,
        ["verify", str(files["fp"]), str(files["model"]), "--hmac-key-file", str(files["dir"] / "other.key")],
    )
    assert r.exit_code == 2
    assert r.stderr.strip().count("\n") == 0 and "not by a trusted key" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_corrupt_fingerprint_is_one_line_error(files, content: bytes) -> None:
    bad = files["dir"] / "bad.nnseal"
    bad.write_bytes(content)
    r = CliRunner().invoke(main, ["verify", str(bad), str(files["model"])])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0


def test_bad_target_and_bad_arguments(files) -> None:
    r = _verify(files, str(files["dir"] / "missing.onnx"))
    assert r.exit_code == 2 and "not found" in r.stderr
    r = _verify(files, str(files["model"]), "--spec", "top99")
    assert r.exit_code == 2 and "not valid for output spec top99" in r.stderr
    r = CliRunner().invoke(
        main,
        ["fingerprint", str(files["model"]), "--out", str(files["dir"] / "x.nnseal"), "-p", "epsilon=-1"],
    )
    assert r.exit_code == 2 and "epsilon" in r.stderr
    assert not (files["dir"] / "x.nnseal").exists()


def _fingerprint(files, out: Path, *extra: str):
    args = [
        "fingerprint",
        str(files["model"]),
        "--out",
        str(out),
        "-n",
        "4",
        "--pool-size",
        "20",
        "-p",
        "steps=50",
    ]
    return CliRunner().invoke(main, [*args, *extra])


def test_unsigned_fingerprint_needs_allow_unsigned(files, tmp_path) -> None:
    assert _fingerprint(files, tmp_path / "u.nnseal", "--no-sign").exit_code == 0
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "u.nnseal"), str(files["model"])])
    assert r.exit_code == 2 and "not signed" in r.stderr and "--allow-unsigned" in r.stderr
    r = CliRunner().invoke(
        main, ["verify", str(tmp_path / "u.nnseal"), str(files["model"]), "--allow-unsigned"]
    )
    assert r.exit_code == 0 and "signature NOT verified" in r.stdout
    r = CliRunner().invoke(
        main, ["verify", str(tmp_path / "u.nnseal"), str(files["model"]), "--allow-unsigned", "--json"]
    )
    assert json.loads(r.stdout)["signature"]["verified"] is False


def test_default_flow_signs_with_own_key_and_verifies_with_no_flags(files, tmp_path) -> None:
    from nnseal.signing import default_signing_key, key_id

    r = _fingerprint(files, tmp_path / "d.nnseal", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["signed"] == ["ed25519"]
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "d.nnseal"), str(files["onnx"]), "--json"])
    assert r.exit_code == 0, r.output
    own = key_id(default_signing_key()[0].public_key())
    assert json.loads(r.stdout)["signature"] == {
        "scheme": "ed25519", "verified": True, "key_id": own, "note": ""
    }  # fmt: skip
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "d.nnseal"), str(files["onnx"])])
    assert f"ed25519 signature verified (key {own})" in r.stdout


def test_explicit_keys_and_keygen(files, tmp_path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["keygen", str(tmp_path / "k.pem"), str(tmp_path / "k.pub")]).exit_code == 0
    r = runner.invoke(main, ["keygen", str(tmp_path / "k.pem"), str(tmp_path / "k2.pub")])
    assert r.exit_code == 2 and "refusing to overwrite" in r.stderr
    r = _fingerprint(files, tmp_path / "s.nnseal", "--sign-key", str(tmp_path / "k.pem"))
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        main,
        ["verify", str(tmp_path / "s.nnseal"), str(files["onnx"]), "--public-key", str(tmp_path / "k.pub")],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(  # an HMAC key given means an HMAC signature by it is required
        main, ["verify", str(tmp_path / "s.nnseal"), str(files["onnx"]), "--hmac-key-file", str(files["key"])]
    )
    assert r.exit_code == 2 and "not by a trusted key" in r.stderr
    r = runner.invoke(
        main, ["fingerprint", str(files["model"]), "--out", "x", "--no-sign", "--sign-key", "k"]
    )
    assert r.exit_code == 2 and "contradicts" in r.stderr


def test_inspect_text_and_json(files, model, tmp_path) -> None:
    from nnseal.attacks import run_attack

    runner = CliRunner()
    r = runner.invoke(main, ["inspect", str(files["fp"]), "--json"])
    info = json.loads(r.stdout)
    assert r.exit_code == 0 and info["method"] == "sensitive-sample" and info["kind"] == "fingerprint"
    assert info["signature"]["scheme"] == "hmac-sha256" and info["signature"]["verified"] is False
    text = runner.invoke(main, ["inspect", str(files["fp"])]).stdout
    assert "method: sensitive-sample" in text and "signature NOT verified" in text and "{" not in text
    r = runner.invoke(main, ["inspect", str(files["model"]), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["config"]["arch"] == "lenet"
    run_attack("prune", model, {"amount": 0.1}).save(tmp_path / "pruned.safetensors")
    r = runner.invoke(main, ["inspect", str(tmp_path / "pruned.safetensors")])
    assert r.exit_code == 0 and "lineage_str: prune(amount=0.1)" in r.stdout, r.output
    r = runner.invoke(main, ["inspect", str(files["onnx"])])
    assert r.exit_code == 0 and "kind: ONNX model" in r.stdout and "safetensors" not in r.output
    onnx_info = json.loads(runner.invoke(main, ["inspect", str(files["onnx"]), "--json"]).stdout)
    assert next(iter(onnx_info["inputs"].values()))[1:] == [1, 8, 8]
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    r = runner.invoke(main, ["inspect", str(tmp_path / "junk.bin")])
    assert r.exit_code == 2 and "neither a fingerprint" in r.stderr


def test_swapped_arguments_get_a_hint(files) -> None:
    for model_file in ("model", "onnx"):
        r = CliRunner().invoke(main, ["verify", str(files[model_file]), str(files["fp"])])
        assert r.exit_code == 2 and "did you swap the arguments?" in r.stderr, r.output


def test_tampered_verdict_names_both_models(files, tmp_path) -> None:
    """A wholly different model is told apart from a copy only by the hint, so the hint names both."""
    from nnseal.data import load_dataset
    from nnseal.models import model_id, train_model

    other = train_model(load_dataset("digits", split="train"), "mlp", epochs=2, seed=5)
    save_model(other, tmp_path / "other.safetensors")
    r = _verify(files, str(tmp_path / "other.safetensors"), "--spec", "top1-p4")
    assert r.exit_code == 1 and "this is the wrong fingerprint, not proof of tampering" in r.stdout
    assert model_id(other)[:16] in r.stdout


def test_stop_early_stops_within_a_short_fingerprint(files, model, tmp_path) -> None:
    from nnseal.attacks import run_attack

    run_attack("quantize-bits", model, {"bits": 3}).save(tmp_path / "bad.safetensors")
    full = json.loads(_verify(files, str(tmp_path / "bad.safetensors"), "--spec", "top1-p4", "--json").stdout)
    early = _verify(files, str(tmp_path / "bad.safetensors"), "--spec", "top1-p4", "--stop-early", "--json")
    v = json.loads(early.stdout)
    assert early.exit_code == 1 and v["status"] == "tampered"
    assert v["queries_used"] <= 2 * (full["mismatches"][0] + 1) and v["queries_used"] < 8  # 1, 1, 2, 4 …


def test_attack_output_is_formatted(files, tmp_path) -> None:
    r = CliRunner().invoke(
        main,
        [
            "attack",
            str(files["model"]),
            "prune",
            "-p",
            "amount=0.2",
            "--out",
            str(tmp_path / "p.safetensors"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "accuracy_before: " in r.stdout and "%" in r.stdout and "{" not in r.stdout
    assert not any(len(t) > 8 and t.replace(".", "").isdigit() for t in r.stdout.split())  # no raw floats


def test_python_m_and_shell_completion() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "nnseal", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Shell completion" in r.stdout
    env = {"_NNSEAL_COMPLETE": "bash_source"}
    r = CliRunner().invoke(main, [], prog_name="nnseal", env=env)
    assert "_nnseal_completion" in r.output


def test_train_command(tmp_path) -> None:
    r = CliRunner().invoke(
        main, ["train", "--arch", "mlp", "--epochs", "2", "--out", str(tmp_path / "m.safetensors"), "--json"]
    )
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["test_accuracy"] > 0.5 and len(info["model_id"]) == 64
    r = CliRunner().invoke(main, ["train", "--data", "mnist", "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2 and "root" in r.stderr
    r = CliRunner().invoke(
        main, ["train", "--arch", "mlp", "--epochs", "1", "--out", str(tmp_path / "q.safetensors"), "--quiet"]
    )
    assert r.exit_code == 0 and r.stderr == "" and r.stdout.startswith("mlp on digits"), r.output


def test_attack_command_chains_and_verifies(files) -> None:
    runner = CliRunner()
    d = files["dir"]
    r = runner.invoke(
        main, ["attack", str(files["model"]), "prune", "-p", "amount=0.5", "--out", str(d / "p.safetensors")]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        main,
        ["attack", str(d / "p.safetensors"), "quantize-int8", "--out", str(d / "pq.safetensors"), "--json"],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["lineage_str"] == "prune(amount=0.5)-quantize-int8()"
    assert _verify(files, str(d / "pq.safetensors"), "--spec", "top1-p4").exit_code == 1
    r = runner.invoke(main, ["attack", str(files["model"]), "onnx-quantize", "--out", str(d / "q.onnx")])
    assert r.exit_code == 0, r.output
    assert _verify(files, str(d / "q.onnx"), "--spec", "top1-p4").exit_code == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["melt"], "unknown attack 'melt'"),
        (["prune", "-p", "amount=1.5"], "amount (sparsity) must be in (0, 1)"),
        (["prune", "-p", "amount"], "KEY=VALUE"),
        (["prune", "-p", "sparsity=0.5"], "unknown parameter 'sparsity'"),
        (["quantize-bits", "-p", "bits=0"], "bits must be between"),
        (["onnx-quantize"], "--out must be .onnx"),
    ],
)
def test_attack_command_bad_input(files, args, message) -> None:
    out = files["dir"] / "never.safetensors"
    r = CliRunner().invoke(main, ["attack", str(files["model"]), *args, "--out", str(out)])
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output
    assert not out.exists()


def test_attack_help_lists_every_kind() -> None:
    from nnseal.attacks import ATTACKS

    r = CliRunner().invoke(main, ["attack", "--help"])
    assert r.exit_code == 0
    for name in ATTACKS:
        assert f"  {name}" in r.output


def test_fingerprint_declares_serving_environments(files, tmp_path) -> None:
    runner = CliRunner()
    base = ["fingerprint", str(files["model"]), "--method", "natural", "-n", "5", "--pool-size", "60"]
    r = runner.invoke(
        main, [*base, "--serving", "cpu-fp32,gpu-tf32", "--out", str(tmp_path / "tf32.nnseal"), "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["serving"] == ["cpu-fp32", "gpu-tf32"]
    v = CliRunner().invoke(main, ["verify", str(tmp_path / "tf32.nnseal"), str(files["onnx"]), "--json"])
    assert v.exit_code == 0 and json.loads(v.stdout)["serving"] == ["cpu-fp32", "gpu-tf32"], v.output
    r = runner.invoke(
        main, [*base, "--serving", "fp16", "--specs", "top1", "--out", str(tmp_path / "h.nnseal")]
    )
    assert r.exit_code == 0 and "warning:" in r.stderr and "will verify as intact" in r.stderr, r.output
    r = runner.invoke(main, [*base, "--serving", "tpu-int4", "--out", str(tmp_path / "x.nnseal")])
    assert r.exit_code == 2 and "tpu-int4" in r.stderr and "gpu-tf32" in r.stderr
