"""The ceilings every service figure is compared with, measured in the same run on the same machine.

- ``amqp_hop_per_s``: raw aio-pika, confirmed persistent publishes to a durable queue, consumed
  and acked (prefetch 64), end to end: what one message hop costs without any of our code;
- ``store_upsert_per_s``: raw PyMongo upserts by ``_id`` of *new* documents at concurrency 16;
- ``store_find_id_per_s``: raw PyMongo ``find_one({"_id": ...})`` of existing documents, concurrency 16.

    .venv/bin/python -m bench.baseline [--messages 5000] [--docs 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aio_pika

from bench.common import bench_infra
from shared.mongo import database, make_client

CONCURRENCY = 16


async def amqp_hop(amqp_url: str, messages: int) -> float:
    conn = await aio_pika.connect(amqp_url)
    try:
        pub_ch = await conn.channel(publisher_confirms=True)
        queue = await pub_ch.declare_queue("bench.baseline", durable=True)
        con_ch = await conn.channel()
        await con_ch.set_qos(prefetch_count=64)
        cq = await con_ch.get_queue("bench.baseline")
        done = asyncio.Event()
        seen = 0

        async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            await msg.ack()
            seen += 1
            if seen >= messages:
                done.set()

        await cq.consume(on_message)
        body = b'{"specversion":"1.0","data":{"x":"' + b"y" * 400 + b'"}}'
        sem = asyncio.Semaphore(CONCURRENCY * 4)

        async def one() -> None:
            async with sem:
                await pub_ch.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    queue.name,
                    mandatory=True,
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(messages)))
        await asyncio.wait_for(done.wait(), 120)
        return messages / (time.perf_counter() - t0)
    finally:
        await conn.close()


async def store(mongodb_url: str, docs: int) -> tuple[float, float]:
    client = make_client(mongodb_url)
    try:
        coll = database(client)["bench_baseline"]
        await coll.insert_one({"_id": "warm"})
        body = {"scope": "default/ns", "data": {"x": "y" * 400}, "revision": 1}
        ids = iter(range(docs))

        async def upserts() -> None:
            for i in ids:
                await coll.update_one({"_id": f"d{i}"}, {"$set": body}, upsert=True)

        t0 = time.perf_counter()
        await asyncio.gather(*(upserts() for _ in range(CONCURRENCY)))
        upsert_per_s = docs / (time.perf_counter() - t0)
        finds = iter(range(docs))

        async def lookups() -> None:
            for i in finds:
                assert await coll.find_one({"_id": f"d{i}"}) is not None

        t0 = time.perf_counter()
        await asyncio.gather(*(lookups() for _ in range(CONCURRENCY)))
        find_per_s = docs / (time.perf_counter() - t0)
        await coll.drop()
        return upsert_per_s, find_per_s
    finally:
        await client.close()


async def run(mongodb_url: str, amqp_url: str, *, messages: int, docs: int) -> dict[str, Any]:
    hop = await amqp_hop(amqp_url, messages)
    upsert, find = await store(mongodb_url, docs)
    return {
        "amqp_hop_per_s": round(hop, 1),
        "store_upsert_per_s": round(upsert, 1),
        "store_find_id_per_s": round(find, 1),
        "concurrency": CONCURRENCY,
        "messages": messages,
        "docs": docs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--docs", type=int, default=3000)
    args = parser.parse_args()
    with bench_infra("bench_baseline") as infra:
        print(
            json.dumps(
                asyncio.run(run(infra.mongodb_url, infra.amqp_url, messages=args.messages, docs=args.docs))
            )
        )


if __name__ == "__main__":
    main()
