"""In-memory state of the emulated OTC account: toolchains and their tools.

All mutations happen synchronously on the event loop, so each call is atomic. The store applies no
request validation (``toolchain_api.py`` does); it only knows existence (404) and ordering.
"""

from __future__ import annotations

import uuid
from typing import Any

from emulators.otc.clock import Clock
from emulators.otc.errors import ApiError
from emulators.otc.models import ToolchainRecord, ToolRecord, utc_now_from

CREATED_BY = "IBMid-emulator"


class Store:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seq = 0
        self.toolchains: dict[str, ToolchainRecord] = {}
        self.tools: dict[str, dict[str, ToolRecord]] = {}
        """toolchain id -> tool id -> tool, both in creation order."""

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def reset(self) -> None:
        self.toolchains.clear()
        self.tools.clear()

    # --- toolchains ---

    def create_toolchain(
        self,
        *,
        name: str,
        resource_group_id: str,
        description: str = "",
        toolchain_id: str | None = None,
    ) -> ToolchainRecord:
        tid = toolchain_id or str(uuid.uuid4())
        if tid in self.toolchains:
            raise ApiError(409, f"Toolchain {tid} already exists", code="conflict")
        now = utc_now_from(self._clock.now())
        record = ToolchainRecord(
            id=tid,
            name=name,
            description=description,
            resource_group_id=resource_group_id,
            created_at=now,
            updated_at=now,
            created_by=CREATED_BY,
            seq=self._next_seq(),
        )
        self.toolchains[tid] = record
        self.tools[tid] = {}
        return record

    def toolchain(self, toolchain_id: str) -> ToolchainRecord:
        record = self.toolchains.get(toolchain_id)
        if record is None:
            raise ApiError(404, f"Toolchain {toolchain_id} not found", code="toolchain_not_found")
        return record

    def update_toolchain(self, toolchain_id: str, **changes: Any) -> ToolchainRecord:
        record = self.toolchain(toolchain_id).model_copy(
            update={**changes, "updated_at": utc_now_from(self._clock.now())}
        )
        self.toolchains[toolchain_id] = record
        return record

    def delete_toolchain(self, toolchain_id: str) -> None:
        self.toolchain(toolchain_id)
        del self.toolchains[toolchain_id]
        del self.tools[toolchain_id]

    # --- tools ---

    def tools_of(self, toolchain_id: str) -> list[ToolRecord]:
        self.toolchain(toolchain_id)
        return list(self.tools[toolchain_id].values())

    def create_tool(
        self,
        toolchain_id: str,
        *,
        tool_type_id: str,
        name: str | None,
        parameters: dict[str, Any],
        tool_id: str | None = None,
        broker_dashboard_url: str | None = None,
    ) -> ToolRecord:
        self.toolchain(toolchain_id)
        record = ToolRecord(
            id=tool_id or str(uuid.uuid4()),
            broker_dashboard_url=broker_dashboard_url,
            toolchain_id=toolchain_id,
            tool_type_id=tool_type_id,
            name=name,
            parameters=parameters,
            updated_at=utc_now_from(self._clock.now()),
            seq=self._next_seq(),
        )
        self.tools[toolchain_id][record.id] = record
        return record

    def tool(self, toolchain_id: str, tool_id: str) -> ToolRecord:
        self.toolchain(toolchain_id)
        record = self.tools[toolchain_id].get(tool_id)
        if record is None:
            raise ApiError(404, f"Tool {tool_id} not found", code="tool_not_found")
        return record

    def replace_tool(self, record: ToolRecord) -> ToolRecord:
        self.tool(record.toolchain_id, record.id)
        updated = record.model_copy(update={"updated_at": utc_now_from(self._clock.now())})
        self.tools[record.toolchain_id][record.id] = updated
        return updated

    def delete_tool(self, toolchain_id: str, tool_id: str) -> None:
        self.tool(toolchain_id, tool_id)
        del self.tools[toolchain_id][tool_id]
