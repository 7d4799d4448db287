"""benchmarks/official_mnist.py: the three patches to the paper's official MNIST script, and its
torchvision stand-in's transform (no copy of the official script is kept here: the text below only
holds the anchor lines)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import official_mnist as o  # noqa: E402

SCRIPT = "\n".join(["import torch as t", o.IMPORT, o.SEEDS, "def get_mnist():", f"    {o.ROOT}",
                    "    return 1", f"{o.SHOW}", ""])


def test_the_three_patches_and_nothing_else():
    out = o.patch(SCRIPT, "data/mnist", 25)
    assert "N_MODELS = 25" in out and "root = 'data/mnist'" in out and "plt.show()" not in out
    assert o.IMPORT not in out and "from benchmarks.official_mnist import datasets, transforms" in out
    kept = [line for line in SCRIPT.splitlines() if line not in (o.IMPORT, o.SEEDS, o.SHOW, f"    {o.ROOT}")]
    assert all(line in out.splitlines() for line in kept)


@pytest.mark.parametrize("anchor", [o.IMPORT, o.ROOT, o.SEEDS, o.SHOW])
def test_a_missing_or_repeated_anchor_is_refused(anchor):
    with pytest.raises(o.PatchError, match="occurs 0 times"):
        o.patch(SCRIPT.replace(anchor, "# gone"), "d", 2)
    with pytest.raises(o.PatchError, match="occurs 2 times"):
        o.patch(SCRIPT + anchor + "\n", "d", 2)


def test_the_transform_is_torchvisions_to_tensor_then_normalize():
    image = np.arange(784, dtype=np.uint8).reshape(1, 28, 28)
    f = o.transforms.Compose([o.transforms.ToTensor(), o.transforms.Normalize((0.5,), (0.5,))])
    got = f(image).numpy()
    assert got.shape == (1, 28, 28) and got.dtype == np.float32
    np.testing.assert_allclose(got, (image / 255.0 - 0.5) / 0.5, rtol=0, atol=1e-6)
