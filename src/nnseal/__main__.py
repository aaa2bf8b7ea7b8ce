"""``python -m nnseal``: the same command line as ``nnseal``."""

from nnseal.cli import main

main(prog_name="nnseal")
