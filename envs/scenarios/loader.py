"""Load a scenario from a built-in name, a YAML file, a mapping or a Scenario, with overrides.

``load_scenario(spec, overrides)`` is the one way in::

    load_scenario("boutique")
    load_scenario("scenarios/black_friday.yaml", {"traffic.base_rps": 50})
    load_scenario({"base": "chain3", "traffic": {"noise": {"cv": 0.2}}})
    load_scenario(scenario, {"topology.services.frontend.replicas.initial": 3})

A YAML file (or mapping) may say ``base: <built-in name or path>`` and give only what differs:
mappings merge recursively, anything else (lists included) replaces. It may also carry an
``overrides:`` mapping of dotted keys, applied after the merge. A file that does not set
``name`` is named after the file. A relative ``traffic.replay.path`` in a file resolves against
the file's folder and is stored absolute.

Dotted override keys walk mappings by key and lists by integer index; a list of named items
(``topology.services``) may also be walked by name: ``topology.services.frontend.pod.concurrency``.
Overrides are applied to the raw dict before validation, so the schema checks them too.

Every failure raises :class:`ScenarioError` (a ``ValueError``) that says where and how to fix
it; validation errors name each field by its dotted path, e.g.
``scenario field 'topology.services.0.pod.concurrency' (service 'frontend'): Input should be
greater than or equal to 1, got 0``, and an unknown key lists the keys allowed there.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from envs.scenarios.builtin import BUILTIN_SCENARIOS, builtin_scenario
from envs.scenarios.schema import Scenario

LOADER_KEYS = ("base", "overrides")
"""Top-level keys the loader consumes before validation (they are not schema fields)."""


class ScenarioError(ValueError):
    """A scenario that cannot be loaded: what is wrong, where, and how to fix it.

    Attributes:
        problems: One line per problem (for a validation error, one per invalid field).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems if problems is not None else [message]


def load_scenario(
    spec: str | Path | Mapping[str, Any] | Scenario,
    overrides: Mapping[str, Any] | None = None,
) -> Scenario:
    """Build a validated :class:`Scenario`; see the module docstring.

    Args:
        spec: A built-in name (``"chain3"``, ``"boutique"``, ``"mesh40"``), a path to a YAML
            file (a ``Path``, or a string ending in ``.yaml``/``.yml``, containing a path
            separator, or naming an existing file), a raw mapping, or a Scenario.
        overrides: Dotted keys and their new values, applied to the raw dict before
            validation, e.g. ``{"traffic.base_rps": 50, "fidelity": "request"}``.

    Returns:
        The validated scenario (``spec`` itself for a Scenario without overrides).

    Raises:
        ScenarioError: Unknown built-in, missing or unreadable file, bad YAML, a ``base:``
            that cannot be resolved, a bad override path, or a schema violation.
    """
    if isinstance(spec, Scenario) and not overrides:
        return spec
    raw, source = load_raw(spec)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate(raw, source)


def load_raw(spec: str | Path | Mapping[str, Any] | Scenario) -> tuple[dict[str, Any], str]:
    """The raw (unvalidated) scenario dict of ``spec`` with ``base:`` and ``overrides:`` resolved.

    Args:
        spec: As for :func:`load_scenario`.

    Returns:
        ``(raw, source)``: a fresh dict, and a label for messages (``built-in 'chain3'``,
        ``file '/abs/x.yaml'`` or ``mapping``).

    Raises:
        ScenarioError: As for :func:`load_scenario`, validation aside.
    """
    if isinstance(spec, Scenario):
        return spec.model_dump(), f"scenario {spec.name!r}"
    if isinstance(spec, Mapping):
        raw = _resolve(copy.deepcopy(dict(spec)), Path.cwd(), "mapping", ())
        return raw, "mapping"
    if isinstance(spec, Path) or (isinstance(spec, str) and _looks_like_path(spec)):
        path = Path(spec).expanduser().resolve()
        return _read_file(path, ()), f"file {str(path)!r}"
    if isinstance(spec, str):
        return _builtin(spec), f"built-in {spec!r}"
    raise ScenarioError(
        f"cannot load a scenario from a {type(spec).__name__}; give a built-in name "
        f"{list(BUILTIN_SCENARIOS)}, a path to a YAML file, a mapping or a Scenario"
    )


def validate(raw: Mapping[str, Any], source: str = "mapping") -> Scenario:
    """Validate a raw dict; a pydantic error becomes a :class:`ScenarioError` naming fields.

    Args:
        raw: The scenario as plain data (no ``base:``/``overrides:`` keys left).
        source: Where it came from, for the message.

    Returns:
        The validated scenario.

    Raises:
        ScenarioError: One line per invalid field; the pydantic error is its ``__cause__``.
    """
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = format_validation_error(exc, raw)
        n = len(problems)
        head = f"invalid scenario ({source}): {n} problem{'s' if n != 1 else ''}"
        body = "\n".join(f"  - {p}" for p in problems)
        raise ScenarioError(f"{head}\n{body}", problems) from exc


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted-key ``overrides`` applied; see the module docstring.

    Missing mappings on the way are created (the schema then judges the keys). Values are
    deep-copied as given.

    Args:
        raw: A raw scenario dict.
        overrides: ``{"a.b.0.c": value, ...}``.

    Returns:
        The new raw dict.

    Raises:
        ScenarioError: For a path that does not fit the data (index out of range, unknown
            service name, walking into a plain value, an empty key).
    """
    out: dict[str, Any] = copy.deepcopy(dict(raw))
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or any(p == "" for p in key.split(".")):
            raise ScenarioError(
                f"override {key!r}: keys are dotted paths like 'traffic.base_rps' or "
                "'topology.services.frontend.replicas.initial'"
            )
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts):
            here = ".".join(parts[:depth]) or "the top level"
            last = depth == len(parts) - 1
            if isinstance(node, dict):
                if last:
                    node[part] = copy.deepcopy(value)
                elif not isinstance(node.get(part), (dict, list)):
                    if node.get(part) is not None:
                        raise ScenarioError(
                            f"override {key!r}: {'.'.join(parts[: depth + 1])!r} is a value "
                            f"({node[part]!r}), not a section; override it whole instead"
                        )
                    node[part] = {}
                    node = node[part]
                else:
                    node = node[part]
            elif isinstance(node, list):
                i = _list_index(node, part, key, here)
                if last:
                    node[i] = copy.deepcopy(value)
                else:
                    node = node[i]
            else:
                raise ScenarioError(
                    f"override {key!r}: {here!r} is a value ({node!r}), not a section; "
                    f"override {here!r} itself"
                )
    return out


def format_validation_error(
    exc: ValidationError, raw: Mapping[str, Any] | None = None
) -> list[str]:
    """One line per pydantic error: dotted field, the service it concerns, message, input.

    Model-level checks (``topology``'s graph checks, ``replicas``' ordering, ...) are
    attributed to the field their message starts with. An unknown key gets the keys allowed
    at its level and the closest match.

    Args:
        exc: The pydantic error from validating a :class:`Scenario`.
        raw: The raw dict that failed, to name the service behind an index.

    Returns:
        Lines like ``scenario field 'traffic.noise.cv': Input should be less than or equal
        to 2, got 5``.
    """
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        msg = str(err["msg"])
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            loc = _attribute(loc, msg)
        field = ".".join(str(p) for p in loc)
        if field:  # a model check that names its field already: say it once
            msg = msg.removeprefix(f"{field}: ")
        where = f"scenario field {field!r}" if field else "scenario"
        where += _subject(loc, raw)
        line = f"{where}: {msg}"
        value = err.get("input")
        if not isinstance(value, Mapping) or err["type"] == "extra_forbidden":
            line += f", got {_short(value)}"
        if err["type"] == "extra_forbidden":
            line += _allowed(loc)
        lines.append(line)
    return lines


# --------------------------------------------------------------------------------------------
# helpers


def _looks_like_path(spec: str, folder: Path | None = None) -> bool:
    """True for ``.yaml``/``.yml`` names, names with a separator, and existing files."""
    if spec.endswith((".yaml", ".yml")) or "/" in spec or os.sep in spec:
        return True
    if os.altsep is not None and os.altsep in spec:
        return True
    return ((folder or Path.cwd()) / spec).is_file()


def _builtin(name: str) -> dict[str, Any]:
    try:
        return builtin_scenario(name)
    except ValueError as exc:
        raise ScenarioError(f"{exc}; a file path must end in .yaml/.yml or contain '/'") from exc


def _read_file(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """Read a YAML scenario file, resolving its ``base:`` chain and relative replay path."""
    if path in seen:
        chain = " -> ".join(str(p) for p in seen)
        raise ScenarioError(f"scenario file {str(path)!r}: 'base:' loops ({chain} -> {path})")
    if not path.exists():
        raise ScenarioError(
            f"scenario file {str(path)!r} not found; check the path (relative paths are "
            f"relative to {str(Path.cwd())!r}) or use a built-in: {list(BUILTIN_SCENARIOS)}"
        )
    if not path.is_file():
        raise ScenarioError(f"scenario path {str(path)!r} is not a file; give a YAML file")
    try:
        with path.open(encoding="utf-8") as f:  # a stream, so YAML errors name the file
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"scenario file {str(path)!r} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(
            f"scenario file {str(path)!r} is not valid YAML; fix the syntax at the position "
            f"shown:\n{exc}"
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(
            f"scenario file {str(path)!r} must hold a mapping (keys like topology:, traffic:), "
            f"got a {type(data).__name__}"
        )
    _absolute_replay(data, path.parent)
    own_name = "name" in data
    raw = _resolve(data, path.parent, f"scenario file {str(path)!r}", (*seen, path))
    if not own_name:
        raw["name"] = path.stem
    return raw


def _resolve(
    raw: dict[str, Any], folder: Path, what: str, seen: tuple[Path, ...]
) -> dict[str, Any]:
    """Apply a raw dict's ``base:`` (merged under it) and ``overrides:`` (applied over it)."""
    base = raw.pop("base", None)
    over = raw.pop("overrides", None)
    if base is not None:
        if isinstance(base, str) and not _looks_like_path(base, folder):
            base_raw = _builtin(base)
        elif isinstance(base, str):
            base_raw = _read_file((folder / Path(base).expanduser()).resolve(), seen)
        else:
            raise ScenarioError(
                f"{what}: 'base' must be a built-in name {list(BUILTIN_SCENARIOS)} or a path "
                f"to a YAML file, got {base!r}"
            )
        raw = deep_merge(base_raw, raw)
    if over is not None:
        if not isinstance(over, Mapping):
            raise ScenarioError(
                f"{what}: 'overrides' must be a mapping of dotted keys to values, "
                f"e.g. {{'traffic.base_rps': 50}}; got {over!r}"
            )
        raw = apply_overrides(raw, over)
    return raw


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to the dotted keys that :func:`load_scenario` takes.

    ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``. Lists and empty mappings are leaves: they replace
    the scenario's value whole.
    """
    out: dict[str, Any] = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge recursively, everything else (lists too) replaces.

    Args:
        base: The defaults.
        top: What differs.

    Returns:
        A new dict; neither input is changed.
    """
    out = copy.deepcopy(dict(base))
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _absolute_replay(raw: dict[str, Any], folder: Path) -> None:
    traffic = raw.get("traffic")
    replay = traffic.get("replay") if isinstance(traffic, dict) else None
    path = replay.get("path") if isinstance(replay, dict) else None
    if isinstance(replay, dict) and isinstance(path, str) and path:
        p = Path(path).expanduser()
        if not p.is_absolute():
            replay["path"] = str((folder / p).resolve())


def _list_index(node: list[Any], part: str, key: str, here: str) -> int:
    if re.fullmatch(r"-?\d+", part):
        i = int(part)
        if -len(node) <= i < len(node):
            return i % len(node)
        raise ScenarioError(
            f"override {key!r}: index {i} is out of range for {here!r}, which has "
            f"{len(node)} item(s); use 0..{len(node) - 1}"
        )
    names = [str(x["name"]) for x in node if isinstance(x, Mapping) and "name" in x]
    for i, x in enumerate(node):
        if isinstance(x, Mapping) and x.get("name") == part:
            return i
    if not names:
        raise ScenarioError(
            f"override {key!r}: {here!r} is a list; address its items by index "
            f"0..{len(node) - 1}, not {part!r}"
        )
    hint = difflib.get_close_matches(part, names, 1)
    did = f" (did you mean {hint[0]!r}?)" if hint else ""
    what = "service" if here.endswith("services") else "item"
    raise ScenarioError(
        f"override {key!r}: no {what} named {part!r} in {here!r}{did}; the names are {names}, "
        f"or use an index 0..{len(node) - 1}"
    )


def _attribute(loc: list[Any], msg: str) -> list[Any]:
    """Extend a model-level error's location by the dotted field its message starts with."""
    m = re.match(r"([A-Za-z_][\w\-]*(?:\.[\w\-]+)*)", msg)
    if not m:
        return loc
    parts: list[Any] = [int(p) if p.isdigit() else p for p in m.group(1).split(".")]
    if loc and parts[0] == loc[-1]:
        return loc + parts[1:]
    model = _model_at(loc)
    if model is not None and parts[0] in model.model_fields:
        return loc + parts
    return loc


def _subject(loc: list[Any], raw: Mapping[str, Any] | None) -> str:
    """`` (service 'frontend')`` for a location inside ``topology.services.<i>`` (or edges)."""
    if raw is None or len(loc) < 3 or loc[0] != "topology" or not isinstance(loc[2], int):
        return ""
    topo = raw.get("topology")
    items = topo.get(loc[1]) if isinstance(topo, Mapping) else None
    if not isinstance(items, list) or not 0 <= loc[2] < len(items):
        return ""
    item = items[loc[2]]
    if not isinstance(item, Mapping):
        return ""
    if loc[1] == "services" and isinstance(item.get("name"), str):
        return f" (service {item['name']!r})"
    if loc[1] == "edges" and "src" in item and "dst" in item:
        return f" (edge {item['src']} -> {item['dst']})"
    return ""


def _allowed(loc: list[Any]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    keys = sorted(model.model_fields)
    level = ".".join(str(p) for p in loc[:-1])
    at = f"at {level!r}" if level else "at the top level"
    hint = difflib.get_close_matches(str(loc[-1]), keys, 1)
    did = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"; allowed keys {at}: {', '.join(keys)}{did}"


def _model_at(loc: list[Any]) -> type[BaseModel] | None:
    """The schema model class at a location of a Scenario, or None."""
    tp: Any = Scenario
    for part in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is list and get_args(tp):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict and len(get_args(tp)) == 2:
            tp = get_args(tp)[1]
        else:
            return None
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _strip(tp: Any) -> Any:
    """Remove ``Annotated`` and ``X | None`` wrappers from a type."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or origin is types.UnionType:
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
