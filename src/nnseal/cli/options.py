"""Options and helpers the commands share: output, data folders, signing, registry-built help."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nnseal.errors import FingerprintError, NnsealError

if TYPE_CHECKING:
    from nnseal.fingerprint import Fingerprint
    from nnseal.signing import SigningKeys


def emit(obj: dict[str, Any], as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else text)


root_option = click.option(
    "--root", type=click.Path(path_type=Path), help="Folder holding the dataset files."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
hmac_option = click.option(
    "--hmac-key-file",
    type=click.Path(path_type=Path),
    help="HMAC-SHA256 key file (default: the NNSEAL_HMAC_KEY environment variable).",
)


def signature_check(fn: Any) -> Any:
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
    return hmac_option(fn)


def load_signed(
    path: Path, hmac_key_file: Path | None, public_keys: Sequence[Path], allow_unsigned: bool
) -> Fingerprint:
    """A fingerprint or watermark key, its signature checked as the ``signature_check`` options say;
    a model file given in its place gets a hint that the arguments may be swapped."""
    from nnseal.fingerprint import Fingerprint
    from nnseal.signing import hmac_key_from, load_public_key

    try:
        return Fingerprint.load(
            path,
            hmac_key=hmac_key_from(file=hmac_key_file),
            public_keys=[load_public_key(p) for p in public_keys],
            allow_unsigned=allow_unsigned,
        )
    except FingerprintError as e:
        if is_model_file(path):
            raise NnsealError(
                f"{path} is a model file, not a fingerprint or key: the fingerprint (or key) comes "
                "first, then the model (did you swap the arguments?)"
            ) from None
        raise e from None


def is_model_file(path: Path) -> bool:
    """Whether ``path`` is an ONNX model or an nnseal model file."""
    from nnseal.errors import ModelError
    from nnseal.models import load_model

    if path.suffix.lower() == ".onnx":
        return path.is_file()
    try:
        load_model(path)
    except (ModelError, NnsealError, OSError, ValueError):
        return False
    return True


def signing(fn: Any) -> Any:
    """--hmac-key-file, --sign-key and --no-sign: what a written fingerprint or key is signed with."""
    fn = click.option("--no-sign", is_flag=True, help="Write the file unsigned (verifiers will refuse it).")(
        fn
    )
    fn = click.option(
        "--sign-key",
        type=click.Path(path_type=Path),
        help="Ed25519 private key (PEM) to sign with (default: your own, created on first use).",
    )(fn)
    return hmac_option(fn)


def signing_keys(hmac_key_file: Path | None, sign_key: Path | None, no_sign: bool) -> SigningKeys:
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


def params_help(title: str, registry: dict[str, Any], describe: Any) -> str:
    """A command's help listing every registered kind, its flags and its parameters with defaults."""
    lines = [title, "", "\b", "Kinds:"]
    for name, item in sorted(registry.items()):
        summary, params = describe(item)
        lines.append(f"  {name}: {summary}")
        lines.append("      parameters: " + (", ".join(f"{k}={v}" for k, v in params.items()) or "none"))
    return "\n".join(lines)


class LiveHelp(click.Command):
    """A command whose help text is built when shown, so it lists what the registries hold then."""

    def __init__(self, *args: Any, live_help: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.live_help = live_help

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.help = self.live_help()
        super().format_help_text(ctx, formatter)


params_option = click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Parameter of the kind chosen (repeatable).",
)


def human(value: Any, key: str = "") -> str:
    """A value as a person reads it: accuracies and rates as percentages, floats to 4 significant
    digits, mappings as ``k=v``, long lists shortened; nothing Python-specific."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, float):
        if any(w in key for w in ("accuracy", "fidelity", "rate", "fraction")) and 0 <= value <= 1:
            return f"{value:.2%}"
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={human(v, str(k))}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(human(v) for v in value[:8])
        return f"[{shown}{f', … ({len(value)} in all)' if len(value) > 8 else ''}]"
    return str(value)
