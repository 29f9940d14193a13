"""Scenario suites: named lists of incidents to train on (``train``) and to judge by (``holdout``).

A suite is a YAML file (``configs/suites/<name>.yaml``)::

    name: train
    description: ...
    seed_base: 100          # entry seeds default to seed_base + position (after expansion)
    require:                # optional checks every entry must pass
      horizon_s: [1800, 3600]
      first_onset_s: [300, 600]
    defaults:               # dotted overrides applied to every entry, before its own
      horizon_s: 2400
    entries:
      - id: chain3-bad-deploy-api
        base: chain3        # a built-in (or a scenario YAML, relative to the suite file)
        description: a release of api fails 25% of requests
        overrides: {traffic.noise: {cv: 0.05, tau_s: 60}}
        faults:
          - {kind: bad_deploy, service: api, at_s: 420, error_rate: 0.25}
        seed: 7             # optional; unique within the suite
      - id: boutique-crash-${service}-${pods}
        base: boutique
        matrix:             # one entry per combination (cartesian product, in order)
          service: [cartservice, currencyservice]
          pods: [1, 2]
        faults:
          - {kind: pod_crash, service: "${service}", at_s: 480, pods: "${pods}"}

A suite may name splits of itself (``splits: {validation: [entry ids...]}``); the entries not
named in any split form the ``fit`` split. ``load_suite("train:validation")`` and
``load_suite("train:fit")`` load one split (the protocol in ``docs/protocol.md``: choose
checkpoints, hyperparameters and calibration on ``train:validation``, never on ``holdout``).
Split entries keep their seeds, so a split's runs are exactly the full suite's runs of those
entries.

Top-level keys starting with ``x-`` are ignored: a place for YAML anchors (``&name``) that
entries reuse as ``overrides: *name``.

``${var}`` is replaced in every string of the entry (id, base, description, override keys
and values, faults): a string that is exactly ``${var}`` takes the matrix value with its
type, anything else is formatted into text. Every matrix variable must appear in the id, so
ids stay unique. An entry with ``seed`` and a matrix gives combination ``k`` the seed
``seed + k``.

Each entry becomes a validated :class:`~envs.scenarios.schema.Scenario` named after its id,
with the entry's faults, and seed ``run_seed(0)``. A relative ``traffic.replay.path``
resolves against the suite file's folder. Errors raise :class:`SuiteError` naming the suite,
the entry id and the field.

Seeds. Entry seeds are unique within a suite, and the train and holdout suites use disjoint
seed ranges. Replicate ``k`` of an entry runs with seed ``SEED_STRIDE * entry.seed + k``
(:meth:`SuiteEntry.run_seed`), so the run seeds of two suites never meet either.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envs.scenarios.builtin import BUILTIN_SCENARIOS, builtin_scenario
from envs.scenarios.loader import ScenarioError, apply_overrides, load_raw, validate
from envs.scenarios.schema import Scenario

SUITE_DIR = Path(__file__).resolve().parents[2] / "configs" / "suites"
"""The repository's ``configs/suites/`` folder: where named suites live."""

SUITE_NAMES: tuple[str, ...] = ("train", "holdout")
"""Suites shipped with opsworld (``load_suite("train")``)."""

SEED_STRIDE = 1000
"""Run seed of replicate ``k`` (``0 <= k < SEED_STRIDE``): ``SEED_STRIDE * entry.seed + k``."""

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ID = r"^[a-z0-9][a-z0-9_.\-]*$"


class SuiteError(ValueError):
    """A suite that cannot be loaded: the suite, the entry id, the field, and the fix."""


@dataclass(frozen=True)
class SuiteEntry:
    """One incident of a suite.

    Attributes:
        id: Unique id within the suite (also the scenario's name).
        scenario: The validated scenario, faults included.
        seed: The entry's seed (unique within the suite).
        base: What it was built on (a built-in name or a path).
        params: The matrix values it was expanded with (empty without a matrix).
    """

    id: str
    scenario: Scenario
    seed: int
    base: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    def run_seed(self, replicate: int) -> int:
        """Seed of replicate ``replicate`` (0, 1, ...): ``SEED_STRIDE * seed + replicate``.

        Raises:
            ValueError: For a replicate outside ``[0, SEED_STRIDE)``.
        """
        if not 0 <= replicate < SEED_STRIDE:
            raise ValueError(f"replicate must be in [0, {SEED_STRIDE}), got {replicate}")
        return SEED_STRIDE * self.seed + replicate


@dataclass(frozen=True)
class Suite:
    """A named, ordered list of incidents.

    Attributes:
        name: Suite name.
        entries: The expanded entries, in file order.
        description: Free text.
        path: The YAML file it came from (None for a mapping).
    """

    name: str
    entries: tuple[SuiteEntry, ...]
    description: str = ""
    path: Path | None = None
    splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Entry ids of each named split, plus ``fit`` (the rest); empty when the file names none."""

    def split(self, name: str) -> Suite:
        """The entries of one split (``validation``, ``fit``), as a suite named ``<name>:<split>``.

        Raises:
            SuiteError: For a split the suite does not define (the message lists those it has).
        """
        if name not in self.splits:
            have = sorted(self.splits) or "none"
            raise SuiteError(
                f"suite {self.name!r} has no split {name!r}; its splits: {have} "
                "(declare them under 'splits:' in the suite file)"
            )
        entries = tuple(self.entry(i) for i in self.splits[name])
        return Suite(f"{self.name}:{name}", entries, self.description, self.path)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[SuiteEntry]:
        return iter(self.entries)

    @property
    def ids(self) -> list[str]:
        """Entry ids in order."""
        return [e.id for e in self.entries]

    def entry(self, entry_id: str) -> SuiteEntry:
        """The entry with this id.

        Raises:
            KeyError: For an unknown id (the message lists close matches).
        """
        for e in self.entries:
            if e.id == entry_id:
                return e
        close = [i for i in self.ids if entry_id in i][:5]
        raise KeyError(
            f"suite {self.name!r} has no entry {entry_id!r}; e.g. {close or self.ids[:5]}"
        )

    def subset(self, entry_ids: Sequence[str] | None = None, first: int | None = None) -> Suite:
        """A suite of some entries: those named (in the given order), or the first ``first``."""
        if entry_ids is not None:
            entries = tuple(self.entry(i) for i in entry_ids)
        else:
            entries = self.entries[:first]
        return Suite(self.name, entries, self.description, self.path)

    @property
    def topologies(self) -> list[str]:
        """The topology names its entries use, sorted."""
        return sorted({e.scenario.topology.name for e in self.entries})

    def on_topology(self, topology: str) -> Suite:
        """The entries whose scenario runs on ``topology`` (e.g. ``chain3``), in order.

        A trained policy fits one topology (its observation size depends on the services), so
        training and evaluating it both need this subset.

        Raises:
            SuiteError: When no entry uses ``topology`` (the message lists the ones used).
        """
        keep = tuple(e for e in self.entries if e.scenario.topology.name == topology)
        if not keep:
            raise SuiteError(
                f"no entry of suite {self.name!r} uses topology {topology!r}; "
                f"its topologies are {self.topologies}"
            )
        return Suite(self.name, keep, self.description, self.path)


# --------------------------------------------------------------------------------------------
# file format (validated with pydantic so that a wrong key names itself)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EntrySpec(_Spec):
    """One ``entries:`` item as written (before matrix expansion)."""

    id: Annotated[str, Field(min_length=1)]
    base: str
    description: str = ""
    overrides: dict[str, Any] = {}
    faults: Annotated[list[dict[str, Any]], Field(min_length=1)]
    seed: Annotated[int, Field(ge=0)] | None = None
    matrix: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}


class RequireSpec(_Spec):
    """Checks every entry of a suite must pass (``[low, high]``, inclusive)."""

    horizon_s: tuple[float, float] | None = None
    first_onset_s: tuple[float, float] | None = None
    """Range of the first fault's onset: the quiet period before the incident."""


class SuiteSpec(_Spec):
    """A suite file as written."""

    name: str
    description: str = ""
    seed_base: Annotated[int, Field(ge=0)] = 0
    require: RequireSpec = RequireSpec()
    defaults: dict[str, Any] = {}
    entries: Annotated[list[dict[str, Any]], Field(min_length=1)]
    splits: dict[str, list[str]] = {}
    """Named subsets by entry id (e.g. ``validation``); the rest is the ``fit`` split."""


FIT_SPLIT = "fit"
"""The split of the entries that no named split lists."""


# --------------------------------------------------------------------------------------------
# loading


def suite_path(name_or_path: str | Path) -> Path:
    """The YAML file of a suite: a shipped name (``train``) or a path.

    Raises:
        SuiteError: For a name that is not shipped and is not an existing file.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, str) and re.fullmatch(r"[A-Za-z0-9_\-]+", text):
        candidate = SUITE_DIR / f"{text}.yaml"
        if candidate.is_file():
            return candidate
        if not Path(text).is_file():
            shipped = sorted(p.stem for p in SUITE_DIR.glob("*.yaml")) or list(SUITE_NAMES)
            raise SuiteError(
                f"unknown suite {text!r}; the shipped suites are {shipped} "
                f"(in {SUITE_DIR}), or give a path to a suite YAML file"
            )
    path = Path(name_or_path).expanduser().resolve()
    if not path.is_file():
        raise SuiteError(f"suite file {str(path)!r} not found; give a path to a suite YAML file")
    return path


def load_suite(name_or_path: str | Path) -> Suite:
    """Load and validate a suite: ``train``, ``holdout``, or a path to a suite YAML file.

    Args:
        name_or_path: A shipped suite name (``configs/suites/<name>.yaml``) or a file path,
            optionally followed by ``:<split>`` (``train:validation``, ``train:fit``).

    Returns:
        The suite with every entry expanded and validated.

    Raises:
        SuiteError: Naming the suite, the entry id and the field for any problem, or an
            unknown split (the message lists the suite's splits).
    """
    text = str(name_or_path)
    if isinstance(name_or_path, str) and ":" in text and not Path(text).is_file():
        base, split = text.rsplit(":", 1)
        return load_suite(base).split(split)
    path = suite_path(name_or_path)
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite file {str(path)!r} is not valid YAML:\n{exc}") from exc
    if not isinstance(data, dict):
        raise SuiteError(f"suite file {str(path)!r} must hold a mapping with 'name' and 'entries'")
    return build_suite(data, path.parent, source=str(path))


def build_suite(
    data: Mapping[str, Any], folder: Path | None = None, source: str = "mapping"
) -> Suite:
    """Build a suite from its raw mapping (the parsed YAML).

    Args:
        data: The suite as plain data.
        folder: Folder that relative paths (``base:`` files, replay CSVs) resolve against;
            the current directory when None.
        source: Where it came from, for messages.

    Returns:
        The validated suite.

    Raises:
        SuiteError: For any problem, naming the entry id and field.
    """
    folder = folder if folder is not None else Path.cwd()
    body = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        spec = SuiteSpec.model_validate(body)
    except ValidationError as exc:
        raise SuiteError(f"suite {source}: {_pydantic_lines(exc)}") from exc
    where = f"suite {spec.name!r}"
    expanded: list[tuple[EntrySpec, dict[str, Any], int | None]] = []
    for i, raw in enumerate(spec.entries):
        rid = raw.get("id", f"#{i}") if isinstance(raw, dict) else f"#{i}"
        try:
            entry = EntrySpec.model_validate(raw)
        except ValidationError as exc:
            raise SuiteError(f"{where}, entry {rid!r}: {_pydantic_lines(exc)}") from exc
        expanded.extend(_expand(entry, where))
    entries: list[SuiteEntry] = []
    seen_ids: dict[str, int] = {}
    seen_seeds: dict[int, str] = {}
    for k, (entry, params, seed) in enumerate(expanded):
        here = f"{where}, entry {entry.id!r}"
        if not re.fullmatch(_ID, entry.id):
            raise SuiteError(
                f"{here}: field 'id': use lower-case letters, digits, '-', '_' and '.' "
                f"(pattern {_ID})"
            )
        if entry.id in seen_ids:
            raise SuiteError(f"{here}: field 'id': duplicate id (also entry #{seen_ids[entry.id]})")
        seen_ids[entry.id] = k
        seed = seed if seed is not None else spec.seed_base + k
        if seed in seen_seeds:
            raise SuiteError(
                f"{here}: field 'seed': seed {seed} is also used by entry {seen_seeds[seed]!r}; "
                "entry seeds must be unique within a suite"
            )
        seen_seeds[seed] = entry.id
        scenario = _scenario(entry, seed, spec.defaults, folder, here)
        _check(scenario, spec.require, here)
        entries.append(SuiteEntry(entry.id, scenario, seed, entry.base, params))
    splits = _splits(spec, list(seen_ids), where)
    return Suite(
        spec.name,
        tuple(entries),
        spec.description,
        Path(source) if source != "mapping" else None,
        splits,
    )


def _splits(spec: SuiteSpec, ids: list[str], where: str) -> dict[str, tuple[str, ...]]:
    """The named splits plus ``fit`` (the rest), checked: known ids, no entry in two splits."""
    owner: dict[str, str] = {}
    out: dict[str, tuple[str, ...]] = {}
    for name, listed in spec.splits.items():
        if name == FIT_SPLIT or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise SuiteError(
                f"{where}: field 'splits.{name}': a split name is lower-case letters, digits and "
                f"'_', and {FIT_SPLIT!r} is reserved for the entries no split lists"
            )
        for entry_id in listed:
            if entry_id not in ids:
                close = difflib.get_close_matches(entry_id, ids, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SuiteError(f"{where}: field 'splits.{name}': no entry {entry_id!r}{hint}")
            if entry_id in owner:
                raise SuiteError(
                    f"{where}: field 'splits.{name}': entry {entry_id!r} is also in split "
                    f"{owner[entry_id]!r}; splits must be disjoint"
                )
            owner[entry_id] = name
        out[name] = tuple(i for i in ids if owner.get(i) == name)
    if out:
        out[FIT_SPLIT] = tuple(i for i in ids if i not in owner)
    return out


def _expand(entry: EntrySpec, where: str) -> list[tuple[EntrySpec, dict[str, Any], int | None]]:
    """Matrix expansion: one ``(entry, params, seed)`` per combination."""
    if not entry.matrix:
        return [(entry, {}, entry.seed)]
    names = list(entry.matrix)
    missing = [n for n in names if "${" + n + "}" not in entry.id]
    if missing:
        raise SuiteError(
            f"{where}, entry {entry.id!r}: field 'id': matrix variable(s) {missing} do not "
            "appear in the id; add ${name} for each so the expanded ids are unique"
        )
    out = []
    body = entry.model_dump(exclude={"matrix", "seed"})
    for k, combo in enumerate(itertools.product(*(entry.matrix[n] for n in names))):
        params = dict(zip(names, combo, strict=True))
        filled = _substitute(body, params, f"{where}, entry {entry.id!r}")
        seed = entry.seed + k if entry.seed is not None else None
        out.append((EntrySpec.model_validate(filled), params, seed))
    return out


def _substitute(value: Any, params: Mapping[str, Any], here: str) -> Any:
    """Replace ``${var}`` in every string of ``value`` (keys included)."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            return copy.deepcopy(_lookup(whole.group(1), params, here))
        return _VAR.sub(lambda m: str(_lookup(m.group(1), params, here)), value)
    if isinstance(value, dict):
        return {
            _substitute(k, params, here): _substitute(v, params, here) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute(v, params, here) for v in value]
    return value


def _lookup(name: str, params: Mapping[str, Any], here: str) -> Any:
    if name not in params:
        raise SuiteError(
            f"{here}: '${{{name}}}' is not a matrix variable; the variables are {list(params)}"
        )
    return params[name]


def _scenario(
    entry: EntrySpec, seed: int, defaults: Mapping[str, Any], folder: Path, here: str
) -> Scenario:
    """Build and validate the scenario of one expanded entry."""
    try:
        if entry.base in BUILTIN_SCENARIOS:
            raw = builtin_scenario(entry.base)
        elif entry.base.endswith((".yaml", ".yml")) or "/" in entry.base:
            raw, _ = load_raw((folder / entry.base).resolve())
        else:
            raise SuiteError(
                f"{here}: field 'base': unknown built-in {entry.base!r}; one of "
                f"{list(BUILTIN_SCENARIOS)} or a path to a scenario YAML file"
            )
        if defaults:
            raw = apply_overrides(raw, defaults)
        if entry.overrides:
            raw = apply_overrides(raw, entry.overrides)
    except ScenarioError as exc:
        raise SuiteError(f"{here}: field 'overrides': {exc}") from exc
    raw["name"] = entry.id
    if entry.description:
        raw["description"] = entry.description
    raw["faults"] = copy.deepcopy(entry.faults)
    raw["seed"] = SEED_STRIDE * seed
    _absolute_replay(raw, folder, here)
    try:
        return validate(raw, f"suite entry {entry.id!r}")
    except ScenarioError as exc:
        lines = "; ".join(p.replace("scenario field ", "field ", 1) for p in exc.problems)
        raise SuiteError(f"{here}: {lines}") from exc


def _absolute_replay(raw: dict[str, Any], folder: Path, here: str) -> None:
    traffic = raw.get("traffic")
    replay = traffic.get("replay") if isinstance(traffic, dict) else None
    if isinstance(replay, dict) and isinstance(replay.get("path"), str):
        p = Path(replay["path"]).expanduser()
        if not p.is_absolute():
            replay["path"] = str((folder / p).resolve())
        if not Path(replay["path"]).is_file():
            raise SuiteError(
                f"{here}: field 'traffic.replay.path': no such file {replay['path']!r} "
                "(relative paths resolve against the suite file's folder)"
            )


def _check(scenario: Scenario, require: RequireSpec, here: str) -> None:
    """The suite's ``require:`` checks, with the entry and field in the message."""
    if require.horizon_s is not None:
        lo, hi = require.horizon_s
        if not lo <= scenario.horizon_s <= hi:
            raise SuiteError(
                f"{here}: field 'horizon_s': {scenario.horizon_s:g} s is outside this suite's "
                f"required range [{lo:g}, {hi:g}] s"
            )
    if require.first_onset_s is not None:
        lo, hi = require.first_onset_s
        i, f = min(enumerate(scenario.faults), key=lambda p: p[1].at_s)
        if not lo <= f.at_s <= hi:
            raise SuiteError(
                f"{here}: field 'faults.{i}.at_s': the first onset ({f.at_s:g} s) must come "
                f"after a quiet period, in [{lo:g}, {hi:g}] s for this suite"
            )


def _pydantic_lines(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"field {loc!r}: {err['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# describing suites (tests and docs compare train and holdout with these)


def traffic_features(scenario: Scenario) -> frozenset[str]:
    """Which traffic patterns a scenario uses.

    Returns:
        A subset of ``constant`` (none of the others), ``diurnal``, ``weekly`` (a weekly
        diurnal component), ``steps``, ``bursts``, ``trend``, ``noise``, ``replay``.
        Flash-crowd faults are faults, not traffic features.
    """
    tr = scenario.traffic
    out = set()
    if tr.diurnal is not None:
        out.add("diurnal")
        if tr.diurnal.weekly_amplitude > 0:
            out.add("weekly")
    if tr.steps:
        out.add("steps")
    if tr.bursts:
        out.add("bursts")
    if tr.trend is not None and tr.trend.per_hour != 0:
        out.add("trend")
    if tr.noise is not None and tr.noise.cv > 0:
        out.add("noise")
    if tr.replay is not None:
        out.add("replay")
    if not out - {"noise"}:
        out.add("constant")
    return frozenset(out)


def fault_signature(fault: Any) -> tuple[tuple[str, Any], ...]:
    """A fault's parameters without its timing (``at_s``, ``duration_s``), hashable."""
    d = fault.model_dump()
    return tuple(sorted((k, v) for k, v in d.items() if k not in ("at_s", "duration_s")))


def overlapping(scenario: Scenario) -> bool:
    """Whether two or more of the scenario's faults are active at the same time (by spec)."""
    spans = []
    for f in scenario.faults:
        end = f.at_s + f.duration_s if f.duration_s is not None else scenario.horizon_s
        spans.append((f.at_s, end))
    return any(a0 < b1 and b0 < a1 for (a0, a1), (b0, b1) in itertools.combinations(spans, 2))
