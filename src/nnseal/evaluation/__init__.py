"""The evaluation harness: regenerate the SSF paper's tables for every selection method."""

from nnseal.evaluation.config import ExperimentConfig, config_from_dict, load_config
from nnseal.evaluation.experiment import Results, run_experiment
from nnseal.evaluation.report import write_outputs


def evaluate(config: ExperimentConfig, progress: bool = True) -> Results:
    """Run an experiment and write its JSON, CSV, plots and report to ``config.out``."""
    results, pools = run_experiment(config, progress=progress)
    write_outputs(results, pools, config.out)
    return results


__all__ = [
    "ExperimentConfig",
    "Results",
    "config_from_dict",
    "evaluate",
    "load_config",
    "run_experiment",
]
