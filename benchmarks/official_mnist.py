"""The paper's official MNIST script, patched to run offline beside ours (benchmarks/mnist_aux_speed.py).

The script is ``scripts/run_mnist_experiment.py`` of github.com/MinhxLe/subliminal-learning (the
commit in :data:`COMMIT`). Nothing of it is kept in this repository: ``--official PATH`` names a
copy, or ``--fetch-official`` downloads it at that commit (its sha256 is checked). Three things are
patched, each at an anchor that must occur exactly once (else one line names it and the benchmark
stops), and nothing else:

- **data**: its ``from torchvision import datasets, transforms`` is replaced by :data:`datasets` and
  :data:`transforms` below, which read the IDX files of ``--data-dir`` (mnist_aux.data) and apply the
  same transform (``ToTensor`` then ``Normalize((0.5,), (0.5,))``: pixel / 255 * 2 - 1); the
  download root becomes that folder. torchvision is not needed (its wheels must match torch's build
  exactly) and its per-image PIL conversion is skipped, so the script's data loading is, if anything,
  faster than the original's;
- **seed count**: ``N_MODELS = 100`` becomes the count timed;
- **plotting**: ``plt.show()`` is removed (the figure is still drawn, off screen).
"""

from __future__ import annotations

import hashlib
import types
import urllib.request
from pathlib import Path

import numpy as np

COMMIT = "db04f4150edf940559b5f3147f65d808e9313efd"
PATH = "scripts/run_mnist_experiment.py"
URL = f"https://raw.githubusercontent.com/MinhxLe/subliminal-learning/{COMMIT}/{PATH}"
SHA256 = "859887fb46776da036437fe3907b07656a6c52bc8b4122ace0e868e85cbe484e"

IMPORT = "from torchvision import datasets, transforms"
ROOT = 'root = "~/.pytorch/MNIST_data/"'
SEEDS = "N_MODELS = 100"
SHOW = "plt.show()"


class PatchError(ValueError):
    """The script does not look like the one the patches were written for (one line)."""


def fetch(dest: Path) -> Path:
    """Download the script at :data:`COMMIT` to ``dest`` and check its sha256."""
    with urllib.request.urlopen(URL, timeout=60) as r:
        text = r.read()
    if hashlib.sha256(text).hexdigest() != SHA256:
        raise PatchError(f"{URL}: sha256 differs from the pinned {SHA256[:12]}...")
    dest.write_bytes(text)
    return dest


def patch(text: str, data_dir: str, seeds: int) -> str:
    """The script's text with the three patches of the module docstring."""
    for anchor in (IMPORT, ROOT, SEEDS, SHOW):
        if text.count(anchor) != 1:
            raise PatchError(f"official script: {anchor!r} occurs {text.count(anchor)} times, expected once "
                             f"(not the script of commit {COMMIT[:8]}?)")
    shim = "import sys as _sys; _sys.path.insert(0, {root!r}); from benchmarks.official_mnist import datasets, transforms"
    return (text.replace(IMPORT, shim.format(root=str(Path(__file__).resolve().parent.parent)))
            .replace(ROOT, f"root = {str(data_dir)!r}")
            .replace(SEEDS, f"N_MODELS = {int(seeds)}")
            .replace(SHOW, "pass  # plotting patched out (was the figure window)"))


class _MNIST:
    """The part of ``torchvision.datasets.MNIST`` the script uses: ``(image, label)`` pairs, transformed."""

    def __init__(self, root, download=False, train=True, transform=None):
        from mnist_aux import data

        ds = data.load("mnist", root, allow_download=False)
        self.x = (ds.train_x if train else ds.test_x).reshape(-1, 1, 28, 28)
        self.y = ds.train_y if train else ds.test_y
        self.transform = transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        return (self.transform(x) if self.transform else x), int(self.y[i])


def _to_tensor(image: np.ndarray):
    import torch

    return torch.from_numpy(image.astype(np.float32) / 255.0)


def _normalize(mean, std):
    m, s = float(mean[0]), float(std[0])
    return lambda x: (x - m) / s


def _compose(fns):
    def apply(x):
        for f in fns:
            x = f(x)
        return x
    return apply


datasets = types.SimpleNamespace(MNIST=_MNIST)
transforms = types.SimpleNamespace(Compose=_compose, ToTensor=lambda: _to_tensor, Normalize=_normalize)
