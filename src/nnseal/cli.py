"""The ``nnseal`` command line: a thin layer that parses, calls the library and prints.

Exit codes: 0 intact / success, 1 tampered, 3 inconclusive (``watermark verify``: 0 watermarked,
1 not watermarked, 3 inconclusive) — each only ever from a decision. 2: bad input or usage, one line
on stderr. 4: an internal error (one line; ``--debug`` shows the traceback). 130 / 143: interrupted
by SIGINT / SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nnseal._http_cli import http_options
from nnseal.errors import NnsealError

if TYPE_CHECKING:
    from nnseal.fingerprint import Fingerprint
    from nnseal.signing import SigningKeys

INPUT_ERROR = 2
INTERNAL_ERROR = 4
DEBUG_ENV = "NNSEAL_DEBUG"


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop now, exit 128 + the signal's number, saying what was done."""

    def __init__(self, signum: int, summary: str = "stopped, no verdict") -> None:
        super().__init__(summary)
        self.signum, self.summary = signum, summary


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


class _Group(click.Group):
    """Maps every way a command can end to its documented exit code: a decision's own code, 2 for
    user-caused errors, 4 for anything unexpected, 128 + N for signals — never a traceback."""

    def main(self, args: Sequence[str] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.pop("standalone_mode", None)
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            code = super().main(args, standalone_mode=False, **kwargs)
        except click.ClickException as e:  # usage errors; click gives some of them exit code 1
            e.show()
            code = INPUT_ERROR
        except (NnsealError, ValueError, OSError) as e:
            click.echo(f"error: {_one_line(e)}", err=True)
            code = INPUT_ERROR
        except (KeyboardInterrupt, click.exceptions.Abort, Interrupted) as e:
            stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
            click.echo(f"interrupted ({signal.Signals(stop.signum).name}): {stop.summary}", err=True)
            code = 128 + stop.signum
        except Exception as e:
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            click.echo(
                f"internal error ({type(e).__name__}: {_one_line(e)}); please report it "
                f"(--debug shows the traceback)",
                err=True,
            )
            code = INTERNAL_ERROR
        finally:
            signal.signal(signal.SIGTERM, previous)
        sys.exit(code if isinstance(code, int) else 0)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:400] + ("…" if len(text) > 400 else "")


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[DEBUG_ENV] = "1"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nnseal")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    callback=_set_debug,
    help="Show tracebacks of internal errors.",
)
def main() -> None:
    """Black-box tamper detection for neural-network classifiers."""


def _emit(obj: dict[str, Any], as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else text)


_root = click.option("--root", type=click.Path(path_type=Path), help="Folder holding the dataset files.")
_json = click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
_hmac = click.option(
    "--hmac-key-file",
    type=click.Path(path_type=Path),
    help="HMAC-SHA256 key file (default: the NNSEAL_HMAC_KEY environment variable).",
)


def _signature_check(fn: Any) -> Any:
    """--hmac-key-file, --public-key and --allow-unsigned: how a signed file is checked on load."""
    fn = click.option(
        "--allow-unsigned",
        is_flag=True,
        help="Accept a file no trusted key signed (the verdict then says so). Unsafe: whoever edits it "
        "decides the verdict.",
    )(fn)
    fn = click.option(
        "--public-key",
        "public_keys",
        multiple=True,
        type=click.Path(path_type=Path),
        help="Ed25519 public key (PEM) to trust (repeatable; default: your key folder's keys).",
    )(fn)
    return _hmac(fn)


def _load_signed(
    path: Path, hmac_key_file: Path | None, public_keys: Sequence[Path], allow_unsigned: bool
) -> Fingerprint:
    """A fingerprint or watermark key, its signature checked as the ``_signature_check`` options say."""
    from nnseal.fingerprint import Fingerprint
    from nnseal.signing import hmac_key_from, load_public_key

    return Fingerprint.load(
        path,
        hmac_key=hmac_key_from(file=hmac_key_file),
        public_keys=[load_public_key(p) for p in public_keys],
        allow_unsigned=allow_unsigned,
    )


def _signing(fn: Any) -> Any:
    """--hmac-key-file, --sign-key and --no-sign: what a written fingerprint or key is signed with."""
    fn = click.option("--no-sign", is_flag=True, help="Write the file unsigned (verifiers will refuse it).")(
        fn
    )
    fn = click.option(
        "--sign-key",
        type=click.Path(path_type=Path),
        help="Ed25519 private key (PEM) to sign with (default: your own, created on first use).",
    )(fn)
    return _hmac(fn)


def _signing_keys(hmac_key_file: Path | None, sign_key: Path | None, no_sign: bool) -> SigningKeys:
    """The keys given, else the user's own Ed25519 key (announcing it when just created)."""
    from nnseal.signing import SigningKeys, default_signing_key, hmac_key_from, key_dir, load_private_key

    hmac_key = hmac_key_from(file=hmac_key_file)
    if no_sign:
        if hmac_key_file or sign_key:
            raise NnsealError("--no-sign contradicts --hmac-key-file / --sign-key")
        return SigningKeys()
    if hmac_key is not None or sign_key is not None:
        return SigningKeys(hmac_key, load_private_key(sign_key) if sign_key else None)
    key, created = default_signing_key()
    if created:
        click.echo(
            f"created your signing key in {key_dir()} (share signing-key.pub with verifiers)", err=True
        )
    return SigningKeys(None, key)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("nnseal-demo"), show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out: Path, seed: int, quiet: bool) -> None:
    """Train on bundled digits, fingerprint, tamper, verify; write a report."""
    from nnseal.demo import run_demo

    rows = run_demo(out, seed=seed, progress=not quiet)
    sys.exit(0 if all(r.ok for r in rows) else 1)


@main.command()
@click.option("--data", "dataset", default="digits", show_default=True, help="Dataset name.")
@_root
@click.option("--arch", type=click.Choice(["mlp", "lenet", "vgg"]), default="lenet", show_default=True)
@click.option("--epochs", default=20.0, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model file (.safetensors).")
@click.option("--onnx", type=click.Path(path_type=Path), help="Also export to this ONNX file.")
@_json
def train(
    dataset: str,
    root: Path | None,
    arch: str,
    epochs: float,
    lr: float,
    batch_size: int,
    seed: int,
    out: Path,
    onnx: Path | None,
    as_json: bool,
) -> None:
    """Train a reference model (seeded) and save it as safetensors + JSON config."""
    from nnseal.data import load_dataset
    from nnseal.models import evaluate_accuracy, export_onnx, model_id, save_model, train_model

    tr, te = load_dataset(dataset, root, "train"), load_dataset(dataset, root, "test")
    model = train_model(
        tr, arch, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=not as_json
    )
    acc = evaluate_accuracy(model, te)
    save_model(model, out)
    if onnx:
        export_onnx(model, onnx, tr.input_shape)
    info = {
        "model": str(out),
        "onnx": str(onnx) if onnx else None,
        "arch": arch,
        "dataset": dataset,
        "test_accuracy": acc,
        "model_id": model_id(model),
        "seed": seed,
    }
    _emit(
        info,
        as_json,
        f"{arch} on {dataset}: test accuracy {acc:.2%}; saved {out}" + (f" and {onnx}" if onnx else ""),
    )


@main.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def export_cmd(model: Path, out: Path) -> None:
    """Export an nnseal model file to ONNX."""
    from nnseal.models import export_onnx, load_model

    m = load_model(model)
    export_onnx(m, out, m.config.input_shape)
    click.echo(f"wrote {out}")


def _params_help(title: str, registry: dict[str, Any], describe: Any) -> str:
    """A command's help listing every registered kind, its flags and its parameters with defaults."""
    lines = [title, "", "\b", "Kinds:"]
    for name, item in sorted(registry.items()):
        summary, params = describe(item)
        lines.append(f"  {name}: {summary}")
        lines.append("      parameters: " + (", ".join(f"{k}={v}" for k, v in params.items()) or "none"))
    return "\n".join(lines)


def _method_help() -> str:
    from nnseal.methods import METHODS

    def describe(m: Any) -> tuple[str, dict[str, Any]]:
        first = " ".join((m.__doc__ or "").strip().split("\n\n")[0].split())
        return first, m.own_defaults()

    text = _params_help(
        "Make a fingerprint of MODEL with --method (set its parameters with -p).", METHODS, describe
    )
    return text.replace("Kinds:", "Methods:")


class _LiveHelp(click.Command):
    """A command whose help text is built when shown, so it lists what the registries hold then."""

    def __init__(self, *args: Any, live_help: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.live_help = live_help

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.help = self.live_help()
        super().format_help_text(ctx, formatter)


_params = click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Parameter of the kind chosen (repeatable).",
)


@main.command(cls=_LiveHelp, live_help=_method_help, short_help="Make a fingerprint of a model.")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--method", default="sensitive-sample", show_default=True, help="Fingerprinting method.")
@_params
@click.option("--data", "dataset", default="digits", show_default=True, help="Dataset the seeds come from.")
@_root
@click.option("--split", default="test", show_default=True)
@click.option("-n", "--n-queries", type=int, help="Queries in the fingerprint [default: the method's].")
@click.option("--pool-size", type=int, help="Seeds candidates are made from [default: the method's].")
@click.option("--specs", default="top1,top3,top1-p4", show_default=True, help="Output specs to support.")
@click.option("--min-margin", type=float, help="Relative noise every answer must survive [default: 2e-5].")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Fingerprint file to write.")
@_signing
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_json
def fingerprint(
    model: Path,
    method: str,
    params: tuple[str, ...],
    dataset: str,
    root: Path | None,
    split: str,
    n_queries: int | None,
    pool_size: int | None,
    specs: str,
    min_margin: float | None,
    seed: int,
    out: Path,
    hmac_key_file: Path | None,
    sign_key: Path | None,
    no_sign: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    from nnseal._params import parse_pairs, typed_params
    from nnseal.data import load_dataset
    from nnseal.methods import METHODS
    from nnseal.models import load_model

    if method not in METHODS:
        raise NnsealError(f"unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
    cls = METHODS[method]
    options = typed_params(parse_pairs(params), cls.own_defaults(), f"method {method}")
    common = {"n_queries": n_queries, "pool_size": pool_size, "min_margin": min_margin}
    options.update({k: v for k, v in common.items() if v is not None})
    fingerprinter = cls(specs=specs.split(","), seed=seed, progress=not (quiet or as_json), **options)
    keys = _signing_keys(hmac_key_file, sign_key, no_sign)
    m = load_model(model)
    data = load_dataset(dataset, root, split)
    fp = fingerprinter.fingerprint(m, data)
    fp.save(out, hmac_key=keys.hmac_key, ed25519_key=keys.ed25519)
    signed = keys.schemes
    info = {
        "fingerprint": str(out),
        "method": fp.method,
        "n_queries": len(fp),
        "specs": fp.specs,
        "model_id": fp.model_id,
        "signed": signed,
        "params": fp.params,
    }
    _emit(
        info,
        as_json,
        f"wrote {out}: {len(fp)} {method} queries, specs {', '.join(fp.specs)}, "
        f"signed: {', '.join(signed) or 'no'}",
    )


@main.command("verify")
@click.argument("fingerprint_file", metavar="FINGERPRINT", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path), required=False)
@click.option("--spec", help="Output spec to compare (default: the fingerprint's first).")
@click.option("--budget", type=int, help="Most queries to send (fewer than the fingerprint → inconclusive).")
@click.option("--stop-early", is_flag=True, help="Stop at the first mismatch.")
@click.option("--batch-size", default=64, show_default=True)
@_signature_check
@_json
@http_options
def verify_cmd(
    fingerprint_file: Path,
    target: Path | None,
    spec: str | None,
    budget: int | None,
    stop_early: bool,
    batch_size: int,
    hmac_key_file: Path | None,
    public_keys: tuple[Path, ...],
    allow_unsigned: bool,
    as_json: bool,
    **http: Any,
) -> None:
    """Verify TARGET (an nnseal model file or an .onnx file), or the prediction API at --url,
    against FINGERPRINT.

    Exit code: 0 intact, 1 tampered, 3 inconclusive, 2 bad input.
    """
    from nnseal._http_cli import open_cli_target
    from nnseal.verify import verify

    fp = _load_signed(fingerprint_file, hmac_key_file, public_keys, allow_unsigned)
    tgt, batch_size = open_cli_target(fp, target, http, batch_size)
    try:
        verdict = verify(
            fp, tgt, spec, budget=budget, stop_at_first_mismatch=stop_early, batch_size=batch_size
        )
    finally:
        tgt.close()
    text = (
        f"{verdict.status.value.upper()}: {verdict.reason} (spec {verdict.spec}, "
        f"{verdict.queries_used} queries)\n{fp.signature}"
    )
    if verdict.mismatches:
        text += f"\nmismatching queries: {verdict.mismatches}"
    _emit(verdict.to_dict(), as_json, text)
    sys.exit(verdict.exit_code)


@main.command()
@click.argument("fingerprint_file", metavar="FINGERPRINT", type=click.Path(path_type=Path))
@click.option("--interval", default=60.0, show_default=True, help="Seconds from one run's start to the next.")
@click.option("--max-runs", type=int, help="Stop after this many runs (default: run until tampered).")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on 127.0.0.1:PORT.")
@click.option("--spec", help="Output spec to compare (default: the fingerprint's first).")
@click.option("--budget", type=int, help="Most fingerprint queries per run (fewer → inconclusive).")
@click.option("--batch-size", default=64, show_default=True)
@_signature_check
@http_options
def watch(
    fingerprint_file: Path,
    interval: float,
    max_runs: int | None,
    metrics_port: int | None,
    spec: str | None,
    budget: int | None,
    batch_size: int,
    hmac_key_file: Path | None,
    public_keys: tuple[Path, ...],
    allow_unsigned: bool,
    **http: Any,
) -> None:
    """Verify the prediction API at --url against FINGERPRINT every --interval seconds.

    Prints one JSON line per run. Exit code: 1 at the first tampered verdict; after --max-runs,
    3 if any run was inconclusive, else 0; 2 bad input.
    """
    from nnseal._http_cli import remote_target_factory
    from nnseal.watch import WatchMetrics
    from nnseal.watch import watch as run_watch

    if not http["url"]:
        raise NnsealError("watch needs --url")
    fp = _load_signed(fingerprint_file, hmac_key_file, public_keys, allow_unsigned)
    make = remote_target_factory(fp, http)
    metrics = WatchMetrics(metrics_port) if metrics_port is not None else None
    statuses: list[str] = []
    try:
        for record in run_watch(
            fp,
            make,
            spec,
            interval=interval,
            max_runs=max_runs,
            metrics=metrics,
            budget=budget,
            batch_size=len(fp) if http["stealth"] else batch_size,
        ):
            click.echo(json.dumps(record))
            statuses.append(record["status"])
    except (KeyboardInterrupt, Interrupted) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        counts = ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses))) or "none finished"
        raise Interrupted(signum, f"watch stopped after {len(statuses)} runs ({counts})") from None
    finally:
        if metrics is not None:
            metrics.close()
    sys.exit(1 if "tampered" in statuses else 3 if "inconclusive" in statuses else 0)


@main.group()
def watermark() -> None:
    """Prove ownership: embed a frontier-stitching watermark, verify it through a model's labels.

    Verify exit code: 0 watermarked, 1 not watermarked, 3 inconclusive, 2 bad input.
    """


@watermark.command("embed")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "dataset", default="digits", show_default=True, help="The model's training data.")
@_root
@click.option("--key-size", default=100, show_default=True, help="Key inputs ℓ (even).")
@click.option("--epsilon", default=0.25, show_default=True, help="FGSM step (L∞, pixels in [0, 1]).")
@click.option("--boost", default=10, show_default=True, help="Times the key is repeated in fine-tuning.")
@click.option("--epochs", default=5.0, show_default=True, help="Most fine-tuning epochs.")
@click.option("--lr", default=1e-3, show_default=True, help="Fine-tuning learning rate (Adam).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Watermarked model to write.")
@click.option("--key", "key_out", type=click.Path(path_type=Path), required=True, help="Key file to write.")
@_signing
@_json
def watermark_embed(
    model: Path,
    dataset: str,
    root: Path | None,
    key_size: int,
    epsilon: float,
    boost: int,
    epochs: float,
    lr: float,
    seed: int,
    out: Path,
    key_out: Path,
    hmac_key_file: Path | None,
    sign_key: Path | None,
    no_sign: bool,
    as_json: bool,
) -> None:
    """Watermark MODEL; write the watermarked copy (with its lineage) and the signed key."""
    from nnseal.attacks import run_attack
    from nnseal.data import load_dataset
    from nnseal.models import load_model

    keys = _signing_keys(hmac_key_file, sign_key, no_sign)
    m = load_model(model)
    train, test = load_dataset(dataset, root, "train"), load_dataset(dataset, root, "test")
    params = {"key_size": key_size, "epsilon": epsilon, "boost": boost, "epochs": epochs, "lr": lr}
    result = run_attack("watermark", m, params, train=train, test=test, seed=seed, progress=not as_json)
    key = result.artifacts["key"]
    key.save(key_out, hmac_key=keys.hmac_key, ed25519_key=keys.ed25519)
    result.save(out)
    r = result.record["metrics"]
    signed = keys.schemes
    info = {"model": str(out), "key": str(key_out), "signed": signed, "model_id": key.model_id, **r}
    text = (
        f"wrote {out} and {key_out} (signed: {', '.join(signed) or 'no'}): key accuracy "
        f"{r['key_accuracy_before']:.0%} → {r['key_accuracy_after']:.0%} after {r['epochs']:g} epochs; "
        f"test accuracy {r['accuracy_before']:.2%} → {r['accuracy_after']:.2%}"
    )
    if r["key_accuracy_after"] < 1:
        text += "\nwarning: the key was not fully learnt; raise --epochs or --lr"
    _emit(info, as_json, text)


@watermark.command("verify")
@click.argument("key_file", metavar="KEY", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--alpha", default=0.05, show_default=True, help="Significance level, fixed beforehand.")
@click.option("--sequential", is_flag=True, help="Stop as soon as the decision is certain (fewer queries).")
@click.option("--budget", type=int, help="Most queries to send.")
@click.option(
    "--calibrate",
    "null_models",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A model known not to be watermarked (repeatable, >= 2): fit the null to their key accuracy "
    "instead of the paper's 1/2.",
)
@click.option("--batch-size", default=64, show_default=True)
@_signature_check
@_json
def watermark_verify(
    key_file: Path,
    target: Path,
    alpha: float,
    sequential: bool,
    budget: int | None,
    null_models: tuple[Path, ...],
    batch_size: int,
    hmac_key_file: Path | None,
    public_keys: tuple[Path, ...],
    allow_unsigned: bool,
    as_json: bool,
) -> None:
    """Is TARGET (an nnseal model file or an .onnx file) watermarked with KEY?

    Exit code: 0 watermarked, 1 not watermarked, 3 inconclusive, 2 bad input.
    """
    from nnseal.targets import open_target
    from nnseal.watermark import PAPER_NULL, NullModel, verify_watermark

    key = _load_signed(key_file, hmac_key_file, public_keys, allow_unsigned)
    null = PAPER_NULL
    if null_models:
        accs = [verify_watermark(key, open_target(p), alpha=alpha).key_accuracy for p in null_models]
        null = NullModel.calibrate([a for a in accs if a is not None], len(key))
    v = verify_watermark(
        key, open_target(target), alpha=alpha, null=null, sequential=sequential, budget=budget,
        batch_size=batch_size,
    )  # fmt: skip
    acc = "-" if v.key_accuracy is None else f"{v.key_accuracy:.2%}"
    text = (
        f"{v.status.value.upper()}: {v.reason} (p={v.p_value:.3g}, key accuracy {acc}, "
        f"{v.queries_used} of {v.key_size} queries, null {v.null['kind']} p={v.null['p']:.3f})"
        f"\n{key.signature}"
    )
    _emit(v.to_dict(), as_json, text)
    sys.exit(v.exit_code)


def _attack_help() -> str:
    from nnseal.attacks import ATTACKS

    def describe(a: Any) -> tuple[str, dict[str, Any]]:
        flags = ", ".join(
            f for f, on in (("needs data", a.needs_data), ("ONNX output", a.output == "onnx")) if on
        )
        return (f"[{flags}] " if flags else "") + a.description, a.defaults()

    return _params_help(
        "Apply attack KIND to MODEL and save the attacked copy with its lineage.", ATTACKS, describe
    )


@main.command(cls=_LiveHelp, live_help=_attack_help, short_help="Apply a tampering attack to a model.")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("kind")
@_params
@click.option(
    "--data", "dataset", default="digits", show_default=True, help="Data for training and accuracy."
)
@_root
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Attacked model (.safetensors/.onnx)."
)
@_json
def attack(
    model: Path, kind: str, params: tuple[str, ...], dataset: str, root: Path | None, seed: int, out: Path,
    as_json: bool,
) -> None:  # fmt: skip
    from nnseal._params import parse_pairs
    from nnseal.attacks import ATTACKS, run_attack
    from nnseal.data import load_dataset
    from nnseal.models import load_model

    if kind not in ATTACKS:
        raise NnsealError(f"unknown attack {kind!r}; known: {', '.join(sorted(ATTACKS))}")
    spec = ATTACKS[kind]
    parsed = spec.parse_params(parse_pairs(params))
    if (out.suffix.lower() == ".onnx") != (spec.output == "onnx"):
        want = ".onnx" if spec.output == "onnx" else "an nnseal model file (.safetensors)"
        raise NnsealError(f"attack {kind} writes {spec.output} models: --out must be {want}")
    m = load_model(model)
    train, test = load_dataset(dataset, root, "train"), load_dataset(dataset, root, "test")
    result = run_attack(kind, m, parsed, train=train, test=test, seed=seed, progress=not as_json)
    result.save(out)
    metrics = result.record["metrics"]
    text = f"wrote {out}: {result.lineage_str}\n" + "\n".join(f"  {k}: {v}" for k, v in metrics.items())
    _emit({"out": str(out), "lineage": result.lineage, "lineage_str": result.lineage_str}, as_json, text)


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default: the config's).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(config: Path, out: Path | None, quiet: bool) -> None:
    """Run the experiment in CONFIG (TOML): methods × attacks × budgets × output specs.

    Writes results.json, curves.csv, plots and report.md. Relative paths in the config are taken
    relative to the config file.
    """
    from nnseal.evaluation import evaluate as run
    from nnseal.evaluation import load_config

    cfg = load_config(config)
    if out is not None:
        cfg.out = str(out)
    results = run(cfg, progress=not quiet)
    click.echo(f"wrote {Path(cfg.out) / 'report.md'} ({results.timings['total_s']:.0f} s)")


@main.command()
@click.argument("private", type=click.Path(path_type=Path), required=False)
@click.argument("public", type=click.Path(path_type=Path), required=False)
def keygen(private: Path | None, public: Path | None) -> None:
    """Write a new Ed25519 key pair (PEM) for signing fingerprints.

    Without arguments: your own key in the key folder (what `nnseal fingerprint` signs with and
    `nnseal verify` trusts by default). Put other owners' public keys in its trusted/ folder.
    """
    from nnseal.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, generate_keypair, key_dir

    if (private is None) != (public is None):
        raise NnsealError("give both PRIVATE and PUBLIC, or neither (for your own key in the key folder)")
    if private is None or public is None:
        key_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
        private, public = key_dir() / PRIVATE_KEY_FILE, key_dir() / PUBLIC_KEY_FILE
    if private.exists():
        raise NnsealError(f"{private} exists; refusing to overwrite a private key")
    kid = generate_keypair(private, public)
    click.echo(f"wrote {private} (keep secret) and {public} (share it); key id {kid}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
def inspect(path: Path) -> None:
    """Print the header of a fingerprint or the config and id of a model file."""
    from nnseal.errors import FingerprintError
    from nnseal.fingerprint import Fingerprint
    from nnseal.models import load_model, model_id

    try:
        fp = Fingerprint.load(path, allow_unsigned=True)
        click.echo(json.dumps({**fp.header(), "signature": fp.signature.to_dict()}, indent=2))
    except FingerprintError:
        m = load_model(path)
        click.echo(json.dumps({"model_id": model_id(m), "config": m.config.to_dict()}, indent=2))
