"""Shared constants and helpers of the benchmark processes (harness, load generator, floors)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

PROJECT = "vending-bench"
ISSUER = "https://ci.bench.example"
AUDIENCE = "https://vending.bench.example"
SUBJECT = "repo:bench/app:ref:refs/heads/main"
SERVICE_ACCOUNT = "demo-deployer@local-project.iam.gserviceaccount.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
LIFETIME_S = 600
IAM_TOKEN = "local-vending-service-token"  # config/local-iam.yaml: the vending runtime's bearer
VEND_PATH = "/v1/access-tokens"


def vend_body() -> bytes:
    return json.dumps({"service_account": SERVICE_ACCOUNT, "scopes": [SCOPE], "lifetime": f"{LIFETIME_S}s"}).encode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


# -- child processes -------------------------------------------------------------------

_children: set[Child] = set()


@dataclass(eq=False)
class Child:
    """A process in its own session, so ``stop`` reaches all of it (gunicorn arbiter + worker)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Child:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        _children.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        _children.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # The group may outlive its leader (a gunicorn worker): make sure it is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def stop_children() -> None:
    for child in list(_children):
        with contextlib.suppress(Exception):
            child.stop()


def run_json(argv: Sequence[str], env: dict[str, str], out: Path, log_path: Path, timeout_s: float = 900) -> Any:
    """Run a bench sub-process that writes its result as JSON to ``out``; return the parsed result."""
    with open(log_path, "ab") as log:
        proc = subprocess.run(
            list(argv),
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited with {proc.returncode}:\n{tail}")
    return json.loads(out.read_text())


# -- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values) if values else math.nan,
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }


# -- caller tokens ---------------------------------------------------------------------------


def issuer(state_dir: Path) -> Any:
    """The bench CI issuer: one RSA-2048 key kept in ``state_dir`` (shared by JWKS server and minters)."""
    from vending.local.issuer import DevIssuer

    return DevIssuer(state_dir, ISSUER)


def mint_tokens(state_dir: Path, n: int, ttl_s: int = 1800) -> list[str]:
    """``n`` distinct caller tokens (unique jti each), RS256 like GitHub Actions'."""
    iss = issuer(state_dir)
    return [iss.mint(SUBJECT, AUDIENCE, ttl_s=ttl_s) for _ in range(n)]
