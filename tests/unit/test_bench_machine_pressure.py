"""``bench/machine_pressure.py``: a slow change's window sums what Linux accounted between the
samples that bracket it, and names the processes that used the CPU."""

from __future__ import annotations

import os
import time

from bench.machine_pressure import TICK_S, MachineProbe, Sample


def _sample(at: float, cpu_us: int, busy: int, steal: int, procs: dict[int, int]) -> Sample:
    return Sample(at, {"cpu": cpu_us, "io": 0}, {"busy": busy, "iowait": 0, "steal": steal, "idle": 0}, procs)


def test_a_window_sums_the_bracketing_samples_and_ranks_the_processes() -> None:
    probe = MachineProbe()  # pids no process has (over Linux's pid_max): names from the cache
    probe.names.update(
        {900001001: "emulators.mongo", 900001002: "services.otc_writer", 900001003: "services.otc_writer"}
    )
    probe.samples += [
        _sample(10.0, 1_000, 100, 5, {900001001: 50, 900001002: 10}),
        _sample(10.1, 2_000, 110, 5, {900001001: 55, 900001002: 11}),
        _sample(
            10.5, 901_000, 180, 25, {900001001: 90, 900001002: 12, 900001003: 30}
        ),  # 900001003 started in between
        _sample(10.6, 902_000, 185, 25, {900001001: 91, 900001002: 12, 900001003: 30}),
    ]
    window = probe.window(10.2, 10.4)  # bracketed by the samples at 10.1 and 10.5
    assert window["ms"] == 400
    assert window["cpu_pressure_ms"] == 899 and window["io_pressure_ms"] == 0
    assert window["busy_ms"] == round(70 * TICK_S * 1000)
    assert window["steal_ms"] == round(20 * TICK_S * 1000)
    # By name: a service's processes add up; the busiest first.
    assert list(window["top_cpu_ms"]) == ["emulators.mongo", "services.otc_writer"]
    assert window["top_cpu_ms"]["services.otc_writer"] == round(31 * TICK_S * 1000)
    assert probe.window(9.0, 10.2) == {}  # nothing before it: no guess


def test_the_probe_samples_this_machine_and_sees_a_busy_process() -> None:
    with MachineProbe(interval=0.05) as probe:
        start = time.time()
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:
            pass
        end = time.time()
    window = probe.window(start, end)
    assert window["busy_ms"] >= 200
    me = probe._named(os.getpid())
    assert window["top_cpu_ms"].get(me, 0) >= 200, window
