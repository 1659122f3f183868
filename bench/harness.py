"""The benchmark run: set up the processes, measure every figure beside its floor, report.

Processes (each its own session, all stopped at the end, also on Ctrl-C):
- the Firestore emulator (``tests/emulators.py``),
- the IAM Credentials stand-in (``python -m vending.local.iamcredentials``),
- the bench CI issuer's JWKS server (``python -m bench.jwks``),
- the function under test, one at a time, as a real functions-framework
  server (gunicorn, 1 worker, 8 threads: the defaults): ``main.vend_http``
  on Firestore, on SQLite, ``bench/naive.py`` and ``bench/trivial.py``,
- load generators, floors and in-process figures as short-lived children.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.common import PY, ROOT, Child, free_port, median, run_json, summary, wait_http

MiB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    latency_n: int  # measured sequential vends per latency series on Firestore (split in interleaved blocks)
    latency_n_sqlite: int  # the same on SQLite, whose vends take a third of the time: more samples, same cost
    warmup: int  # unmeasured requests before each block
    warm_n: int  # unmeasured vends to each server before a backend's latency blocks
    naive_n: int
    rss_half: int  # vends per half of the RSS run at concurrency 8 (target: 5,000 + 5,000), on RSS_BACKEND
    floor_tp_n: int  # floor vends per block of the RSS run at concurrency 8 (two blocks, between ours)
    tp_n: int  # vends per block at concurrency 8 on the other backend (ours and floor, two blocks each)
    c32_n: int  # vends per block at concurrency 32 (ours and floor, one block each)
    trivial_n: int
    concurrency: int  # client threads for throughput (= the server's default 8 threads)
    cold_reps: int
    roundtrip_n: int
    sweep_sizes: tuple[int, int]
    sweep_due: int
    sweep_reps: int
    verify_n: int


# Sized for "under 5 minutes here" (issue 18) on 2 quiet cores: the 10,000-vend RSS run alone is ~90 s on
# SQLite (~115 vends/s at concurrency 8) and would be ~140 s on the Firestore emulator (~70 vends/s, the
# server CPU-bound), hence RSS_BACKEND; the Firestore instance's own peak RSS is still measured and bounded.
FULL = Plan(
    latency_n=400,
    latency_n_sqlite=800,
    warmup=16,
    warm_n=100,
    naive_n=40,
    rss_half=5000,
    floor_tp_n=200,
    tp_n=200,
    c32_n=200,
    trivial_n=500,
    concurrency=8,
    cold_reps=5,
    roundtrip_n=50,
    sweep_sizes=(1000, 10000),
    sweep_due=100,
    sweep_reps=3,
    verify_n=2000,
)
QUICK = Plan(
    latency_n=30,
    latency_n_sqlite=30,
    warmup=5,
    warm_n=10,
    naive_n=10,
    rss_half=60,
    floor_tp_n=40,
    tp_n=40,
    c32_n=64,
    trivial_n=200,
    concurrency=8,
    cold_reps=1,
    roundtrip_n=10,
    sweep_sizes=(150, 300),
    sweep_due=50,
    sweep_reps=1,
    verify_n=200,
)

CONCURRENCY_LEVELS = (1, 8, 32)
RSS_BACKEND = "sqlite"  # the backend of the 10,000-vend RSS run (see FULL)

COLD_MAIN = """\
import time
_t0, _c0 = time.perf_counter(), time.process_time()
import json, sys
from functions_framework import create_app
client = create_app("vend_http", "main.py").test_client()
_ta = time.perf_counter()
resp = client.post("/v1/access-tokens", data=sys.argv[2].encode(),
                   headers={"Authorization": "Bearer " + sys.argv[1], "Content-Type": "application/json"})
_t1 = time.perf_counter()
if resp.status_code != 200:
    raise SystemExit(f"cold vend answered {resp.status_code}: {resp.get_data(as_text=True)[:300]}")
print("BENCH_RESULT " + json.dumps({"s": _t1 - _t0, "app_s": _ta - _t0, "cpu_s": time.process_time() - _c0}), flush=True)
"""

COLD_SPLIT = """\
import json, time
marks = {}
_t = [time.perf_counter(), time.process_time()]
def mark(name):
    now = [time.perf_counter(), time.process_time()]
    marks[name] = {"wall_s": now[0] - _t[0], "cpu_s": now[1] - _t[1]}
    _t[:] = now
import os
import functions_framework, requests, jwt
if os.environ["VENDING_STORE"] == "firestore":
    import google.cloud.firestore
else:
    import sqlite3
mark("libraries the floor imports too (functions_framework, requests, PyJWT and cryptography, the store's)")
import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
mark("pydantic import")
import yaml
mark("yaml import")
import vending.config
mark("vending.config: building the policy's pydantic models")
from vending import wiring
wiring.settings()
mark("settings and policy file validated (pydantic)")
from functions_framework import create_app
create_app("vend_http", "main.py")
mark("main and vending.api imported")
wiring.service()
mark("service built: vending modules imported, clients created")
print("BENCH_RESULT " + json.dumps(marks), flush=True)
"""

WARM_EMULATOR = """\
from google.cloud import firestore
db = firestore.Client()
for i in range(30):  # the emulator's JVM answers its first requests slowly: not in any figure
    ref = db.collection("bench_warmup").document(f"d{i}")
    ref.set({"i": i}, timeout=60)
    ref.get(timeout=60)
db.close()
"""

COLD_FLOOR = """\
import time
_t0, _c0 = time.perf_counter(), time.process_time()
import json, sys
from functions_framework import create_app
client = create_app("floor_vend", "bench/floorapp.py").test_client()
_ta = time.perf_counter()
resp = client.post("/v1/access-tokens", data=sys.argv[2].encode(),
                   headers={"Authorization": "Bearer " + sys.argv[1], "Content-Type": "application/json"})
_t1 = time.perf_counter()
if resp.status_code != 200:
    raise SystemExit(f"cold floor answered {resp.status_code}: {resp.get_data(as_text=True)[:300]}")
print("BENCH_RESULT " + json.dumps({"s": _t1 - _t0, "app_s": _ta - _t0, "cpu_s": time.process_time() - _c0}), flush=True)
"""


def _block(result: dict[str, Any]) -> dict[str, Any]:
    """What a load block leaves for the report: its size, wall time, latency summary and CPU."""
    return {
        "n": result["n"],
        "wall_s": result["wall_s"],
        "rps": result["throughput_rps"],
        "latency_ms": summary(result["latencies_ms"]),
        "cpu_s": result["server_cpu"],
    }


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak) of ``pid`` in bytes, from /proc."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) * 1024
    return out


class RssSampler:
    """Samples a process's RSS every ``interval_s`` in a thread (psutil)."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._interval = interval_s
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self._t0, int(self.proc.memory_info().rss)))
            except Exception:  # noqa: BLE001 - the process ended
                return
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


class CpuMeter:
    """CPU seconds (user + system) used between construction and ``stop`` by the function server
    (arbiter + worker, with gRPC's native threads), the Firestore emulator (every process of its
    group: gcloud wrapper and JVM) and the IAM stand-in; with the wall time, so shares of the
    machine's cores can be computed."""

    def __init__(self, bench: Bench, server_pid: int) -> None:
        import psutil

        self.procs: dict[str, list[Any]] = {"server": [psutil.Process(server_pid)]}
        emulator = bench.emulator
        if emulator is not None and emulator.proc is not None:
            self.procs["emulator"] = [psutil.Process(emulator.proc.pid)]
        iam = next((c for c in bench.children if c.name == "iam-standin" and c.proc is not None), None)
        if iam is not None:
            self.procs["iam_standin"] = [psutil.Process(iam.pid)]
        for name, roots in self.procs.items():
            self.procs[name] = roots + [p for r in roots for p in r.children(recursive=True)]
        self.t0 = time.monotonic()
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, procs in self.procs.items():
            total = 0.0
            for p in procs:
                with contextlib.suppress(Exception):  # a process that ended: nothing more to count
                    t = p.cpu_times()
                    total += t.user + t.system
            out[name] = total
        return out

    def stop(self) -> dict[str, float]:
        after = self._read()
        out = {name: after[name] - self.before[name] for name in after}
        out["wall"] = time.monotonic() - self.t0
        out["cores"] = float(os.cpu_count() or 1)
        return out


class Bench:
    def __init__(self, plan: Plan, out_dir: Path, *, quick: bool) -> None:
        self.plan = plan
        self.quick = quick
        self.out_dir = out_dir
        self.run_dir = Path(tempfile.mkdtemp(prefix="vending-bench-"))
        self.state = self.run_dir / "issuer"
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(parents=True)
        self.raw: dict[str, Any] = {}
        self.emulator: Any = None
        self.children: list[Child] = []
        self._seq = 0
        self.served: dict[str, int] = {}  # vends (and warm-up requests) each URL has been sent

    @property
    def blocks(self) -> int:
        """Blocks per side in a latency comparison: two, counterbalanced (floor, ours, ours, floor)."""
        return 2

    def latency_n(self, backend: str) -> int:
        return self.plan.latency_n_sqlite if backend == "sqlite" else self.plan.latency_n

    # -- helpers -----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def _path(self, stem: str) -> Path:
        self._seq += 1
        return self.run_dir / f"{self._seq:02d}-{stem}.json"

    def _child(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, self.logs / f"{name}.log").start()
        self.children.append(child)
        return child

    def run_json(self, name: str, argv: list[str], env: dict[str, str]) -> Any:
        out = self._path(name)
        return run_json([*argv, "--out", str(out)], env, out, self.logs / f"{name}.log")

    def serve(
        self,
        name: str,
        target: str,
        source: str,
        env: dict[str, str],
        health: str = "/",
        *,
        threads: int | None = None,
        reset_iam: bool = True,
    ) -> tuple[Child, str]:
        """A real functions-framework server process (gunicorn: 1 worker, ``threads`` threads; default 8 here).

        The IAM stand-in is reset first (records, counters), so no phase inherits another's state.
        """
        import requests

        if reset_iam:
            requests.post(self.iam_url + "/_standin/reset", timeout=10).raise_for_status()
        port = free_port()
        env = {k: v for k, v in env.items() if k not in ("WORKERS", "THREADS")}
        if threads is not None:
            env["THREADS"] = str(threads)
        child = self._child(
            name,
            [
                PY,
                "-m",
                "functions_framework",
                "--target",
                target,
                "--source",
                source,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + health, proc=child.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}\n{child.tail()}") from None
        return child, url

    def serve_pair(self, backend: str, threads: int = 8) -> tuple[tuple[Child, str], tuple[Child, str]]:
        """The vend function and its floor function, both live, on the same backend and settings
        (8 threads: the deployed THREADS, Terraform's max_instance_request_concurrency)."""
        env, floor_env = (self.env_fs, self.env_fs_floor) if backend == "firestore" else self.sqlite_envs()
        suffix = f"-{backend}-t{threads}"
        ours = self.serve("server" + suffix, "vend_http", "main.py", env, "/healthz", threads=threads)
        floor = self.serve(
            "floor" + suffix, "floor_vend", "bench/floorapp.py", floor_env, "/", threads=threads, reset_iam=False
        )
        return ours, floor

    def sqlite_envs(self) -> tuple[dict[str, str], dict[str, str]]:
        """Fresh SQLite files for the vend and the floor (the floor's schema made by the service's store)."""
        from vending.store.indexes import ISSUANCES, KILL_SWITCHES, REPLAY
        from vending.store.sqlite import SqliteStore

        self._seq += 1
        ours, floor = self.run_dir / f"vending-{self._seq}.db", self.run_dir / f"floor-{self._seq}.db"
        store = SqliteStore(str(floor))
        store._ensure_kinds({ISSUANCES, REPLAY, KILL_SWITCHES})  # deploy-time schema, as the service's
        store.close()
        return {**self.env_base, "VENDING_STORE": f"sqlite:{ours}"}, {
            **self.env_floor,
            "VENDING_STORE": f"sqlite:{floor}",
        }

    def stop_child(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def loadgen(
        self, name: str, url: str, n: int, *, concurrency: int = 1, tokens: bool = True, expect_token: bool = True
    ) -> dict[str, Any]:
        argv = [
            PY,
            "-m",
            "bench.loadgen",
            "--url",
            url,
            "--n",
            str(n),
            "--warmup",
            str(self.plan.warmup),
            "--concurrency",
            str(concurrency),
        ]
        if tokens:
            argv += ["--state", str(self.state)]
        if expect_token:
            argv.append("--expect-token")
        result: dict[str, Any] = self.run_json(name, argv, self.env_base)
        self.served[url] = self.served.get(url, 0) + result["n"] + self.plan.warmup
        if result["errors"] or result["warmup_errors"]:
            raise RuntimeError(
                f"{name}: {result['errors']} failed requests (+{result['warmup_errors']} in the "
                f"warm-up): {result['error_samples'] or result['warmup_error_samples']}"
            )
        return result

    def metered(self, name: str, server: Child, url: str, n: int, concurrency: int) -> dict[str, Any]:
        """One load block with the server's CPU (and the emulator's, the stand-in's) measured around it."""
        cpu = CpuMeter(self, server.pid)
        result = self.loadgen(name, url + common.VEND_PATH, n, concurrency=concurrency)
        cpu_s = cpu.stop()
        cpu_s["requests"] = result["n"] + self.plan.warmup
        cpu_s["loadgen_per_request"] = result["cpu_s"] / max(1, result["n"])
        result["server_cpu"] = cpu_s
        return result

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        from tests import emulators

        self.say(f"run directory {self.run_dir}")
        self.say("starting the Firestore emulator")
        self.emulator = emulators.firestore_emulator(common.PROJECT, log_dir=self.logs)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("VENDING_", "NAIVE_", "FLOOR_")) and k != "PYTHONDONTWRITEBYTECODE"
        }
        # Bytecode caches for every child, kept in the run directory (the tree stays clean): without them
        # each cold process compiles the service's ~40 modules from source (~100-200 ms here) while the
        # floor compiles one file, and a deployed instance imports precompiled site-packages.
        env.update(
            FIRESTORE_EMULATOR_HOST=self.emulator.host,
            GOOGLE_CLOUD_PROJECT=common.PROJECT,
            PYTHONPATH=str(ROOT),
            PYTHONPYCACHEPREFIX=str(self.run_dir / "pycache"),
            # As deployed (terraform/modules/token-vending/main.tf): no pydantic plugin scan at start.
            PYDANTIC_DISABLE_PLUGINS="__all__",
        )

        # A fresh emulator answers its first requests slowly (JVM warm-up; seconds on a loaded machine):
        # warm it before anything is measured, so no client's short retry deadline runs out on it.
        subprocess.run([PY, "-c", WARM_EMULATOR], env=env, cwd=ROOT, timeout=300, check=True, capture_output=True)

        iam_port = free_port()
        iam = self._child(
            "iam-standin",
            [PY, "-m", "vending.local.iamcredentials", "--policy", "config/local-iam.yaml", "--port", str(iam_port)],
            env,
        )
        self.iam_url = f"http://127.0.0.1:{iam_port}"
        common.issuer(self.state)  # create the key before the JWKS server and the minters read it
        jwks_port = free_port()
        jwks = self._child("jwks", [PY, "-m", "bench.jwks", "--state", str(self.state), "--port", str(jwks_port)], env)
        self.jwks_url = f"http://127.0.0.1:{jwks_port}"
        wait_http(self.iam_url + "/_standin/health", proc=iam.proc)
        wait_http(self.jwks_url + "/_fetches", proc=jwks.proc)

        policy = (ROOT / "bench" / "policy.yaml").read_text().replace("JWKS_PORT", str(jwks_port))
        policy_path = self.run_dir / "policy.yaml"
        policy_path.write_text(policy)
        env.update(
            VENDING_CONFIG=str(policy_path),
            VENDING_PROJECT=common.PROJECT,
            VENDING_IAM_ENDPOINT=self.iam_url,
            VENDING_IAM_TOKEN=common.IAM_TOKEN,
            VENDING_KEYS_BASE_URL=self.iam_url,
        )
        self.env_base = env
        self.env_fs = {
            **env,
            "VENDING_STORE": "firestore",  # production settings: the session key is required
            "VENDING_SESSION_KEY": "bench-console-session-key-not-a-secret-0123456789",
        }
        self.env_floor = {**env, "FLOOR_JWKS_URL": f"{self.jwks_url}/.well-known/jwks.json"}
        self.env_fs_floor = {**self.env_floor, "VENDING_STORE": "firestore"}
        self.env_naive = {
            **env,
            "NAIVE_AUDIENCE": common.AUDIENCE,
            "NAIVE_CERTS_URL": f"{self.jwks_url}/.well-known/jwks.json",
            "NAIVE_IAM_ENDPOINT": self.iam_url,
            "NAIVE_IAM_TOKEN": common.IAM_TOKEN,
            "NAIVE_PROJECT": common.PROJECT,
        }

    def teardown(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:  # noqa: BLE001
                print(f"bench: could not stop {child.name}: {exc}", file=sys.stderr)
        self.children.clear()
        common.stop_children()
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    # -- figures -------------------------------------------------------------------------------

    def fig_verify(self) -> None:
        self.say("caller token verification (cached keys) vs bare cryptography RS256 verify")
        self.raw["verify"] = self.run_json(
            "verify",
            [PY, "-m", "bench.inproc", "verify", "--state", str(self.state), "--n", str(self.plan.verify_n)],
            self.env_fs,
        )

    def fig_roundtrips(self) -> None:
        self.say("remote round trips per warm vend (counting store around FirestoreStore, stand-in counters)")
        self.raw["roundtrips"] = self.run_json(
            "roundtrips",
            [
                PY,
                "-m",
                "bench.inproc",
                "roundtrips",
                "--n",
                str(self.plan.roundtrip_n),
                "--iam",
                self.iam_url,
                "--jwks",
                self.jwks_url,
                "--state",
                str(self.state),
            ],
            self.env_fs,
        )

    def fig_cold_start(self) -> None:
        reps = self.plan.cold_reps
        self.say(
            f"cold start: {reps} fresh processes each for main and the floor function (import + first vend), "
            "on Firestore and on SQLite"
        )
        tokens = iter(common.mint_tokens(self.state, 4 * reps + 4))
        body = common.vend_body().decode()

        apps: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}

        def once(script: str, env: dict[str, str], *extra: str) -> float:
            result = once_json(script, env, *extra)
            apps.setdefault(script, []).append(float(result["app_s"]))
            cpus.setdefault(script, []).append(float(result["cpu_s"]))
            return float(result["s"])

        def once_json(script: str, env: dict[str, str], *extra: str) -> Any:
            proc = subprocess.run(
                [PY, "-c", script, *extra],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"cold start child failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            return json.loads(lines[-1].split(" ", 1)[1])

        for backend in ("firestore", "sqlite"):
            env, floor_env = (self.env_fs, self.env_fs_floor) if backend == "firestore" else self.sqlite_envs()
            if not self.quick:  # compile caches, warm the page cache: not measured
                once(COLD_FLOOR, floor_env, next(tokens), body)
                once(COLD_MAIN, env, next(tokens), body)
                apps.clear()
                cpus.clear()
            ours, floor, imports, splits = [], [], [], []
            for i in range(reps):  # interleaved, so drift hits all alike
                floor.append(once(COLD_FLOOR, floor_env, next(tokens), body))
                ours.append(once(COLD_MAIN, env, next(tokens), body))
                if i < 2:  # where the time goes: each step in a fresh process (median of 2)
                    split = once_json(COLD_SPLIT, env)
                    splits.append(split)
                    imports.append(sum(v["wall_s"] for v in split.values()))
            if splits:
                self.raw["cold_split" if backend == "firestore" else "cold_split_sqlite"] = {
                    name: {k: median([sp[name][k] for sp in splits]) for k in ("wall_s", "cpu_s")} for name in splits[0]
                }
            key = "cold_start" if backend == "firestore" else "cold_start_sqlite"
            self.raw[key] = {
                "ours_s": ours,
                "floor_s": floor,
                "import_s": imports,
                "ours_median_s": median(ours),
                "floor_median_s": median(floor),
                "import_median_s": median(imports) if imports else None,
                "ours_app_median_s": median(apps.pop(COLD_MAIN)),  # imports until the app exists
                "floor_app_median_s": median(apps.pop(COLD_FLOOR)),
                "ours_cpu_median_s": median(cpus.pop(COLD_MAIN)),  # the process's CPU, same span
                "floor_cpu_median_s": median(cpus.pop(COLD_FLOOR)),
            }

    def fig_backend(self, backend: str) -> None:
        """Warm latency (concurrency 1), then CPU per vend at concurrency 8 and 32: the vend function and
        its floor function on the same server settings, interleaved blocks, server CPU metered per block."""
        plan, c = self.plan, self.plan.concurrency
        n = self.latency_n(backend)
        self.say(f"{backend}: warm latency, {n} sequential vends through the vend function and its floor function")
        (server, url), (fserver, furl) = self.serve_pair(backend)
        levels: dict[str, dict[str, list[dict[str, Any]]]] = {str(k): {"ours": [], "floor": []} for k in (1, c, 32)}
        rss: dict[str, Any] = {}
        try:
            ours_ms: list[float] = []
            floor_ms: list[float] = []
            # Unmeasured: both servers, their stores and the emulator's JIT past their first hundreds of
            # requests, so the first measured blocks do not carry a start-up drift (seen: 35 ms -> 21 ms).
            for target in (furl, url):
                self.loadgen(f"warm-{backend}", target + common.VEND_PATH, plan.warm_n)
            # Interleaved and counterbalanced (floor, ours, ours, floor): see _pair.
            for block in range(self.blocks):
                for side, r in self._pair(
                    backend, "latency", block, (server, url), (fserver, furl), n // self.blocks, 1
                ):
                    (floor_ms if side == "floor" else ours_ms).extend(r["latencies_ms"])
                    levels["1"][side].append(_block(r))
            self.raw[f"latency_{backend}"] = {"ours_ms": ours_ms, "floor_ms": floor_ms}
            if backend == RSS_BACKEND:
                rss = self._throughput_with_rss(backend, server, url, fserver, furl, levels[str(c)])
            else:
                self.say(f"{backend}: concurrency {c}, {2 * plan.tp_n} vends each, interleaved")
                for block in range(2):
                    for side, r in self._pair(
                        backend, "throughput", block, (server, url), (fserver, furl), plan.tp_n, c
                    ):
                        levels[str(c)][side].append(_block(r))
                self.raw[f"rss_{backend}"] = self._peak_rss(server, self.served[url + common.VEND_PATH])
        finally:
            self.stop_child(server)
            self.stop_child(fserver)
        self.say(f"{backend}: concurrency 32 (servers with 32 threads), {plan.c32_n} vends each")
        (server, url), (fserver, furl) = self.serve_pair(backend, threads=32)
        try:
            r = self.metered(f"floor-{backend}-c32", fserver, furl, plan.c32_n, 32)
            levels["32"]["floor"].append(_block(r))
            r = self.metered(f"throughput-{backend}-c32", server, url, plan.c32_n, 32)
            levels["32"]["ours"].append(_block(r))
        finally:
            self.stop_child(server)
            self.stop_child(fserver)
        self.raw[f"cpu_{backend}"] = levels
        if rss:
            self.raw["rss"] = rss

    def _pair(
        self, backend: str, what: str, block: int, ours: tuple[Child, str], floor: tuple[Child, str], n: int, c: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """One metered block on each side, counterbalanced: the floor first in even blocks, ours first in odd
        ones, so a drift over the phase (the stand-in's and the stores' tables grow with every vend) hits both
        alike instead of favouring whichever runs first."""
        sides = {"floor": (f"floor-{backend}-c{c}-{block}", *floor), "ours": (f"{what}-{backend}-c{c}-{block}", *ours)}
        order = ("floor", "ours") if block % 2 == 0 else ("ours", "floor")
        return [(side, self.metered(sides[side][0], sides[side][1], sides[side][2], n, c)) for side in order]

    @staticmethod
    def _worker(server: Child) -> int:
        import psutil

        workers = psutil.Process(server.pid).children(recursive=True)
        if len(workers) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {len(workers)}")
        return int(workers[0].pid)

    def _peak_rss(self, server: Child, vends: int) -> dict[str, Any]:
        """The instance's peak RSS (worker ``VmHWM``) after the ``vends`` it has served."""
        return {"peak_rss_vmhwm": _proc_status(self._worker(server))["VmHWM"], "vends": vends}

    def _throughput_with_rss(
        self, backend: str, server: Child, url: str, fserver: Child, furl: str, level: dict[str, list[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Concurrency 8: the instance brought to ``2 * rss_half`` vends in two runs, the second of ``rss_half``
        (RSS after each), floor blocks between. The latency blocks it has served count toward the first."""
        plan, c = self.plan, self.plan.concurrency
        half, before = plan.rss_half, self.served[url + common.VEND_PATH]
        first = max(half // 10, half - before - 2 * plan.warmup)  # the two runs' warm-ups are vends too
        self.say(f"{backend}: concurrency {c}, {first + half} vends (RSS sampled) and floor blocks between them")
        worker = self._worker(server)
        sampler = RssSampler(worker)
        idle = _proc_status(worker)["VmRSS"]
        after: list[int] = []
        for block in range(2):
            r = self.metered(f"floor-{backend}-c{c}-{block}", fserver, furl, self.plan.floor_tp_n, c)
            level["floor"].append(_block(r))
            r = self.metered(f"throughput-{backend}-c{c}-{block}", server, url, first if block == 0 else half, c)
            level["ours"].append(_block(r))
            after.append(_proc_status(worker)["VmRSS"])
        status = _proc_status(worker)
        sampler.stop()
        return {
            "backend": backend,
            "worker_pid": worker,
            "idle_rss": idle,
            "rss_after_first_half": after[0],
            "rss_after_all": after[1],
            "peak_rss_vmhwm": status["VmHWM"],
            "peak_rss_sampled": sampler.peak,
            "arbiter_rss": _proc_status(server.pid)["VmRSS"],
            "vends_per_half": half,
            "vends_total": self.served[url + common.VEND_PATH],
            "samples": sampler.samples[:: max(1, len(sampler.samples) // 400)],
        }

    def fig_naive(self) -> None:
        n = self.plan.naive_n
        self.say(f"the naive function (Google samples style): {n} vends")
        server, url = self.serve("server-naive", "vend_naive", "bench/naive.py", self.env_naive)
        try:
            import psutil

            worker = psutil.Process(server.pid).children(recursive=True)[0].pid
            rss_before = _proc_status(worker)["VmRSS"]
            result = self.loadgen("latency-naive", url + common.VEND_PATH, n)
            status = _proc_status(worker)
        finally:
            self.stop_child(server)
        self.raw["naive"] = {
            "ms": result["latencies_ms"],
            "rss_before": rss_before,
            "rss_after": status["VmRSS"],
            "peak_rss": status["VmHWM"],
            "vends": n + self.plan.warmup,
        }

    def fig_trivial(self) -> None:
        c = self.plan.concurrency
        self.say("a do-nothing handler on the same server: the HTTP hop (sequential) and its CPU per request")
        server, url = self.serve("server-trivial", "trivial", "bench/trivial.py", self.env_base)
        try:
            cpu = CpuMeter(self, server.pid)
            result = self.loadgen(
                "throughput-trivial",
                url + common.VEND_PATH,
                self.plan.trivial_n,
                concurrency=c,
                tokens=False,
                expect_token=False,
            )
            cpu_s = cpu.stop()
            cpu_s["requests"] = result["n"] + self.plan.warmup
            cpu_s["loadgen_per_request"] = result["cpu_s"] / result["n"]
            hop = self.loadgen(
                "latency-trivial", url + common.VEND_PATH, self.plan.latency_n // 2, tokens=False, expect_token=False
            )
        finally:
            self.stop_child(server)
        self.raw["trivial"] = {"rps": result["throughput_rps"], "cpu_s": cpu_s}
        self.raw["http_hop"] = {"ms": hop["latencies_ms"]}

    def fig_sweep(self) -> None:
        small, large = self.plan.sweep_sizes
        self.say(f"sweep: {large:,}-record vs {small:,}-record ledger, {self.plan.sweep_due} due each")
        argv = [
            PY,
            "-m",
            "bench.inproc",
            "sweep",
            "--sizes",
            f"{small},{large}",
            "--due",
            str(self.plan.sweep_due),
            "--reps",
            str(self.plan.sweep_reps),
            "--tmp",
            str(self.run_dir),
        ]
        self.raw["sweep"] = self.run_json("sweep", [*argv, "--backend", "firestore"], self.env_fs)
        self.say("the same sweep on the embedded SQLite store (indexed queries)")
        self.raw["sweep_sqlite"] = self.run_json("sweep-sqlite", [*argv, "--backend", "sqlite"], self.env_fs)

    def run(self) -> dict[str, Any]:
        started = time.time()
        t0 = time.monotonic()
        load_before = os.getloadavg()
        self.setup()
        self.fig_verify()
        self.fig_roundtrips()
        self.fig_cold_start()
        self.fig_backend("firestore")
        self.fig_backend("sqlite")
        self.fig_trivial()
        self.fig_naive()
        self.fig_sweep()
        duration = time.monotonic() - t0
        return {
            "mode": "quick" if self.quick else "full",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": duration,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "plan": asdict(self.plan),
            "raw": self.raw,
        }


def run(out_dir: Path, *, quick: bool) -> dict[str, Any]:
    from bench import report

    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(QUICK if quick else FULL, out_dir, quick=quick)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    ok = False
    try:
        data = bench.run()
        ok = True
    finally:
        bench.say("stopping every process started")
        bench.teardown()
        signal.signal(signal.SIGTERM, previous)
        if ok:
            shutil.rmtree(bench.run_dir, ignore_errors=True)
        else:
            print(f"bench: logs kept in {bench.logs}", file=sys.stderr)
    data["figures"] = report.figures(data)
    report.write(data, out_dir)
    return data
