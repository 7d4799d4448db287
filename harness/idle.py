"""Whether the machine is idle enough for a benchmark's ratios to mean anything (issue 27, item 8).

A ratio measured while another job shares the cores says more about the scheduler than about the code
(torch's thread pool suffers far more from a busy machine than XLA's). :func:`check` samples, while this
process sleeps, how many cores' worth of CPU time every process together used (Linux ``/proc/stat``),
and reads the 1-minute load average per core; a benchmark calls it before and after its timings.
Above :data:`LIMIT` at either point the benchmark refuses in one line (exit 2) unless forced
(``--force``), and a forced result is marked ``"idle": false`` so the README never shows it.
"""

from __future__ import annotations

import os
import time

LIMIT = 0.5  # cores' worth of other work (and load average per core) above which the machine counts as busy
SAMPLE_SECONDS = 2.0


class Busy(RuntimeError):
    """The machine is busy (see the module docstring); the message names what was measured."""


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores' worth of CPU time all processes used during ``seconds`` while this one slept (None: no
    ``/proc/stat``, so not measurable here)."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal; guest is in user
    try:
        first, t0 = sample(), time.monotonic()
        time.sleep(seconds)
        second, t1 = sample(), time.monotonic()
    except (OSError, ValueError, IndexError):
        return None
    return (second - first) / os.sysconf("SC_CLK_TCK") / (t1 - t0)


def check(when: str, force: bool = False, load: bool = True) -> dict:
    """The machine's state ``when`` (``"start"`` or ``"end"``): other processes' busy cores and, with
    ``load`` (at the start only: at the end the load average includes the benchmark itself), the load
    average per core. Raises :class:`Busy` when either is above :data:`LIMIT`, unless ``force``."""
    cores = busy_cores()
    per_core = os.getloadavg()[0] / (os.cpu_count() or 1) if load else None
    record = {"when": when, "other_busy_cores": cores, "load_average_per_core": per_core, "limit": LIMIT}
    reasons = []
    if cores is None:
        reasons.append("CPU use not measurable here (no /proc/stat)")
    elif cores > LIMIT:
        reasons.append(f"other processes used {cores:.2f} cores over {SAMPLE_SECONDS:g} s")
    if per_core is not None and per_core > LIMIT:
        reasons.append(f"load average {per_core:.2f} per core")
    record["idle"] = not reasons
    if reasons and not force:
        raise Busy(f"machine busy at the {when} ({'; '.join(reasons)}, limit {LIMIT}): timings would not mean "
                   "anything; wait for an idle machine or pass --force (the result is then marked not idle)")
    return record
