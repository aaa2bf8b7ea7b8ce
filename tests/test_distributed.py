"""``nnseal evaluate --scheduler``: Dask runs give the serial results, killed runs resume from the
cache, failing units are named, and local clusters listen on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from nnseal.cli import main
from nnseal.errors import NnsealError
from nnseal.evaluation import config_from_dict, run_experiment, sweep
from nnseal.evaluation.report import write_outputs
from nnseal.models import Classifier, save_model

ATTACKS = [
    {"name": "edit", "kind": "modify-weights", "params": {"k": 40, "relative": 0.5}},
    {"name": "4bit", "kind": "quantize-bits", "params": {"bits": 4}, "seeds": 2},
]
UNITS = [f"attack {a!r} seed {s}" for a, n in (("edit", 3), ("4bit", 2)) for s in range(0, 1000 * n, 1000)]


class Killed(BaseException):
    """What a kill looks like to the sweep: not an error of the unit, so nothing catches it."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, model: Classifier) -> Path:
    """Every run writes to the same ``out`` (so results.json files can match byte for byte)."""
    folder = tmp_path_factory.mktemp("distributed")
    save_model(model, folder / "model.safetensors")
    return folder


def _config(run_dir: Path, attacks: list[dict[str, Any]] = ATTACKS) -> Any:
    return config_from_dict(
        {
            "name": "distributed",
            "out": str(run_dir / "out"),
            "model": {"path": str(run_dir / "model.safetensors")},
            "fingerprint": {"pool": 40, "bag": 20, "steps": 20, "natural_pool": 40},
            "evaluation": {
                "specs": ["top1", "top1-p2"],
                "n_max": 10,
                "manc_bags": 2,
                "seeds_per_attack": 3,
                "false_alarm_batch_sizes": [7, 64],
                "false_alarm_threads": [1],
                "false_alarm_fingerprints": 1,
                "accuracy_models": 1,
            },
            "attacks": attacks,
        }
    )


def _evaluate(run_dir: Path, scheduler: str | None = None, fresh: bool = True, **kwargs: Any) -> str:
    """Run (serially with one torch thread, as a Dask run computes); results.json without timings."""
    out = run_dir / "out"
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    with sweep.torch_threads(1):
        results, pools = run_experiment(_config(run_dir, **kwargs), progress=False, scheduler=scheduler)
    write_outputs(results, pools, out)
    saved = json.loads((out / "results.json").read_text())
    del saved["timings"]
    for summary in (*saved["pools"].values(), *saved["markers"].values()):
        del summary["generation_s"]  # wall time too
    return json.dumps(saved, indent=1)


def _answers(cache: Path) -> dict[str, dict[str, np.ndarray]]:
    answers = {}
    for f in sorted(cache.glob("*.npz")):
        with np.load(f) as arrays:
            answers[f.name] = dict(arrays)
    return answers


@pytest.fixture(scope="module")
def serial(run_dir: Path) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """The reference: a serial run's results and its cached answers."""
    return _evaluate(run_dir), _answers(run_dir / "out" / "cache")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, set[tuple[str, int]]]]:
    """A one-worker local cluster, and what this process listened on before it started."""
    before = _listening(psutil.Process())
    with sweep.dask_client("local:1") as client:
        yield client, before


def _listening(process: psutil.Process) -> set[tuple[str, int]]:
    return {c.laddr[:2] for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN}


def test_local_cluster_gives_the_serial_results(run_dir: Path, serial: tuple[str, dict]) -> None:
    results, answers = serial
    assert _evaluate(run_dir, "local:2") == results
    computed = _answers(run_dir / "out" / "cache")  # same keys: same pools, made on the workers
    assert computed.keys() == answers.keys() and len(computed) == len(UNITS)
    for name, arrays in computed.items():
        assert arrays.keys() == answers[name].keys()
        assert all(np.array_equal(a, answers[name][k]) for k, a in arrays.items()), name  # bitwise


def test_killed_run_resumes_with_the_missing_units(
    run_dir: Path, serial: tuple[str, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    attacked = sweep._attacked

    def kill_after(k: int) -> None:
        def unit(u: sweep.Unit, *args: Any) -> sweep.Outcome:
            if len(ran) == k:
                raise Killed
            ran.append(u.label())
            return attacked(u, *args)

        monkeypatch.setattr(sweep, "_attacked", unit)

    kill_after(2)
    with pytest.raises(Killed):
        _evaluate(run_dir)
    assert ran == UNITS[:2] and len(list((run_dir / "out" / "cache").glob("*.npz"))) == 2
    ran.clear()
    kill_after(len(UNITS))
    assert _evaluate(run_dir, fresh=False) == serial[0]
    assert ran == UNITS[2:]


def test_failing_units_are_named_and_the_rest_kept(
    run_dir: Path, serial: tuple[str, dict], cluster: tuple[Any, set], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = {"name": "broken", "kind": "modify-weights", "params": {"no_such_parameter": 1}}
    address = cluster[0].scheduler.address  # a running scheduler, as tcp://HOST:PORT
    with pytest.raises(sweep.UnitFailed) as failed:
        _evaluate(run_dir, address, attacks=[*ATTACKS, broken])
    message = str(failed.value)
    assert "3 attacked model(s) failed (5 of 8 finished" in message
    for seed in (0, 1000, 2000):
        assert f"attack 'broken' seed {seed}: ValueError: unknown parameter" in message
    ran: list[str] = []
    monkeypatch.setattr(sweep, "_attacked", lambda u, *a: ran.append(u.label()))
    assert _evaluate(run_dir, fresh=False) == serial[0] and not ran  # every finished unit was cached


def test_local_clusters_listen_on_localhost_only(cluster: tuple[Any, set]) -> None:
    client, before = cluster
    info = client.scheduler_info()
    addresses = [info["address"], *info["workers"], *(w["nanny"] for w in info["workers"].values())]
    assert info["workers"] and all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
    opened = _listening(psutil.Process()) - before  # the scheduler and nannies run in this process
    opened |= {a for pid in client.run(os.getpid).values() for a in _listening(psutil.Process(pid))}
    assert opened and {host for host, _ in opened} == {"127.0.0.1"}, opened


def test_workers_must_run_one_thread() -> None:
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
        dashboard_address=None,
    ) as threaded:  # fmt: skip
        with pytest.raises(NnsealError, match="run 2 threads; each must run one"):
            with sweep.dask_client(threaded.scheduler_address):
                pass


@pytest.mark.parametrize(
    "text",
    ["", "local", "local:0", "local:-1", "local:two", "tcp://", "tcp://host", "tcp://host:0",
     "tcp://host:70000", "tcp://host:8786/path", "http://host:8786", "127.0.0.1:8786"],
)  # fmt: skip
def test_bad_schedulers_are_refused(text: str) -> None:
    with pytest.raises(NnsealError, match=r"expected local:N .* or tcp://HOST:PORT"):
        sweep.parse_scheduler(text)


def test_schedulers_parse() -> None:
    assert sweep.parse_scheduler("local:3") == 3
    for address in ("tcp://10.0.0.5:8786", "tcp://[::1]:8786", "tcp://scheduler.lan:8786"):
        assert sweep.parse_scheduler(address) == address


def test_cli_refuses_a_bad_scheduler_before_any_work(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "examples" / "digits.toml"
    args = ["evaluate", str(config), "--out", str(tmp_path / "out"), "--scheduler", "local:none"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "scheduler 'local:none': expected local:N" in r.stderr
    assert not (tmp_path / "out").exists()
