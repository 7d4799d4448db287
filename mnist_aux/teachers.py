"""Trained Figure-10 teachers, cached on disk: most dissection runs share them.

A cache entry is ``<cache>/<key>.npz``: the teachers' parameter leaves ``[S, ...]`` and their
per-epoch losses, ``key`` a hash of :data:`FORMAT` and everything that determines the teachers
(the config without its distillation fields, the seed list and the training data's
:attr:`~mnist_aux.data.Dataset.fingerprint`). Entries are written
atomically (a temporary file in the same folder, then a rename); an entry that cannot be
read (truncated, another format) is reported on stderr and retrained, never a crash.
The default folder is ``results/cache/teachers`` under the working directory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mnist_aux import train
from mnist_aux.configs import TEACHER_CACHE, Config
from mnist_aux.data import Dataset
from harness.results import shown, umask_mode

FORMAT = 3  # bump when the entry layout or the teachers' numbers change (3: the key holds the data's fingerprint)
CACHE = TEACHER_CACHE  # relative: resolved against the working directory


def key(cfg: Config, seeds, data: Dataset) -> str:
    """Hash of the format and everything that determines the teachers: their config, the seeds
    and the data they train on (a cache built on other images is never read)."""
    fields = {k: v for k, v in cfg.key_dict().items() if k not in ("distill_epochs", "n_noise")}
    blob = json.dumps({"format": FORMAT, "config": fields, "seeds": [int(s) for s in seeds],
                       "data": data.fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache  # one compilation per config (a sweep asks for the same teachers' program many times)
def _program(cfg: Config):
    def run(seeds, train_x, train_y):
        keys, params = train.references(cfg, seeds)
        opt_state = jax.vmap(train.optimizer(cfg).init)(params)
        losses = []
        for epoch in range(cfg.teacher_epochs):
            params, opt_state, loss = train.teacher_epochs(cfg, params, opt_state, keys.shuffle, epoch, train_x, train_y)
            losses.append(loss)
        return params, jnp.stack(losses, axis=-1) if losses else jnp.zeros((seeds.shape[0], 0))
    return jax.jit(run)


def _read(path: Path, template):
    """The cached ``(params, losses)`` or ``None`` (warning on stderr) for a missing or broken entry."""
    leaves_t, treedef = jax.tree.flatten(template)
    try:
        with np.load(path) as f:
            leaves = [jnp.asarray(f[f"leaf{i}"]) for i in range(len(leaves_t))]
            losses = f["losses"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        print(f"warning: ignoring broken teacher cache entry {shown(path)} ({type(err).__name__}); retraining",
              file=sys.stderr)
        return None
    if any(a.shape != t.shape or a.dtype != t.dtype for a, t in zip(leaves, leaves_t)):
        print(f"warning: teacher cache entry {shown(path)} has other shapes; retraining", file=sys.stderr)
        return None
    return jax.tree.unflatten(treedef, leaves), losses


def _write(path: Path, params, losses: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, losses=losses, **{f"leaf{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(params))})
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def trained(cfg: Config, seeds, data: Dataset, cache: Path | None = CACHE) -> tuple[dict, np.ndarray, dict]:
    """Trained teachers ``[S, ...]``, their per-epoch losses ``[S, epochs]`` and provenance.

    Exactly Figure 10's teachers (same keys, init and epochs). With ``cache`` (a folder;
    ``None``: no cache) they are read from / written to ``cache/<key>.npz``.
    """
    path = None if cache is None else Path(cache) / f"{key(cfg, seeds, data)}.npz"
    if path is not None:
        template = jax.eval_shape(lambda: train.references(cfg, jnp.zeros(len(seeds), jnp.int32))[1])
        hit = _read(path, template)
        if hit is not None:
            return *hit, {"teacher_cache": shown(path), "hit": True}
    start = time.perf_counter()
    params, losses = _program(cfg)(jnp.asarray(seeds, jnp.int32), jnp.asarray(data.train_x[: cfg.n_train]),
                                   jnp.asarray(data.train_y[: cfg.n_train]))
    losses = np.asarray(losses)
    info = {"teacher_cache": shown(path), "hit": False, "teacher_seconds": time.perf_counter() - start}
    if path is not None:
        _write(path, params, losses)
    return params, losses, info
