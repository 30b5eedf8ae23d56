"""A service's page as its users see it: Debian's headless Chromium (tests/cdp.py) opens the
``dashboard_url`` broker-api answered, on a running stack (real processes, the OTC and Kubernetes
emulators, the real RabbitMQ), through the states a toolchain's users meet: a tool OTC refuses, a
tool pending while OTC is down, then all in sync. Each time the page must render with no console
error, no CSP violation and no request outside broker-api, and read so (the rendered text, as a user
reads it). Screenshots: ``.run/page-screenshots/*.png`` (the last run's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scripts.driver import Driver, driven, fault_env
from scripts.stack import CLUSTER, ROOT
from services.otc_writer.desired import trigger_tool_name
from shared.events import TriggerKey
from tests.cdp import Browser, Visit, browser
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
SHOTS = ROOT / ".run" / "page-screenshots"
PARAMS = {"cluster": CLUSTER, "namespace": "kabanero"}
REFUSAL = "Tool parameters are not valid (emulated refusal)"
# Two failed calls open the circuit: OTC down is then "held" (until the half-open probe).
ENV = fault_env(
    otc_writer={
        "OTC_MAX_ATTEMPTS": "2",
        "OTC_DEADLINE_S": "5",
        "OTC_BREAKER_THRESHOLD": "2",
        "OTC_BREAKER_RESET_S": "3",
    }
)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Driver]:
    async with driven("page", tmp_path / ".run", extra_env=ENV) as w:
        yield w


async def page_json(w: Driver, url: str) -> dict[str, Any]:
    async with w.http.get(url, headers={"Accept": "application/json"}) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def tools_say(w: Driver, url: str, check: Any) -> bool:
    return bool(check((await page_json(w, url))["tools"]))


async def all_in_sync(w: Driver, url: str, total: int) -> bool:
    """The page shows ``total`` tools, all in sync, and OTC holds exactly those."""
    shown = (await page_json(w, url))["tools"]
    return bool(shown["in_sync"] and shown["total"] == total == len(await w.tools()))


def by_name(tools: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in tools["tools"] if t["name"] == name), None)


async def tool_of(w: Driver, mediation: str) -> str:
    """The name of the trigger tool of a mediation of the seeded mediator."""
    owner = (await w.kube("GET", "mediator"))["metadata"]["name"]
    key = TriggerKey(
        cluster=CLUSTER, namespace="kabanero", generation="mediation", owner=owner, name=mediation
    )
    return trigger_tool_name(key)


async def add_mediation(w: Driver, name: str) -> str:
    """One more mediation in the seeded mediator (one more trigger tool); its tool's name."""
    current = (await w.kube("GET", "mediator"))["spec"]["mediations"]
    added = {**current[0], "name": name, "selector": {"urlPattern": name}}
    await w.kube("PATCH", "mediator", {"spec": {"mediations": [*current, added]}})
    return await tool_of(w, name)


async def remove_mediation(w: Driver, name: str) -> None:
    current = (await w.kube("GET", "mediator"))["spec"]["mediations"]
    await w.kube("PATCH", "mediator", {"spec": {"mediations": [m for m in current if m["name"] != name]}})


async def seen(b: Browser, w: Driver, url: str, shot: str, *, mobile: bool = False) -> Visit:
    """The page in the browser, rendered cleanly and from broker-api only."""
    visit = await b.visit(url, shot=shot, mobile=mobile)
    assert visit.status == 200
    assert visit.console_errors == [] and visit.exceptions == [], (visit.console_errors, visit.exceptions)
    assert visit.csp_violations == [], visit.csp_violations
    broker = w.stack.url("broker") + "/"
    assert visit.requests and all(u.startswith(broker) for u in visit.requests), visit.requests
    assert visit.lang == "en" and "Tools in OTC" in visit.headings, visit.headings
    assert "Rendered at" in visit.text
    return visit


async def test_the_page_reads_refused_pending_then_in_sync_in_a_real_browser(
    world: Driver, tmp_path: Path
) -> None:
    w = world
    # The Kabanero service (its GitHub tools) and the Events service (its trigger tools), one toolchain.
    kab = (await w.provision_and_bind("kabanero-broker", "page-kab", PARAMS)).body["dashboard_url"]
    assert kab.startswith(f"{w.stack.url('broker')}/dashboard/page-kab/"), kab
    url = (await w.provision_and_bind("kabanero-events-broker", "page-ev", PARAMS)).body["dashboard_url"]
    assert url.startswith(f"{w.stack.url('broker')}/dashboard/events/page-ev/"), url
    tekton_toolchain = await w.new_toolchain("page-tekton")
    tekton = await w.provision_and_bind("tekton-broker", "page-tk", {"cluster": CLUSTER}, tekton_toolchain)
    # deploy/samples/kabanero-sample.yaml: 2 trigger tools, 4 GitHub tools.
    await wait_until(lambda: all_in_sync(w, url, 6), timeout=60, what="every tool shown in sync")

    async with browser(SHOTS, log=tmp_path / "chromium.log") as b:
        # 1. OTC refuses one tool: the page says so, with OTC's message and the dead letter.
        refused = await tool_of(w, "page-refused")
        rules = [{"path": ".*/tools", "method": "POST", "name": refused, "status": 400, "message": REFUSAL}]
        await w.otc_faults({"rules": rules})
        assert await add_mediation(w, "page-refused") == refused
        await wait_until(
            lambda: tools_say(w, url, lambda t: (by_name(t, refused) or {}).get("state") == "refused"),
            timeout=60,
            what="the refusal shown",
        )
        visit = await seen(b, w, url, "1-refused")
        assert "refused by OTC" in visit.text and REFUSAL in visit.text, visit.text
        assert "Not in sync: 1 refused by OTC" in visit.text and "Dead letters" in visit.headings
        table = visit.text[visit.text.index("Tools, problems first") :]
        assert table.index(refused) < table.index("in sync at revision")  # problems first

        # 2. OTC is down: a new tool waits, and the page says since when and why.
        await w.otc_faults({"rules": rules, "error_rate": 1.0, "error_status": 503})
        waiting = await add_mediation(w, "page-outage")
        await wait_until(
            lambda: tools_say(
                w, url, lambda t: (by_name(t, waiting) or {}).get("state") in ("pending", "held")
            ),
            timeout=60,
            what="the waiting tool shown",
        )
        visit = await seen(b, w, url, "2-otc-down")
        assert "held since" in visit.text or "pending since" in visit.text, visit.text
        assert "held: OTC unavailable" in visit.text or "pending" in visit.text

        # 3. OTC is back and the refused mediation is gone: every tool is in sync.
        await w.otc_faults(None)
        await remove_mediation(w, "page-refused")
        await wait_until(lambda: all_in_sync(w, url, 7), timeout=90, what="all in sync shown")
        assert waiting in {t["name"] for t in await w.tools()}
        visit = await seen(b, w, url, "3-in-sync")
        assert "All 7 tools are in sync with OTC." in visit.text, visit.text
        # What it stands for, as the watcher found it: the version, the repositories (gitops too).
        assert (
            "as the watcher of the cluster found it" in visit.text
            and "Repositories it uses" in visit.headings
        )
        assert "gitops" in visit.text
        assert "Last change:" in visit.text and waiting in visit.text
        phone = await seen(b, w, url, "4-in-sync-phone", mobile=True)
        assert phone.overflow_px <= 0, f"{phone.overflow_px} px wider than a phone's screen"

        # The Kabanero service's page: the same instance, the same tools.
        await wait_until(lambda: all_in_sync(w, kab, 7), timeout=30, what="the Kabanero service's page")
        await seen(b, w, kab, "5-kabanero")

        # The Tekton service's page: its cards, never the Kabanero service's toolchain.
        tk_url = tekton.body["dashboard_url"]
        await wait_until(
            lambda: tools_say(w, tk_url, lambda t: t["in_sync"] and t["total"] > 0),
            timeout=60,
            what="the Tekton cards shown",
        )
        visit = await seen(b, w, tk_url, "6-tekton")
        assert "Tekton" in visit.text and w.toolchain not in visit.text
        assert tekton_toolchain in visit.text
