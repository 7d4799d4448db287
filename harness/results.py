"""The one results convention of the project: where results go, how they are written, what they record.

mnist_aux and llm_bridge never import each other, so the pieces they share live here:

- :func:`prepare_output` checks an output path *before* any computation (a 50-minute run is
  not lost to a typo): not a directory, its folder creatable and writable.
- :func:`write_json` writes atomically: a temporary file in the same folder, then a rename,
  so a reader sees the old file or the new one, never half of one, and an interrupted write
  leaves nothing behind.
- :func:`atomic_dir` does the same for a cache entry that is a folder (a saved model).
- :func:`provenance` is what every results file records besides seeds and config: the
  command, the commit, package versions, the CPU.
- :func:`shown` is how a path appears in a results file or caption: relative to the working
  folder when inside it, else as the user gave it, never resolved to a machine's absolute path.
- :func:`is_writer` says whether this process writes: in a multi-host run (``--distributed``,
  :mod:`harness.mesh`) every host computes, but only process 0 writes results and caches.

Results folders are resolved from the working directory (``results/`` by default, or a
flag), never from a package's file location, so a non-editable install writes beside the user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot be written; the message is one line naming the path."""


def results_dir(flag: str | os.PathLike | None = None) -> Path:
    """The results folder: ``flag`` when given, else ``results/`` under the working directory."""
    return Path(flag).expanduser() if flag is not None else Path("results")


def prepare_output(path: str | os.PathLike) -> Path:
    """Check that ``path`` can receive a file; returns it as a ``Path``.

    Raises :class:`OutputError` (one line) when ``path`` is a directory, or its folder cannot be
    created or written. Call it before the computation whose result goes there. The check writes
    and removes a probe file, and removes again any folder it had to create, so a run that fails
    later leaves nothing behind; the writers create the folder when they write.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"output {str(path)!r} is a directory; give a file path")
    created = []
    try:
        for folder in reversed([p.parent, *p.parent.parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
            elif not folder.is_dir():
                raise NotADirectoryError(20, f"{folder} is a file, not a folder")
    except OSError as err:
        _remove(created)
        raise OutputError(f"cannot create the folder of output {str(path)!r}: {err.strerror or err}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=p.parent, prefix=f".{p.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise OutputError(f"cannot write into the folder of output {str(path)!r}: {err.strerror or err}") from None
    finally:
        _remove(created)
    return p


def _remove(folders: list[Path]) -> None:
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or folder (0777) gets under the process's umask: what ``open`` and
    ``mkdir`` give, and what the atomic writers' temporary files (created 0600 / 0700) are set to."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def guard_default_output(path: str | os.PathLike, run: dict, flag: str = "--out", normalize: dict | None = None) -> Path:
    """Refuse to let a run replace, at its DEFAULT path, a results file that holds another run.

    ``run`` holds what identifies this run (its seeds, config, preset...), under the keys its
    results file stores them. An existing file at ``path`` is replaced only when every one of
    those keys holds the same value there (the same run again, e.g. after a code or data
    change); otherwise :class:`OutputError` says, in one line, what differs and to name
    ``flag`` (a 10-seed run never overwrites the committed 100-seed file). Call it before any
    work, and only when the user did not name the output. ``normalize`` maps a key to a function
    that brings the file's value to today's form (e.g. a config written before a field with a
    default existed); a value it cannot read stays as it is. Returns ``path`` prepared.
    """
    p = prepare_output(path)
    if not p.exists():
        return p
    try:
        old = json.loads(p.read_text())
    except (OSError, ValueError, RecursionError):
        raise OutputError(f"{shown(p)} exists and is not a readable results file; give {flag} PATH "
                          "to write elsewhere (or move it away)") from None
    if not isinstance(old, dict):
        raise OutputError(f"{shown(p)} exists and is not a results file; give {flag} PATH to write elsewhere")
    def held(k):
        value = old.get(k)
        if normalize and k in normalize and value is not None:
            with contextlib.suppress(TypeError, ValueError):
                value = json.loads(json.dumps(normalize[k](value)))
        return value

    differ = [k for k, v in run.items() if json.loads(json.dumps(v)) != held(k)]
    if differ:
        def brief(v):
            if isinstance(v, list) and len(v) > 4:
                return f"{len(v)} values {v[0]}..{v[-1]}"
            text = json.dumps(v, sort_keys=True)
            return text if len(text) <= 60 else text[:57] + "..."
        k = differ[0]
        raise OutputError(f"{shown(p)} holds another run ({k}: {brief(held(k))}; this run: {brief(run[k])}"
                          f"{'; also ' + ', '.join(differ[1:]) if differ[1:] else ''}); not overwriting it: "
                          f"give {flag} PATH to write this run elsewhere")
    return p


def is_writer() -> bool:
    """True in the process that writes results and caches: the only process of an ordinary run, or
    process 0 of a multi-host run (:func:`jax.distributed.initialize`; ``jax.process_index() == 0``)."""
    import jax

    return jax.process_index() == 0


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    return write_bytes(path, text.encode())


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; see :func:`write_text`."""
    p = prepare_output(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, umask_mode())  # mkstemp's 0600 would hide results from the rest of a lab
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def dumps(results: dict) -> str:
    """The project's JSON layout for result files (sorted keys, so equal results give equal bytes)."""
    return json.dumps(results, indent=1, sort_keys=True)


def write_json(path: str | os.PathLike, results: dict) -> Path:
    """Write ``results`` as JSON to ``path`` atomically; see :func:`write_text`."""
    return write_text(path, dumps(results))


def read_json(path: str | os.PathLike) -> dict | None:
    """A cache entry's JSON, or ``None`` (with a warning on stderr) when it is unreadable, truncated or
    nested too deeply to parse. For caches only: every caller computes the entry again on ``None``
    (as the warning says); a results file the user made is read with :func:`read_results`."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:
        print(f"warning: ignoring broken cache entry {shown(path)} ({type(err).__name__}); recomputing",
              file=sys.stderr)
        return None


def read_results(path: str | os.PathLike) -> dict | None:
    """A results file's JSON object, or ``None`` when the file does not exist.

    ``ValueError`` with one line naming the file when it cannot be read, is not JSON, is nested too
    deeply, or holds another JSON type than an object: a results file is never silently skipped
    nor recomputed behind the user's back.
    """
    p = Path(path).expanduser()
    if not p.exists():
        return None
    if not p.is_file():  # a folder, a FIFO (reading it would block), a device
        raise ValueError(f"{shown(path)}: not a regular file")
    try:
        text = p.read_text()
    except OSError as err:
        raise ValueError(f"{shown(path)}: cannot be read ({err.strerror or err})") from None
    except ValueError as err:  # not UTF-8
        raise ValueError(f"{shown(path)}: not valid JSON ({' '.join(str(err).split())[:200]})") from None
    return json_object(text, shown(path), "a results file")


def json_object(text: str, where: str, what: str = "a JSON object") -> dict:
    """``text`` parsed as a JSON object; anything else is a ValueError of one line naming ``where``: invalid
    JSON, JSON nested too deeply for the parser, or another JSON type (not ``what``)."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{where}: not valid JSON ({' '.join(str(err).split())[:200]})") from None
    except RecursionError:
        raise ValueError(f"{where}: not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: not {what} (a JSON {type(value).__name__}, not an object)")
    return value


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Build a folder under a temporary name beside ``final``, then rename it into place.

    ``with atomic_dir(d) as tmp: save(tmp, ...)``: readers see ``d`` complete or not at all; an
    exception (or a kill) leaves at most a hidden ``.d.*.tmp`` folder, which the next call ignores.
    An existing ``d`` (e.g. a broken entry) is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, umask_mode(directory=True))
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def lazy_module(name: str):
    """The module ``name``, executed at its first attribute access (:class:`importlib.util.LazyLoader`): a
    module-level import of a heavy module (one that imports JAX) that costs nothing until used, so that
    a CLI's ``--help`` answers at once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def shown(path: str | os.PathLike | None) -> str | None:
    """``path`` as results files and captions record it: relative to the working folder when inside
    it, else as given (``~`` kept unexpanded), never made absolute."""
    if path is None:
        return None
    p = Path(path)
    if p.is_absolute():
        with contextlib.suppress(ValueError, OSError):
            return os.path.relpath(p, Path.cwd()) if p.is_relative_to(Path.cwd()) else str(path)
    return str(path)


def _git(*args: str) -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def versions() -> dict:
    """Python and package versions, and the git commit of this checkout (``None`` when installed
    from a wheel), with whether the checkout has uncommitted changes to the project's code."""
    import flax
    import jax
    import numpy as np
    import optax

    commit = _git("rev-parse", "HEAD") or None
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--", "../harness", "../theory", "../mnist_aux", "../llm_bridge")
        dirty = None if status is None else bool(status)
    return {"python": sys.version.split()[0], "jax": jax.__version__, "jaxlib": jax.lib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__, "git_commit": commit,
            "uncommitted_changes": dirty}


ISA_FLAGS = ("avx512f", "avx2", "fma", "avx", "sse4_2")  # the vector ISAs XLA CPU chooses among


def isa() -> dict:
    """The CPU's vector ISA as it decides float32 rounding: which of :data:`ISA_FLAGS` the CPU has
    (``/proc/cpuinfo``; ``None`` where it cannot be read) and the cap ``--xla_cpu_max_isa`` in
    ``XLA_FLAGS`` (``None``: XLA uses the CPU's best). Two machines round alike when the ISA XLA
    uses is the same: with FMA or without, 256- or 512-bit vectors."""
    flags = None
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as fh:
            flags = set(next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split())
    cap = None
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_cpu_max_isa="):
            cap = flag.split("=", 1)[1]
    return {**{f: (None if flags is None else f in flags) for f in ISA_FLAGS}, "xla_cpu_max_isa": cap}


def machine() -> dict:
    """The CPU, its vector ISA (:func:`isa`), core count, JAX devices and the load average (a busy
    machine explains slow timings)."""
    import jax

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    return {"platform": platform.platform(), "cpu": cpu, "isa": isa(), "cpu_count": os.cpu_count(),
            "devices": [str(d) for d in jax.devices()], "load_average": list(os.getloadavg())}


def provenance(command: str | None = None) -> dict:
    """What every results file records besides its seeds and config: command, versions, machine."""
    return {"command": command, "versions": versions(), "machine": machine()}


def command_line(prog: str, argv: list[str] | None = None) -> str:
    """``prog`` followed by the arguments as a shell would need them (for a results file's "command")."""
    import shlex

    return " ".join([prog] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])
