"""Dataset loaders: real image-classification sets in their standard on-disk formats.

Every loader reads a folder the caller names (nothing is downloaded) and returns a :class:`Dataset`
whose ``x`` is float32 (N, C, H, W) in [0, 1] and whose ``y`` is int64 class indices.

Formats read:

- ``digits``: scikit-learn's bundled 8x8 digits (no files). Stratified 80/20 train/test split, seed 0.
- ``mnist``, ``fashion-mnist``: IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` gzipped
  (``.gz``) or raw; ``train-images.idx3-ubyte`` naming is accepted too. A big-endian header
  (magic 2051 images / 2049 labels, then the dimensions) is followed by the uint8 payload.
- ``cifar10``: the "binary version" ``data_batch_1..5.bin`` / ``test_batch.bin`` (+ ``batches.meta.txt``):
  records of one label byte and 3,072 pixel bytes (R, G, B planes, 32x32 row-major) — what
  ``scripts/fetch-cifar10.sh`` writes; or the "python version" ``data_batch_1..5`` / ``test_batch``
  (+ ``batches.meta``): pickled dicts with bytes keys, ``b"data"`` uint8 (N, 3072) and ``b"labels"``,
  read with a restricted unpickler that only builds plain containers and numpy arrays.
- ``gtsrb``: ``gtsrb32_{train,test}_x.npy[.xz]`` uint8 (N, 32, 32, 3) RGB and ``gtsrb32_{split}_y.npy``
  ClassIds 0..42, read with ``allow_pickle=False``. Class names come from ``signnames.csv`` if present.
- ``att-faces``: the AT&T/ORL layout ``sK/1.pgm .. 10.pgm`` (binary PGM "P5", 92x112), label K-1.
  There is no official split: images 1..8 of each subject are train, 9..10 are test.
- ``olivetti``: scikit-learn's legacy cache ``olivetti_py3.pkz``, a joblib "ZF" zlib-compressed pickle
  of uint8 (400, 4096). The same 40 subjects as att-faces at 64x64, in subject order, 10 images each;
  images 0..7 of each subject are train, 8..9 are test. Pixels are scaled by 1/255 (scikit-learn
  instead stretches min..max to 0..1).

``root`` may be the dataset's own folder or a parent holding it under its usual name (``mnist/``,
``att_faces/``, ``cifar-10-batches-py/`` ...). With ``verify_checksums=True`` every file whose official
md5 is known is hashed (once per process per path, size and mtime) and the item counts are compared
with the official release. Every problem with the data raises :class:`~nnseal.errors.DataError`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import lzma
import math
import os
import pickle
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnseal.errors import DataError
from nnseal.grid import DEFAULT_LEVELS, check_levels

__all__ = ["DATASETS", "SPLITS", "Dataset", "load_dataset"]

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "gtsrb", "att-faces", "olivetti")
SPLITS: tuple[str, ...] = ("train", "test")

_DIGIT_CLASSES = tuple(str(i) for i in range(10))
_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_GTSRB_NUM_CLASSES = 43

# Official md5s, checked only for files with exactly these names.
_KNOWN_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "gtsrb": {
        "gtsrb32_train_x.npy.xz": "b2363b644873b8c89002fea1eac6a639",
        "gtsrb32_train_y.npy": "949ee9da5067220cf4ce8e7dea47a830",
        "gtsrb32_test_x.npy.xz": "fb2b235fe4d6dd67a811ad9ba11a2797",
        "gtsrb32_test_y.npy": "41a898dcba8a0559780c4872a4d7dda3",
    },
    "olivetti": {"olivetti_py3.pkz": "a04f451e0599f366eef33a3646a1492f"},
    "cifar10": {  # the binary version, as in cifar-10-binary.tar.gz
        "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
        "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
        "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
        "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
        "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
        "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    },
}

# Item counts of the official releases (olivetti's fixed shape is checked when it is loaded).
_KNOWN_COUNTS: dict[str, dict[str, int]] = {
    "mnist": {"train": 60000, "test": 10000},
    "fashion-mnist": {"train": 60000, "test": 10000},
    "cifar10": {"train": 50000, "test": 10000},
    "gtsrb": {"train": 39209, "test": 12630},
    "att-faces": {"train": 320, "test": 80},
}

# Where a dataset usually lives below a parent folder, and a glob that shows a folder holds it.
_SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw"),
    "cifar10": ("cifar-10-batches-bin", "cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-bin"),
    "gtsrb": ("gtsrb",),
    "att-faces": ("att_faces", "att-faces"),
    "olivetti": ("olivetti",),
}
_MARKERS: dict[str, str] = {
    "mnist": "*-ubyte*",
    "fashion-mnist": "*-ubyte*",
    "cifar10": "*_batch*",
    "gtsrb": "gtsrb32_*",
    "att-faces": "s1",
    "olivetti": "*.pkz",
}


def _describe(a: object) -> str:
    """Short 'dtype shape' text for error messages."""
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image set ready for a classifier: ``x`` float32 (N, C, H, W) in [0, 1], ``y`` int64 (N,).

    Validated on creation so that every consumer can rely on the layout without re-checking it.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    levels: int = DEFAULT_LEVELS
    """The pixel grid: values are k / levels (8-bit images 255; scikit-learn's digits 16). Queries made
    from the data are rounded to it (:mod:`nnseal.grid`)."""

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        try:
            object.__setattr__(self, "levels", check_levels(self.levels))
        except ValueError as exc:
            raise DataError(f"dataset {self.name!r}: {exc}") from None
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
            raise DataError(
                f"dataset {self.name!r}: x must be a float32 (N, C, H, W) array, got {_describe(x)}"
            )
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
            raise DataError(f"dataset {self.name!r}: y must be an int64 (N,) array, got {_describe(y)}")
        if len(x) != len(y):
            raise DataError(f"dataset {self.name!r}: {len(x)} images but {len(y)} labels")
        classes = tuple(self.classes) if isinstance(self.classes, (list, tuple)) else None
        if not classes or not all(isinstance(c, str) for c in classes):
            raise DataError(f"dataset {self.name!r}: classes must be a non-empty sequence of names")
        object.__setattr__(self, "classes", classes)
        if x.size:
            lo, hi = float(x.min()), float(x.max())
            if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
                raise DataError(f"dataset {self.name!r}: pixel values must lie in [0, 1], got {lo}..{hi}")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise DataError(
                f"dataset {self.name!r}: labels must lie in 0..{len(classes) - 1}, "
                f"got {int(y.min())}..{int(y.max())}"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image, what a model's input layer needs."""
        _, c, h, w = self.x.shape
        return (int(c), int(h), int(w))

    def sample(self, n: int, seed: int) -> Dataset:
        """A seeded random ``n`` of the rows, in their original order (all of them if ``n >= len``):
        a subset that keeps every class even when the files are sorted by class (GTSRB)."""
        if n >= len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def subset(self, idx: slice | np.ndarray | Sequence[int]) -> Dataset:
        """Rows picked by an index array, boolean mask or slice; classes are kept so labels stay valid."""
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
            if idx.size == 0:
                idx = idx.astype(np.intp)
            if idx.ndim != 1 or not (idx.dtype == np.bool_ or np.issubdtype(idx.dtype, np.integer)):
                raise DataError(f"dataset {self.name!r}: subset needs a 1-D integer/boolean index or a slice")
        try:
            return Dataset(self.name, self.x[idx], self.y[idx], self.classes, self.levels)
        except IndexError as exc:
            raise DataError(
                f"dataset {self.name!r} has {len(self)} items: bad subset index ({exc})"
            ) from None


# --------------------------------------------------------------------------- shared helpers


def _to_unit_float(a: np.ndarray, maxval: float = 255.0) -> np.ndarray:
    """Integer pixels -> C-contiguous float32 in [0, 1]."""
    out = a.astype(np.float32, order="C")
    out /= np.float32(maxval)
    return out


def _labels(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def _find_file(dataset: str, folder: Path, names: Sequence[str]) -> Path:
    """First of ``names`` present in ``folder``; the error lists every accepted name."""
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise DataError(f"{dataset}: file not found in {folder}: expected one of {', '.join(names)}")


_md5_cache: dict[tuple[str, int, int], str] = {}


def _file_md5(path: Path) -> str:
    """md5 of a file, cached by (path, size, mtime) so a big file is hashed once per process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _md5_cache:
        h = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _md5_cache[key] = h.hexdigest()
    return _md5_cache[key]


def _check_md5(dataset: str, path: Path, verify: bool) -> None:
    expected = _KNOWN_MD5.get(dataset, {}).get(path.name)
    if not verify or expected is None:
        return
    try:
        got = _file_md5(path)
    except OSError as exc:
        raise DataError(f"{dataset}: cannot read {path} ({exc})") from None
    if got != expected:
        raise DataError(
            f"{dataset}: {path} md5 mismatch: expected {expected}, got {got} "
            "(file corrupt or not the official release)"
        )


def _check_count(dataset: str, split: str, n: int, where: Path, verify: bool) -> None:
    expected = _KNOWN_COUNTS.get(dataset, {}).get(split)
    if verify and expected is not None and n != expected:
        raise DataError(
            f"{dataset}: {where} holds {n} {split} items but the official release has {expected} "
            "(pass verify_checksums=False to load a partial or modified copy)"
        )


def _read_bytes(dataset: str, path: Path) -> bytes:
    """Whole file, gunzipped if it ends in .gz, with every I/O or decompression error as DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except EOFError:
        raise DataError(f"{dataset}: {path} is truncated (the gzip stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{dataset}: {path} is not a valid gzip file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{dataset}: cannot read {path} ({exc})") from None


_NP_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array-rebuilding function, whatever its module
_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    **{(mod, t.__name__): t for mod in ("builtins", "__builtin__") for t in (dict, list, str, bytes, int)},
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a callable outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only build plain containers and numpy arrays, so a pickle cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"global {module}.{name} is not allowed") from None


def _safe_unpickle(dataset: str, path: Path, data: bytes) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise DataError(
            f"{dataset}: refusing to load {path}: {exc} (only plain data and numpy arrays)"
        ) from None
    except Exception as exc:  # malformed pickles raise many types; none may escape as non-DataError
        raise DataError(
            f"{dataset}: {path} is truncated or not a valid pickle ({type(exc).__name__}: {exc})"
        ) from None


# --------------------------------------------------------------------------- digits


def _load_digits(split: str) -> Dataset:
    """scikit-learn's bundled digits; the split is fixed (stratified, seed 0) so results are comparable."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    train, test = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=0)
    sel = np.sort(train if split == "train" else test)
    x = (d.images[sel] / 16.0).astype(np.float32)[:, None]
    return Dataset("digits", np.ascontiguousarray(x), _labels(d.target[sel]), _DIGIT_CLASSES, levels=16)


# --------------------------------------------------------------------------- IDX (mnist, fashion-mnist)

_IDX_IMAGES, _IDX_LABELS = 2051, 2049


def _idx_names(prefix: str, kind: str, idx: str) -> tuple[str, ...]:
    return (
        f"{prefix}-{kind}-{idx}-ubyte.gz",
        f"{prefix}-{kind}-{idx}-ubyte",
        f"{prefix}-{kind}.{idx}-ubyte.gz",
        f"{prefix}-{kind}.{idx}-ubyte",
    )


def _parse_idx(dataset: str, path: Path, magic: int) -> np.ndarray:
    """IDX file -> uint8 array, checking magic and that the payload is exactly what the header says."""
    buf = _read_bytes(dataset, path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    kind = "images" if magic == _IDX_IMAGES else "labels"
    if len(buf) >= 4 and int.from_bytes(buf[:4], "big") != magic:
        got = int.from_bytes(buf[:4], "big")
        raise DataError(f"{dataset}: {path} is not an IDX {kind} file (magic {got}, expected {magic})")
    if len(buf) < header:
        raise DataError(
            f"{dataset}: {path} is truncated: expected a {header}-byte header, got {len(buf)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    expected = header + math.prod(dims)
    if len(buf) < expected:
        raise DataError(f"{dataset}: {path} is truncated: expected {expected} bytes, got {len(buf)}")
    if len(buf) > expected:
        raise DataError(f"{dataset}: {path} has {len(buf)} bytes but its header announces {expected}")
    return np.frombuffer(buf, np.uint8, offset=header).reshape(dims)


def _load_idx(name: str, folder: Path, split: str, verify: bool) -> Dataset:
    prefix = "train" if split == "train" else "t10k"
    img_path = _find_file(name, folder, _idx_names(prefix, "images", "idx3"))
    lbl_path = _find_file(name, folder, _idx_names(prefix, "labels", "idx1"))
    _check_md5(name, img_path, verify)
    _check_md5(name, lbl_path, verify)
    images = _parse_idx(name, img_path, _IDX_IMAGES)
    labels = _parse_idx(name, lbl_path, _IDX_LABELS)
    if len(images) != len(labels):
        raise DataError(f"{name}: {img_path} holds {len(images)} images but {lbl_path} {len(labels)} labels")
    if labels.size and labels.max() >= 10:
        raise DataError(f"{name}: {lbl_path} has label {int(labels.max())}, expected 0..9")
    _check_count(name, split, len(labels), lbl_path, verify)
    classes = _FASHION_CLASSES if name == "fashion-mnist" else _DIGIT_CLASSES
    return Dataset(name, _to_unit_float(images[:, None]), _labels(labels), classes)


# --------------------------------------------------------------------------- cifar10


def _get_key(d: dict[Any, Any], key: str) -> Any:
    """CIFAR dicts use bytes keys (Python 2 pickles); accept str keys from re-saved copies too."""
    return d[key.encode()] if key.encode() in d else d.get(key)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _safe_unpickle("cifar10", path, _read_bytes("cifar10", path))
    if not isinstance(obj, dict):
        raise DataError(f"cifar10: {path} does not hold a CIFAR batch dict (got {type(obj).__name__})")
    data, labels = _get_key(obj, "data"), _get_key(obj, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"cifar10: {path}: 'data' must be a uint8 (N, 3072) array, got {_describe(data)}")
    lab = np.asarray(labels) if isinstance(labels, list) else None
    if lab is None or (lab.size and not np.issubdtype(lab.dtype, np.integer)) or len(lab) != len(data):
        raise DataError(f"cifar10: {path}: 'labels' must be a list of {len(data)} integers")
    if lab.size and (lab.min() < 0 or lab.max() > 9):
        raise DataError(f"cifar10: {path}: labels must lie in 0..9, got {lab.min()}..{lab.max()}")
    return data.reshape(-1, 3, 32, 32), lab


def _cifar_classes(folder: Path) -> tuple[str, ...]:
    path = folder / "batches.meta"
    if not path.is_file():
        return _CIFAR_CLASSES
    meta = _safe_unpickle("cifar10", path, _read_bytes("cifar10", path))
    names = _get_key(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"cifar10: {path} has no list of 10 'label_names'")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


_CIFAR_RECORD = 1 + 3 * 32 * 32


def _cifar_bin(path: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """One binary-version batch: records of <label byte><R, G, B planes>."""
    _check_md5("cifar10", path, verify)
    buf = _read_bytes("cifar10", path)
    if not buf or len(buf) % _CIFAR_RECORD:
        raise DataError(
            f"cifar10: {path} has {len(buf)} bytes, not a whole number of {_CIFAR_RECORD}-byte records "
            "(1 label byte + 3072 pixel bytes)"
        )
    rec = np.frombuffer(buf, np.uint8).reshape(-1, _CIFAR_RECORD)
    if rec[:, 0].max() > 9:
        raise DataError(f"cifar10: {path}: labels must lie in 0..9, got up to {rec[:, 0].max()}")
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0]


def _cifar_bin_classes(folder: Path) -> tuple[str, ...]:
    path = folder / "batches.meta.txt"
    if not path.is_file():
        return _CIFAR_CLASSES
    names = tuple(n.strip() for n in _read_bytes("cifar10", path).decode("utf-8", "replace").splitlines())
    names = tuple(n for n in names if n)
    if len(names) != 10:
        raise DataError(f"cifar10: {path} must name 10 classes, one a line (found {len(names)})")
    return names


def _load_cifar10(name: str, folder: Path, split: str, verify: bool) -> Dataset:
    stems = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    binary = [f"{s}.bin" for s in stems]
    if all((folder / f).is_file() for f in binary):
        batches = [_cifar_bin(folder / f, verify) for f in binary]
        classes = _cifar_bin_classes(folder)
    elif all((folder / f).is_file() for f in stems):
        batches = [_cifar_batch(folder / f) for f in stems]
        classes = _cifar_classes(folder)
    else:
        raise DataError(
            f"cifar10: the {split} files are not in {folder}: expected the binary version "
            f"({', '.join(binary)}) or the python version ({', '.join(stems)}); "
            "scripts/fetch-cifar10.sh DEST makes the binary version"
        )
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    _check_count(name, split, len(y), folder, verify)
    return Dataset(name, _to_unit_float(x), _labels(y), classes)


# --------------------------------------------------------------------------- gtsrb


def _load_npy(dataset: str, path: Path) -> np.ndarray:
    """A .npy (optionally .xz-compressed) array, never unpickling objects."""
    try:
        if path.suffix == ".xz":
            with lzma.open(path) as f:
                arr = np.load(f, allow_pickle=False)
        else:
            arr = np.load(path, allow_pickle=False)
    except EOFError:
        raise DataError(f"{dataset}: {path} is truncated (the stream ends early)") from None
    except Exception as exc:  # a corrupt header can raise ValueError, SyntaxError, TokenError, LZMAError...
        raise DataError(f"{dataset}: {path} is truncated or not a valid .npy file ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{dataset}: {path} is not a single .npy array")
    return arr


def _gtsrb_classes(folder: Path) -> tuple[str, ...]:
    path = folder / "signnames.csv"
    if not path.is_file():
        return tuple(str(i) for i in range(_GTSRB_NUM_CLASSES))
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = {int(r["ClassId"]): r["SignName"].strip() for r in csv.DictReader(f)}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(
            f"gtsrb: {path} is not a ClassId,SignName table ({type(exc).__name__}: {exc})"
        ) from None
    if sorted(rows) != list(range(_GTSRB_NUM_CLASSES)):
        raise DataError(f"gtsrb: {path} must name exactly the ClassIds 0..{_GTSRB_NUM_CLASSES - 1}")
    return tuple(rows[i] for i in range(_GTSRB_NUM_CLASSES))


def _load_gtsrb(name: str, folder: Path, split: str, verify: bool) -> Dataset:
    x_path = _find_file(name, folder, (f"gtsrb32_{split}_x.npy.xz", f"gtsrb32_{split}_x.npy"))
    y_path = _find_file(name, folder, (f"gtsrb32_{split}_y.npy", f"gtsrb32_{split}_y.npy.xz"))
    _check_md5(name, x_path, verify)
    _check_md5(name, y_path, verify)
    x, y = _load_npy(name, x_path), _load_npy(name, y_path)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"gtsrb: {x_path} must hold a uint8 (N, H, W, 3) array, got {_describe(x)}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
        raise DataError(f"gtsrb: {y_path} must hold {len(x)} integer labels, got {_describe(y)}")
    if y.size and (y.min() < 0 or y.max() >= _GTSRB_NUM_CLASSES):
        raise DataError(
            f"gtsrb: {y_path} has labels {y.min()}..{y.max()}, expected 0..{_GTSRB_NUM_CLASSES - 1}"
        )
    _check_count(name, split, len(y), y_path, verify)
    return Dataset(name, _to_unit_float(x.transpose(0, 3, 1, 2)), _labels(y), _gtsrb_classes(folder))


# --------------------------------------------------------------------------- att-faces (PGM)

_WS = rb"(?:\s|#[^\n]*\n)+"  # whitespace and comments between PGM header fields
_PGM_HEADER = re.compile(rb"P5" + _WS + rb"(\d+)" + _WS + rb"(\d+)" + _WS + rb"(\d+)\s")


def _parse_pgm(dataset: str, path: Path) -> np.ndarray:
    """Binary PGM (P5) -> float32 (H, W) in [0, 1], honouring comments and maxval up to 65535."""
    data = _read_bytes(dataset, path)
    m = _PGM_HEADER.match(data)
    if m is None:
        what = (
            "has a malformed or truncated header"
            if data.startswith(b"P5")
            else "is not a binary PGM (P5) file"
        )
        raise DataError(f"{dataset}: {path} {what}")
    w, h, maxval = (int(g) for g in m.groups())
    if w < 1 or h < 1 or not 0 < maxval < 65536:
        raise DataError(f"{dataset}: {path} has an invalid PGM header ({w}x{h}, maxval {maxval})")
    dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
    need = w * h * dtype.itemsize
    payload = data[m.end() : m.end() + need]
    if len(payload) < need:
        raise DataError(f"{dataset}: {path} is truncated: expected {need} pixel bytes, got {len(payload)}")
    img = np.frombuffer(payload, dtype).reshape(h, w)
    if img.max() > maxval:
        raise DataError(f"{dataset}: {path} has pixel values above its maxval {maxval}")
    return _to_unit_float(img, maxval)


def _load_att_faces(name: str, folder: Path, split: str, verify: bool) -> Dataset:
    subjects = {
        int(m[1]): d for d in folder.iterdir() if d.is_dir() and (m := re.fullmatch(r"s([1-9]\d*)", d.name))
    }
    if not subjects:
        raise DataError(f"att-faces: no subject folders s1, s2, ... found in {folder}")
    if sorted(subjects) != list(range(1, len(subjects) + 1)):
        raise DataError(f"att-faces: subject folders in {folder} must be s1..sN without gaps")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for k in sorted(subjects):
        files = {
            int(m[1]): p for p in subjects[k].iterdir() if (m := re.fullmatch(r"([1-9]\d*)\.pgm", p.name))
        }
        if not files:
            raise DataError(f"att-faces: no 1.pgm, 2.pgm, ... files found in {subjects[k]}")
        for i in sorted(files):
            if (i <= 8) == (split == "train"):  # images 1..8 train, 9..10 test
                images.append(_parse_pgm(name, files[i]))
                labels.append(k - 1)
    if not images:
        raise DataError(
            f"att-faces: no {split} images (numbers {'1..8' if split == 'train' else '9..10'}) in {folder}"
        )
    if len({im.shape for im in images}) > 1:
        raise DataError(
            f"att-faces: images in {folder} differ in size: {sorted({im.shape for im in images})}"
        )
    _check_count(name, split, len(labels), folder, verify)
    classes = tuple(f"s{k}" for k in sorted(subjects))
    return Dataset(name, np.stack(images)[:, None], np.array(labels, dtype=np.int64), classes)


# --------------------------------------------------------------------------- olivetti

_ZF_MAGIC = b"ZF0x"
_ZF_HEADER_LEN = 2 + len(hex(2**64))  # b"ZF" + hex length padded with spaces, as joblib writes it


def _load_olivetti(name: str, folder: Path, split: str, verify: bool) -> Dataset:
    """Decode the legacy joblib "ZF" file ourselves so its pickle goes through the restricted unpickler."""
    path = _find_file(name, folder, ("olivetti_py3.pkz",))
    _check_md5(name, path, verify)
    raw = _read_bytes(name, path)
    if not raw.startswith(_ZF_MAGIC):
        raise DataError(f"olivetti: {path} is not a legacy joblib zlib file (it does not start with b'ZF0x')")
    try:
        length = int(raw[2:_ZF_HEADER_LEN].decode("ascii"), 16)
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"olivetti: {path} has a malformed ZF length header") from None
    body = raw[_ZF_HEADER_LEN:]
    if body[:1] == b" ":  # files from joblib <= 0.8.4 under Python 2 have one more padding byte
        body = body[1:]
    try:
        data = zlib.decompress(body, 15, max(length, 1))
    except zlib.error as exc:
        raise DataError(f"olivetti: {path} is truncated or corrupt ({exc})") from None
    if len(data) != length:
        raise DataError(f"olivetti: {path} is corrupt: expected {length} decompressed bytes, got {len(data)}")
    arr = _safe_unpickle(name, path, data)
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.shape != (400, 4096):
        raise DataError(f"olivetti: {path} must hold a uint8 (400, 4096) array, got {_describe(arr)}")
    faces = arr.reshape(400, 64, 64).transpose(0, 2, 1)  # scikit-learn's orientation
    keep = (np.arange(400) % 10 < 8) == (split == "train")  # images 0..7 of each subject train, 8..9 test
    classes = tuple(f"s{k}" for k in range(1, 41))
    return Dataset(name, _to_unit_float(faces[keep][:, None]), _labels(np.arange(400)[keep] // 10), classes)


# --------------------------------------------------------------------------- entry point

_LOADERS: dict[str, Callable[[str, Path, str, bool], Dataset]] = {
    "mnist": _load_idx,
    "fashion-mnist": _load_idx,
    "cifar10": _load_cifar10,
    "gtsrb": _load_gtsrb,
    "att-faces": _load_att_faces,
    "olivetti": _load_olivetti,
}


def _dataset_folder(name: str, root: str | os.PathLike[str]) -> Path:
    """``root`` itself if it holds the dataset's files, else its usual subfolder, else ``root``."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"{name}: dataset folder {folder} {what}")
    for cand in (folder, *(folder / s for s in _SUBFOLDERS[name])):
        if cand.is_dir() and any(cand.glob(_MARKERS[name])):
            return cand
    return folder


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    verify_checksums: bool = True,
) -> Dataset:
    """Load split ``"train"`` or ``"test"`` of dataset ``name`` from folder ``root`` (unused for digits).

    ``verify_checksums`` compares official md5s and item counts; turn it off for partial or re-encoded
    copies. Raises DataError for every problem with the name, split, folder or files.
    """
    if not isinstance(name, str) or name.strip().lower().replace("_", "-") not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    key = name.strip().lower().replace("_", "-")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {key}; use one of: {', '.join(SPLITS)}")
    if key == "digits":
        return _load_digits(split)
    if root is None:
        raise DataError(f"{key}: a root folder is required (the folder holding the {key} files)")
    return _LOADERS[key](key, _dataset_folder(key, root), split, verify_checksums)
