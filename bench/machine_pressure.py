"""What the machine did during a slow change: the latency phase's stalls hit every process at once
(each service's event loop held 0.1-0.3 s, every stage of a change slow), which no one process's
profile explains. A thread samples, every ``interval`` seconds, Linux's own accounting:

- ``/proc/pressure/{cpu,io,memory}`` (PSI, ``some`` totals): time in which at least one runnable task
  waited for a CPU, for I/O, for memory;
- ``/proc/stat``'s ``cpu`` line: steal (the hypervisor ran something else), iowait, busy time;
- every process's CPU ticks (``/proc/<pid>/stat`` utime + stime): who used the CPU.

:meth:`MachineProbe.window` sums them over one slow change's interval, so a stall names its cause:
a CPU queue and the processes that filled it, I/O, memory, or the hypervisor. Wall-clock times
(``time.time()``), as the bench's ``latency_slowest`` records them. Linux only; where a file is
missing (no PSI) its figures are absent, never guessed. A process that ended inside a window is
not in its ``top_cpu_ms`` (its last ticks are not sampled); the machine's totals still count it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
PSI = ("cpu", "io", "memory")


@dataclass(frozen=True)
class Sample:
    at: float
    psi_us: dict[str, int]
    """``some`` total stall (microseconds) per resource."""
    cpu_ticks: dict[str, int]
    """/proc/stat's cpu line: busy, iowait, steal."""
    procs: dict[int, int]
    """pid -> utime + stime ticks."""


def _psi() -> dict[str, int]:
    out = {}
    for name in PSI:
        try:
            first = Path(f"/proc/pressure/{name}").read_text().splitlines()[0]
        except (OSError, IndexError):
            continue
        out[name] = int(first.rsplit("total=", 1)[1])
    return out


def _cpu_ticks() -> dict[str, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"busy": user + nice + system + irq + softirq, "iowait": iowait, "steal": steal, "idle": idle}


def _procs() -> dict[int, int]:
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
    return out


def _name(pid: int) -> str:
    """``python -m services.otc_writer`` -> ``services.otc_writer``; else the executable's name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    args = [a.decode(errors="replace") for a in argv if a]
    if "-m" in args[:-1]:
        return args[args.index("-m") + 1]
    return os.path.basename(args[0]) if args else str(pid)


@dataclass
class MachineProbe:
    interval: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MachineProbe:
        self._sample()  # a first sample before anything the caller times
        self._thread = threading.Thread(target=self._run, name="machine-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
        self._sample()  # and one after

    def _sample(self) -> None:
        procs = _procs()
        for pid in procs.keys() - self.names.keys():
            self.names[pid] = _name(pid)
        self.samples.append(Sample(time.time(), _psi(), _cpu_ticks(), procs))

    def _named(self, pid: int) -> str:
        """Read again while the process lives: a name cached between a fork and its exec is the
        parent's."""
        name = _name(pid)
        if name != str(pid):
            self.names[pid] = name
        return self.names.get(pid, name)

    def window(self, start: float, end: float, *, top: int = 4) -> dict[str, Any]:
        """Sums over the samples that bracket [start, end]: PSI stall and CPU time in ms, and the
        ``top`` processes by CPU (by name: a service's replicas add up)."""
        before = [s for s in self.samples if s.at <= start]
        after = [s for s in self.samples if s.at >= end]
        if not before or not after:
            return {}
        a, b = before[-1], after[0]
        out: dict[str, Any] = {"ms": round((b.at - a.at) * 1000)}
        for name in a.psi_us.keys() & b.psi_us.keys():
            out[f"{name}_pressure_ms"] = round((b.psi_us[name] - a.psi_us[name]) / 1000)
        for key in ("busy", "iowait", "steal"):
            out[f"{key}_ms"] = round((b.cpu_ticks[key] - a.cpu_ticks[key]) * TICK_S * 1000)
        used: Counter[str] = Counter()
        for pid, ticks in b.procs.items():
            if ticks > a.procs.get(pid, 0):
                used[self._named(pid)] += ticks - a.procs.get(pid, 0)
        out["top_cpu_ms"] = {name: round(t * TICK_S * 1000) for name, t in used.most_common(top) if t > 0}
        return out
