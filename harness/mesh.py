"""Device meshes for both experiments: the ``--mesh data=N[,model=M]`` spec and multi-host start-up.

mnist_aux and llm_bridge never import each other, so the flags they share live here; what each
experiment puts on the mesh is its own (the MNIST seed axis in :mod:`mnist_aux.experiment`, the
LM parameter rule table in :mod:`llm_bridge.loading.sharding`).

Axes, always in this order:

- ``data``: splits the batch. For the MNIST experiment the batch is the seeds; for an LM it is
  the token rows, and every parameter is also split along its hidden (``embed``) dimension
  (FSDP: each device stores 1/N of the weights, XLA gathers them where they are used).
- ``model``: splits an LM's attention heads, MLP width and vocabulary (tensor parallel).

A multi-host run (``--distributed``) calls :func:`jax.distributed.initialize` before anything
else touches a device; the mesh then spans every host's devices (``jax.devices()``), each host
reads and computes only its own shards, and only process 0 writes results
(:func:`harness.results.is_writer`). Launch commands: docs/scaling_up.md.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping

AXES = ("data", "model")


def parse_mesh(spec: str) -> dict[str, int]:
    """``"data=4,model=2"`` -> ``{"data": 4, "model": 2}``; an axis left out has size 1.

    ``ValueError`` (one line naming the spec) for an empty spec, a part that is not
    ``AXIS=SIZE``, an axis other than ``data`` / ``model``, an axis given twice, or a size
    that is not a positive integer.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"mesh spec {spec!r} is empty; expected data=N[,model=M]")
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        if not eq or name not in AXES:
            raise ValueError(f"mesh spec {spec!r}: {part.strip()!r} is not AXIS=SIZE with AXIS one of "
                             f"{', '.join(AXES)}")
        if name in sizes:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} is given twice")
        if not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise ValueError(f"mesh spec {spec!r}: the size of {name!r} must be a positive integer, got {value!r}")
        sizes[name] = int(value)
    return {axis: sizes.get(axis, 1) for axis in AXES}


def format_mesh(sizes: Mapping[str, int]) -> str:
    """``{"data": 4, "model": 1}`` -> ``"data=4,model=1"`` (the inverse of :func:`parse_mesh`)."""
    return ",".join(f"{axis}={sizes.get(axis, 1)}" for axis in AXES)


def make_mesh(sizes: Mapping[str, int] | str, devices=None):
    """A :class:`jax.sharding.Mesh` with axes ``("data", "model")`` (both ``AxisType.Auto``: jit
    propagates shardings) over the first ``data * model`` of ``devices`` (default
    ``jax.devices()``: every host's devices after :func:`jax.distributed.initialize`).

    ``sizes``: a dict or a spec string (:func:`parse_mesh`). ``ValueError`` (one line) when
    there are fewer devices than the mesh needs.
    """
    import jax

    sizes = parse_mesh(sizes) if isinstance(sizes, str) else {axis: int(sizes.get(axis, 1)) for axis in AXES}
    devices = list(jax.devices() if devices is None else devices)
    need = math.prod(sizes.values())
    if need > len(devices):
        raise ValueError(f"mesh {format_mesh(sizes)} needs {need} devices; {len(devices)} "
                         f"{'is' if len(devices) == 1 else 'are'} available ({devices[0].platform})")
    return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES, (jax.sharding.AxisType.Auto,) * len(AXES),
                         devices=devices[:need])


def add_arguments(parser: argparse.ArgumentParser, *, mesh_help: str) -> None:
    """Add ``--mesh``, ``--distributed``, ``--coordinator``, ``--num-processes``, ``--process-id``.

    They are checked by :func:`check_arguments` (one-line messages), not by argparse, so a
    command line can be refused before JAX starts.
    """
    parser.add_argument("--mesh", metavar="data=N[,model=M]", default=None, help=mesh_help)
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host run: call jax.distributed.initialize() before anything else (SLURM and "
                             "Open MPI launches are detected; otherwise give --coordinator, --num-processes and "
                             "--process-id); the mesh spans every host's devices and only process 0 writes results "
                             "(docs/scaling_up.md)")
    parser.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                        help="with --distributed: address of process 0 (default $JAX_COORDINATOR_ADDRESS or the "
                             "cluster's)")
    parser.add_argument("--num-processes", type=int, metavar="N", default=None,
                        help="with --distributed: number of processes (default: from the cluster)")
    parser.add_argument("--process-id", type=int, metavar="I", default=None,
                        help="with --distributed: this process's index, 0 .. N-1 (default: from the cluster)")


def check_arguments(args: argparse.Namespace) -> str | None:
    """The first problem with the flags of :func:`add_arguments`, as one line, else None."""
    if args.mesh is not None:
        try:
            parse_mesh(args.mesh)
        except ValueError as err:
            return f"--mesh: {err}"
    given = [flag for flag, value in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                                      ("--process-id", args.process_id)) if value is not None]
    if given and not args.distributed:
        return f"{', '.join(given)} only apply with --distributed"
    if args.num_processes is not None and args.num_processes < 1:
        return f"--num-processes must be >= 1, got {args.num_processes}"
    if args.process_id is not None and args.process_id < 0:
        return f"--process-id must be >= 0, got {args.process_id}"
    if None not in (args.num_processes, args.process_id) and args.process_id >= args.num_processes:
        return f"--process-id must be < --num-processes ({args.num_processes}), got {args.process_id}"
    return None


def initialize(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize(...)`` when ``args.distributed``; nothing otherwise.

    Must run before any device is used (before the first ``jax.devices()`` or array).
    ``ValueError`` with one line when JAX cannot start the multi-host run (no coordinator named and
    no cluster detected, a coordinator that does not answer).
    """
    if not args.distributed:
        return
    import jax

    try:
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"--distributed: JAX could not start the multi-host run ({' '.join(str(err).split())[:200]}); "
                         "give --coordinator HOST:PORT, --num-processes and --process-id, or launch under SLURM "
                         "or Open MPI") from None
