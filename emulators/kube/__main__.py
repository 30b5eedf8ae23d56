"""`python -m emulators.kube`: run the Kubernetes API emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from emulators.heap import settling

from .server import KubeEmulator

logger = logging.getLogger("emulators.kube")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulators.kube", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed at start)")
    parser.add_argument(
        "--history-window",
        type=int,
        default=1000,
        help="changes retained per resource type; watches from older resourceVersions get 410",
    )
    parser.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds between BOOKMARKs")
    parser.add_argument(
        "--max-watch-seconds",
        type=float,
        default=1800.0,
        help="server-side end of watches without timeoutSeconds",
    )
    parser.add_argument(
        "--seed",
        nargs="*",
        default=[],
        metavar="FILE.yaml",
        help="multi-document YAML files applied at start",
    )
    parser.add_argument(
        "--auto-namespaces",
        action="store_true",
        help="create a missing namespace implicitly (a deviation; by default 404 NotFound, as a real server)",
    )
    parser.add_argument(
        "--crds",
        nargs="*",
        default=[],
        metavar="BUNDLE",
        help="CRD bundles installed at start: tekton-v0.10.1 (Pipelines v0.10.1, Triggers v0.2.1), "
        "tekton-v0.11.3 (Pipelines v0.11.3, Triggers v0.4.0), tekton-current, openshift-pipelines-operator, "
        "tekton-operator, or a YAML file of CRDs",
    )
    parser.add_argument(
        "--tekton",
        choices=("v0.10.1", "v0.11.3", "current"),
        help="shorthand for --crds tekton-<release>",
    )
    parser.add_argument(
        "--no-kabanero",
        dest="kabanero",
        action="store_false",
        help="do not serve the Kabanero CRDs (kabaneros, stacks, eventmediators, eventconnections)",
    )
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig pointing at the emulator here")
    parser.add_argument("--namespace", default="default", help="namespace of the written kubeconfig context")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    emulator = KubeEmulator(
        host=args.host,
        port=args.port,
        history_window=args.history_window,
        bookmark_interval=args.bookmark_interval,
        max_watch_seconds=args.max_watch_seconds,
        auto_namespaces=args.auto_namespaces,
        seed=args.seed,
        crds=[*args.crds, *([f"tekton-{args.tekton}"] if args.tekton else [])],
        kabanero=args.kabanero,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await emulator.start()
    try:
        if args.kubeconfig:
            emulator.kubeconfig(args.kubeconfig, namespace=args.namespace)
        counts = {k: v for k, v in emulator.store.counts().items() if v}
        logger.info("kube emulator listening on %s (objects: %s)", emulator.url, counts)
        print(f"kube emulator listening on {emulator.url}", flush=True)
        async with settling():
            await stop.wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
