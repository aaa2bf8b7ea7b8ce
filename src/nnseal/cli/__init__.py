"""The ``nnseal`` command line: a thin layer that parses, calls the library and prints.

One module per group of commands; :mod:`nnseal.cli.app` holds the group and how every command ends
(exit codes), :mod:`nnseal.cli.options` the options they share, :mod:`nnseal.cli.http` the remote
target options. Importing this package registers every command on :data:`main`.
"""

from nnseal.cli import attacks, experiments, integrity, models, ownership, protect  # noqa: F401  (registers commands)
from nnseal.cli.app import INPUT_ERROR, INTERNAL_ERROR, Interrupted, main

__all__ = ["INPUT_ERROR", "INTERNAL_ERROR", "Interrupted", "main"]
