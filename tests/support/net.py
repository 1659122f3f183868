"""Loopback ports and launcher output for the tests that start `vending serve` as a user would."""

from __future__ import annotations

import socket
import subprocess
import time


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together, so none is handed out twice)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """The process's output up to the line holding ``marker``, or all it printed before exiting or the timeout."""
    output = ""
    deadline = time.monotonic() + timeout_s
    while marker not in output and time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line and proc.poll() is not None:
            break
        output += line
    return output
