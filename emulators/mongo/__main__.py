"""``python -m emulators.mongo --port 27017 [--file state.db]``: prints its URL, serves until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from emulators.heap import settling
from emulators.mongo.server import running


async def _serve(host: str, port: int, path: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(host, port, path) as url, settling():
        print(f"MONGODB_URL={url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators.mongo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--file", default=None, help="SQLite file to persist to (default: in memory)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port, args.file))
    except OSError as exc:
        print(f"emulators.mongo: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
