"""``control.resync``: snapshots on demand, for ``kabanero-otc resync`` (level-triggered repair).

Every watcher replica binds a queue of its own (exclusive, gone with its connection)
to ``control.resync`` on the events exchange, so a request reaches all of them and a request sent
while no watcher runs is returned to its sender (mandatory publish). Only the replica that leads
the named cluster acts: its session publishes fresh snapshots, and it answers on the request's
``reply_to`` with the snapshot revisions (:class:`shared.events.ResyncReply`), which lets the caller
wait until otc-writer has applied them. Requests are not acknowledged work: a lost one just makes
the caller time out, so the queue is consumed without acks.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import pydantic
from aio_pika.abc import AbstractIncomingMessage

from services.kabanero_watcher.session import Session
from shared.amqp import AmqpConnection, Publisher, PublishError
from shared.amqp.messages import to_message
from shared.amqp.topology import EXCHANGE
from shared.events import CloudEvent, ResyncReply, ResyncRequest, RoutingKeys

log = logging.getLogger(__name__)


class ResyncListener:
    def __init__(
        self,
        connection: AmqpConnection,
        publisher: Publisher,
        *,
        cluster: str,
        holder: str,
        session: Callable[[], Session | None],
        timeout_s: float = 120.0,
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        self._cluster = cluster
        self._holder = holder
        self._session = session
        self._timeout = timeout_s
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        channel = await self._connection.channel()
        # Named by us (not server-named ``amq.gen-*``): the robust channel re-declares it after a
        # reconnect, which a client may not do for a name in the reserved ``amq.`` namespace.
        name = f"kabanero-watcher.resync.{self._holder}.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
        await queue.bind(EXCHANGE, routing_key=RoutingKeys.CONTROL_RESYNC)
        await queue.consume(self._on_message, no_ack=True)
        try:
            await asyncio.Event().wait()
        finally:
            for task in self._inflight:
                task.cancel()
            await channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            request = ResyncRequest.model_validate(CloudEvent.model_validate_json(message.body).data)
        except pydantic.ValidationError as exc:
            log.warning("invalid resync request ignored", extra={"error": str(exc)[:300]})
            return
        session = self._session()
        if request.cluster not in (None, self._cluster) or session is None:
            return  # another cluster's, or we are a standby: the leader answers
        task = asyncio.create_task(self._answer(session, request, message), name="resync")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _answer(
        self, session: Session, request: ResyncRequest, message: AbstractIncomingMessage
    ) -> None:
        log.info("resync requested", extra={"cluster": self._cluster, "namespace": request.namespace})
        try:
            snapshots = await asyncio.wait_for(session.resync(request.namespace), self._timeout)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are stopping
            log.warning("resync not done: leadership ended", extra={"namespace": request.namespace})
            return
        except TimeoutError:
            log.warning("resync not done in time", extra={"namespace": request.namespace})
            return
        if not message.reply_to:
            return
        reply = ResyncReply(
            cluster=self._cluster,
            holder=self._holder,
            snapshots=snapshots.get("kabanero", {}),
            tekton_snapshots=snapshots.get("tekton", {}),
        )
        body = CloudEvent.for_data("control.resync.reply", reply, source=f"/kabanero-watcher/{self._cluster}")
        try:
            await self._publisher.publish_message(
                to_message(body, correlation_id=message.correlation_id),
                message.reply_to,
                exchange="",
            )
        except PublishError as exc:
            log.warning("resync reply not delivered (caller gone?)", extra={"error": str(exc)[:300]})
