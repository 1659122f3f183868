"""Policy file errors a person can act on: ``FILE:LINE:COL: entitlement 'NAME', FIELD: PROBLEM``.

``config.load_policy`` validates the YAML with pydantic; pydantic reports a location as
``('entitlements', 0, 'max_lifetme')``. This module turns that into one line: the file, line
and column of the culprit (from the YAML node marks of ``yaml.compose``), the entitlement,
issuer or bot by its name rather than its index, and for an unknown key the closest field
name the model has at that place ("did you mean"). Further problems are counted on a second
line: the first one is usually the cause of the rest.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

# Lists whose items are named in messages by one of their fields: (label, field).
NAMED_ITEMS: dict[str, tuple[str, str]] = {
    "entitlements": ("entitlement", "name"),
    "issuers": ("issuer", "name"),
    "bots": ("bot", "service_account"),
}

Loc = tuple[int | str, ...]


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when the wheel has it: same nodes, same marks


def compose(text: str) -> yaml.Node | None:
    """The YAML node tree of ``text`` (every node carries its start mark)."""
    return yaml.compose(text, Loader=_Loader)


def parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree of ``text`` and the data ``yaml.safe_load`` gives, from one pass of the parser."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def yaml_error(path: str, exc: yaml.YAMLError) -> str:
    """``FILE:LINE:COL: problem`` for a YAML syntax error."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        return f"{path}:{mark.line + 1}:{mark.column + 1}: {problem}{context}"
    return f"{path}: invalid YAML: {exc}"


def duplicate_keys(path: str, node: yaml.Node | None) -> str | None:
    """The first key given twice in one mapping (YAML would silently keep the last one)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, yaml.Node] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    first = seen[key.value].start_mark.line + 1
                    return (
                        f"{path}:{key.start_mark.line + 1}:{key.start_mark.column + 1}: "
                        f"key {key.value!r} is given twice (first on line {first})"
                    )
                seen[key.value] = key
            found = duplicate_keys(path, value)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = duplicate_keys(path, item)
            if found:
                return found
    return None


def _child(node: yaml.Node | None, part: int | str) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(key node, value node) of ``part`` under ``node``; (None, None) when it is not there."""
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return None, node.value[part]
    return None, None


def _unwrap(annotation: Any) -> list[Any]:
    """The types a field annotation may hold: through Optional, unions, Annotated, tuples and dicts."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _unwrap(args[0])
    if origin in (Union, types.UnionType):
        return [t for a in args for t in _unwrap(a)]
    return [annotation]


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (None when it is not a model)."""
    current: list[Any] = [root]
    for part in loc:
        nxt: list[Any] = []
        for ann in current:
            for t in _unwrap(ann):
                origin, args = typing.get_origin(t), typing.get_args(t)
                if isinstance(part, int) and origin in (tuple, list) and args:
                    nxt.append(args[0])
                elif isinstance(part, str) and origin is dict and len(args) == 2:
                    nxt.append(args[1])
                elif isinstance(part, str) and isinstance(t, type) and issubclass(t, BaseModel):
                    if part in t.model_fields:
                        nxt.append(t.model_fields[part].annotation)
                    elif part == t.__name__:  # a union member's tag
                        nxt.append(t)
        if nxt:
            current = nxt
        # else: a union tag such as 'str'; stay where we are
    models = [t for ann in current for t in _unwrap(ann) if isinstance(t, type) and issubclass(t, BaseModel)]
    return models[0] if models else None


def _is_tag(part: int | str) -> bool:
    """A pydantic union tag (``str``, ``Pattern``, ``function-after[...]``), not a key of the file."""
    return isinstance(part, str) and (
        part in ("str", "int", "bool", "float", "none") or part[:1].isupper() or "[" in part
    )


def _where(loc: Loc, root: yaml.Node | None) -> str:
    """``entitlement 'demo-deploy', approval.quorum`` for ``('entitlements', 0, 'approval', 'quorum')``."""
    label, rest = "", ""
    node = root
    for i, part in enumerate(loc):
        if _is_tag(part):
            continue
        _, value = _child(node, part)
        named = NAMED_ITEMS.get(str(loc[0])) if i == 1 and isinstance(part, int) else None
        name_node = _child(value, named[1])[1] if named else None
        if named and isinstance(name_node, yaml.ScalarNode):
            label, rest = f"{named[0]} {name_node.value!r}", ""
        elif isinstance(part, int):
            rest += f"[{part}]"
        else:
            rest += f".{part}" if rest else str(part)
        node = value
    if label and rest:
        return f"{label}, {rest}"
    return label or rest


def _mark(loc: Loc, root: yaml.Node | None, *, key: bool) -> yaml.Mark | None:
    """The mark of the deepest node of ``loc`` found in the file (its key's mark with ``key``)."""
    node, mark = root, root.start_mark if root is not None else None
    for part in loc:
        key_node, value = _child(node, part)
        if value is None:
            continue  # a union tag, or a key that is missing (the mark stays on its parent)
        mark = key_node.start_mark if key and key_node is not None else value.start_mark
        node = value
    return mark


def _mentioned_key(loc: Loc, root: yaml.Node | None, message: str) -> yaml.Mark | None:
    """For a rule across fields (``max_lifetime 7200s is above 3600s``): the first key of that
    mapping the message names, so the position points at it rather than at the mapping."""
    node: yaml.Node | None = root
    for part in loc:
        _, value = _child(node, part)
        if value is not None:
            node = value
    if not isinstance(node, yaml.MappingNode):
        return None
    words = message.replace(".", " ").replace(":", " ").replace(",", " ").split()
    keys = {k.value: k.start_mark for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return next((keys[w] for w in words if w in keys), None)


def _message(err: dict[str, Any], root_model: type[BaseModel]) -> str:
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(root_model, loc[:-1])
        fields = list(model.model_fields) if model else []
        close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else (f"expected one of: {', '.join(fields)}" if fields else "")
        return f"unknown key {key!r}" + (f" ({hint})" if hint else "")
    if kind == "missing":
        return f"{loc[-1]!s}: required"
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return msg


def _is_union_tag(loc: Loc) -> bool:
    """The error belongs to the ``str`` branch of a union (``str | Pattern``): noise beside the others."""
    return any(part in ("str", "int", "bool", "float") for part in loc[1:])


def describe(path: str, exc: ValidationError, root: yaml.Node | None, root_model: type[BaseModel]) -> str:
    """One line for the most telling error (two when there are more): file, line, column, name, problem."""
    errors: list[dict[str, Any]] = [dict(e) for e in exc.errors()]
    locs: list[Loc] = [tuple(e["loc"]) for e in errors]
    # An error on a list or mapping whose item also failed is a knock-on of the item's: keep the item's.
    errors = [
        e
        for e, loc in zip(errors, locs, strict=True)
        if not any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs)
    ]
    # A required key missing beside an unknown one is most likely the same key, misspelt.
    typo_parents: set[Loc] = {tuple(e["loc"])[:-1] for e in errors if e["type"] == "extra_forbidden"}
    errors = [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"])[:-1] in typo_parents)]

    def rank(err: dict[str, Any]) -> tuple[int, int, int, int]:
        loc = tuple(err["loc"])
        mark = _mark(loc, root, key=err["type"] == "extra_forbidden")
        return (
            err["type"] != "extra_forbidden",
            _is_union_tag(loc),
            mark.line if mark else 0,
            mark.column if mark else 0,
        )

    errors.sort(key=rank)
    first = errors[0]
    loc: Loc = tuple(first["loc"])
    where_loc = loc[:-1] if first["type"] in ("extra_forbidden", "missing") else loc
    mark = _mark(loc, root, key=first["type"] == "extra_forbidden")
    where = _where(where_loc, root)
    message = _message(first, root_model)
    if first["type"] not in ("extra_forbidden", "missing"):
        mark = _mentioned_key(loc, root, message) or mark
    position = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None and loc else path
    line = f"{position}: {where}: {message}" if where else f"{position}: {message}"
    others = {_where(tuple(e["loc"]), root) for e in errors[1:] if not _is_union_tag(tuple(e["loc"]))}
    others.discard(_where(loc, root))
    if others:
        line += f"\n{path}: and {len(others)} more problem(s); the first is often the cause of the rest"
    return line


def field_names(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The field names the model has at ``loc`` (for tests and help texts)."""
    found = _model_at(model, tuple(loc))
    return list(found.model_fields) if found else []
