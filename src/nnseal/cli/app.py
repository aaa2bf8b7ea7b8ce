"""The ``nnseal`` command group and how every command ends.

Exit codes: 0 intact / success, 1 tampered, 3 inconclusive (``watermark verify``: 0 watermarked,
1 not watermarked, 3 inconclusive) — each only ever from a decision. 2: bad input or usage, one line
on stderr. 4: an internal error (one line; ``--debug`` shows the traceback). 130 / 143: interrupted
by SIGINT / SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from nnseal.errors import NnsealError

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
    """Black-box tamper detection and ownership checks for neural-network classifiers.

    Shell completion: add `eval "$(_NNSEAL_COMPLETE=bash_source nnseal)"` to ~/.bashrc
    (zsh: zsh_source in ~/.zshrc; fish: `_NNSEAL_COMPLETE=fish_source nnseal | source`).
    """
