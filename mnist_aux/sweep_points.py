"""A sweep's points and their cache: each point is run once and kept on disk under a hash of what made it.

A :class:`Point` is one :func:`mnist_aux.dissect.run`; :meth:`Point.describe` lists everything
that determines its numbers (config, distillation setting, students, learning rates, seeds,
pairing, the data's fingerprint) and :func:`point_key` hashes that with :data:`FORMAT` (bumped by
hand when a point's numbers or layout change; no code fingerprint enters the key).
:meth:`Context.point` reads ``<cache>/<key>.json`` when it holds that key, else runs the point and
writes the entry atomically; an entry of another key or layout is reported on stderr and
recomputed, and with ``cache_only`` a missing one raises :class:`MissingPoint`. Which points a
sweep has is :mod:`mnist_aux.sweeps`' business: this module runs and caches any point it is given.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mnist_aux import configs
from mnist_aux.configs import Config
from mnist_aux.data import Dataset
from harness.results import lazy_module, read_json, results_dir, shown, write_json

# loaded at first use, so that the CLI's parser (which lists the sweeps) answers --help without importing JAX
dissect = lazy_module("mnist_aux.dissect")
inputs = lazy_module("mnist_aux.inputs")

FORMAT = 3  # cache format/code version, part of every point's key: bump when a point's numbers or layout change
# (3: the data are keyed by the arrays' fingerprint, not by the .gz files' bytes)
CACHE = results_dir() / "sweeps"  # relative: resolved against the working directory


@dataclass(frozen=True)
class Point:
    """One run of :func:`mnist_aux.dissect.run` in a sweep."""

    label: str  # what the figure's axis calls it
    x: float | str  # the swept value
    cfg: Config
    spec: dissect.Distill
    inits: tuple[str, ...]
    lrs: tuple[float, ...] | None = None
    seeds: tuple[int, ...] | None = None  # default: the sweep's seeds
    series: str = ""  # which line of the figure the point is on, when a sweep has several (not in the key)

    def describe(self, seeds, data: Dataset, pairing_seed: int, distill_data: Dataset | None = None) -> dict:
        return {"format": FORMAT, "config": self.cfg.key_dict(), "distill": asdict(self.spec), "inits": list(self.inits),
                "lrs": list(self.lrs) if self.lrs else None, "seeds": [int(s) for s in seeds],
                "pairing_seed": pairing_seed, "data": data.fingerprint,
                **({"distill_data": distill_data.fingerprint} if distill_data is not None else {})}


class MissingPoint(LookupError):
    """A point is not in the cache and the sweep runs with ``cache_only``."""


def point_key(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


def _default_fashion() -> Dataset:
    from mnist_aux import data
    return data.load("fashion_mnist")


@dataclass
class Context:
    """What a sweep's body needs: the base config, seeds, data, cache and progress bar."""

    base: Config
    seeds: tuple[int, ...]
    data: Dataset
    fashion: Dataset | None = None
    # where the inputs sweep's Fashion-MNIST comes from when ``fashion`` is not given (the CLI
    # passes one that honours --no-download; the default reads the usual places)
    load_fashion: Callable[[], Dataset] = lambda: _default_fashion()
    cache: Path = CACHE
    teacher_cache: Path | None = configs.TEACHER_CACHE
    recompute: bool = False
    cache_only: bool = False
    pairing_seed: int = 0
    computed: list = field(default_factory=list)  # keys computed in this call (tests count them)
    bar: object = None

    def point(self, p: Point) -> dict:
        """The point's result: from the cache, else computed and cached (atomic write)."""
        seeds = p.seeds or self.seeds
        other = None
        if p.spec.inputs == "fashion_mnist":
            if self.fashion is None:
                self.fashion = self.load_fashion()
            other = self.fashion
        desc = p.describe(seeds, self.data, self.pairing_seed, other)
        key = point_key(desc)
        path = self.cache / f"{key}.json"
        if self.bar is not None:
            self.bar.set_postfix_str(p.label)
        entry = None if self.recompute else read_json(path)
        if entry is not None and not (isinstance(entry, dict) and entry.get("key") == key and "result" in entry):
            print(f"warning: ignoring cache entry {shown(path)} of another key or layout; recomputing", file=sys.stderr)
            entry = None
        if entry is not None:
            result = entry["result"]
        elif self.cache_only:
            raise MissingPoint(f"{p.label}: no cached result {shown(path)}")
        else:
            images = None
            if p.spec.inputs == "mnist" or p.spec.inputs in inputs.MOMENTS:
                images = self.data.train_x[: p.cfg.n_train] if p.spec.inputs in inputs.MOMENTS else self.data.train_x
            elif p.spec.inputs == "fashion_mnist":
                images = self.fashion.train_x
            result = dissect.run(p.cfg, p.spec, p.inits, seeds, self.data, lrs=p.lrs, images=images,
                                 pairing_seed=self.pairing_seed, teacher_cache=self.teacher_cache)
            if images is not None and p.spec.inputs == "fashion_mnist":
                result["distill_data"] = self.fashion.source
            write_json(path, {"key": key, "point": desc, "result": result})
            self.computed.append(key)
        if self.bar is not None:
            self.bar.update(1)
        return {"label": p.label, "x": p.x, "key": key, **({"series": p.series} if p.series else {}), **result}
