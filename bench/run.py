"""``make bench``: run every benchmark against the machine's RabbitMQ and a MongoDB.

Each script prints its figures and appends a section to ``bench/results.md`` (see bench/common.py
for where MongoDB comes from).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("bench.broker_load", "bench.watcher_relist", "bench.writer_throughput", "bench.stack_latency")


def main() -> int:
    failures = 0
    for module in SCRIPTS:
        print(f"== {module}", flush=True)
        failures += subprocess.run([sys.executable, "-m", module], cwd=ROOT, check=False).returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
