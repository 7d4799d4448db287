"""The tensorflow-datasets route of mnist_aux.data gives the IDX route's arrays, bit for bit.

Slow tier; needs ``pip install ".[tfds]"`` (tensorflow-datasets, and TensorFlow to build), which
.ci/run installs before that tier. tfds' own MNIST builder (split generators, PNG encoding,
hash-shuffling writer) runs offline on the IDX files of $SUBLIMINAL_MNIST_DIR into a temporary
data_dir; only the checksums it validates those files against are the files' own instead of
the published ones, because the shared copy's training images are not the official file (see
its README). ``data.load`` then reads that copy through tfds' TensorFlow-free reader. Nothing
is downloaded. About 40 s on 2 busy CPU cores (building about 20 s, reading 70,000 PNG records
about 10 s).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import mnist_dir

from mnist_aux import data


def build(idx_dir: Path, data_dir: Path) -> None:
    """Run tfds' MNIST builder on the four IDX files in ``idx_dir``; write ``data_dir/mnist/3.0.1``.

    tfds takes files from ``manual_dir`` only if they match the URL's registered size and sha256;
    the subclass registers these files' own (tfds' ``register_checksums`` would instead rewrite
    the checksums file inside the installed package). Everything else is tfds' MNIST.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.checksums import UrlInfo, compute_url_info

    mnist = tfds.image_classification.MNIST
    local = {}
    for url in mnist.url_infos:
        name = url.rsplit("/", 1)[1]
        info = compute_url_info(idx_dir / name)
        local[url] = UrlInfo(size=info.size, checksum=info.checksum, filename=name)

    class LocalMnist(mnist, skip_registration=True):
        name = "mnist"
        url_infos = local

    LocalMnist(data_dir=data_dir, file_format="array_record").download_and_prepare(
        download_dir=data_dir / "downloads",
        download_config=tfds.download.DownloadConfig(manual_dir=idx_dir, try_download_gcs=False))


def _no_download(dataset, directory):
    raise AssertionError("the tfds route failed (see the warning above) and load() fell back to downloading")


@pytest.mark.slow
@pytest.mark.skipif(mnist_dir() is None, reason="no offline MNIST copy ($SUBLIMINAL_MNIST_DIR)")
def test_tfds_route_gives_the_idx_arrays(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed (pip install '.[tfds]')")
    assert hasattr(tfds, "data_source"), "tensorflow_datasets is installed but failed to import (see the log)"
    assert importlib.util.find_spec("tensorflow"), "building tfds' MNIST needs TensorFlow: pip install '.[tfds]'"
    idx_dir, tfds_dir = mnist_dir(), tmp_path / "tfds"
    # A child process: TensorFlow (building only) stays out of this pytest process, beside torch and jax.
    subprocess.run([sys.executable, __file__, str(idx_dir), str(tfds_dir)], check=True, timeout=600,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

    monkeypatch.delenv("SUBLIMINAL_MNIST_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("SUBLIMINAL_TFDS_DIR", str(tfds_dir))
    monkeypatch.setattr(data, "download", _no_download)
    tf_before = "tensorflow" in sys.modules
    via_tfds = data.load("mnist")
    assert via_tfds.source["origin"] == "tensorflow-datasets"
    assert tf_before or "tensorflow" not in sys.modules, "tfds' reader imported TensorFlow"

    via_idx = data.load_dir(idx_dir)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        got, want = getattr(via_tfds, name), getattr(via_idx, name)
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        rows = np.flatnonzero((got != want).reshape(len(got), -1).any(axis=1))
        assert rows.size == 0, f"{name}: {rows.size} rows differ, the first at {rows[:5].tolist()}"


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
