"""The tools part of a service's page (services.broker_api.service_tools) and otc-writer's tool
outcomes (services.otc_writer.tool_reports): which tools concern which service, problems first,
paging, the page script-less; what each end of an attempt reports."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.broker_api.dashboard import DashboardView, InstanceName
from services.broker_api.dashboard import render as render_kabanero
from services.broker_api.models import Binding, InstanceRecord, Parameters
from services.broker_api.openapi import openapi_spec
from services.broker_api.service_tools import PAGE_SIZE, concerns, view
from services.broker_api.tool_states import ToolStateDoc
from services.otc_writer.otc_client import (
    OtcCircuitOpenError,
    OtcPermanentError,
    OtcRefusedError,
    OtcRetryableError,
)
from services.otc_writer.outcome_outbox import Outbox
from services.otc_writer.tool_reports import Reporter, link_of
from shared.events import CloudEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def publish(event: CloudEvent) -> None:
    raise AssertionError("not published here")


def record(kind: str = "kabanero", toolchains: tuple[str, ...] = ("tc-1",), **params: Any) -> InstanceRecord:
    p = {"cluster": "default", "namespace": "team-a", **params}
    return InstanceRecord.model_validate(
        {
            "_id": f"{kind}:sid-1",
            "kind": kind,
            "instance_id": "sid-1",
            "service_id": kind,
            "parameters": Parameters(**p),
            "dashboard_url": "https://x.example/",
            "toolchains": [Binding(id=t, credentials="c", bound_at=T0) for t in toolchains],
            "created_at": T0,
            "updated_at": T0,
        }
    )


def tool(name: str, state: str = "applied", **kw: Any) -> ToolStateDoc:
    base: dict[str, Any] = {
        "purpose": "kabanero-trigger",
        "key": name,
        "toolchain_id": "tc-1",
        "scope": "default/team-a",
        "name": name,
        "state": state,
        "revision": 1,
        "at": T0,
        "since": T0,
    }
    return ToolStateDoc.model_validate({**base, **kw})


def test_a_tool_concerns_the_services_of_what_it_belongs_to() -> None:
    kab = record()
    assert concerns(kab, tool("t"))
    assert not concerns(kab, tool("t", scope="default/team-b"))
    assert concerns(kab, tool("gh", scope=None, purpose="github"))
    assert concerns(
        kab, tool("ev", scope=None, purpose="kabanero-events-auto", key="kabanero-events-auto:sid-1")
    )
    assert not concerns(
        kab, tool("ev", scope=None, purpose="kabanero-events-auto", key="kabanero-events-auto:x")
    )
    tk = record("tekton", namespace="", namespaces=["a"])
    assert concerns(tk, tool("card", scope="tekton:default/a", purpose="tekton-card"))
    assert not concerns(tk, tool("card", scope="tekton:default/b", purpose="tekton-card"))
    assert not concerns(tk, tool("card", scope="tekton:defaultx/a", purpose="tekton-card"))
    assert not concerns(tk, tool("t"))
    assert concerns(record("tekton", namespace=""), tool("card", scope="tekton:default/b"))


def test_problems_first_counted_and_paged() -> None:
    many = [tool(f"ok-{i:05d}") for i in range(250)]
    many += [tool("held", "held", until=T0 + timedelta(minutes=3)), tool("bad", "refused", message="400: no")]
    many.append(tool("wait", "pending", dead_letter=None, message="503"))
    v = view(record(), many, page=1)
    assert v.total == 253 and v.pages == 3 and len(v.tools) == PAGE_SIZE
    assert [t.name for t in v.tools[:3]] == ["bad", "held", "wait"]
    assert v.counts == {"applied": 250, "held": 1, "refused": 1, "pending": 1} and not v.in_sync
    assert "until 2026-01-01 00:03:00 UTC" in v.tools[1].summary
    last = view(record(), many, page=99)
    assert last.page == 3 and len(last.tools) == 53 and last.tools[-1].name == "ok-00249"


def test_the_page_is_script_less_and_escapes_what_otc_said() -> None:
    tools = view(
        record(), [tool("<b>x</b>", "refused", message="<script>alert(1)</script>", dead_letter="e")], 1
    )
    v = DashboardView(
        instance_id="sid-1",
        service="kabanero",
        state="active",
        instance=InstanceName(cluster="default", namespace="team-a", name="kabanero"),
        creates_instance=False,
        outcome=None,
        kabanero_landing_url="https://landing.example/",
        tools=tools,
    )
    page = render_kabanero(v, T0)
    assert "<script" not in page and "&lt;script&gt;" in page and "<b>x</b>" not in page
    assert "<html lang=en>" in page and "http-equiv=refresh" in page and "Rendered at" in page
    assert re.search(r"<h1>.*</h1>", page) and "<h2 id=tools>Tools in OTC</h2>" in page
    assert "Dead letters" in page and "name=viewport" in page


@pytest.mark.parametrize(
    ("exc", "state", "dead"),
    [
        (OtcRefusedError("Invalid", status=400), "refused", "ev-1"),
        (OtcPermanentError("Forbidden", status=403), "failed", "ev-1"),
        (OtcCircuitOpenError("circuit open"), "held", None),
        (OtcRetryableError("503", status=503), "pending", None),
    ],
)
def test_an_attempts_error_is_reported_as_its_state(exc: Exception, state: str, dead: str | None) -> None:
    until = T0 + timedelta(seconds=7)
    reporter = Reporter(Outbox(publish, CollectorRegistry()), until=lambda: until, clock=lambda: T0)
    fields = reporter.of_error(exc, "ev-1")  # type: ignore[arg-type]
    assert fields["state"] == state and fields.get("dead_letter") == dead
    assert fields.get("until") == (until if state == "held" else None)


def test_a_tools_link_is_an_http_url_only() -> None:
    assert link_of({"repo_url": "https://github.com/a/b"}) == "https://github.com/a/b"
    assert link_of({"dashboard_url": "javascript:alert(1)"}) is None
    assert link_of({"repo_url": 3, "dashboard_url": "http://x.example/d"}) == "http://x.example/d"


def test_every_kinds_page_is_in_the_openapi_document() -> None:
    spec = openapi_spec("test")
    for path in (
        "/dashboard/{sid}/{token}",
        "/dashboard/events/{sid}/{token}",
        "/dashboard/tekton/{sid}/{token}",
    ):
        op = spec["paths"][path]["get"]
        assert op["security"] == [] and {"200", "400", "404"} <= set(op["responses"])
        assert {"application/json", "text/html"} <= set(op["responses"]["200"]["content"])
        assert any(p["name"] == "page" and p["in"] == "query" for p in op["parameters"])
    schemas = spec["components"]["schemas"]
    assert "ToolsView" in schemas and "ShownTool" in schemas
