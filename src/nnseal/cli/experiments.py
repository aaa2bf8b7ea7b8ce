"""Commands that run whole experiments: ``demo`` and ``evaluate``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nnseal.cli.app import main


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
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default: the config's).")
@click.option(
    "--root", type=click.Path(path_type=Path), help="Dataset folder (default: the config's [data] root)."
)
@click.option(
    "--scheduler",
    metavar="local:N|tcp://HOST:PORT",
    help="Run pools, serving checks and attacked models as Dask tasks: N worker processes here, or "
    "the workers of a running Dask scheduler; everything computes with one torch thread. "
    "Default: serial, in this process.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(config: Path, out: Path | None, root: Path | None, scheduler: str | None, quiet: bool) -> None:
    """Run the experiment in CONFIG (TOML): methods × attacks × budgets × output specs.

    Writes results.json, curves.csv, plots and report.md. Relative paths in the config are taken
    relative to the config file. Attacked models are cached in OUT/cache: a rerun (after a kill,
    say) computes only the missing ones.
    """
    from nnseal.evaluation import load_config, run_experiment
    from nnseal.evaluation.report import write_outputs

    cfg = load_config(config)
    if out is not None:
        cfg.out = str(out)
    if root is not None:
        cfg.data.root = str(root)
    results, pools = run_experiment(cfg, progress=not quiet, scheduler=scheduler)
    write_outputs(results, pools, cfg.out)
    click.echo(f"wrote {Path(cfg.out) / 'report.md'} ({results.timings['total_s']:.0f} s)")
