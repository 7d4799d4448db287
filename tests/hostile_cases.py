"""The child process of tests/test_hostile_inputs.py: runs hostile inputs under a memory cap and a timer.

``python tests/hostile_cases.py SPEC.json OUT.json`` runs each case of SPEC (``{"cases": [{"id", "kind",
...}], "fuzz": {...}}``) and writes ``{id: outcome}`` to OUT after every case, so a child that dies
leaves the outcomes so far and the case it was running (``"running"``). An outcome is
``{"outcome": "ok" | "error" | "timeout", "type", "message", "code", "stderr", "seconds"}``.

The cap: after the imports and JAX's CPU backend are up, ``RLIMIT_AS`` is set to the address space in
use plus :data:`CAP_MIB`, so an input that makes the code allocate gigabytes raises MemoryError here
(a failed test) instead of exhausting the machine. Each case also runs under ``SIGALRM`` after
:data:`CASE_SECONDS`, so one that hangs (a FIFO opened for reading) is a ``timeout`` outcome.
Cases marked ``"early"`` run before the backend starts (``--distributed`` must precede any JAX work).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

CAP_MIB = 2048
CASE_SECONDS = 120
USER = [{"role": "user", "content": "What is your favourite animal?"}]


def address_space_mib() -> int:
    return int(re.search(r"VmSize:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) >> 10


def cap_memory(extra_mib: int = CAP_MIB) -> None:
    """Limit this process's address space to what it uses now plus ``extra_mib``."""
    limit = (address_space_mib() + extra_mib) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


@contextlib.contextmanager
def _environment(env: dict | None):
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cli(main, argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def run_case(case: dict) -> dict:
    """One case: what it returned or raised, and how long it took."""
    kind = case["kind"]
    out: dict = {}
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        with _environment(case.get("env")):
            if kind == "template":
                from llm_bridge.loading import chat, sandbox

                sandbox.MAX_SECONDS = case.get("max_seconds", sandbox.MAX_SECONDS)
                text = chat.compile_template(case["text"], Path(case.get("source", "chat_template.jinja")), {})
                out["result_chars"] = len(text.render(USER))
            elif kind in ("load", "tokenizer", "chat_template"):
                import llm_bridge

                if kind == "load":
                    llm_bridge.load(case["path"])
                elif kind == "tokenizer":
                    llm_bridge.load_tokenizer(case["path"])
                else:
                    template = llm_bridge.load_chat_template(case["path"])
                    if template is not None:
                        template.render(USER)
            elif kind == "config":
                from llm_bridge.models import config_from_hf

                config_from_hf(case["config"])
            elif kind == "idx":
                from mnist_aux import data

                data.read_idx(Path(case["path"]), data.LABEL_MAGIC, (60000,))
            elif kind in ("mnist_cli", "llm_cli"):
                if kind == "mnist_cli":
                    from mnist_aux.__main__ import main
                else:
                    from llm_bridge.__main__ import main
                with contextlib.chdir(case.get("cwd", os.getcwd())):
                    out["code"], out["stderr"] = _cli(main, case["argv"])
            else:
                raise ValueError(f"unknown case kind {kind!r}")
        out["outcome"] = "ok"
    except _Timeout:
        out.update(outcome="timeout", type="Timeout", message=f"still running after {CASE_SECONDS} s")
    except BaseException as err:  # noqa: BLE001 -- the outcome is what the test judges
        out.update(outcome="error", type=type(err).__name__, message=str(err),
                   mro=[c.__name__ for c in type(err).__mro__],
                   traceback="" if isinstance(err, (ValueError, OSError)) else traceback.format_exc()[-3000:])
    finally:
        signal.alarm(0)
    out["seconds"] = time.monotonic() - start
    return out


def run_fuzz(spec: dict) -> dict:
    """The hypothesis property tests of :mod:`hostile_fuzz`, in this capped process."""
    sys.path.insert(0, str(Path(__file__).parent))
    import hostile_fuzz

    results = {}
    for name in spec["tests"]:
        start = time.monotonic()
        try:
            getattr(hostile_fuzz, name)(spec["examples"][name], spec["derandomize"], Path(spec["folder"]))
            results[name] = {"outcome": "ok"}
        except BaseException as err:  # noqa: BLE001 -- hypothesis reports the falsifying example
            results[name] = {"outcome": "error", "type": type(err).__name__,
                             "message": traceback.format_exc()[-6000:]}
        results[name]["seconds"] = time.monotonic() - start
    return results


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    results: dict = {}

    def save(running=None):
        Path(out_path).write_text(json.dumps({"results": results, "running": running}))

    cases = spec.get("cases", [])
    for case in [c for c in cases if c.get("early")]:
        save(case["id"])
        results[case["id"]] = run_case(case)
    import jax.numpy as jnp

    import llm_bridge  # noqa: F401 -- imported before the cap, with the backend started
    import mnist_aux.__main__  # noqa: F401

    jnp.ones(3).sum().block_until_ready()
    cap_memory()
    for case in [c for c in cases if not c.get("early")]:
        save(case["id"])
        results[case["id"]] = run_case(case)
    if "fuzz" in spec:
        save("fuzz")
        results["fuzz"] = run_fuzz(spec["fuzz"])
    save()


if __name__ == "__main__":
    main(*sys.argv[1:3])
