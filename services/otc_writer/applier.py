"""Apply or remove one tool in one toolchain, exactly once, through the ledger (see ``ledger.py``).

Two ledger round trips per change: one conditional update takes the key's lease *and* records the
intent of the OTC write; one more commits the applied state and releases the lease. Under the lease
(renewed while held; no OTC write starts once it is lost or nearly expired): skip stale revisions;
skip unchanged content (zero OTC calls); otherwise make the one OTC write and commit. After an
interrupted attempt (an intent found by the lease) OTC is read first (the known tool id, else the
deterministic name), so the retry adopts what the interrupted attempt did instead of repeating it.

A refusal of the write by OTC (``OtcRefusedError``, raised by the client from the status and the
operation) is recorded with the refused content hash and the id of the event that caused it; the
same content is then skipped without an OTC call (``Outcome.REFUSED``), so later events of the
instance do not repeat the doomed call and dead-letter again. Only the event that met the refusal
dead-letters with the reason, including its own retries (``cause``), which dead-letter again from
the record instead of calling OTC.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from services.otc_writer.desired import DesiredTool
from services.otc_writer.ledger import Intent, Lease, Ledger, LedgerEntry
from services.otc_writer.otc_client import (
    OtcClient,
    OtcError,
    OtcNotFoundError,
    OtcPermanentError,
    OtcRefusedError,
    Tool,
)

log = logging.getLogger(__name__)

WriteHook = Callable[[str, str], Awaitable[None]]
"""Called after each successful OTC write, before the ledger commit: (operation, ledger id)."""


class Outcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    UNCHANGED = "unchanged"
    ADOPTED = "adopted"
    """An interrupted attempt had already applied it; recorded without a new write."""
    ABSENT = "absent"
    STALE = "stale"
    REFUSED = "refused"
    """OTC refused this very content before: skipped without a call until the content changes."""


class ToolRefused(OtcPermanentError):
    """A retry of the event that met the refusal: it dead-letters again, from the recorded reason."""


def merge_patch_for(
    current: dict[str, Any], desired: dict[str, Any], previously_applied: dict[str, Any]
) -> dict[str, Any]:
    """Minimal RFC 7386 patch from ``current`` to ``desired``; only keys we set are removed (null)."""
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    for k in previously_applied:
        if k not in desired and k in current:
            patch[k] = None
    return patch


def is_unchanged(entry: LedgerEntry, want: DesiredTool) -> bool:
    """The entry holds ``want`` applied, with nothing unresolved: no lease, no call needed."""
    return entry.applied and entry.content_hash == want.hash and entry.refused_hash is None


class ToolApplier:
    def __init__(
        self, ledger: Ledger, client: OtcClient, *, owner: str, after_write: WriteHook | None = None
    ):
        self._ledger = ledger
        self._client = client
        self._owner = owner
        self._after_write = after_write
        self.writes = 0

    async def _wrote(self, op: str, lease: Lease) -> None:
        self.writes += 1
        if self._after_write is not None:
            await self._after_write(op, lease.id)

    async def apply(self, want: DesiredTool, *, cause: str | None = None) -> Outcome:
        """Make OTC hold ``want``; ``cause``: id of the event that asked (recorded on a refusal)."""
        lease = await self._ledger.acquire(
            want.purpose,
            want.key,
            want.toolchain_id,
            self._owner,
            scope=want.scope,
            intent=Intent(op="apply", name=want.name),
        )
        try:
            async with self._ledger.kept(lease):
                outcome = await self._apply(lease, want, cause)
        except ToolRefused:
            raise  # the lease is released already
        except OtcRefusedError as exc:
            await self._ledger.refuse(
                lease, content_hash=want.hash, revision=want.revision, error=str(exc), message_id=cause
            )
            log.warning(
                "tool refused by OTC; not re-attempted until its content changes",
                extra={"ledger_id": lease.id, "tool_name": want.name, "error": str(exc)},
            )
            raise
        except BaseException as exc:
            await self._end_failed(lease, exc)
            raise
        if outcome is not Outcome.REFUSED:  # logged with its reason by ``_skip``
            log.info(
                "tool %s",
                outcome,
                extra={"ledger_id": lease.id, "tool_name": want.name, "revision": want.revision},
            )
        return outcome

    async def _apply(self, lease: Lease, want: DesiredTool, cause: str | None) -> Outcome:
        fields: dict[str, Any] = {"revision": want.revision, "scope": want.scope}
        skipped = await self._skip(lease, want, fields, cause)
        if skipped is not None:
            return skipped
        entry = lease.entry
        applied: dict[str, Any] = entry.parameters or {}
        current: Tool | None = None
        if entry.interrupted:
            names = [i.name for i in entry.interrupted if i.name] + [want.name]
            current = await self._observe(want.toolchain_id, entry.tool_id, names)
            if current is None:
                applied = {}
        elif entry.present and entry.tool_id:
            current = Tool(
                id=entry.tool_id,
                toolchain_id=want.toolchain_id,
                tool_type_id=entry.tool_type_id or want.tool_type_id,
                name=entry.tool_name,
                parameters=applied,
            )
        return await self._converge(lease, want, fields, current, applied)

    async def _skip(
        self, lease: Lease, want: DesiredTool, fields: dict[str, Any], cause: str | None
    ) -> Outcome | None:
        """Stale, refused before, or unchanged: released without an OTC call (None: go on)."""
        entry = lease.entry
        if want.revision < entry.revision:
            await self._ledger.release(lease)
            return Outcome.STALE
        if entry.refused_hash is not None and entry.refused_hash == want.hash:
            await self._ledger.release(lease, fields)
            reason = entry.last_error or "refused by OTC"
            if entry.refused_by is not None and entry.refused_by == cause:
                raise ToolRefused(reason)
            log.info(
                "tool refused by OTC earlier, skipped until its content changes",
                extra={
                    "ledger_id": lease.id,
                    "tool_name": want.name,
                    "revision": want.revision,
                    "refused_at": str(entry.refused_at),
                    "error": reason,
                },
            )
            return Outcome.REFUSED
        if entry.applied and entry.content_hash == want.hash:
            await self._ledger.release(lease, fields)
            return Outcome.UNCHANGED
        return None

    async def _converge(
        self,
        lease: Lease,
        want: DesiredTool,
        fields: dict[str, Any],
        current: Tool | None,
        applied: dict[str, Any],
        op_prefix: str = "",
    ) -> Outcome:
        """Make OTC hold ``want``: patch ``current`` (or adopt it unchanged), else create; commit.

        ``op_prefix`` (the audit): the lease announced no intent, so each write records its own.
        """
        commit = {
            **fields,
            "tool_name": want.name,
            "tool_type_id": want.tool_type_id,
            "parameters": want.parameters,
            "content_hash": want.hash,
            "present": True,
        }
        if current is not None:
            patch: dict[str, Any] = {}
            params = merge_patch_for(current.parameters, want.parameters, applied)
            if params:
                patch["parameters"] = params
            if current.name != want.name:
                patch["name"] = want.name
            if not patch:
                await self._ledger.commit(lease, {**commit, "tool_id": current.id})
                return Outcome.ADOPTED
            await self._before_write(lease, op_prefix, "patch", want.name)
            try:
                tool = await self._client.update_tool(want.toolchain_id, current.id, patch)
            except OtcNotFoundError:
                log.warning("tool vanished from OTC, recreating", extra={"ledger_id": lease.id})
            else:
                await self._wrote("patch", lease)
                await self._ledger.commit(lease, {**commit, "tool_id": tool.id})
                return Outcome.UPDATED
        await self._before_write(lease, op_prefix, "create", want.name)
        tool = await self._client.create_tool(
            want.toolchain_id, tool_type_id=want.tool_type_id, name=want.name, parameters=want.parameters
        )
        await self._wrote("create", lease)
        await self._ledger.commit(lease, {**commit, "tool_id": tool.id})
        return Outcome.CREATED

    async def _end_failed(self, lease: Lease, exc: BaseException) -> None:
        """An attempt that raised: an OTC error is recorded (intents kept), anything else releases."""
        if isinstance(exc, OtcError):
            await self._ledger.fail(lease, str(exc))
        else:
            await self._ledger.release(lease)

    async def _before_write(self, lease: Lease, op_prefix: str, op: str, name: str) -> None:
        if op_prefix:
            await self._ledger.mark_pending(lease, op_prefix + op, name)
        else:
            self._ledger.check(lease)  # the intent was written with the lease

    async def restore(
        self, lease: Lease, want: DesiredTool, current: Tool | None, *, op_prefix: str = ""
    ) -> Outcome:
        """Audit repair, under a lease the caller took: bring OTC back to the applied ``want``.

        ``current`` is what OTC holds for the entry (its tool, or a tool with its name), or None when
        it is gone. Only the keys of ``want.parameters`` and the name are restored: a key added by
        hand may be a server default, so it is left alone. Commits (and releases) on success.
        """
        fields: dict[str, Any] = {"revision": want.revision, "scope": want.scope}
        try:
            outcome = await self._converge(lease, want, fields, current, want.parameters, op_prefix)
        except BaseException as exc:
            await self._end_failed(lease, exc)
            raise
        log.info("tool %s by the audit", outcome, extra={"ledger_id": lease.id, "tool_name": want.name})
        return outcome

    async def delete_duplicate(self, lease: Lease, toolchain_id: str, tool_id: str) -> bool:
        """Delete a second tool bearing an entry's name (audit; lease held); False if already gone."""
        self._ledger.check(lease)
        try:
            await self._client.delete_tool(toolchain_id, tool_id)
        except OtcNotFoundError:
            return False
        await self._wrote("delete", lease)
        log.info("duplicate tool deleted by the audit", extra={"ledger_id": lease.id, "tool_id": tool_id})
        return True

    async def _observe(self, toolchain_id: str, tool_id: str | None, names: list[str]) -> Tool | None:
        """What OTC holds for an entry whose last attempt was interrupted."""
        if tool_id:
            try:
                return await self._client.get_tool(toolchain_id, tool_id)
            except OtcNotFoundError:
                pass  # gone (by hand, or an interrupted recreate gave it a new id): look the name up
        try:
            tools = await self._client.list_tools(toolchain_id)
        except OtcNotFoundError:
            return None
        for name in names:
            found = [t for t in tools if t.name == name]
            if found:
                return found[0]
        return None

    async def remove(
        self,
        purpose: str,
        key: str,
        toolchain_id: str,
        *,
        revision: int,
        name: str | None = None,
        create: bool = True,
    ) -> Outcome:
        """Make OTC hold no tool for the entry. ``create=False``: an entry that does not exist is
        left absent (the caller's projection guards the order); else it is created as a tombstone
        at ``revision``, so that an older apply arriving later is stale."""
        intent = Intent(op="delete", name=name or "")
        if create:
            lease: Lease | None = await self._ledger.acquire(
                purpose, key, toolchain_id, self._owner, intent=intent
            )
        else:
            lease = await self._ledger.acquire_existing(
                purpose, key, toolchain_id, self._owner, intent=intent
            )
        if lease is None:
            return Outcome.ABSENT
        try:
            async with self._ledger.kept(lease):
                outcome = await self._remove(lease, toolchain_id, revision, name)
        except BaseException as exc:
            await self._end_failed(lease, exc)
            raise
        log.info("tool %s", outcome, extra={"ledger_id": lease.id, "revision": revision})
        return outcome

    async def _remove(self, lease: Lease, toolchain_id: str, revision: int, name: str | None) -> Outcome:
        entry = lease.entry
        if revision < entry.revision:
            await self._ledger.release(lease)
            return Outcome.STALE
        gone = {
            "revision": revision,
            "present": False,
            "tool_id": None,
            "parameters": None,
            "content_hash": None,
        }
        tool_ids = await self._tools_of(entry, toolchain_id, name)
        if not tool_ids:
            await self._ledger.commit(lease, gone)
            return Outcome.ABSENT
        deleted = False
        for tool_id in tool_ids:
            self._ledger.check(lease)
            try:
                await self._client.delete_tool(toolchain_id, tool_id)
                deleted = True
            except OtcNotFoundError:
                pass  # already gone: the desired state holds
        if deleted:
            await self._wrote("delete", lease)
        await self._ledger.commit(lease, gone)
        return Outcome.DELETED if deleted else Outcome.ABSENT

    async def _tools_of(self, entry: LedgerEntry, toolchain_id: str, name: str | None) -> list[str]:
        """The OTC tools an entry stands for: its known tool, or after an interrupted create the
        tools bearing one of the names it may have been created under."""
        if entry.tool_id and (entry.present or entry.interrupted):
            return [entry.tool_id]
        if not entry.interrupted:
            return []
        names = {i.name for i in entry.interrupted if i.name} | {n for n in (name, entry.tool_name) if n}
        if not names:
            return []
        return [t.id for t in await self._client.list_tools(toolchain_id) if t.name in names]
