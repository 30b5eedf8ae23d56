"""The stack driver's drain wait and dead-letter counts (the demo's summary) cover the watcher's per-cluster command queue
(``kabanero-watcher.<cluster>.instances``), on a real RabbitMQ vhost with the services' topology."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from scripts.driver import Driver
from scripts.stack import CLUSTER, Stack
from shared.amqp.topology import Topology, declare_topology, owned_instances_queue, with_owned_instances


async def _stack(amqp_url: str, tmp_path: Path) -> Stack:
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).path[1:])
    stack = Stack(vhost, logs=tmp_path)
    conn = await aio_pika.connect(stack.amqp_url)
    try:
        await declare_topology(await conn.channel(), Topology(queues=with_owned_instances([CLUSTER])))
    finally:
        await conn.close()
    return stack


async def _put(stack: Stack, queue: str) -> None:
    conn = await aio_pika.connect(stack.amqp_url)
    try:
        channel = await conn.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"{}", message_id="m-1"), queue)
    finally:
        await conn.close()


async def test_quiet_waits_for_the_watchers_command_queue(amqp_url: str, tmp_path: Path) -> None:
    stack = await _stack(amqp_url, tmp_path)
    queue = owned_instances_queue(CLUSTER)
    await stack.quiet(timeout=5)  # empty: drained
    await _put(stack, queue)
    assert (await stack.queue_depths())[queue] == 1
    with pytest.raises(RuntimeError, match="not drained"):
        await stack.quiet(timeout=1)


async def test_dead_letter_summary_counts_the_watchers_command_queue(amqp_url: str, tmp_path: Path) -> None:
    stack = await _stack(amqp_url, tmp_path)
    dead = owned_instances_queue(CLUSTER) + ".dead"
    await _put(stack, dead)
    async with aiohttp.ClientSession() as session:
        counts = await Driver(stack, session).dead_letter_counts()
    assert counts[dead] == 1 and sum(counts.values()) == 1
