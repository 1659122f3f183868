"""Start, stop and reset the gcloud Firestore and Pub/Sub emulators for tests.

    fs = firestore_emulator()            # reuses $FIRESTORE_EMULATOR_HOST if set
    fs.host                              # "127.0.0.1:PORT"
    reset_firestore(fs.host, "proj")     # delete every document
    fs.stop(); fs.start()                # fault tests: down, then up on the SAME port
    fs.stop()

Each emulator runs in its own session / process group (gcloud -> shell ->
java), so ``stop`` can reach every process: SIGTERM to the leaves first (the
Java server; its parents then exit and are reaped normally, leaving no
zombies), then SIGTERM to the group, then SIGKILL after a timeout. Output goes
to a log file under a temp dir (``Emulator.log_path``), never to test output.
An ``atexit`` hook and a SIGTERM / SIGHUP handler (``timeout pytest ...``)
stop anything still running if the test session ends early.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0

_running: set[Emulator] = set()


class EmulatorError(RuntimeError):
    """An emulator did not start (the message carries the tail of its log)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(url: str, timeout: float = 1.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None


def _group_members(pgid: int) -> list[tuple[int, int, str]]:
    """Live (pid, ppid, state) of a process group, zombies excluded (Linux /proc)."""
    if not os.path.isdir("/proc"):  # not Linux: only "does the group still exist"
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [(pgid, 0, "?")]
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append((int(entry), ppid, state))
    return members


@dataclass(eq=False)
class Emulator:
    """One emulator: a command bound to a fixed host:port, restartable."""

    name: str  # "firestore" or "pubsub"
    host: str  # "127.0.0.1:PORT"
    project: str
    command: list[str] = field(default_factory=list)
    log_path: Path | None = None
    owned: bool = True  # False when reused from the environment: never stopped here
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return (_http_get(self.url + "/") or "").strip() == "Ok"

    def start(self, timeout: float = START_TIMEOUT_S) -> Emulator:
        """Start (or restart, on the same port) and wait until it answers."""
        if not self.owned or self.running:
            return self
        assert self.log_path is not None
        if _port_open(self.host):
            raise EmulatorError(f"cannot start the {self.name} emulator: {self.host} is already in use")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        _running.add(self)
        _install_signal_handlers()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise EmulatorError(f"{self.name} emulator did not start on {self.host}:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every process of the emulator; SIGKILL what survives ``timeout``."""
        if not self.owned or self.proc is None:
            return
        proc, pgid = self.proc, self.proc.pid  # start_new_session: pgid == leader pid
        try:
            # Leaves first (java), so each parent reaps its child and exits on its own.
            members = _group_members(pgid)
            parents = {ppid for _, ppid, _ in members}
            for pid, _, _ in members:
                if pid not in parents:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout / 2
            while _group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_members(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            # The port must be free before a restart binds it again.
            deadline = time.monotonic() + timeout
            while _port_open(self.host) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            self.proc = None
            _running.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _port_open(host: str) -> bool:
    hostname, port = host.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((hostname, int(port))) == 0


def _log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="vending-emulators-"))


def _gcloud() -> str:
    path = shutil.which("gcloud")
    if path is None:
        raise EmulatorError("gcloud is not on PATH (the emulators need gcloud and Java 17+)")
    return path


def firestore_emulator(project: str = "vending-test", port: int | None = None, log_dir: Path | None = None) -> Emulator:
    """The Firestore emulator from $FIRESTORE_EMULATOR_HOST, or a new one (started)."""
    existing = os.environ.get("FIRESTORE_EMULATOR_HOST")
    if existing:
        return Emulator("firestore", existing, project, owned=False)
    port = port or free_port()
    host = f"127.0.0.1:{port}"
    log_path = (log_dir or _log_dir()) / f"firestore-{port}.log"
    cmd = [_gcloud(), "emulators", "firestore", "start", f"--host-port={host}", "--quiet"]
    return Emulator("firestore", host, project, cmd, log_path).start()


def pubsub_emulator(project: str = "vending-test", port: int | None = None, log_dir: Path | None = None) -> Emulator:
    """The Pub/Sub emulator from $PUBSUB_EMULATOR_HOST, or a new one (started)."""
    existing = os.environ.get("PUBSUB_EMULATOR_HOST")
    if existing:
        return Emulator("pubsub", existing, project, owned=False)
    port = port or free_port()
    host = f"127.0.0.1:{port}"
    log_path = (log_dir or _log_dir()) / f"pubsub-{port}.log"
    cmd = [_gcloud(), "beta", "emulators", "pubsub", "start", f"--host-port={host}", f"--project={project}", "--quiet"]
    return Emulator("pubsub", host, project, cmd, log_path).start()


def reset_firestore(host: str, project: str, database: str = "(default)") -> None:
    """Delete every document of the emulator's database."""
    url = f"http://{host}/emulator/v1/projects/{project}/databases/{database}/documents"
    req = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status != 200:
            raise EmulatorError(f"reset of {url} answered {resp.status}")


@atexit.register
def _stop_all() -> None:
    for emulator in list(_running):
        with contextlib.suppress(Exception):
            emulator.stop()


_previous_handlers: dict[int, Any] = {}


def _on_signal(signum: int, frame: Any) -> None:
    _stop_all()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    """atexit does not run when the process is killed by a signal: stop emulators first."""
    if _previous_handlers or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        _previous_handlers[signum] = signal.getsignal(signum)
        signal.signal(signum, _on_signal)
