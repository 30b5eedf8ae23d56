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
    # Three when changes come one at a time (the minimum docs/design.md argues), fewer in batches.
    assert writer["mongo_ops_per_change"] <= 3.0
    assert writer["otc_calls_per_unchanged_snapshot"] == 0


def test_broker_requests_cost_the_minimum_mongo_commands(tmp_path: Path) -> None:
    """One round trip per request (docs/design.md, broker-api): a provision is one insert, a bind
    right after it one conditional update (no read, no findAndModify); the lazy release adds at
    most one bulk update per request (fewer when requests share a sweep)."""
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
    provision, bind = broker["provision_ops_by_command"], broker["bind_ops_by_command"]
    assert set(provision) <= {"insert", "update"} and provision["insert"] == 20, provision
    assert provision.get("update", 0) <= 20, provision
    assert set(bind) == {"update"} and 20 <= bind["update"] <= 40, bind
    assert broker["server_cpu_ms_per_request"] > 0
