"""Apply or remove one tool in one toolchain, exactly once, through the ledger (see ``ledger.py``).

Under the key's lease (renewed while held; no OTC write starts once it is lost): skip stale
revisions; skip unchanged content (zero OTC calls); otherwise write the intent, make the one OTC
write, commit. After an interrupted attempt (intent still pending) OTC is read first (the known tool
id, else the deterministic name), so the retry adopts what the interrupted attempt did instead of
repeating it.

A permanent refusal of the write (``is_refusal``) is recorded with the refused content hash; the same
content is then skipped without an OTC call (``Outcome.REFUSED``), so every later event of the
instance does not repeat the doomed call and dead-letter again. Only the message that met the refusal
dead-letters with the reason, including its own retries (``current_message``), which dead-letter
again from the record instead of calling OTC.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from services.otc_writer.desired import DesiredTool
from services.otc_writer.ledger import Lease, Ledger
from services.otc_writer.otc_client import OtcClient, OtcError, OtcNotFoundError, OtcPermanentError, Tool

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


current_message: ContextVar[str | None] = ContextVar("otc_writer_current_message", default=None)
"""Id of the CloudEvent being handled; a refusal records it (see ``ToolRefused``)."""

# 401/403 are about credentials and permissions, fixed outside the content: never a refusal of it.
_NOT_CONTENT = frozenset({401, 403})


class ToolRefused(OtcPermanentError):
    """A retry of the message that met the refusal: it dead-letters again, from the recorded reason."""


def is_refusal(exc: OtcError) -> bool:
    """A permanent answer of the Toolchain API to the tool write itself (not IAM, not a lookup)."""
    return (
        isinstance(exc, OtcPermanentError)
        and exc.method in ("POST", "PATCH")
        and "/tools" in (exc.path or "")
        and exc.status not in _NOT_CONTENT
    )


def merge_patch_for(
    current: dict[str, Any], desired: dict[str, Any], previously_applied: dict[str, Any]
) -> dict[str, Any]:
    """Minimal RFC 7386 patch from ``current`` to ``desired``; only keys we set are removed (null)."""
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    for k in previously_applied:
        if k not in desired and k in current:
            patch[k] = None
    return patch


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

    async def apply(self, want: DesiredTool) -> Outcome:
        lease = await self._ledger.acquire(
            want.purpose, want.key, want.toolchain_id, self._owner, scope=want.scope
        )
        try:
            async with self._ledger.kept(lease):
                outcome = await self._apply(lease, want)
        except ToolRefused:
            raise  # the lease is released already
        except OtcError as exc:
            if is_refusal(exc):
                await self._ledger.refuse(
                    lease,
                    content_hash=want.hash,
                    revision=want.revision,
                    error=str(exc),
                    message_id=current_message.get(),
                )
                log.warning(
                    "tool refused by OTC; not re-attempted until its content changes",
                    extra={"ledger_id": lease.id, "tool_name": want.name, "error": str(exc)},
                )
            else:
                await self._ledger.fail(lease, str(exc))
            raise
        except BaseException:
            await self._ledger.release(lease)
            raise
        if outcome is not Outcome.REFUSED:  # logged with its reason by ``_apply``
            log.info(
                "tool %s",
                outcome,
                extra={"ledger_id": lease.id, "tool_name": want.name, "revision": want.revision},
            )
        return outcome

    async def _apply(self, lease: Lease, want: DesiredTool) -> Outcome:
        doc = lease.doc
        if want.revision < doc.get("revision", -1):
            await self._ledger.release(lease)
            return Outcome.STALE
        pending = doc.get("pending")
        fields: dict[str, Any] = {"revision": want.revision, "scope": want.scope}
        if doc.get("refused_hash") is not None and doc.get("refused_hash") == want.hash:
            await self._ledger.release(lease, fields)
            reason = doc.get("last_error") or "refused by OTC"
            by = doc.get("refused_by")
            if by is not None and by == current_message.get():
                raise ToolRefused(reason)
            log.info(
                "tool refused by OTC earlier, skipped until its content changes",
                extra={
                    "ledger_id": lease.id,
                    "tool_name": want.name,
                    "revision": want.revision,
                    "refused_at": str(doc.get("refused_at")),
                    "error": reason,
                },
            )
            return Outcome.REFUSED
        if doc.get("present") and doc.get("tool_id") and not pending and doc.get("content_hash") == want.hash:
            await self._ledger.release(lease, fields)
            return Outcome.UNCHANGED
        applied: dict[str, Any] = doc.get("parameters") or {}
        current: Tool | None = None
        if pending:
            current = await self._observe(
                want.toolchain_id, doc.get("tool_id"), pending.get("name") or want.name
            )
            if current is None:
                applied = {}
        elif doc.get("present") and doc.get("tool_id"):
            current = Tool(
                id=doc["tool_id"],
                toolchain_id=want.toolchain_id,
                tool_type_id=doc.get("tool_type_id") or want.tool_type_id,
                name=doc.get("tool_name"),
                parameters=applied,
            )
        return await self._converge(lease, want, fields, current, applied)

    async def _converge(
        self,
        lease: Lease,
        want: DesiredTool,
        fields: dict[str, Any],
        current: Tool | None,
        applied: dict[str, Any],
        op_prefix: str = "",
    ) -> Outcome:
        """Make OTC hold ``want``: patch ``current`` (or adopt it unchanged), else create; commit."""
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
            await self._ledger.mark_pending(lease, op_prefix + "patch", want.name)
            try:
                tool = await self._client.update_tool(want.toolchain_id, current.id, patch)
            except OtcNotFoundError:
                log.warning("tool vanished from OTC, recreating", extra={"ledger_id": lease.id})
            else:
                await self._wrote("patch", lease)
                await self._ledger.commit(lease, {**commit, "tool_id": tool.id})
                return Outcome.UPDATED
        await self._ledger.mark_pending(lease, op_prefix + "create", want.name)
        tool = await self._client.create_tool(
            want.toolchain_id, tool_type_id=want.tool_type_id, name=want.name, parameters=want.parameters
        )
        await self._wrote("create", lease)
        await self._ledger.commit(lease, {**commit, "tool_id": tool.id})
        return Outcome.CREATED

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
        except OtcError as exc:
            await self._ledger.fail(lease, str(exc))
            raise
        except BaseException:
            await self._ledger.release(lease)
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

    async def _observe(self, toolchain_id: str, tool_id: str | None, name: str) -> Tool | None:
        """What OTC holds for an entry whose last attempt was interrupted."""
        if tool_id:
            try:
                return await self._client.get_tool(toolchain_id, tool_id)
            except OtcNotFoundError:
                pass  # gone (by hand, or an interrupted recreate gave it a new id): look the name up
        try:
            found = await self._client.find_tool_by_name(toolchain_id, name)
        except OtcNotFoundError:
            return None
        return found[0] if found else None

    async def remove(
        self, purpose: str, key: str, toolchain_id: str, *, revision: int, name: str | None = None
    ) -> Outcome:
        lease = await self._ledger.acquire(purpose, key, toolchain_id, self._owner)
        try:
            async with self._ledger.kept(lease):
                outcome = await self._remove(lease, toolchain_id, revision, name)
        except OtcError as exc:
            await self._ledger.fail(lease, str(exc))
            raise
        except BaseException:
            await self._ledger.release(lease)
            raise
        log.info("tool %s", outcome, extra={"ledger_id": lease.id, "revision": revision})
        return outcome

    async def _remove(self, lease: Lease, toolchain_id: str, revision: int, name: str | None) -> Outcome:
        doc = lease.doc
        if revision < doc.get("revision", -1):
            await self._ledger.release(lease)
            return Outcome.STALE
        gone = {
            "revision": revision,
            "present": False,
            "tool_id": None,
            "parameters": None,
            "content_hash": None,
        }
        pending = doc.get("pending")
        tool_ids: list[str] = []
        if doc.get("tool_id") and (doc.get("present") or pending):
            tool_ids = [doc["tool_id"]]
        elif pending:
            # An interrupted create: it may have committed in OTC under its deterministic name.
            wanted = pending.get("name") or name or doc.get("tool_name")
            if wanted:
                tool_ids = [t.id for t in await self._client.find_tool_by_name(toolchain_id, wanted)]
        if not tool_ids:
            await self._ledger.commit(lease, gone)
            return Outcome.ABSENT
        await self._ledger.mark_pending(lease, "delete", doc.get("tool_name") or name or "")
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
