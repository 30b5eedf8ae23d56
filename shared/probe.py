"""``python -m shared.probe TARGET``: a container healthcheck that exits 0 when TARGET answers.

Written as a module so a healthcheck is an argv list without spaces or quotes: Docker and podman
split ``python -c "..."`` strings differently, a module name they cannot get wrong. Standard library
only (except for ``mongodb://``), so it starts in a few tens of milliseconds.

TARGET is one of
  ``/readyz``                  a path on this container's own ``HTTP_PORT`` (default 8080) on 127.0.0.1
  ``http://host:port/path``    any URL; a 2xx status is healthy
  ``mongodb://host:port``      a ``ping`` command through PyMongo (the MongoDB stand-in of the compose check)
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 2.0


def url_of(target: str, environ: dict[str, str] | None = None) -> str:
    """The URL a target names: a bare path is this container's ``HTTP_PORT`` on loopback."""
    env = os.environ if environ is None else environ
    if target.startswith("/"):
        return f"http://127.0.0.1:{env.get('HTTP_PORT', '8080')}{target}"
    if target.startswith(("http://", "https://", "mongodb://")):
        return target
    raise ValueError(f"target must be a path, an http(s):// or a mongodb:// URL, not {target!r}")


def check(url: str, timeout: float = TIMEOUT_S) -> str | None:
    """None when healthy, else why not (one line, for the healthcheck log)."""
    if url.startswith("mongodb://"):
        return _ping_mongo(url, timeout)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (scheme checked above)
            return None if 200 <= reply.status < 300 else f"{url}: HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except OSError as exc:
        return f"{url}: {exc}"


def _ping_mongo(url: str, timeout: float) -> str | None:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(
        url, serverSelectionTimeoutMS=int(timeout * 1000), connectTimeoutMS=int(timeout * 1000)
    )
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        return f"{url}: {exc}"
    finally:
        client.close()
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m shared.probe /path | http://host:port/path | mongodb://host:port",
            file=sys.stderr,
        )
        return 1  # Docker reserves exit code 2
    try:
        problem = check(url_of(args[0]))
    except ValueError as exc:
        print(f"shared.probe: {exc}", file=sys.stderr)
        return 1
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
