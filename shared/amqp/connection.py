"""One robust AMQP connection per process, with a bounded first connect and a readiness signal."""

from __future__ import annotations

import logging
import time

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from shared.backoff import Backoff

log = logging.getLogger(__name__)


class AmqpConnection:
    """Wraps ``aio_pika.connect_robust``: retries the first connect until ``connect_timeout``.

    After the first connect aio-pika reconnects by itself; :attr:`ready` is False meanwhile, which
    ``/readyz`` reports.
    """

    def __init__(self, url: str, *, name: str, connect_timeout: float = 30.0) -> None:
        self._url = url
        self._name = name
        self._connect_timeout = connect_timeout
        self._conn: AbstractRobustConnection | None = None

    async def connect(self) -> None:
        deadline = time.monotonic() + self._connect_timeout
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                self._conn = await aio_pika.connect_robust(
                    self._url,
                    client_properties={"connection_name": self._name},
                    timeout=min(10.0, self._connect_timeout),
                    reconnect_interval=1.0,
                )
                log.info("connected to RabbitMQ", extra={"connection": self._name})
                return
            except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
                if time.monotonic() + backoff.delay > deadline:
                    raise ConnectionError(
                        f"RabbitMQ unreachable after {self._connect_timeout:.0f}s: {exc!r}"
                    ) from exc
                log.warning("RabbitMQ not reachable yet, retrying", extra={"error": repr(exc)})
                await backoff.sleep()

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._conn is None:
            raise RuntimeError("AMQP connection not opened")
        return self._conn

    @property
    def ready(self) -> bool:
        return self._conn is not None and not self._conn.is_closed and self._conn.connected.is_set()

    def readiness(self) -> tuple[bool, str]:
        return (True, "") if self.ready else (False, "RabbitMQ disconnected")

    async def channel(
        self, *, prefetch: int | None = None, on_return_raises: bool = False
    ) -> AbstractRobustChannel:
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=on_return_raises)
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed:
            await self._conn.close()
