"""Argument parsing and dispatch; every subcommand returns a :class:`~kotc_cli.output.Report`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from kotc_cli import config as configuration
from kotc_cli import dead_letters, doctor, plan, resync, status
from kotc_cli.clients import Sources, sources
from kotc_cli.errors import USAGE, CliError
from kotc_cli.output import Report

EPILOG = """exit codes: 0 ok, 1 problem found (dead letters, a service not ready, changes to apply),
2 usage error or an unreachable dependency (the message names it).
Settings: make run's .run/stack.json when it runs, else the services' environment
(AMQP_URL, MONGODB_URL, RABBITMQ_MGMT_URL, KUBE_API_URL, OTC_API_URL, OTC_IAM_URL, OTC_API_KEY,
BROKER_ID, BROKER_SECRET, CLUSTER_NAME, KOTC_<SERVICE>_URL), then --set NAME=VALUE."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(USAGE)


def _common(p: argparse.ArgumentParser, default: Any) -> None:
    """Options valid before and after the subcommand (``kabanero-otc status --json``)."""

    def d(value: Any) -> Any:
        return value if default is None else default

    p.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    p.add_argument(
        "--run-file",
        default=d(None),
        help="make run's run file (default: .run/stack.json upwards, or KOTC_RUN_FILE)",
    )
    p.add_argument("--no-run-file", action="store_true", default=d(False), help="ignore make run's run file")
    p.add_argument(
        "--set",
        action="append",
        default=d([]),
        metavar="NAME=VALUE",
        help="a setting by its environment name, e.g. --set AMQP_URL=amqp://...",
    )
    p.add_argument(
        "--service",
        action="append",
        default=d([]),
        metavar="NAME=URL",
        help="health URL of a service replica, e.g. --service otc-writer=http://host:8082",
    )


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kabanero-otc",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, None)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    st = sub.add_parser(
        "status", help="services, queues, Kabanero services, owned tools and their sync state"
    )
    dl = sub.add_parser("dead-letters", help="list, replay or purge dead letters").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    ls = dl.add_parser("list", help="id, type, subject, reason, error, attempts, age (consumes nothing)")
    ls.add_argument("--queue", help="consuming queue (or its .dead queue); default all")
    rp = dl.add_parser("replay", help="back to the consuming queue, once, attempt count reset (writes)")
    rp.add_argument("--queue")
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", default=[], help="message id (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter of the queue(s)")
    pg = dl.add_parser("purge", help="delete dead letters for good (writes; needs --yes)")
    pg.add_argument("--queue")
    pg.add_argument("--yes", action="store_true", help="confirm the purge")
    rs = sub.add_parser("resync", help="fresh snapshots from the watcher(s); waits for otc-writer (writes)")
    rs.add_argument("--cluster")
    rs.add_argument("--namespace")
    rs.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    pl = sub.add_parser("plan", help="what otc-writer would change in OTC now (writes nothing)")
    pl.add_argument("--toolchain")
    dr = sub.add_parser("doctor", help="check each dependency and setting, with the fix")
    for leaf in (st, ls, rp, pg, rs, pl, dr):
        _common(leaf, argparse.SUPPRESS)
    return p


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"{what} {item!r}: expected NAME=VALUE")
        out.append((name.strip(), value.strip()))
    return out


def load_config(args: argparse.Namespace) -> configuration.Config:
    services: dict[str, list[str]] = {}
    for name, url in _pairs(args.service, "--service"):
        services.setdefault(name, []).append(url)
    return configuration.load(
        overrides=dict(_pairs(args.set, "--set")),
        service_urls=services,
        run_file=args.run_file,
        use_run_file=not args.no_run_file,
    )


def command(args: argparse.Namespace, src: Sources) -> Coroutine[Any, Any, Report]:
    table: dict[str, Callable[[], Coroutine[Any, Any, Report]]] = {
        "status": lambda: status.run(src),
        "resync": lambda: resync.run(src, args.cluster, args.namespace, args.timeout),
        "plan": lambda: plan.run(src, args.toolchain),
        "doctor": lambda: doctor.run(src),
    }
    if args.command == "dead-letters":
        if args.action == "list":
            return dead_letters.list_(src, args.queue)
        if args.action == "replay":
            return dead_letters.replay(src, args.queue, args.id, args.all)
        return dead_letters.purge(src, args.queue, args.yes)
    return table[args.command]()


async def execute(args: argparse.Namespace, config: configuration.Config) -> Report:
    async with sources(config) as src:
        return await command(args, src)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.CRITICAL)  # the libraries' own logs stay out of the tables
    args = parser().parse_args(argv)
    try:
        config = load_config(args)
        for note in config.notes:
            print(f"note: {note}", file=sys.stderr)
        report = asyncio.run(execute(args, config))
    except CliError as exc:
        print(f"kabanero-otc: {exc}", file=sys.stderr)
        sys.exit(USAGE)
    print(report.render(args.json))
    sys.exit(report.code)
