"""A RabbitMQ node of a test's own, for tests that stop or kill the broker.

The shared broker is never stopped: a test that needs a broker to die starts
a private node (:class:`PrivateRabbit`: its own node name, free ports, data
and Erlang cookie in a temporary directory), as tests start private
``redis-server`` processes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.rabbitmq import broker_answers


def rabbitmq_server_script() -> str | None:
    """The ``rabbitmq-server`` start script, or None when RabbitMQ is not installed.

    Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that re-runs it as the
    ``rabbitmq`` user when called by root (whose data directory it could not
    write then); the script it wraps is taken when present.
    """
    inner = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    return inner[-1] if inner else shutil.which("rabbitmq-server")


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of a test's own: started, killed and restarted at will.

    Everything it keeps is under ``directory`` (data, logs, its Erlang
    cookie: ``HOME`` points there), it listens on 127.0.0.1 only, on free
    ports, under a node name of its own; it registers with the machine's epmd
    as any node does. Restarted with the same directory it keeps its queues
    and confirmed messages. The node boots in about 5 s here.
    """

    directory: Path
    port: int
    dist_port: int
    node: str = field(default_factory=lambda: f"aicm-test-{uuid.uuid4().hex[:8]}@localhost")
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>/`` (guest may log in over loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        directory = self.directory
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        # An env file of its own, so /etc/rabbitmq/rabbitmq-env.conf's NODENAME is not read.
        (directory / "rabbitmq-env.conf").touch()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(directory),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(directory / "log"),
            RABBITMQ_CONFIG_FILE=str(directory / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(directory / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(directory / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(directory / "rabbitmq.pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the node and wait until an AMQP connection opens (RuntimeError if not)."""
        script = rabbitmq_server_script()
        if script is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "server.log", "ab") as log:
            # A session of its own: stop() and kill() signal the node's whole
            # process group (the start script, beam.smp and its helpers).
            self.process = subprocess.Popen(
                [script],
                env=self._env(),
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while broker_answers(self.url) is not None:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited {self.process.returncode}; see "
                                   f"{self.directory / 'server.log'}")  # fmt: skip
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"no RabbitMQ on port {self.port} after {timeout_s:.0f}s")
            time.sleep(0.25)

    def _signal_group(self, sig: int, timeout_s: float) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # beam.smp may outlive the start script by a moment: wait for the port to close.
        deadline = time.monotonic() + timeout_s
        while broker_answers(self.url, timeout_s=0.5) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the node (a crash: nothing is flushed or closed cleanly)."""
        self._signal_group(signal.SIGKILL, 30)

    def stop(self) -> None:
        """SIGTERM the node (RabbitMQ shuts down cleanly on it), SIGKILL after 60 s."""
        self._signal_group(signal.SIGTERM, 60)
