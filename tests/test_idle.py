"""harness.idle: benchmarks refuse a busy machine in one line unless forced, and mark a forced result."""

import os

import pytest

from harness import idle


def test_busy_cores_is_measured_on_linux():
    cores = idle.busy_cores(0.2)
    if not os.path.exists("/proc/stat"):
        assert cores is None
    else:
        assert 0 <= cores <= (os.cpu_count() or 1) + 0.5


@pytest.mark.parametrize("cores,load,busy", [(0.1, 0.1, False), (1.2, 0.1, True), (0.1, 0.9, True), (None, 0.1, True)])
def test_check_refuses_a_busy_machine_unless_forced(monkeypatch, cores, load, busy):
    monkeypatch.setattr(idle, "busy_cores", lambda *a, **k: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load * (os.cpu_count() or 1), 0.0, 0.0))
    if busy:
        with pytest.raises(idle.Busy, match="--force") as e:
            idle.check("start")
        assert "\n" not in str(e.value)
        assert idle.check("start", force=True)["idle"] is False
    else:
        assert idle.check("start")["idle"] is True
    # at the end only other processes count: the load average then includes the benchmark itself
    assert idle.check("end", force=True, load=False)["load_average_per_core"] is None
