"""``make bench`` code runs: two of its parts on tiny sizes, and the summary of every key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_parts_run_on_tiny_sizes_and_count_mongo_commands(tmp_path: Path) -> None:
    out = tmp_path / "raw.json"
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "baseline,writer", "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    raw = json.loads(out.read_text())
    assert raw["baseline"]["amqp_hop_per_s"] > 0 and raw["baseline"]["store_upsert_per_s"] > 0
    writer = raw["writer"]
    assert writer["changes"] > 0 and writer["otc_calls_per_change_per_toolchain"] == 1.0
    assert writer["mongo_ops_per_change"] == 3.0  # the minimum docs/design.md argues
    assert writer["otc_calls_per_unchanged_snapshot"] == 0


def test_broker_requests_cost_the_minimum_mongo_commands(tmp_path: Path) -> None:
    """Provision 2 (insert with the lease, pull and release), bind 3 (a read more): docs/design.md."""
    out = tmp_path / "raw.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--only",
            "broker",
            "--repeats",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    raw = json.loads(out.read_text())
    broker = raw["broker"]
    runs = raw["runs"]["broker"]["runs"]
    assert len(runs) == 2 and all(r["load_before"] >= 0 and r["load_after"] >= 0 for r in runs)
    assert broker["server"].startswith("its own process")
    assert broker["errors"] == 0
    assert broker["mongo_ops_per_provision"] == 2.0, broker["provision_ops_by_command"]
    assert broker["mongo_ops_per_bind"] == 3.0, broker["bind_ops_by_command"]
