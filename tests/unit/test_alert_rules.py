"""The alert rules fire when they should: ``promtool test rules`` on their unit tests
(deploy/prometheus/kabanero-otc-alerts.test.yml: dead letters, a .dead queue near its length limit,
a consumer holding for a dependency, messages put back at the hold limit)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    if not Path(found).exists():
        pytest.fail("promtool is missing: `make test` installs it (scripts/ensure-promtool.sh)")
    return found


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    run = subprocess.run(
        [promtool(), "test", "rules", "kabanero-otc-alerts.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_the_queue_and_holding_alerts_have_unit_tests() -> None:
    import yaml

    rules = yaml.safe_load((RULES / "kabanero-otc-alerts.yml").read_text())
    tests = yaml.safe_load((RULES / "kabanero-otc-alerts.test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    new = {"KotcDeadLetters", "KotcDeadQueueNearLimit", "KotcConsumerHoldingLong", "KotcHoldLimitReached"}
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert new <= alerts and new <= tested
