"""``python -m bench.broker_server``: broker-api's own ``main()`` with the MongoDB command counter.

The load generator (bench/broker_load.py) starts this as a process of its own, so the service and
the client no longer share one event loop and one core's worth of Python. ``SIGUSR1`` writes the
commands counted so far to ``BENCH_COUNTS_FILE`` (JSON), then ``<file>.done`` marks it complete:
the only bench addition (and ``BENCH_PROFILE=<file>``: a CPU-time profile); configuration,
logging and wiring are the service's.
"""

from __future__ import annotations

import cProfile
import json
import os
import signal
import time
from pathlib import Path
from types import FrameType

from bench.counting import COUNTER  # registers the listener before the service builds its client
from services.broker_api.app import main


def _dump(_signum: int, _frame: FrameType | None) -> None:
    out = Path(os.environ["BENCH_COUNTS_FILE"])
    out.write_text(json.dumps(dict(COUNTER.snapshot())))
    out.with_suffix(".done").write_text(str(COUNTER.total))


def _profiled(path: str) -> None:
    """``main()`` under cProfile counting CPU time (wall time on a shared machine is mostly
    waiting for a core)."""
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    try:
        main()
    finally:
        profile.disable()
        profile.dump_stats(path)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _dump)
    if os.environ.get("BENCH_PROFILE"):
        _profiled(os.environ["BENCH_PROFILE"])
    main()
