"""Sharding the seed axis over devices changes no number beyond float32 rounding (2 CPU devices, forced).

XLA_FLAGS must be set before JAX starts, so the check runs in a fresh interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np
    from mnist_aux import experiment
    from mnist_aux.configs import Config
    from mnist_aux.data import Dataset
    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    tx, vx = rng.integers(0, 256, (60_000, 784), dtype=np.uint8), rng.integers(0, 256, (10_000, 784), dtype=np.uint8)
    label = lambda x: x[:, :10].argmax(1).astype(np.int32)
    ds = Dataset(tx, label(tx), vx, label(vx), {"dataset": "synthetic"})
    cfg = Config(hidden=16, lr=1e-3, batch_size=256, teacher_epochs=1, distill_epochs=1, n_train=1_000, n_noise=600)
    out = {}
    for name, devices in (("one", jax.devices()[:1]), ("two", jax.devices())):
        r = experiment.run(cfg, [0, 1, 2], ds, devices=devices, progress=False)  # 3 seeds: padded to 4 on two
        out[name] = {"accuracy": r["accuracy"], "cosine": r["theory_cosine"], "devices": r["machine"]["devices"],
                     "chunk": r["timing"]["seeds_per_chunk"]}
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_two_devices_give_the_same_numbers_as_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["one"]["devices"]) == 1 and len(out["two"]["devices"]) == 2
    assert out["one"]["chunk"] == 3 and out["two"]["chunk"] == 4
    for group in ("accuracy", "cosine"):
        for name, values in out["one"][group].items():
            for a, b in zip(values, out["two"][group][name]):
                assert abs(a - b) <= 2e-4, (group, name, values, out["two"][group][name])
