"""Tests for nnseal.data: small generated files for every format and error path, plus real-data checks
that run only when the shared data folder (``shared/data`` beside the repository) is present."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnseal import data as data_mod
from nnseal.data import DATASETS, Dataset, load_dataset
from nnseal.errors import DataError, NnsealError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data is not present")


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, arr: np.ndarray, magic: int) -> Path:
    """Write ``arr`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    raw = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_mnist(folder: Path, prefix: str, n: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, 2051)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, 2049)
    return images, labels


def write_pgm(path: Path, img: np.ndarray, comment: bool = False) -> None:
    h, w = img.shape
    header = b"P5\n" + (b"# made by a test\n" if comment else b"") + f"{w} {h}\n255\n".encode()
    path.write_bytes(header + img.astype(np.uint8).tobytes())


def write_zf(path: Path, payload: bytes) -> None:
    """A legacy joblib "ZF" file, as joblib's write_zfile writes it."""
    path.write_bytes(b"ZF" + hex(len(payload)).ljust(19).encode() + zlib.compress(payload))


def cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"synthetic",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


class _Py2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 ``str`` opcodes, the way the official CIFAR-10 batches were made."""

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        short = n < 256
        self.write(pickle.SHORT_BINSTRING + bytes([n]) if short else pickle.BINSTRING + struct.pack("<i", n))
        self.write(obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin-1"))

    dispatch: ClassVar[dict[type, Any]] = {**pickle._Pickler.dispatch, bytes: save_bytes, str: save_str}


def py2_pickle(obj: object) -> bytes:
    """Protocol-2 pickle as Python 2 + numpy 1.x wrote it (str opcodes, numpy.core module path)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


class _Evil:
    """Pickles to a call of os.system: loading it must be refused, never executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- Dataset and load_dataset


def test_digits_shapes_split_and_determinism() -> None:
    train = load_dataset("digits")
    test = load_dataset("digits", split="test")
    assert train.x.shape[1:] == (1, 8, 8) and train.input_shape == (1, 8, 8)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert 0.0 <= train.x.min() and train.x.max() == 1.0
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.classes == tuple(str(i) for i in range(10))
    assert np.all(np.bincount(test.y, minlength=10) >= 35)  # stratified
    again = load_dataset("digits", root="/ignored", split="test")
    assert np.array_equal(again.x, test.x) and np.array_equal(again.y, test.y)


def test_dataset_validation_and_subset() -> None:
    x = np.zeros((4, 1, 2, 2), np.float32)
    y = np.array([0, 1, 2, 1], np.int64)
    ds = Dataset("t", x, y, ("a", "b", "c"))
    sub = ds.subset(np.array([0, 2]))
    assert len(sub) == 2 and list(sub.y) == [0, 2] and sub.classes == ds.classes
    assert len(ds.subset(slice(1, 3))) == 2 and len(ds.subset(y == 1)) == 2 and len(ds.subset([])) == 0
    with pytest.raises(DataError, match="subset"):
        ds.subset(np.array([9]))
    with pytest.raises(DataError, match="float32"):
        Dataset("t", x.astype(np.float64), y, ("a", "b", "c"))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        Dataset("t", x + 2, y, ("a", "b", "c"))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        Dataset("t", np.full_like(x, np.nan), y, ("a", "b", "c"))
    with pytest.raises(DataError, match="int64"):
        Dataset("t", x, y.astype(np.int32), ("a", "b", "c"))
    with pytest.raises(DataError, match="labels"):
        Dataset("t", x, y[:3], ("a", "b", "c"))
    with pytest.raises(DataError, match=r"0\.\.1"):
        Dataset("t", x, y, ("a", "b"))


def test_bad_name_split_root(tmp_path: Path) -> None:
    assert issubclass(DataError, NnsealError)
    with pytest.raises(DataError, match="known datasets: digits, mnist"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DataError, match="split 'val'"):
        load_dataset("mnist", tmp_path, split="val")
    with pytest.raises(DataError, match="root folder is required"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("gtsrb", tmp_path / "nowhere")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("gtsrb", tmp_path / "file")
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10", "gtsrb", "att-faces", "olivetti"}


# --------------------------------------------------------------------------- IDX


def test_idx_raw_and_gz(tmp_path: Path) -> None:
    images, labels = write_mnist(tmp_path, "train", 5, gz=False)
    timg, tlab = write_mnist(tmp_path, "t10k", 3, gz=True, seed=1)
    train = load_dataset("mnist", tmp_path, "train", verify_checksums=False)
    assert train.x.shape == (5, 1, 4, 3) and train.x.dtype == np.float32
    assert np.allclose(train.x[:, 0] * 255, images) and np.array_equal(train.y, labels)
    test = load_dataset("fashion-mnist", tmp_path, "test", verify_checksums=False)
    assert np.allclose(test.x[:, 0] * 255, timg) and np.array_equal(test.y, tlab)
    assert test.classes[0] == "T-shirt/top" and test.classes[9] == "Ankle boot"


def test_idx_alternative_naming_and_parent_root(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images.idx3-ubyte", rng.integers(0, 256, (2, 2, 2), dtype=np.uint8), 2051)
    write_idx(folder / "train-labels.idx1-ubyte", np.array([3, 4], np.uint8), 2049)
    ds = load_dataset("mnist", tmp_path, verify_checksums=False)  # found in the usual subfolder
    assert list(ds.y) == [3, 4]


def test_idx_official_counts_checked(tmp_path: Path) -> None:
    write_mnist(tmp_path, "train", 5, gz=False)
    with pytest.raises(DataError, match="official release has 60000"):
        load_dataset("mnist", tmp_path)


def test_idx_truncated(tmp_path: Path) -> None:
    write_mnist(tmp_path, "train", 5, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is truncated: expected 76 bytes, got 69"):
        load_dataset("mnist", tmp_path, verify_checksums=False)
    p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", tmp_path, verify_checksums=False)


def test_idx_truncated_and_corrupt_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, "t10k", 50, gz=True)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    good = p.read_bytes()
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz is truncated"):
        load_dataset("mnist", tmp_path, "test", verify_checksums=False)
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a valid gzip"):
        load_dataset("mnist", tmp_path, "test", verify_checksums=False)


def test_idx_wrong_magic_and_trailing_bytes(tmp_path: Path) -> None:
    write_mnist(tmp_path, "train", 5, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((5, 1, 1), np.uint8), 2051)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is not an IDX labels file \(magic 2051"):
        load_dataset("mnist", tmp_path, verify_checksums=False)
    p = tmp_path / "train-labels-idx1-ubyte"
    write_idx(p, np.zeros(5, np.uint8), 2049)
    p.write_bytes(p.read_bytes() + b"xx")
    with pytest.raises(DataError, match="header announces 13"):
        load_dataset("mnist", tmp_path, verify_checksums=False)


def test_idx_missing_file_and_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, "t10k", 4, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"not found in .*t10k-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", tmp_path, "test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), 2049)
    with pytest.raises(DataError, match=r"4 images but .* 3 labels"):
        load_dataset("mnist", tmp_path, "test", verify_checksums=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(4, 10, np.uint8), 2049)
    with pytest.raises(DataError, match="label 10"):
        load_dataset("mnist", tmp_path, "test", verify_checksums=False)


def test_checksum_mismatch_and_opt_out(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, 2, 2), dtype=np.uint8), 2051)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3], np.uint8), 2049)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz md5 mismatch: expected ec29112d"):
        load_dataset("mnist", tmp_path, "test")
    assert list(load_dataset("mnist", tmp_path, "test", verify_checksums=False).y) == [1, 2, 3]


def test_md5_cache_keyed_by_size_and_mtime(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert data_mod._file_md5(p) == "900150983cd24fb0d6963f7d28e17f72"
    key = next(k for k in data_mod._md5_cache if k[0] == str(p.resolve()))
    data_mod._md5_cache[key] = "cached"
    assert data_mod._file_md5(p) == "cached"  # not re-hashed
    p.write_bytes(b"abcd")
    assert data_mod._file_md5(p) == "e2fc714c4727ee9395f324cd2e7f331f"


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_batches(tmp_path: Path) -> None:
    batches = [cifar_batch(3, seed) for seed in range(5)]
    for i, b in enumerate(batches, 1):
        (tmp_path / f"data_batch_{i}").write_bytes(py2_pickle(b))  # like the official files
    (tmp_path / "test_batch").write_bytes(pickle.dumps(cifar_batch(2, 9), protocol=4))
    train = load_dataset("cifar10", tmp_path, verify_checksums=False)
    assert train.x.shape == (15, 3, 32, 32) and train.y.dtype == np.int64
    assert np.allclose(train.x[3] * 255, batches[1][b"data"][0].reshape(3, 32, 32))
    assert list(train.y[:3]) == batches[0][b"labels"]
    assert train.classes[0] == "airplane"  # default names without batches.meta
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
    (tmp_path / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    test = load_dataset("cifar10", tmp_path, "test", verify_checksums=False)
    assert len(test) == 2 and test.classes == tuple(f"c{i}" for i in range(10))
    with pytest.raises(DataError, match="official release has 10000"):
        load_dataset("cifar10", tmp_path, "test")


def test_cifar_missing_and_malformed(tmp_path: Path) -> None:
    (tmp_path / "test_batch").write_bytes(pickle.dumps(cifar_batch(2, 0), protocol=4)[:-20])
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="test_batch is truncated or not a valid pickle"):
        load_dataset("cifar10", tmp_path, "test")
    bad = cifar_batch(2, 0)
    bad[b"data"] = np.zeros((2, 10), np.uint8)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad, protocol=4))
    with pytest.raises(DataError, match=r"uint8 \(N, 3072\)"):
        load_dataset("cifar10", tmp_path, "test")


def test_cifar_refuses_code_in_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = {b"data": _Evil(marker), b"labels": []}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(DataError, match=r"refusing to load .*test_batch: global \w+\.system is not allowed"):
        load_dataset("cifar10", tmp_path, "test")
    assert not marker.exists()


def write_cifar_bin(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A binary-version batch of ``n`` records, as the official files and the fetch script write them."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    path.write_bytes(np.concatenate([y[:, None], x.reshape(n, -1)], 1).tobytes())
    return x, y


def test_cifar_binary_version(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"  # the fetch script's layout under DEST
    folder.mkdir()
    written = [write_cifar_bin(folder / f"data_batch_{i}.bin", 2, i) for i in range(1, 6)]
    xt, yt = write_cifar_bin(folder / "test_batch.bin", 3, 9)
    train = load_dataset("cifar10", tmp_path, verify_checksums=False)  # found below the parent
    assert train.x.shape == (10, 3, 32, 32) and train.x.dtype == np.float32 and train.levels == 255
    assert np.array_equal(np.rint(train.x[2] * 255).astype(np.uint8), written[1][0][0])  # planes in CHW
    assert list(train.y) == [int(v) for _, y in written for v in y]
    assert train.classes == (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    (folder / "batches.meta.txt").write_text("\n".join(f"k{i}" for i in range(10)) + "\n\n")
    test = load_dataset("cifar10", folder, "test", verify_checksums=False)
    assert np.array_equal(np.rint(test.x * 255).astype(np.uint8), xt) and list(test.y) == list(yt)
    assert test.classes == tuple(f"k{i}" for i in range(10))
    with pytest.raises(DataError, match=r"test_batch\.bin md5 mismatch"):  # not the official file
        load_dataset("cifar10", folder, "test")


def test_cifar_binary_malformed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"expected the binary version \(test_batch.bin\) or the python"):
        load_dataset("cifar10", tmp_path, "test")
    write_cifar_bin(tmp_path / "test_batch.bin", 2, 0)
    raw = (tmp_path / "test_batch.bin").read_bytes()
    (tmp_path / "test_batch.bin").write_bytes(raw[:-1])
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        load_dataset("cifar10", tmp_path, "test", verify_checksums=False)
    (tmp_path / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DataError, match="has 0 bytes"):
        load_dataset("cifar10", tmp_path, "test", verify_checksums=False)
    (tmp_path / "test_batch.bin").write_bytes(bytes([10]) + raw[1:])
    with pytest.raises(DataError, match=r"labels must lie in 0..9, got up to 10"):
        load_dataset("cifar10", tmp_path, "test", verify_checksums=False)
    (tmp_path / "test_batch.bin").write_bytes(raw)
    (tmp_path / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="must name 10 classes"):
        load_dataset("cifar10", tmp_path, "test", verify_checksums=False)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=4 * 3073))
def test_cifar_binary_any_bytes(tmp_path_factory: pytest.TempPathFactory, payload: bytes) -> None:
    """Whatever a batch file holds, loading gives a valid dataset or a DataError."""
    folder = tmp_path_factory.mktemp("cifar")
    (folder / "test_batch.bin").write_bytes(payload)
    try:
        ds = load_dataset("cifar10", folder, "test", verify_checksums=False)
    except DataError:
        return
    assert len(payload) == 3073 * len(ds) and ds.y.max() <= 9


# --------------------------------------------------------------------------- PGM (att-faces)


def test_att_faces_pgm(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 10, 4, 5), dtype=np.uint8)  # 2 subjects x 10 images of 4x5
    for s in range(2):
        (tmp_path / f"s{s + 1}").mkdir()
        for i in range(10):
            write_pgm(tmp_path / f"s{s + 1}" / f"{i + 1}.pgm", imgs[s, i], comment=(i == 0))
    train = load_dataset("att_faces", tmp_path, verify_checksums=False)
    test = load_dataset("att-faces", tmp_path, "test", verify_checksums=False)
    assert train.x.shape == (16, 1, 4, 5) and len(test) == 4
    assert list(train.y) == [0] * 8 + [1] * 8 and list(test.y) == [0, 0, 1, 1]
    assert train.classes == ("s1", "s2")
    assert np.allclose(train.x[:8, 0] * 255, imgs[0, :8]) and np.allclose(test.x[3, 0] * 255, imgs[1, 9])
    with pytest.raises(DataError, match="official release has 320"):
        load_dataset("att-faces", tmp_path)


def test_att_faces_bad_pgm(tmp_path: Path) -> None:
    (tmp_path / "s1").mkdir()
    p = tmp_path / "s1" / "1.pgm"
    p.write_bytes(b"P5\n5 4\n255\n" + bytes(7))
    with pytest.raises(DataError, match=r"1\.pgm is truncated: expected 20 pixel bytes, got 7"):
        load_dataset("att-faces", tmp_path, verify_checksums=False)
    p.write_bytes(b"P2\n5 4\n255\n" + b"0 " * 20)
    with pytest.raises(DataError, match="not a binary PGM"):
        load_dataset("att-faces", tmp_path, verify_checksums=False)
    with pytest.raises(DataError, match="no subject folders"):
        load_dataset("att-faces", tmp_path / "s1", verify_checksums=False)


# --------------------------------------------------------------------------- gtsrb


def test_gtsrb_npy_and_xz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 4, 5, 3), dtype=np.uint8)
    y = np.array([0, 42, 1, 2, 3, 4], np.uint8)
    with lzma.open(tmp_path / "gtsrb32_train_x.npy.xz", "wb") as f:
        np.save(f, x)
    np.save(tmp_path / "gtsrb32_train_y.npy", y)
    np.save(tmp_path / "gtsrb32_test_x.npy", x[:2])
    np.save(tmp_path / "gtsrb32_test_y.npy", y[:2])
    train = load_dataset("gtsrb", tmp_path, verify_checksums=False)
    assert train.x.shape == (6, 3, 4, 5) and train.x.flags.c_contiguous
    assert np.allclose(train.x * 255, x.transpose(0, 3, 1, 2)) and np.array_equal(train.y, y)
    assert train.classes == tuple(str(i) for i in range(43))
    rows = "ClassId,SignName\n" + "".join(f"{i},Sign {i}\n" for i in range(43))
    (tmp_path / "signnames.csv").write_text(rows)
    test = load_dataset("gtsrb", tmp_path, "test", verify_checksums=False)
    assert len(test) == 2 and test.classes[42] == "Sign 42"
    (tmp_path / "signnames.csv").write_text("ClassId,SignName\n0,Only one\n")
    with pytest.raises(DataError, match=r"signnames\.csv must name exactly"):
        load_dataset("gtsrb", tmp_path, "test", verify_checksums=False)


def test_gtsrb_bad_files(tmp_path: Path) -> None:
    np.save(tmp_path / "gtsrb32_test_x.npy", np.zeros((2, 4, 4, 3), np.uint8))
    np.save(tmp_path / "gtsrb32_test_y.npy", np.array([0, 43], np.uint8))
    with pytest.raises(DataError, match=r"expected 0\.\.42"):
        load_dataset("gtsrb", tmp_path, "test", verify_checksums=False)
    np.save(tmp_path / "gtsrb32_test_y.npy", np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match=r"gtsrb32_test_y\.npy is truncated or not a valid \.npy"):
        load_dataset("gtsrb", tmp_path, "test", verify_checksums=False)
    (tmp_path / "gtsrb32_test_x.npy").unlink()
    xz = tmp_path / "gtsrb32_test_x.npy.xz"
    xz.write_bytes(lzma.compress(b"\x93NUMPY" + bytes(500))[:40])
    with pytest.raises(DataError, match=r"gtsrb32_test_x\.npy\.xz is truncated"):
        load_dataset("gtsrb", tmp_path, "test", verify_checksums=False)
    with pytest.raises(DataError, match=r"gtsrb32_train_x\.npy\.xz, gtsrb32_train_x\.npy"):
        load_dataset("gtsrb", tmp_path, "train")


# --------------------------------------------------------------------------- olivetti


def test_olivetti_synthetic_zf(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (400, 4096), dtype=np.uint8)
    write_zf(tmp_path / "olivetti_py3.pkz", pickle.dumps(arr, protocol=3))
    train = load_dataset("olivetti", tmp_path, verify_checksums=False)
    test = load_dataset("olivetti", tmp_path, "test", verify_checksums=False)
    assert train.x.shape == (320, 1, 64, 64) and len(test) == 80 and len(train.classes) == 40
    assert list(train.y[:9]) == [0] * 8 + [1] and list(test.y[:3]) == [0, 0, 1]
    faces = arr.reshape(400, 64, 64).transpose(0, 2, 1)
    assert np.allclose(test.x[0, 0] * 255, faces[8]) and np.allclose(train.x[8, 0] * 255, faces[10])
    with pytest.raises(DataError, match="md5 mismatch"):
        load_dataset("olivetti", tmp_path)


def test_olivetti_refuses_non_zf_and_code(tmp_path: Path) -> None:
    p = tmp_path / "olivetti_py3.pkz"
    p.write_bytes(pickle.dumps(np.zeros((400, 4096), np.uint8)))
    with pytest.raises(DataError, match="does not start with b'ZF0x'"):
        load_dataset("olivetti", tmp_path, verify_checksums=False)
    marker = tmp_path / "pwned"
    write_zf(p, pickle.dumps(_Evil(marker)))
    with pytest.raises(DataError, match="is not allowed"):
        load_dataset("olivetti", tmp_path, verify_checksums=False)
    assert not marker.exists()
    write_zf(p, pickle.dumps(np.zeros((10, 10), np.uint8)))
    with pytest.raises(DataError, match=r"uint8 \(400, 4096\)"):
        load_dataset("olivetti", tmp_path, verify_checksums=False)
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("olivetti", tmp_path, verify_checksums=False)


# --------------------------------------------------------------------------- real data (shared/data)


@needs_shared
def test_real_mnist_test() -> None:
    ds = load_dataset("mnist", SHARED / "mnist", "test")
    assert ds.x.shape == (10000, 1, 28, 28)
    assert list(np.bincount(ds.y)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_shared
def test_real_fashion_mnist_test() -> None:
    ds = load_dataset("fashion-mnist", SHARED / "fashion-mnist", "test")
    assert len(ds) == 10000 and list(np.bincount(ds.y)) == [1000] * 10
    assert ds.classes[0] == "T-shirt/top"


@needs_shared
def test_real_gtsrb_test() -> None:
    ds = load_dataset("gtsrb", SHARED / "gtsrb", "test")
    assert ds.x.shape == (12630, 3, 32, 32) and len(ds.classes) == 43
    assert len(np.unique(ds.y)) == 43 and ds.classes[0] == "Speed limit (20km/h)"


@needs_shared
def test_real_att_faces() -> None:
    train = load_dataset("att-faces", SHARED / "att_faces")
    test = load_dataset("att-faces", SHARED, "test")  # parent folder: found under att_faces/
    assert (len(train), len(test)) == (320, 80) and train.input_shape == (1, 112, 92)
    assert list(np.bincount(test.y)) == [2] * 40


@needs_shared
def test_real_olivetti_matches_joblib() -> None:
    import joblib

    train = load_dataset("olivetti", SHARED / "olivetti")
    test = load_dataset("olivetti", SHARED, "test")
    assert (len(train), len(test)) == (320, 80) and train.input_shape == (1, 64, 64)
    ref = joblib.load(SHARED / "olivetti" / "olivetti_py3.pkz").reshape(400, 64, 64).transpose(0, 2, 1)
    assert np.allclose(test.x[:, 0] * 255, ref[np.arange(400) % 10 >= 8])


def test_sample_is_seeded_random_in_order_and_keeps_classes() -> None:
    sorted_by_class = Dataset(
        "s", np.zeros((100, 1, 2, 2), np.float32), np.repeat(np.arange(10), 10), tuple("abcdefghij")
    )
    a, b = sorted_by_class.sample(30, seed=1), sorted_by_class.sample(30, seed=1)
    assert len(a) == 30 and np.array_equal(a.y, b.y) and (np.diff(a.y) >= 0).all()
    assert len(set(a.y.tolist())) > 5  # the first 30 rows would hold 3 classes
    assert not np.array_equal(a.y, sorted_by_class.sample(30, seed=2).y)
    assert sorted_by_class.sample(500, seed=0) is sorted_by_class
