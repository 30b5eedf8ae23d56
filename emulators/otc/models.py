"""Pydantic models: stored records, wire shapes of Toolchain API v2 (otc-api.md §4.4), request bodies.

Records are what the store keeps; wire models are what clients see. Rendering needs the public base
URL (for ``href``), which is known per request, so hrefs are never stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictStr

ToolState = Literal["configured", "configuring", "misconfigured", "unconfigured"]


def utc_now_from(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def iso(dt: datetime) -> str:
    """IBM's timestamp format: RFC 3339, UTC, milliseconds, ``Z``."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# --- stored records -------------------------------------------------------------------------------


class ToolchainRecord(BaseModel):
    id: str
    name: str
    description: str
    resource_group_id: str
    created_at: datetime
    updated_at: datetime
    created_by: str
    seq: int
    """Creation order; the paging cursor is built on it so deletes never shift a page."""


class ToolRecord(BaseModel):
    id: str
    toolchain_id: str
    tool_type_id: str
    name: str | None
    parameters: dict[str, Any]
    state: ToolState = "configured"
    updated_at: datetime
    seq: int
    broker_dashboard_url: str | None = None
    """Broker-backed tools: the ``dashboard_url`` the broker answered on provision (the card's link)."""


# --- wire shapes ----------------------------------------------------------------------------------


class Toolchain(BaseModel):
    id: str
    name: str
    description: str
    account_id: str
    location: str
    resource_group_id: str
    crn: str
    href: str
    ui_href: str
    created_at: str
    updated_at: str
    created_by: str


class Referent(BaseModel):
    ui_href: str | None = None
    api_href: str | None = None


class Tool(BaseModel):
    """Same shape for POST, GET, PATCH and list items. ``name`` is omitted when the tool has none."""

    id: str
    resource_group_id: str
    crn: str
    tool_type_id: str
    toolchain_id: str
    toolchain_crn: str
    href: str
    referent: Referent
    name: str | None = None
    updated_at: str
    parameters: dict[str, Any]
    state: ToolState


class PageLink(BaseModel):
    href: str
    start: str | None = None


class FirstLink(BaseModel):
    href: str


class ToolchainWithTools(Toolchain):
    tools: list[Tool]


class EmulatorState(BaseModel):
    """``GET /_emulator/state``: every toolchain, in creation order, with its tools."""

    toolchains: list[ToolchainWithTools]


# --- request bodies -------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ToolchainCreate(_Body):
    name: StrictStr
    resource_group_id: StrictStr
    description: StrictStr | None = None


class ToolCreate(_Body):
    tool_type_id: StrictStr
    name: StrictStr | None = None
    parameters: dict[str, Any] | None = None


class SeedToolchain(_Body):
    """``POST /_emulator/toolchains``: a toolchain with a chosen id (tests need known UUIDs)."""

    id: StrictStr | None = None
    name: StrictStr = "toolchain"
    resource_group_id: StrictStr | None = None
    description: StrictStr = ""


class ResetRequest(_Body):
    state: bool = True
    calls: bool = True
    faults: bool = True


class CallRecord(BaseModel):
    """One entry of the call log (``GET /_emulator/calls``)."""

    index: int
    time: str
    epoch: float
    method: str
    path: str
    query: dict[str, str]
    status: int | None
    body: Any = None
    trace: str | None = None
    fault: str | None = None
    """Which injected fault answered (``5xx``, ``429``, ``rule``, ``lie:<kind>``) or ``drop`` for
    commit-then-drop."""
    dropped: bool = False
    """The change was applied, then the connection was closed without a response."""
    early: bool | None = None
    """Arrived before the time a previous 429 advertised in ``Retry-After`` (None: none advertised)."""
    duration_ms: float = 0.0
