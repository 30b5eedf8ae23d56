"""``make bench``: every benchmark in one run, gathered into ``bench/results.json`` and ``results.md``.

The ceilings (``baseline``) are measured in the same run on the same machine, so the ratios hold
on a noisy machine where absolute figures do not. Each part runs as its own process (its own
MongoDB: ``MONGODB_URL`` when set, else an ``emulators.mongo`` process) and prints its figures as
JSON; ``--quick`` runs every part on tiny sizes (the smoke test of the bench code).

    .venv/bin/python -m bench.run [--quick] [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scripts.stack import SERVICES

ROOT = Path(__file__).resolve().parent.parent

FULL: dict[str, list[str]] = {
    "baseline": ["bench.baseline", "--messages", "5000", "--docs", "3000"],
    "writer": ["bench.writer_throughput", "--changes", "1000", "--instances", "20"],
    "writer_1k": [
        "bench.writer_throughput",
        "--changes",
        "400",
        "--instances",
        "10",
        "--writer-entries",
        "1000",
    ],
    "writer_10k": [
        "bench.writer_throughput",
        "--changes",
        "400",
        "--instances",
        "10",
        "--writer-entries",
        "10000",
    ],
    "broker": ["bench.broker_load", "--requests", "2000", "--concurrency", "32"],
    "watcher": ["bench.watcher_relist", "--namespaces", "100", "--mediations", "10"],
    "linker": ["bench.linker_ops"],
    "stack": [
        "bench.stack_scale",
        *("--namespaces", "100", "--mediations", "100", "--seconds", "60", "--latency-seconds", "30"),
    ],
    "one_namespace": ["bench.one_namespace", "--mediations", "20000", "--cap-s", "240"],
    "tekton": ["bench.tekton_scale", "--namespaces", "100", "--per-namespace", "10", "--changes", "20"],
}
QUICK: dict[str, list[str]] = {
    "baseline": ["bench.baseline", "--messages", "200", "--docs", "100"],
    "writer": ["bench.writer_throughput", "--changes", "20", "--instances", "2"],
    "writer_1k": ["bench.writer_throughput", "--changes", "20", "--instances", "2", "--writer-entries", "50"],
    "writer_10k": [
        "bench.writer_throughput",
        "--changes",
        "20",
        "--instances",
        "2",
        "--writer-entries",
        "100",
    ],
    "broker": ["bench.broker_load", "--requests", "40", "--concurrency", "4"],
    "watcher": ["bench.watcher_relist", "--namespaces", "3", "--mediations", "2"],
    "linker": ["bench.linker_ops"],
    "stack": [
        "bench.stack_scale",
        *("--namespaces", "2", "--mediations", "3", "--seconds", "2", "--workers", "2"),
    ],
    "one_namespace": ["bench.one_namespace", "--mediations", "60", "--mediators", "3", "--cap-s", "60"],
    "tekton": ["bench.tekton_scale", "--namespaces", "2", "--per-namespace", "2", "--changes", "2"],
}

TARGETS: dict[str, tuple[str, float]] = {
    "writer.ratio_to_ceiling": (">=", 0.5),
    "writer.mongo_ops_per_change": ("<=", 3),
    "writer.ms_per_change_10k_over_1k": ("<=", 1.5),
    "broker_api.ratio_to_ceiling": (">=", 0.4),
    "watcher.ratio_to_amqp": (">=", 0.3),
    "e2e.latency_ms.p99": ("<=", 100),
    "otc.writes_per_change": ("<=", 1.0),
    "otc.writes_unchanged_resync": ("<=", 0),
    "resync.seconds_10k": ("<=", 10),
    # A third of the 15 s Lease: the loop never held long enough to miss a renewal (issue 19).
    "scale.one_namespace_20k.loop_held_max_s": ("<=", 5),
    "tekton.writes_per_change": ("<=", 1.0),
    "tekton.writes_unchanged_resync": ("<=", 0),
    "tekton.resync_seconds_2k": ("<=", 5),
}


def part(args: list[str]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.monotonic() - started


def collect(
    parts: dict[str, list[str]], partial: Path, *, resume: bool = False
) -> tuple[dict[str, Any], dict[str, float]]:
    raw: dict[str, Any] = json.loads(partial.read_text()) if resume and partial.exists() else {}
    seconds: dict[str, float] = {k: 0.0 for k in raw}
    for name, args in parts.items():
        if name in raw:
            print(f"== {name}: kept from {partial}", flush=True)
            continue
        print(f"== {name}: python -m {' '.join(args)}", flush=True)
        raw[name], seconds[name] = part(args)
        print(f"   {seconds[name]:.0f} s: {json.dumps(raw[name])}", flush=True)
        partial.write_text(json.dumps(raw, indent=2) + "\n")  # what a later failure leaves
    return raw, seconds


def gather(parts: dict[str, list[str]], partial: Path, *, resume: bool = False) -> dict[str, Any]:
    load_before = os.getloadavg()[0]  # before the parts run: the machine they ran on
    raw, seconds = collect(parts, partial, resume=resume)
    return summarise(raw, seconds, parts, load_before=load_before)


def summarise(
    raw: dict[str, Any], seconds: dict[str, float], parts: dict[str, list[str]], *, load_before: float
) -> dict[str, Any]:
    """The keys of issue 12 from the parts' own figures (``raw`` is kept in full beside them)."""
    b, w = raw["baseline"], raw["writer"]
    s: dict[str, Any] = defaultdict(lambda: None, raw["stack"])
    ceiling = min(b["amqp_hop_per_s"], b["store_upsert_per_s"])
    at_1k, at_10k = raw["writer_1k"]["ms_per_change"], raw["writer_10k"]["ms_per_change"]
    results: dict[str, Any] = {
        "baseline": {k: b[k] for k in ("amqp_hop_per_s", "store_upsert_per_s", "store_find_id_per_s")},
        "writer": {
            "changes_per_s": round(w["changes_per_s"], 1),
            "ratio_to_ceiling": round(w["changes_per_s"] / ceiling, 3),
            "mongo_ops_per_change": round(w["mongo_ops_per_change"], 2),
            "mongo_ops_per_create": round(w["mongo_ops_per_create"], 2),
            "creates_per_s": round(w["creates_per_s"], 1),
            "ms_per_create_at_1k": round(raw["writer_1k"]["ms_per_create"], 2),
            "ms_per_create_at_10k": round(raw["writer_10k"]["ms_per_create"], 2),
            "mongo_ops_per_unchanged_snapshot": round(w["mongo_ops_per_unchanged_snapshot"], 1),
            "ms_per_change_at_1k": round(at_1k, 2),
            "ms_per_change_at_10k": round(at_10k, 2),
            "ms_per_change_10k_over_1k": round(at_10k / at_1k, 2),
        },
        "broker_api": {
            "requests_per_s": raw["broker"]["requests_per_s"],
            "p99_ms": raw["broker"]["p99_ms"],
            "ratio_to_ceiling": round(raw["broker"]["requests_per_s"] / ceiling, 3),
            "mongo_ops_per_provision": raw["broker"]["mongo_ops_per_provision"],
            "mongo_ops_per_bind": raw["broker"]["mongo_ops_per_bind"],
        },
        "watcher": {
            "initial_sync_events_per_s": raw["watcher"]["initial_sync_events_per_s"],
            "ratio_to_amqp": round(raw["watcher"]["initial_sync_events_per_s"] / b["amqp_hop_per_s"], 3),
            "mongo_ops_per_event": raw["watcher"]["mongo_ops_per_event"],
        },
        "linker": {k: v for k, v in raw.get("linker", {}).items() if k.startswith("mongo_ops_")},
        "e2e": {
            "changes_per_s": s["sustained_changes_per_s"],
            "latency_ms": s["latency_ms"],
            "latency_at_changes_per_s": s["latency_rate_per_s"],
            "invariants_hold": (s["invariants"] or {}).get("hold"),
        },
        "otc": {
            "writes_per_change": s["writes_per_change"],
            "writes_unchanged_resync": s["resync_writes"],
        },
        "resync": {"seconds_10k": s["resync_seconds"], "triggers": s["triggers"]},
        "scale": {"one_namespace_20k": one_namespace(raw.get("one_namespace"))},
        "tekton": tekton_keys(raw.get("tekton", {})),
        "stack_error": s["error"],
        "rss_mb": {
            name: {"idle": (s["rss_idle"] or {}).get(name), "at_10k": (s["rss_loaded"] or {}).get(name)}
            for name in SERVICES
        },
        "meta": {
            "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "load_average_before": load_before,
            "mongodb": "MONGODB_URL" if os.environ.get("MONGODB_URL") else "emulators.mongo (mongoeco)",
            "seconds_per_part": {k: round(v, 1) for k, v in seconds.items()},
            "commands": {k: "python -m " + " ".join(v) for k, v in parts.items()},
        },
        "raw": raw,
    }
    results["meta"]["load_average_after"] = os.getloadavg()[0]
    return results


def one_namespace(raw: dict[str, Any] | None) -> dict[str, Any]:
    """``scale.one_namespace_20k``: bench/one_namespace.py's figures (issue 19)."""
    if raw is None:
        return {}
    first, resync = raw.get("first_sync") or {}, raw.get("resync") or {}
    return {
        "mediations": raw["mediations"],
        "first_sync_s": raw.get("first_sync_s"),
        "first_sync_published": raw.get("first_sync_published"),
        "one_edit_s": raw.get("one_edit_s"),
        "resync_s": raw.get("resync_s"),
        "rss_mb": raw.get("rss_mb_after_first_sync"),
        "readyz_slowest_s": max(first.get("readyz_slowest_s", 0.0), resync.get("readyz_slowest_s", 0.0)),
        "loop_held_max_s": max(first.get("loop_held_max_s", 0.0), resync.get("loop_held_max_s", 0.0)),
        "leadership_terms": first.get("leadership_terms"),
        "invariants_hold": raw.get("invariants_hold"),
    }


def tekton_keys(t: dict[str, Any]) -> dict[str, Any]:
    """The keys of issue 18 from ``bench.tekton_scale``'s figures."""
    return {
        "writes_per_change": t.get("writes_per_change"),
        "writes_unchanged_resync": t.get("resync_writes"),
        "resync_seconds_2k": t.get("resync_seconds"),
        "initial_sync_per_s": t.get("initial_sync_per_s"),
        "error": t.get("error"),
    }


def lookup(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for part_ in dotted.split("."):
        value = value[part_]
    return value


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python -m bench.run`) on {meta['date']}, {meta['machine']}, MongoDB: "
        f"{meta['mongodb']}, RabbitMQ: the local node; load average {meta['load_average_before']:.2f} before, "
        f"{meta['load_average_after']:.2f} after (the machine is shared: absolute figures are noisy, "
        "ratios to the ceilings measured in the same run less so). Every figure: bench/results.json.",
        "",
        "| key | value | target |",
        "|---|---|---|",
    ]

    def walk(prefix: str, node: Any) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(dotted + ".", value)
                continue
            target = TARGETS.get(dotted)
            mark = ""
            if target is not None and value is not None:
                op, bound = target
                ok = value >= bound if op == ">=" else value <= bound
                mark = f"{op} {bound:g} {'met' if ok else '**missed**'}"
            lines.append(f"| `{dotted}` | {value} | {mark} |")

    walk("", {k: v for k, v in results.items() if k not in ("meta", "raw")})
    lines += ["", "Commands (each part its own process, in this order):", ""]
    lines += [f"- {k}: `{v}` ({meta['seconds_per_part'][k]} s)" for k, v in meta["commands"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the bench code runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--only", help="comma-separated parts; writes their raw figures only")
    parser.add_argument(
        "--resume", action="store_true", help="keep the parts a failed run left in results.partial.json"
    )
    args = parser.parse_args()
    started = time.monotonic()
    parts = QUICK if args.quick else FULL
    if args.only:
        parts = {k: v for k, v in parts.items() if k in args.only.split(",")}
        raw, _ = collect(parts, args.out.with_suffix(".partial.json"))
        args.out.write_text(json.dumps(raw, indent=2) + "\n")
        return 0
    results = gather(parts, args.out.with_suffix(".partial.json"), resume=args.resume)
    results["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
