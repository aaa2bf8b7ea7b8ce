"""Shared fixtures: one LeNet trained on scikit-learn digits and one fingerprint of it, per session."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
import torch

from nnseal.data import Dataset, load_dataset
from nnseal.fingerprint import Fingerprint
from nnseal.methods import SensitiveSampleFingerprinter
from nnseal.models import Classifier, train_model

torch.set_num_threads(2)

FP_SPECS = ("top1", "top3", "top1-p2", "top1-p4")
LIBRARY_CACHES = {"torchinductor_root", ".ses"}
"""Kept in the temp folder by the libraries themselves, by design: torch's compile cache (ONNX export
goes through torch.export) and ONNX Runtime's session-id file."""


@pytest.fixture(autouse=True, scope="session")
def _temp_folder_left_clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every temporary file nnseal (or a server it starts) makes goes to one folder for the session,
    which must be empty at the end: nothing may leak into the machine's temp folder."""
    folder = tmp_path_factory.mktemp("tempdir")
    patch = pytest.MonkeyPatch()
    patch.setenv("TMPDIR", str(folder))
    patch.setattr(tempfile, "tempdir", str(folder))
    yield
    patch.undo()
    left = sorted(p.name for p in folder.iterdir() if p.name not in LIBRARY_CACHES)
    assert not left, f"tests left files in the temp folder: {left[:10]}"


@pytest.fixture(autouse=True, scope="session")
def _key_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep every test's signing keys out of the real home folder, and no HMAC key from outside."""
    patch = pytest.MonkeyPatch()
    patch.setenv("NNSEAL_HOME", str(tmp_path_factory.mktemp("nnseal-home")))
    patch.delenv("NNSEAL_HMAC_KEY", raising=False)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def digits() -> tuple[Dataset, Dataset]:
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


@pytest.fixture(scope="session")
def model(digits: tuple[Dataset, Dataset]) -> Classifier:
    return train_model(digits[0], "lenet", epochs=20, seed=0, progress=False)


@pytest.fixture(scope="session")
def fingerprint(model: Classifier, digits: tuple[Dataset, Dataset]) -> Fingerprint:
    method = SensitiveSampleFingerprinter(n_queries=20, pool_size=200, steps=500, seed=0, specs=FP_SPECS)
    return method.fingerprint(model, digits[1])
