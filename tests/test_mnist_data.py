"""mnist_aux.data: IDX validation gives one clear error naming the file; nothing touches the network."""

import gzip
import hashlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, mnist_dir

from mnist_aux import data

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload, compresslevel=1))


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    """A valid synthetic dataset (full MNIST sizes, constant images, cycling labels)."""
    d = tmp_path_factory.mktemp("idx")
    for (split, kind), name in data.FILES.items():
        n = data.SPLITS[split]
        if kind == "images":
            _write(d / name, _idx(data.IMAGE_MAGIC, np.full((n, 28, 28), 7, np.uint8)))
        else:
            _write(d / name, _idx(data.LABEL_MAGIC, np.arange(n) % 10))
    return d


@pytest.fixture
def bad_dir(good_dir, tmp_path) -> Path:
    """A copy of the valid dataset to break one file of."""
    d = tmp_path / "bad"
    shutil.copytree(good_dir, d)
    return d


TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


def test_valid_directory_loads(good_dir):
    ds = data.load(data_dir=good_dir, allow_download=False)
    assert ds.train_x.shape == (60_000, 784) and ds.train_x.dtype == np.uint8
    assert ds.test_y.shape == (10_000,) and ds.test_y.dtype == np.int32 and ds.test_y.max() == 9
    f = ds.source["files"][TRAIN_IMAGES]
    assert f["sha256"] == hashlib.sha256((good_dir / TRAIN_IMAGES).read_bytes()).hexdigest()
    assert f["content_sha256"] == hashlib.sha256(gzip.decompress((good_dir / TRAIN_IMAGES).read_bytes())).hexdigest()
    assert f["official"] is False and f["official_gz"] is False and ds.source["official_content"] is False
    assert "not the official content" in ds.source["note"]
    assert ds.source["origin"] == "--data-dir"


def _expect_error(directory: Path, name: str, words: str) -> str:
    with pytest.raises(data.DataError) as err:
        data.load(data_dir=directory, allow_download=False)
    message = str(err.value)
    assert str(directory / name) in message and words in message and "\n" not in message
    return message


def test_truncated_gzip(bad_dir):
    raw = (bad_dir / TRAIN_IMAGES).read_bytes()
    (bad_dir / TRAIN_IMAGES).write_bytes(raw[: len(raw) // 2])
    _expect_error(bad_dir, TRAIN_IMAGES, "truncated")


def test_corrupted_gzip(bad_dir):
    raw = bytearray((bad_dir / TEST_LABELS).read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 8] = b"\xff" * 8
    (bad_dir / TEST_LABELS).write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=TEST_LABELS):
        data.load(data_dir=bad_dir, allow_download=False)


def test_not_gzip_at_all(bad_dir):
    (bad_dir / TRAIN_IMAGES).write_bytes(b"<html>404 Not Found</html>")
    _expect_error(bad_dir, TRAIN_IMAGES, "corrupted")


def test_wrong_magic(bad_dir):
    _write(bad_dir / TRAIN_IMAGES, _idx(data.LABEL_MAGIC, np.zeros(60_000)))  # a labels file in its place
    _expect_error(bad_dir, TRAIN_IMAGES, "wrong magic number 0x00000801")


def test_truncated_payload(bad_dir):
    payload = _idx(data.IMAGE_MAGIC, np.zeros((60_000, 28, 28)))
    _write(bad_dir / TRAIN_IMAGES, payload[:-100])
    _expect_error(bad_dir, TRAIN_IMAGES, "truncated")


def test_trailing_bytes(bad_dir):
    _write(bad_dir / TEST_LABELS, _idx(data.LABEL_MAGIC, np.zeros(10_000)) + b"junk")
    _expect_error(bad_dir, TEST_LABELS, "unexpected bytes")


def test_wrong_count(bad_dir):
    _write(bad_dir / TEST_LABELS, _idx(data.LABEL_MAGIC, np.zeros(9_999)))
    _expect_error(bad_dir, TEST_LABELS, "shape")


def test_label_out_of_range(bad_dir):
    _write(bad_dir / TEST_LABELS, _idx(data.LABEL_MAGIC, np.full(10_000, 10)))
    _expect_error(bad_dir, TEST_LABELS, "out of range")


def test_missing_file(bad_dir):
    (bad_dir / TEST_LABELS).unlink()
    _expect_error(bad_dir, TEST_LABELS, "not found")


def test_cli_reports_bad_file_without_traceback(bad_dir):
    raw = (bad_dir / TRAIN_IMAGES).read_bytes()
    (bad_dir / TRAIN_IMAGES).write_bytes(raw[:1000])
    proc = subprocess.run([sys.executable, "-m", "mnist_aux", "run", "--preset", "smoke", "--seeds", "2",
                           "--data-dir", str(bad_dir), "--no-download", "--out", str(bad_dir / "r.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad_dir / TRAIN_IMAGES) in proc.stderr and "truncated" in proc.stderr
    assert not (bad_dir / "r.json").exists()


def test_download_rejects_a_checksum_mismatch(tmp_path, monkeypatch):
    """The download path keeps a file only if its published checksum matches (urlopen faked)."""
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not mnist"))
    with pytest.raises(data.DataError, match="is not the published"):
        data.download("mnist", tmp_path)
    assert not any(tmp_path.iterdir())


def test_download_keeps_verified_files(good_dir, tmp_path, monkeypatch):
    fake = {name: ("sha256", hashlib.sha256((good_dir / name).read_bytes()).hexdigest()) for name in data.FILES.values()}
    monkeypatch.setitem(data.DATASETS, "mnist", data.DATASETS["mnist"].__class__(
        **{**data.DATASETS["mnist"].__dict__, "checksums": fake}))
    monkeypatch.setattr(data.urllib.request, "urlopen",
                        lambda url, timeout: open(good_dir / url.rsplit("/", 1)[1], "rb"))
    data.download("mnist", tmp_path / "cache")
    files = data.load_dir(tmp_path / "cache").source["files"]
    assert files[TRAIN_IMAGES]["official_gz"] is True  # the (faked) published .gz
    assert files[TRAIN_IMAGES]["official"] is False  # but not MNIST's content


def test_environment_variable_names_the_directory(good_dir, monkeypatch):
    monkeypatch.setenv("SUBLIMINAL_MNIST_DIR", str(good_dir))
    assert data.load(allow_download=False).source["origin"] == "$SUBLIMINAL_MNIST_DIR"


@pytest.mark.skipif(mnist_dir() is None, reason="no offline MNIST copy ($SUBLIMINAL_MNIST_DIR)")
def test_shared_mnist_copy():
    ds = data.load("mnist", mnist_dir(), allow_download=False)
    files = ds.source["files"]
    assert files[TEST_LABELS]["official"] and files["t10k-images-idx3-ubyte.gz"]["official"]
    assert files["train-labels-idx1-ubyte.gz"]["official"]
    assert abs(ds.train_x.mean() / 255 - 0.1307) < 1e-3
    assert np.bincount(ds.test_y).tolist()[:3] == [980, 1135, 1032]


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_through_the_same_loader(monkeypatch):
    monkeypatch.delenv("SUBLIMINAL_FASHION_MNIST_DIR", raising=False)
    ds = data.load("fashion_mnist", allow_download=False)
    assert ds.source["origin"] == "system copy" and ds.train_x.shape == (60_000, 784)
    assert ds.source["dir"] == "Debian package dataset-fashion-mnist"  # no machine path in results
    assert np.bincount(ds.test_y).tolist() == [1000] * 10


def test_the_download_cache_is_recorded_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data._home_relative(tmp_path / ".cache" / "subliminal-verify" / "mnist") == "~/.cache/subliminal-verify/mnist"
    assert data._home_relative("results/x") == "results/x"


# ------------------------------------------------------------- bad inputs (issue 14)


def test_gzip_bomb_is_not_decompressed_past_the_expected_size(bad_dir):
    """A valid label file followed by 512 MB of zeros (0.5 MB compressed): refused after
    reading the expected 10,008 bytes and one more, never decompressed as a whole."""
    import tracemalloc

    path = bad_dir / TEST_LABELS
    zeros = bytes(1 << 24)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(_idx(data.LABEL_MAGIC, np.zeros(10_000)))
        for _ in range(32):
            fh.write(zeros)
    del zeros
    tracemalloc.start()
    try:
        message = _expect_error(bad_dir, TEST_LABELS, "unexpected bytes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, (peak, message)  # the valid train images alone are 47 MB


def test_permission_denied_is_not_called_corrupted(bad_dir, monkeypatch):
    real_open = data.gzip.open

    def denied(path, *args, **kwargs):
        if Path(path).name == TEST_LABELS:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(data.gzip, "open", denied)
    message = _expect_error(bad_dir, TEST_LABELS, "permission denied")
    assert "corrupted" not in message


def test_missing_folder_is_reported_as_a_folder(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(data.DataError) as err:
        data.load(data_dir=missing, allow_download=False)
    assert str(err.value).startswith(f"{missing}: folder not found") and "file not found" not in str(err.value)


def test_a_folder_in_place_of_a_file(bad_dir):
    (bad_dir / TEST_LABELS).unlink()
    (bad_dir / TEST_LABELS).mkdir()
    _expect_error(bad_dir, TEST_LABELS, "is a folder")


def test_results_record_the_folder_as_given_not_resolved(good_dir, monkeypatch):
    monkeypatch.chdir(good_dir.parent)
    ds = data.load(data_dir=good_dir.name, allow_download=False)
    assert ds.source["dir"] == good_dir.name


# ------------------------------------------------- official by content (issue 25)

REBUILT = REPO.parent / "shared" / "data" / "mnist-rebuilt" / TRAIN_IMAGES


@pytest.mark.skipif(mnist_dir() is None, reason="no offline MNIST copy ($SUBLIMINAL_MNIST_DIR)")
def test_the_official_content_is_recognised_whatever_its_gz_bytes(tmp_path):
    """The shared copy's training .gz is recompressed (not the published .gz) but its content is
    official; the same content compressed once more is still official; one byte changed is not."""
    ds = data.load("mnist", mnist_dir(), allow_download=False)
    assert ds.source["official_content"] is True and "note" not in ds.source
    f = ds.source["files"][TRAIN_IMAGES]
    assert f["official"] is True and f["content_sha256"] == data.DATASETS["mnist"].content_sha256[TRAIN_IMAGES]
    raw = gzip.decompress((Path(mnist_dir()) / TEST_LABELS).read_bytes())
    copy = tmp_path / "copy"
    shutil.copytree(mnist_dir(), copy)
    (copy / TEST_LABELS).write_bytes(gzip.compress(raw, compresslevel=1, mtime=1))  # other .gz bytes
    again = data.load_dir(copy).source
    assert again["files"][TEST_LABELS]["official_gz"] is False and again["official_content"] is True
    changed = bytearray(raw)
    changed[-1] = (changed[-1] + 1) % 10  # one label, still a valid file
    (copy / TEST_LABELS).write_bytes(gzip.compress(bytes(changed)))
    bad = data.load_dir(copy).source
    assert bad["files"][TEST_LABELS]["official"] is False and bad["official_content"] is False
    assert TEST_LABELS in bad["note"]
    assert data.load_dir(copy).fingerprint != ds.fingerprint


@pytest.mark.skipif(mnist_dir() is None or not REBUILT.is_file(), reason="no offline MNIST copy or no rebuilt file")
def test_the_rebuilt_training_images_are_reported_as_not_official():
    ds = data.load("mnist", mnist_dir(), allow_download=False)
    rebuilt = data.with_train_images(ds, REBUILT)
    assert rebuilt.source["official_content"] is False and "not the official content" in rebuilt.source["note"]
    assert rebuilt.source["files"][TRAIN_IMAGES]["official"] is False
    assert (rebuilt.train_x != ds.train_x).any(axis=1).sum() > 30_000  # 37,301 images were rebuilt
    assert (rebuilt.train_x[:22_699] == ds.train_x[:22_699]).all()  # images 0-22698 are the official ones
    assert np.abs(rebuilt.train_x.astype(int) - ds.train_x).max() == 1  # within one grey level
    assert rebuilt.fingerprint != ds.fingerprint


@pytest.mark.skipif(mnist_dir() is None, reason="no offline MNIST copy ($SUBLIMINAL_MNIST_DIR)")
def test_a_download_of_recompressed_official_content_is_kept(tmp_path, monkeypatch):
    """A mirror that serves the official content in other .gz bytes (the shared training file)
    passes the download check by its content; a file of other content does not."""
    monkeypatch.setattr(data.urllib.request, "urlopen",
                        lambda url, timeout: open(Path(mnist_dir()) / url.rsplit("/", 1)[1], "rb"))
    data.download("mnist", tmp_path / "cache")
    assert data.load_dir(tmp_path / "cache").source["official_content"] is True
    assert data._verified(data.DATASETS["mnist"], TRAIN_IMAGES, tmp_path / "cache" / TEST_LABELS) is not None
