"""A TCP proxy that holds every request for a while: a slow network in front
of a real Redis. Run as a subprocess (``python -m tests.support.slow_proxy
PORT UPSTREAM_HOST:PORT DELAY_S``) so that its threads never compete with the
test's event loop for the GIL."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time

from aicm_tasks.devtools.processes import free_port, wait_until


def _pipe(source: socket.socket, target: socket.socket, delay_s: float) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            if delay_s:
                time.sleep(delay_s)
            target.sendall(data)
    for sock in (source, target):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def serve(port: int, upstream: tuple[str, int], delay_s: float) -> None:
    """Forward 127.0.0.1:``port`` to ``upstream``; client-to-server data waits ``delay_s``."""
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(upstream)
        threading.Thread(target=_pipe, args=(client, server, delay_s), daemon=True).start()
        threading.Thread(target=_pipe, args=(server, client, 0.0), daemon=True).start()


def start_slow_proxy(
    upstream: tuple[str, int], delay_s: float
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start the proxy in a subprocess; returns its port once it accepts connections."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.slow_proxy",
            str(port),
            f"{upstream[0]}:{upstream[1]}",
            str(delay_s),
        ]
    )

    def accepting() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_until(accepting, 30, "the slow proxy to listen")
    return port, process


if __name__ == "__main__":
    host, _, upstream_port = sys.argv[2].rpartition(":")
    serve(int(sys.argv[1]), (host, int(upstream_port)), float(sys.argv[3]))
