"""``python -m emulators.otc --port N --api-key KEY [...]``: run the OTC emulator until SIGINT/SIGTERM.

Once listening it prints one line ``OTC_URL=http://host:port`` on stdout, so a harness can start it
with ``--port 0``: then ``OTC_API_URL`` is ``$OTC_URL/toolchain/v2`` and ``OTC_IAM_URL`` is ``$OTC_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from aiohttp import web

from emulators.heap import settling
from emulators.otc.app import build_app
from emulators.otc.settings import OtcEmulatorSettings


def parse_args(argv: Sequence[str] | None = None) -> OtcEmulatorSettings:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.otc",
        description="IBM Toolchain API v2 + IAM token emulator, with /_emulator/ control endpoints.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        dest="api_keys",
        help="API key accepted by /identity/token (repeatable; default: $OTC_API_KEY)",
    )
    parser.add_argument("--token-ttl", type=int, default=3600, help="access token lifetime, seconds")
    parser.add_argument("--public-url", default=None, help="base URL for href fields")
    parser.add_argument("--broker-url", default=None, help="broker API base for the platform driver")
    parser.add_argument("--broker-id", default=None)
    parser.add_argument("--broker-secret", default=os.environ.get("BROKER_SECRET"))
    args = parser.parse_args(argv)
    api_keys = tuple(args.api_keys) or tuple(filter(None, [os.environ.get("OTC_API_KEY")]))
    if not api_keys:
        parser.error("at least one --api-key (or OTC_API_KEY) is required")
    if args.token_ttl < 1:
        parser.error("--token-ttl must be at least 1")
    return OtcEmulatorSettings(
        host=args.host,
        port=args.port,
        api_keys=api_keys,
        token_ttl=args.token_ttl,
        public_url=args.public_url,
        broker_url=args.broker_url,
        broker_id=args.broker_id,
        broker_secret=args.broker_secret,
    )


async def serve(settings: OtcEmulatorSettings) -> None:
    """Serve until SIGINT/SIGTERM. Prints ``OTC_URL=<base URL>`` once listening (``--port 0`` works)."""
    runner = web.AppRunner(build_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"OTC_URL=http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with settling():
            await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
