"""The Terraform deploys what the code needs, and nothing more privileged.

Every ``.tf`` file under ``terraform/`` is parsed with python-hcl2 (no
``terraform init``: the registry is out of reach here) and checked against
facts read from the code, never copied into this file:

- the entry points of ``main.py`` (``@functions_framework.http`` /
  ``@functions_framework.cloud_event``) -> one function each, right trigger;
- the ``VENDING_*`` variables ``vending/config.py`` reads -> set in every
  function, with nothing extra;
- the query shapes of ``vending/store/indexes.py`` -> composite indexes, and
  a TTL policy on ``purge_at`` for every collection;
- IAM: no primitive role, no project-wide Token Creator, no public binding but
  the HTTP function's invoker.

Each ``check_*`` function returns a list of problems (empty = fine), so that
``test_broken_copies`` can show each one failing on a deliberately broken copy.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"
MAIN_PY = REPO / "main.py"
CONFIG_PY = REPO / "vending" / "config.py"
INDEXES_PY = REPO / "vending" / "store" / "indexes.py"
EXAMPLE_POLICY = TERRAFORM_DIR / "examples" / "basic" / "config.yaml"

# Read by config.py but deliberately never set by the deployment.
LOCAL_ONLY_ENV_VARS = {
    # A static bearer token for the local IAM stand-in; config.py refuses it
    # against the real API, where the runtime account's own credentials are used.
    "VENDING_IAM_TOKEN",
    # A JSONL file sink for events on the embedded default; production
    # publishes to the notifications and alerts topics instead.
    "VENDING_EVENTS_FILE",
}

# Read by config.py, set only where it applies: VENDING_ENTRY_POINT (unset = every entry point).
OPTIONAL_ENV_VARS = {"VENDING_ENTRY_POINT"}
# Entry points that serve no console (vending/config.py EVENT_ENTRY_POINTS): no session key.
EVENT_ENTRY_POINTS = {"handle_pubsub", "sweep_expired"}

PUBSUB_EVENT = "google.cloud.pubsub.topic.v1.messagePublished"
# Which topic feeds which CloudEvent entry point (issues 3 and 4).
EVENT_TOPICS = {"handle_pubsub": "approvals", "sweep_expired": "sweep"}

# How the code reads the composite shapes (issues 2-4; vending/ledger.py lists
# issuances newest first): listings by created_at are DESCENDING, sweeps by
# due time ASCENDING. A shape in neither set needs ASCENDING.
DESCENDING_ORDERS = {("issuances", "created_at"), ("requests", "created_at")}
ASCENDING_SHAPES = {
    ("issuances", ("state",), "expire_time"),  # sweep: active issuances due
    ("issuances", ("state",), "created_at"),  # sweep: stale `issuing` reservations
    ("requests", ("state",), "expires_at"),  # sweep: requests past their window
}

PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
# Roles that let a principal act as any service account of the project.
IMPERSONATION_ROLES = {
    "roles/iam.serviceAccountTokenCreator",
    "roles/iam.serviceAccountOpenIdTokenCreator",
    "roles/iam.serviceAccountUser",
}
# The only project-level roles the runtime account may hold: Firestore has no
# per-database IAM resource (the binding carries a condition instead), and log
# writing is harmless.
RUNTIME_PROJECT_ROLES = {
    "roles/datastore.user",
    "roles/datastore.viewer",  # the chat apps read the access requests (chat.tf), conditioned to the database
    "roles/logging.logWriter",
    "roles/cloudtrace.agent",
}
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")
RESOURCE_LEVEL_IAM = re.compile(r"^google_(project|folder|organization)_iam_(member|binding|policy)$")
RUN_INVOKER_TYPES = {
    "google_cloud_run_service_iam_member",
    "google_cloud_run_v2_service_iam_member",
    "google_cloud_run_service_iam_binding",
    "google_cloud_run_v2_service_iam_binding",
}


# -- reading the code ---------------------------------------------------------------


def entry_points(main_py: Path) -> dict[str, str]:
    """Top-level functions decorated with functions_framework.http / .cloud_event."""
    tree = ast.parse(main_py.read_text(encoding="utf-8"), filename=str(main_py))
    found: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                module, kind = target.value.id, target.attr
            elif isinstance(target, ast.Name):  # from functions_framework import http
                module, kind = "functions_framework", target.id
            else:
                continue
            if module == "functions_framework" and kind in ("http", "cloud_event"):
                found[node.name] = kind
    return found


def config_env_vars(config_py: Path) -> set[str]:
    """Every VENDING_* name config.py reads: its ENV_VARS tuple and _env/_number/os.environ calls."""
    tree = ast.parse(config_py.read_text(encoding="utf-8"), filename=str(config_py))
    names: set[str] = set()

    def first_str(args: list[ast.expr]) -> str | None:
        if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            return args[0].value
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ENV_VARS" for t in node.targets):
            names.update(
                c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if fname in ("_env", "_number", "getenv", "get"):
                value = first_str(node.args)
                if value:
                    names.add(value)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            names.add(node.slice.value)
    return {n for n in names if re.fullmatch(r"VENDING_[A-Z0-9_]+", n)}


def load_indexes(indexes_py: Path = INDEXES_PY) -> ModuleType:
    """vending/store/indexes.py on its own (it imports nothing from the package)."""
    name = "_tf_test_indexes"
    spec = importlib.util.spec_from_file_location(name, indexes_py)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while building
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def collection_kinds(indexes: ModuleType) -> set[str]:
    """The kinds (= Firestore collections): the module's upper-case string constants."""
    return {v for k, v in vars(indexes).items() if k.isupper() and isinstance(v, str)}


# -- reading the Terraform ------------------------------------------------------------


class HclParseError(Exception):
    """A .tf file python-hcl2 cannot parse (names the file)."""


@dataclass
class Block:
    type: str
    name: str
    body: dict[str, Any]
    path: Path

    @property
    def address(self) -> str:
        return f"{self.type}.{self.name}"


@dataclass
class Terraform:
    root: Path
    resources: list[Block] = field(default_factory=list)
    data: list[Block] = field(default_factory=list)
    locals: dict[Path, dict[str, Any]] = field(default_factory=dict)
    variables: dict[Path, dict[str, Any]] = field(default_factory=dict)

    def of_type(self, *types: str) -> list[Block]:
        return [r for r in self.resources if r.type in types]

    def get(self, type_: str, name: str) -> Block | None:
        return next((r for r in self.resources if r.type == type_ and r.name == name), None)

    def local(self, block: Block, name: str) -> Any:
        return self.locals.get(block.path.parent, {}).get(name)

    def resolve(self, block: Block, value: Any) -> Any:
        """``${local.X}`` -> the local's value (same directory), recursively."""
        for _ in range(10):
            m = isinstance(value, str) and re.fullmatch(r"\$\{(?:toset\()?local\.(\w+)\)?\}", value)
            if not m:
                return value
            value = self.local(block, m.group(1))
        return value

    def expand(self, block: Block, value: Any) -> str:
        """The value as text with every ``local.X`` it mentions spelled out (for searching)."""
        text = json.dumps(value)
        for _ in range(5):
            refs = set(re.findall(r"local\.(\w+)", text))
            if not refs:
                break
            for ref in refs:
                text = text.replace(f"local.{ref}", json.dumps(self.local(block, ref)))
        return text


def _first(value: Any) -> dict[str, Any]:
    """A nested block as a dict (hcl2 gives a list of one)."""
    if isinstance(value, list):
        return value[0] if value else {}
    return value or {}


def load_terraform(root: Path = TERRAFORM_DIR) -> Terraform:
    """Parse every .tf file under root; HclParseError on the first that does not parse."""
    options = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    tf = Terraform(root)
    paths = sorted(root.rglob("*.tf"))
    if not paths:
        raise HclParseError(f"no .tf files under {root}")
    for path in paths:
        if ".terraform" in path.parts:
            continue
        try:
            with path.open(encoding="utf-8") as fh:
                doc = hcl2.load(fh, serialization_options=options)
        except Exception as exc:  # lark raises several unrelated exception types
            raise HclParseError(f"{path}: {type(exc).__name__}: {exc}") from exc
        for kind, target in (("resource", tf.resources), ("data", tf.data)):
            for entry in doc.get(kind, []):
                for type_, named in entry.items():
                    for name, body in named.items():
                        target.append(Block(type_, name, body, path))
        for entry in doc.get("locals", []):
            tf.locals.setdefault(path.parent, {}).update(entry)
        for entry in doc.get("variable", []):
            tf.variables.setdefault(path.parent, {}).update(entry)
    return tf


def _ref(value: Any, type_: str) -> str | None:
    """``${TYPE.NAME.attr}`` -> NAME."""
    m = isinstance(value, str) and re.search(rf"\b{re.escape(type_)}\.(\w+)\b", value)
    return m.group(1) if m else None


def _function_entry_point(fn: Block) -> str | None:
    return _first(fn.body.get("build_config")).get("entry_point")


# -- checks ---------------------------------------------------------------------------


def check_entry_points(tf: Terraform, eps: dict[str, str]) -> list[str]:
    """Every entry point deployed once, with the trigger its decorator implies."""
    problems: list[str] = []
    functions = tf.of_type("google_cloudfunctions2_function")
    by_entry: dict[str, list[Block]] = {}
    replicas: list[Block] = []
    for fn in functions:
        if fn.name.endswith("_regional") and "for_each" in fn.body:
            replicas.append(fn)  # vend_http's copies in extra regions (regions.tf, issue 17): checked below
            continue
        by_entry.setdefault(str(_function_entry_point(fn)), []).append(fn)
    for fn in replicas:
        entry = str(_function_entry_point(fn))
        if eps.get(entry) != "http" or fn.body.get("event_trigger"):
            problems.append(f"{fn.address}: only an HTTP entry point is replicated across regions, got {entry!r}")
        elif not _public_invokers_of(tf, fn):
            problems.append(f"{fn.address}: no roles/run.invoker for allUsers on {entry}'s regional services")

    for name, kind in sorted(eps.items()):
        deployed = by_entry.get(name, [])
        if len(deployed) != 1:
            problems.append(
                f"entry point {name} ({kind}) is deployed by {len(deployed)} google_cloudfunctions2_function, want 1"
            )
            continue
        fn = deployed[0]
        build = _first(fn.body.get("build_config"))
        service = _first(fn.body.get("service_config"))
        trigger = _first(fn.body.get("event_trigger"))
        if not str(build.get("runtime", "")).startswith("python3"):
            problems.append(f"{fn.address}: runtime {build.get('runtime')!r} is not Python 3")
        if not _ref(service.get("service_account_email"), "google_service_account"):
            problems.append(
                f"{fn.address}: service_config.service_account_email must be a dedicated google_service_account"
            )
        if kind == "http":
            if trigger:
                problems.append(f"{fn.address}: HTTP entry point {name} must not have an event_trigger")
            if service.get("ingress_settings") != "ALLOW_ALL":
                problems.append(f"{fn.address}: CI outside Google Cloud must reach {name}: ingress_settings ALLOW_ALL")
            if not _public_invokers_of(tf, fn):
                problems.append(f"{fn.address}: no roles/run.invoker for allUsers on {name}'s service")
            continue
        # CloudEvent entry points: a Pub/Sub trigger, internal ingress, invoked by the trigger account.
        if not trigger:
            problems.append(f"{fn.address}: CloudEvent entry point {name} has no event_trigger")
            continue
        if trigger.get("event_type") != PUBSUB_EVENT:
            problems.append(f"{fn.address}: event_type {trigger.get('event_type')!r}, want {PUBSUB_EVENT}")
        topic = _ref(trigger.get("pubsub_topic"), "google_pubsub_topic")
        if not topic:
            problems.append(f"{fn.address}: event_trigger.pubsub_topic must be a google_pubsub_topic of the module")
        elif name in EVENT_TOPICS and topic != EVENT_TOPICS[name]:
            problems.append(f"{fn.address}: {name} listens on topic {topic!r}, want {EVENT_TOPICS[name]!r}")
        if service.get("ingress_settings") != "ALLOW_INTERNAL_ONLY":
            problems.append(f"{fn.address}: event function {name} must be ALLOW_INTERNAL_ONLY")
        trigger_sa = _ref(trigger.get("service_account_email"), "google_service_account")
        runtime_sa = _ref(service.get("service_account_email"), "google_service_account")
        if not trigger_sa or trigger_sa == runtime_sa:
            problems.append(f"{fn.address}: event_trigger.service_account_email must be a dedicated trigger account")
        elif not any(
            _ref(b.body.get("service", b.body.get("name")), "google_cloudfunctions2_function") == fn.name
            and b.body.get("role") == "roles/run.invoker"
            and f"google_service_account.{trigger_sa}." in tf.expand(b, b.body.get("member", b.body.get("members")))
            for b in tf.of_type(*RUN_INVOKER_TYPES)
        ):
            problems.append(f"{fn.address}: trigger account {trigger_sa} has no roles/run.invoker on {name}'s service")
        if name == "handle_pubsub" and trigger.get("retry_policy") != "RETRY_POLICY_RETRY":
            problems.append(
                f"{fn.address}: handle_pubsub raises on transient failures: retry_policy RETRY_POLICY_RETRY"
            )
        if (
            name == "sweep_expired"
            and topic
            and not any(
                _ref(_first(job.body.get("pubsub_target")).get("topic_name"), "google_pubsub_topic") == topic
                for job in tf.of_type("google_cloud_scheduler_job")
            )
        ):
            problems.append(f"{fn.address}: no google_cloud_scheduler_job publishes to topic {topic!r}")

    for entry, fns in sorted(by_entry.items()):
        if entry not in eps:
            problems.append(f"{fns[0].address}: entry point {entry!r} does not exist in main.py")
    return problems


def _public_invokers_of(tf: Terraform, fn: Block) -> list[Block]:
    return [
        b
        for b in tf.of_type(*RUN_INVOKER_TYPES)
        if _ref(b.body.get("service", b.body.get("name")), "google_cloudfunctions2_function") == fn.name
        and b.body.get("role") == "roles/run.invoker"
        and "allUsers" in json.dumps(b.body.get("member", b.body.get("members")))
    ]


def check_environment(tf: Terraform, read: set[str], local_only: set[str] = LOCAL_ONLY_ENV_VARS) -> list[str]:
    """Each function sets exactly the VENDING_* variables config.py reads (less the local-only ones)."""
    problems: list[str] = []
    wanted = read - local_only
    shipped = _shipped_filenames(tf)
    for fn in tf.of_type("google_cloudfunctions2_function"):
        env = resolve_environment(tf, fn, _first(fn.body.get("service_config")).get("environment_variables"))
        if not isinstance(env, dict):
            problems.append(f"{fn.address}: environment_variables is not a map the test can read: {env!r}")
            continue
        env = {k: tf.resolve(fn, v) for k, v in env.items()}
        # Secrets (VENDING_SESSION_KEY) come from Secret Manager: secret_environment_variables blocks.
        secret_env = _first(fn.body.get("service_config")).get("secret_environment_variables") or []
        for block in secret_env if isinstance(secret_env, list) else [secret_env]:
            if isinstance(block, dict) and isinstance(block.get("key"), str):
                env[block["key"]] = "${secret:" + str(block.get("secret")) + "}"
        entry = _function_entry_point(fn)
        needed = set(wanted) - OPTIONAL_ENV_VARS
        if entry in EVENT_ENTRY_POINTS:
            # Least privilege (issue 17): an event function serves no console, so it gets no session key.
            needed.discard("VENDING_SESSION_KEY")
            if "VENDING_SESSION_KEY" in env:
                problems.append(f"{fn.address}: event function {entry} is given VENDING_SESSION_KEY (least privilege)")
            if env.get("VENDING_ENTRY_POINT") != entry:
                problems.append(f"{fn.address}: VENDING_ENTRY_POINT must be {entry!r} (no session key without it)")
        if "VENDING_ENTRY_POINT" in env and env["VENDING_ENTRY_POINT"] != entry:
            problems.append(
                f"{fn.address}: VENDING_ENTRY_POINT={env['VENDING_ENTRY_POINT']!r}, its entry point is {entry!r}"
            )
        for name in sorted(needed - env.keys()):
            problems.append(f"{fn.address}: {name} (read by vending/config.py) is not set")
        for name in sorted(k for k in env if k.startswith("VENDING_") and k not in wanted):
            why = "local-only" if name in local_only else "not read by vending/config.py"
            problems.append(f"{fn.address}: sets {name}, which is {why}")
        if env.get("VENDING_STORE", "firestore") != "firestore":
            problems.append(f"{fn.address}: VENDING_STORE must be 'firestore', got {env.get('VENDING_STORE')!r}")
        config = env.get("VENDING_CONFIG")
        if isinstance(config, str) and "${" not in config and config not in shipped:
            problems.append(
                f"{fn.address}: VENDING_CONFIG={config!r} is not a file of the source archive {sorted(shipped)}"
            )
    return problems


def resolve_environment(tf: Terraform, fn: Block, value: Any) -> Any:
    """``local.X``, or ``merge(local.X, {K = "V", ...})`` -> the map (literal values only)."""
    m = isinstance(value, str) and re.fullmatch(r"\$\{merge\(local\.(\w+), \{(.*)\}\)\}", value, re.S)
    if not m:
        return tf.resolve(fn, value)
    base = tf.resolve(fn, "${local." + m.group(1) + "}")
    if not isinstance(base, dict):
        return base
    extra = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', m.group(2)))
    return {**base, **extra}


def _shipped_filenames(tf: Terraform) -> set[str]:
    """Literal (or local) filenames of archive_file `source` blocks."""
    names: set[str] = set()
    for data in tf.data:
        if data.type != "archive_file":
            continue
        for src in data.body.get("source", []):
            value = tf.resolve(data, src.get("filename"))
            if isinstance(value, str):
                names.add(value)
    return names


def declared_indexes(tf: Terraform) -> list[tuple[str, list[tuple[str, str]]]]:
    """(collection, [(field, order), ...]) of every google_firestore_index, literal or for_each over a local."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for idx in tf.of_type("google_firestore_index"):
        if "for_each" in idx.body:
            entries = tf.resolve(idx, idx.body["for_each"])
            if isinstance(entries, dict):
                entries = list(entries.values())
            if not isinstance(entries, list):
                continue
            for entry in entries:
                out.append((entry["collection"], [(f[0], f[1]) for f in entry["fields"]]))
        else:
            fields = [(f["field_path"], f.get("order", "")) for f in idx.body.get("fields", [])]
            out.append((idx.body.get("collection", ""), fields))
    return out


def required_directions(kind: str, equality: tuple[str, ...], order: str) -> set[str]:
    wanted = set()
    if (kind, order) in DESCENDING_ORDERS:
        wanted.add("DESCENDING")
    if (kind, tuple(sorted(equality)), order) in ASCENDING_SHAPES or not wanted:
        wanted.add("ASCENDING")
    return wanted


def check_indexes(tf: Terraform, shapes: tuple[Any, ...]) -> list[str]:
    """Each composite IndexShape has a google_firestore_index in each direction the code uses."""
    problems: list[str] = []
    declared = declared_indexes(tf)
    for shape in shapes:
        if not shape.composite:
            continue
        for direction in sorted(required_directions(shape.kind, shape.equality, shape.order)):
            ok = False
            for collection, fields in declared:
                if fields and fields[-1][0] == "__name__":
                    fields = fields[:-1]
                if (
                    collection == shape.kind
                    and len(fields) == len(shape.equality) + 1
                    and {f for f, _ in fields[:-1]} == set(shape.equality)
                    and all(o == "ASCENDING" for _, o in fields[:-1])
                    and fields[-1] == (shape.order, direction)
                ):
                    ok = True
            if not ok:
                problems.append(
                    f"no google_firestore_index on {shape.kind}: {list(shape.equality)} ASCENDING then "
                    f"{shape.order} {direction}"
                )
    return problems


def check_ttl(tf: Terraform, kinds: set[str]) -> list[str]:
    """A TTL policy on purge_at for every collection."""
    covered: set[str] = set()
    for fld in tf.of_type("google_firestore_field"):
        if fld.body.get("field") != "purge_at" or "ttl_config" not in fld.body:
            continue
        collection = fld.body.get("collection")
        if "for_each" in fld.body and isinstance(collection, str) and collection in ("${each.key}", "${each.value}"):
            values = tf.resolve(fld, fld.body["for_each"])
            covered.update(values if isinstance(values, list) else [])
        elif isinstance(collection, str):
            covered.add(collection)
    return [f"no TTL policy (google_firestore_field ttl_config) on {k}.purge_at" for k in sorted(kinds - covered)]


def _runtime_accounts(tf: Terraform) -> set[str]:
    return {
        name
        for fn in tf.of_type("google_cloudfunctions2_function")
        if (name := _ref(_first(fn.body.get("service_config")).get("service_account_email"), "google_service_account"))
    }


def check_iam(tf: Terraform) -> list[str]:
    """No primitive role, no project-wide impersonation, runtime account least privilege, no stray public binding."""
    problems: list[str] = []
    runtime = _runtime_accounts(tf)

    def members_text(block: Block) -> str:
        return tf.expand(block, block.body.get("member", block.body.get("members", "")))

    def is_runtime(block: Block) -> bool:
        text = members_text(block)  # google_service_account.NAME.email, or NAME[0].email (a count)
        return any(re.search(rf"google_service_account\.{name}(\[\d+\])?\.", text) for name in runtime)

    for block in tf.resources:
        role = block.body.get("role")
        if RESOURCE_LEVEL_IAM.match(block.type):
            if role in PRIMITIVE_ROLES:
                problems.append(f"{block.address}: primitive role {role}")
            if role in IMPERSONATION_ROLES:
                problems.append(
                    f"{block.address}: {role} granted project-wide ({block.type}): grant it per service account"
                )
            if is_runtime(block) and role not in RUNTIME_PROJECT_ROLES:
                problems.append(f"{block.address}: runtime account holds project-level {role}")
            if block.type.endswith("_policy"):
                problems.append(f"{block.address}: authoritative {block.type} would wipe the project's other bindings")
        elif role in PRIMITIVE_ROLES:
            problems.append(f"{block.address}: primitive role {role}")
        if (
            block.type == "google_service_account_iam_member"
            and role == "roles/iam.serviceAccountTokenCreator"
            and is_runtime(block)
            and "for_each" not in block.body
        ):
            problems.append(
                f"{block.address}: the runtime account's Token Creator grants must be one per target (for_each)"
            )

    for data in tf.data:
        if data.type == "google_iam_policy":
            for binding in data.body.get("binding", []):
                if binding.get("role") in PRIMITIVE_ROLES | IMPERSONATION_ROLES:
                    problems.append(f"data.{data.address}: binding of {binding.get('role')}")

    http_functions = {
        fn.name for fn in tf.of_type("google_cloudfunctions2_function") if not fn.body.get("event_trigger")
    }
    for block in tf.resources + tf.data:
        text = json.dumps(block.body)
        if not any(m in text for m in PUBLIC_MEMBERS):
            continue
        allowed = (
            block.type in RUN_INVOKER_TYPES
            and block.body.get("role") == "roles/run.invoker"
            and "allAuthenticatedUsers" not in text
            and _ref(block.body.get("service", block.body.get("name")), "google_cloudfunctions2_function")
            in http_functions
        )
        if not allowed:
            problems.append(
                f"{block.address}: public principal (allUsers/allAuthenticatedUsers) outside the HTTP invoker"
            )
    return problems


# -- tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return load_terraform(TERRAFORM_DIR)


@pytest.fixture(scope="module")
def eps() -> dict[str, str]:
    assert MAIN_PY.exists(), "main.py is missing: the entry points are read from it"
    return entry_points(MAIN_PY)


def test_every_tf_file_parses(tf: Terraform) -> None:
    # GIVEN every .tf file under terraform/  WHEN parsed  THEN resources are found
    assert tf.of_type("google_cloudfunctions2_function")


def test_entry_points_are_read_from_main_py(eps: dict[str, str]) -> None:
    # GIVEN main.py  WHEN its decorators are read  THEN there is at least one of each trigger kind
    assert "http" in eps.values()
    assert "cloud_event" in eps.values()


def test_each_entry_point_is_deployed_with_its_trigger(tf: Terraform, eps: dict[str, str]) -> None:
    # GIVEN the entry points of main.py  WHEN matched to the functions  THEN each has the right trigger
    assert check_entry_points(tf, eps) == []


def test_functions_set_exactly_the_environment_config_reads(tf: Terraform) -> None:
    # GIVEN the VENDING_* variables vending/config.py reads
    read = config_env_vars(CONFIG_PY)
    assert {"VENDING_STORE", "VENDING_CONFIG"} <= read  # the parser sees config.py at all
    assert read >= LOCAL_ONLY_ENV_VARS, "a local-only variable is no longer read: update LOCAL_ONLY_ENV_VARS"
    # WHEN compared with every function's environment  THEN nothing is missing or extra
    assert check_environment(tf, read) == []


def test_every_composite_query_shape_has_its_index(tf: Terraform) -> None:
    # GIVEN the query shapes the stores accept
    indexes = load_indexes()
    assert any(s.composite for s in indexes.INDEXES)
    # WHEN compared with the google_firestore_index resources  THEN each composite shape is covered
    assert check_indexes(tf, indexes.INDEXES) == []


def test_indexes_only_name_known_collections(tf: Terraform) -> None:
    kinds = collection_kinds(load_indexes())
    assert {c for c, _ in declared_indexes(tf)} <= kinds


def test_every_collection_has_a_ttl_policy_on_purge_at(tf: Terraform) -> None:
    # GIVEN the kinds of vending/store/indexes.py  THEN each collection has TTL on purge_at
    kinds = collection_kinds(load_indexes())
    assert kinds
    assert check_ttl(tf, kinds) == []


def test_iam_is_least_privilege(tf: Terraform) -> None:
    # GIVEN every IAM resource  THEN no primitive role, no project-wide Token Creator, one public invoker
    assert check_iam(tf) == []


def test_the_runtime_token_creator_grants_are_derived_from_the_policy(tf: Terraform) -> None:
    # GIVEN the per-target grant  THEN it iterates over targets derived from the policy file
    grant = tf.get("google_service_account_iam_member", "runtime_token_creator")
    assert grant is not None
    assert grant.body["for_each"] == "${local.token_creator_targets}"
    targets = tf.local(grant, "token_creator_targets")
    assert "local.entitlements" in targets
    assert "yamldecode(file(var.config_path))" in tf.local(grant, "policy")


def test_the_source_archive_ships_the_code_but_not_the_tests() -> None:
    # GIVEN the module's source_include / source_exclude defaults, matched as Terraform's fileset()
    from tests.support.archive import archive_files

    shipped = set(archive_files(REPO))
    files = set()
    for dirpath, _dirnames, filenames in os.walk(REPO / "vending"):
        files.update((Path(dirpath) / f).relative_to(REPO).as_posix() for f in filenames)
    # THEN main.py, requirements.txt and every runtime module ship
    assert {"main.py", "requirements.txt"} <= shipped
    local_only = ("vending/local/", "vending/client/", "vending/cli.py", "vending/__main__.py")
    package = {f for f in files if f.endswith(".py") and "__pycache__" not in f and not f.startswith(local_only)}
    assert package and package <= shipped
    console = {f for f in files if f.startswith("vending/console/static/")}  # the web console (issue 15)
    assert {"vending/console/static/index.html", "vending/console/static/console.js"} <= console <= shipped
    # AND nothing from tests, venvs, benchmarks, the local stand-ins or the client (issue 17)
    assert not [f for f in shipped if f.startswith(("tests/", ".venv", "terraform/", "config/", "bench/", *local_only))]


def test_the_example_policy_is_valid_for_production() -> None:
    # GIVEN the example root's policy  WHEN loaded by the application's own validator
    from vending.config import load_policy

    policy = load_policy(EXAMPLE_POLICY)
    # THEN it pins GitHub Actions for CI and Google accounts for people, over https, no development issuer
    assert [i.issuer for i in policy.issuers] == [
        "https://token.actions.githubusercontent.com",
        "https://accounts.google.com",
    ]
    assert policy.issuers[0].jwks_uri == "https://token.actions.githubusercontent.com/.well-known/jwks"
    assert all(i.jwks_uri.startswith("https://") for i in policy.issuers)
    assert not any(i.development for i in policy.issuers)
    # AND it shows the production path (issue 17): approvals, break-glass, auditors, a bot, the kill switch
    approvals = [e.approval for e in policy.entitlements if e.approval]
    assert any(a.quorum >= 2 and not a.break_glass for a in approvals)
    assert any(a.break_glass for a in approvals)
    assert policy.auditors and policy.bots and policy.kill_switch
    assert [e for e in policy.entitlements if not e.requires_approval]  # CI without approval


def run_terraform_fmt(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "terraform-fmt.sh"), str(directory)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_terraform_fmt_check() -> None:
    # GIVEN terraform/  WHEN `terraform fmt -check -recursive` runs  THEN nothing needs formatting
    result = run_terraform_fmt(TERRAFORM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
