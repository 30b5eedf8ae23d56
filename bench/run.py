"""``make bench``: run every benchmark script against the machine's RabbitMQ and an embedded MongoDB.

Each script is a module with a ``main()`` that prints its figures and appends them to
``bench/results.md``. MongoDB is ``MONGODB_URL`` when set, else one ``emulators.mongo`` process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("bench.broker_load", "bench.watcher_relist", "bench.writer_throughput")


def main() -> int:
    env = dict(os.environ)
    mongo: subprocess.Popen[str] | None = None
    if not env.get("MONGODB_URL"):
        mongo = subprocess.Popen(
            [sys.executable, "-m", "emulators.mongo", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert mongo.stdout is not None
        env["MONGODB_URL"] = mongo.stdout.readline().strip().removeprefix("MONGODB_URL=")
    failures = 0
    try:
        for module in SCRIPTS:
            if not (ROOT / (module.replace(".", "/") + ".py")).exists():
                print(f"== {module}: not present, skipped")
                continue
            print(f"== {module}", flush=True)
            failures += (
                subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, check=False).returncode != 0
            )
    finally:
        if mongo is not None:
            mongo.terminate()
            mongo.wait(10)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
