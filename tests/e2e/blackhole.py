"""A TCP proxy the fault tests put between a service and MongoDB: it can swallow chosen requests, so
a process hangs at a precise point (e.g. the watcher between its publish and its "done" record)."""

from __future__ import annotations

import asyncio
import contextlib


class Blackhole:
    """A TCP proxy that can stop forwarding what its clients send (their requests never arrive):
    everything, or only the requests that contain ``swallow_matching``; or hold back the next request
    that contains ``hold_next`` until :meth:`release` (a round trip kept in flight at will)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.swallow = False
        self.swallow_matching: bytes | None = None
        self.hold_next: bytes | None = None
        self.holding = asyncio.Event()
        """Set once a request is held back."""
        self._released = asyncio.Event()
        self.server: asyncio.Server | None = None

    def release(self) -> None:
        """Forward the held request (and let every later one through)."""
        self.hold_next = None
        self._released.set()

    async def _hold(self, data: bytes) -> None:
        if self.hold_next is not None and self.hold_next in data:
            self.hold_next = None
            self.holding.set()
            await self._released.wait()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    marker = self.swallow_matching
                    if upstream:
                        await self._hold(data)
                    if not (upstream and (self.swallow or (marker is not None and marker in data))):
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
