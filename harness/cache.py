"""On-disk caches keyed by what computed them: config, a fingerprint of the code, a format version.

A cached entry is only as good as the code that wrote it: last month's stale tiny-LM number came
from a cache keyed by config fields alone, read by code that no longer computed the same thing.
Here a phase's key hashes

- the config fields the phase reads,
- :func:`code_fingerprint` of the modules whose code the phase runs (their abstract syntax trees
  without docstrings: editing a comment, a docstring or the layout keeps the key; editing code
  changes it),
- the phase's format version, bumped when its output layout changes,
- the keys of the phases it consumes, so a change upstream invalidates everything downstream and
  nothing upstream (as a build tool or a DVC stage does),
- the CPU's vector ISA as XLA uses it (:func:`harness.results.isa`): float32 rounding, and with it
  the digits of anything trained, depends on it.

:class:`Store` is a run folder of such entries: JSON files and ``.npz`` arrays, each written
atomically (a reader sees an entry whole or not at all, a killed run leaves at most a hidden
temporary file), written only by the writing process of a multi-host run, and read back as
``None`` when missing or unreadable (then recomputed). A run killed at any point resumes at the
first missing entry.

A store may also keep ``parts``: a second folder of the same JSON entries, gzipped (compact, sorted
keys, no timestamp: equal entries give equal bytes), meant to be committed. A cache folder does not
outlive the machine it is on; the parts do, in git: an entry missing from the run folder is read from
the parts (and copied into the run folder), and every JSON entry the run writes or reads goes to the
parts too. Arrays (``.npz``: trained weights) never go there; a run resumed from parts alone
computes them again (on the same ISA the same digits), the rest it reads.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gzip
import hashlib
import importlib
import inspect
import json
import os
import sys
import tempfile
import textwrap
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from harness import results


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _source(name: str) -> str:
    """The source of a module (``"pkg.mod"``) or of one function or class in it (``"pkg.mod:name"``)."""
    module_name, _, qualname = name.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return inspect.getsource(obj)


@functools.lru_cache(maxsize=None)
def _tree_dump(name: str) -> str:
    # Read once per process: the source is read from disk, so a file edited while a run is under way
    # must not change the keys of that run (call code_fingerprint at the start, as engine.run does).
    return ast.dump(_without_docstrings(ast.parse(textwrap.dedent(_source(name)))), annotate_fields=False)


def code_fingerprint(*code: ModuleType | str) -> str:
    """sha256 of the code of ``code``: modules (or their dotted names), or single functions and classes
    as ``"module:qualname"``; independent of comments, docstrings and layout (the abstract syntax tree
    of each source, docstrings removed). Each source is read once per process."""
    h = hashlib.sha256()
    for name in sorted({c if isinstance(c, str) else c.__name__ for c in code}):
        h.update(name.encode())
        h.update(_tree_dump(name).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Phase:
    """One cached phase: its name, the config fields it reads, the modules whose code it runs, its
    format version and the phases whose outputs it consumes (their keys enter its key)."""

    name: str
    fields: tuple[str, ...]
    code: tuple[str, ...]  # modules, or "module:function" for one function (see code_fingerprint)
    version: int = 1
    after: tuple[str, ...] = ()

    def describe(self, config: dict, upstream: dict[str, str]) -> dict:
        missing = [f for f in self.fields if f not in config]
        if missing:
            raise KeyError(f"phase {self.name}: config has no field {missing[0]!r}")
        return {"phase": self.name, "version": self.version, "config": {f: config[f] for f in self.fields},
                "code": code_fingerprint(*self.code), "after": {p: upstream[p] for p in self.after},
                # float32 rounding follows the vector ISA XLA compiles for: an entry computed under another
                # (another CPU, or XLA_FLAGS=--xla_cpu_max_isa=...) holds other digits and is not read
                "isa": results.isa()}


def key_of(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Store:
    """A run folder of cached entries (``root`` None: nothing is read or written)."""

    root: Path | None
    keys: dict[str, str] = field(default_factory=dict)  # phase -> key, as :meth:`phase_key` computed them
    parts: Path | None = None  # committed gzipped copies of the JSON entries (module docstring)

    def __post_init__(self):
        if self.root is not None:
            self.root = Path(self.root)
        if self.parts is not None:
            self.parts = Path(self.parts)

    def phase_key(self, phase: Phase, config: dict) -> str:
        """The key of ``phase`` for ``config``; the keys of the phases it comes after must be known."""
        unknown = [p for p in phase.after if p not in self.keys]
        if unknown:
            raise KeyError(f"phase {phase.name} comes after {unknown[0]}, whose key is not known yet")
        self.keys[phase.name] = key_of(phase.describe(config, self.keys))
        return self.keys[phase.name]

    def _path(self, name: str, suffix: str) -> Path | None:
        return None if self.root is None else self.root / f"{name}{suffix}"

    def _part(self, name: str) -> Path | None:
        return None if self.parts is None else self.parts / f"{name}.json.gz"

    def json(self, name: str):
        """The entry ``name``: from the run folder, else from the parts (then copied into the run folder);
        None when neither holds a readable one. An entry read from the run folder that the parts lack is
        copied there."""
        path, part = self._path(name, ".json"), self._part(name)
        got = None if path is None else results.read_json(path)
        if got is None and part is not None:
            got = read_part(part)
            if got is not None and path is not None and results.is_writer():
                results.write_json(path, got)
        elif got is not None and part is not None and not part.exists() and results.is_writer():
            write_part(part, got)
        return got

    def put(self, name: str, value):
        path, part = self._path(name, ".json"), self._part(name)
        if results.is_writer():
            if path is not None:
                results.write_json(path, value)
            if part is not None:
                write_part(part, value)
        return value

    def arrays(self, name: str) -> dict | None:
        path = self._path(name, ".npz")
        if path is None or not path.exists():
            return None
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError):
            return None

    def put_arrays(self, name: str, value: dict) -> dict:
        path = self._path(name, ".npz")
        if path is not None and results.is_writer():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, **value)
                os.chmod(tmp, results.umask_mode())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return value

    def put_tree(self, name: str, tree) -> None:
        """Store a pytree of arrays (its leaves by key path) as ``name.npz``."""
        import jax

        leaves = jax.tree_util.tree_leaves_with_path(tree)
        self.put_arrays(name, {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves})

    def tree(self, name: str, template):
        """The pytree stored as ``name`` with the structure, shapes and dtypes of ``template``, or None
        (missing, unreadable, or stored with another structure)."""
        import jax
        import jax.numpy as jnp

        z = self.arrays(name)
        if z is None:
            return None
        leaves = jax.tree_util.tree_leaves_with_path(template)
        keys = [jax.tree_util.keystr(path) for path, _ in leaves]
        if set(keys) != set(z) or any(z[k].shape != leaf.shape or z[k].dtype != leaf.dtype
                                      for k, (_, leaf) in zip(keys, leaves)):
            return None
        return jax.tree.unflatten(jax.tree.structure(template), [jnp.asarray(z[k]) for k in keys])


class Lazy(Mapping):
    """A mapping over ``keys`` whose values are computed by ``compute(key)`` on first access, then kept
    (e.g. a replicate's teachers: their weights read from the cache or trained only when needed)."""

    def __init__(self, compute, keys):
        self.compute, self.names, self.done = compute, tuple(keys), {}

    def __getitem__(self, key):
        if key not in self.names:
            raise KeyError(key)
        if key not in self.done:
            self.done[key] = self.compute(key)
        return self.done[key]

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


def write_part(path: Path, value) -> None:
    """``value`` as compact JSON, gzipped without a timestamp (equal values, equal bytes), atomically."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    results.write_bytes(path, gzip.compress(text.encode(), compresslevel=9, mtime=0))


def read_part(path: Path):
    """A part's value, or None (missing; unreadable or truncated, with a warning on stderr)."""
    try:
        return json.loads(gzip.decompress(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, EOFError, zlib.error, ValueError, RecursionError) as err:
        print(f"warning: ignoring broken part {results.shown(path)} ({type(err).__name__}); recomputing",
              file=sys.stderr)
        return None
