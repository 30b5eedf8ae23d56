"""A private RabbitMQ node for tests that stop or kill the broker.

It has its own node name, ports and data directory, so the machine's RabbitMQ (which the rest of
the suite and CI use) is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RabbitNode:
    def __init__(self) -> None:
        self.name = f"kotc-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="kotc-rabbit-"))
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        # The Debian wrapper runs the node as the rabbitmq user when called as root.
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.base)], check=False)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def fresh_vhost(self) -> str:
        """A new virtual host on this node (tests sharing the node stay apart); returns its AMQP URL."""
        vhost = f"t-{uuid.uuid4().hex[:8]}"
        for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
            subprocess.run(
                ["rabbitmqctl", "-n", self.name, "-q", *args],
                env=self._env(),
                check=True,
                capture_output=True,
            )
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
        }

    def start(self, timeout: float = 60.0) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=self._env(), check=True, capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = subprocess.run(
                ["rabbitmqctl", "-n", self.name, "-q", "await_startup", "--timeout", "5"],
                env=self._env(),
                capture_output=True,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"private RabbitMQ node {self.name} did not start")

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-n", self.name, "-q", "stop"], env=self._env(), capture_output=True)

    def stop_app(self) -> None:
        """Stop the broker application (connections drop) but keep the node for a quick restart."""
        subprocess.run(
            ["rabbitmqctl", "-n", self.name, "-q", "stop_app"],
            env=self._env(),
            check=True,
            capture_output=True,
        )

    def start_app(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.name, "-q", "start_app"],
            env=self._env(),
            check=True,
            capture_output=True,
        )

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
