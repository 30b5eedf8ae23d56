"""Connections the subcommands open, each failing as :class:`Unreachable` naming the dependency.

A command gets them through :class:`Sources`: each is opened on first use, so a command touches only
what it reads, and all are closed when the command ends.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractRobustConnection
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from kotc_cli.config import Config
from kotc_cli.errors import Unreachable
from kotc_cli.otc import otc_client
from services.otc_writer.otc_client import OtcClient
from shared.mongo import Document, database, make_client

TIMEOUT = aiohttp.ClientTimeout(total=10)


class Management:
    """RabbitMQ's management HTTP API for the configured vhost (queue depths and consumers)."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.base = config.mgmt_url
        self.vhost = config.vhost
        self.auth = aiohttp.BasicAuth(*config.amqp_credentials)
        self.session = session

    async def get(self, path: str) -> Any:
        url = f"{self.base}/api/{path}"
        try:
            async with self.session.get(url, auth=self.auth, timeout=TIMEOUT) as resp:
                if resp.status == 404:
                    return None
                if resp.status >= 400:
                    raise Unreachable("RabbitMQ management API", self.base, f"HTTP {resp.status} for {path}")
                return await resp.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable("RabbitMQ management API", self.base, _describe(exc)) from None

    async def queues(self) -> dict[str, dict[str, Any]]:
        vhost = urllib.parse.quote(self.vhost, safe="")
        listed = await self.get(
            f"queues/{vhost}?columns=name,messages,messages_ready,messages_unacknowledged,consumers"
        )
        if listed is None:
            raise Unreachable("RabbitMQ vhost", self.base, f"vhost {self.vhost!r} does not exist")
        return {q["name"]: q for q in listed}


async def declared(conn: AbstractRobustConnection, names: list[str]) -> dict[str, tuple[int, int] | None]:
    """Exact (ready messages, consumers) per queue from a passive declare; None when not declared.

    The management API's figures are sampled (every 5 s by default), these are the queue's own.
    """
    out: dict[str, tuple[int, int] | None] = {}
    for name in names:
        channel = await conn.channel()
        try:
            result = (await channel.declare_queue(name, passive=True)).declaration_result
            out[name] = (int(result.message_count or 0), int(result.consumer_count or 0))
        except aio_pika.exceptions.ChannelClosed:
            out[name] = None
        finally:
            if not channel.is_closed:
                await channel.close()
    return out


@asynccontextmanager
async def amqp(config: Config) -> AsyncIterator[AbstractRobustConnection]:
    try:
        conn = await aio_pika.connect_robust(config.amqp_url, timeout=10, fail_fast=True)
    except Exception as exc:
        raise Unreachable("RabbitMQ", config.safe("AMQP_URL"), _describe(exc)) from None
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def mongo(config: Config) -> AsyncIterator[AsyncDatabase[Document]]:
    url = config.require("MONGODB_URL")
    client: AsyncMongoClient[Document] = make_client(url, timeout_s=5)
    try:
        try:
            await client.admin.command("ping")
        except PyMongoError as exc:
            raise Unreachable("MongoDB", config.safe("MONGODB_URL"), _describe(exc)) from None
        yield database(client)
    finally:
        await client.close()


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """(status, body) of a GET; status 0 and the error text when it did not answer."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            try:
                body: Any = await resp.json(content_type=None)
            except ValueError:
                body = await resp.text()
            return resp.status, body
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, _describe(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class Sources:
    """The dependencies of one command run: configuration, then connections opened on first use."""

    def __init__(self, config: Config, stack: AsyncExitStack) -> None:
        self.config = config
        self._stack = stack
        self._amqp: AbstractRobustConnection | None = None
        self._db: AsyncDatabase[Document] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._otc: OtcClient | None = None

    async def amqp(self) -> AbstractRobustConnection:
        if self._amqp is None:
            self._amqp = await self._stack.enter_async_context(amqp(self.config))
        return self._amqp

    async def db(self) -> AsyncDatabase[Document]:
        if self._db is None:
            self._db = await self._stack.enter_async_context(mongo(self.config))
        return self._db

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = await self._stack.enter_async_context(aiohttp.ClientSession())
        return self._http

    async def mgmt(self) -> Management:
        return Management(self.config, await self.http())

    async def otc(self) -> OtcClient:
        if self._otc is None:
            self._otc = await self._stack.enter_async_context(otc_client(self.config))
        return self._otc


@asynccontextmanager
async def sources(config: Config) -> AsyncIterator[Sources]:
    async with AsyncExitStack() as stack:
        yield Sources(config, stack)
