"""The ``opsworld`` console script: ``opsworld <command> [hydra overrides...]``.

Each command is a thin Hydra entry point in ``experiments/`` (``experiments/<command>.py``)
with a ``main()`` that registers its config schema and calls its ``@hydra.main`` function.
The dispatcher rewrites ``sys.argv`` so Hydra sees only the command's own arguments, and
adds three conveniences before Hydra parses them:

* a command may take one positional word (``opsworld bench sim`` means ``suite=sim``);
* an override of an unknown top-level key fails at once with exit code 2, the key, the
  closest known key and the list of options (Hydra's own message would suggest ``+key=``,
  which the schema would reject anyway);
* ``scenario_overrides.<path>=<value>`` is passed on as ``++scenario_overrides.<path>=...``
  so that any scenario field can be overridden without knowing Hydra's ``+`` syntax.

Adding a command is one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from agents.run_config import RunConfigError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
"""Absolute path of the repository's ``configs/`` folder (Hydra's ``config_path``)."""

PROG = "opsworld"


ConfigError = RunConfigError
"""A run configuration that cannot work; the message names the field and the fix (library
code raises it as :class:`agents.run_config.RunConfigError`, the same class)."""


SchemaT = TypeVar("SchemaT")


def structured_config(schema: type[SchemaT], cfg: Any, command: str) -> SchemaT:
    """Validate a composed config (or a plain mapping) against the dataclass ``schema``.

    Raises:
        ConfigError: ``bad <command> config: ...`` naming the unknown key or the bad value.
    """
    if isinstance(cfg, schema):
        return cfg
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad {command} config: {err}") from None
    assert isinstance(obj, schema)
    return obj


HELP_RESOLVER = "opsworld_choices"
"""OmegaConf resolver that help templates use to list a registry (``${opsworld_choices:envs}``)."""


def choices(registry: str) -> str:
    """The names of a registry joined by `` | `` (for help texts; imports only schemas).

    Args:
        registry: ``policies`` (:data:`agents.registry.POLICIES`), ``agents``
            (:data:`agents.trainers.TRAINERS`), ``envs`` or ``loggers`` (the run schema's
            enums, :mod:`agents.run_config`), ``bench`` (the benchmark suites).

    Raises:
        KeyError: For an unknown registry name.
    """
    if registry == "policies":
        from agents.registry import POLICIES

        names: list[str] = list(POLICIES)
    elif registry == "agents":
        from agents.trainers import TRAINERS

        names = [str(a) for a in TRAINERS]
    elif registry in ("envs", "loggers"):
        from agents.run_config import EnvName, LoggerKind

        names = [str(e) for e in (EnvName if registry == "envs" else LoggerKind)]
    elif registry == "bench":
        from agents.bench.config import BenchSuite

        names = [str(b) for b in BenchSuite]
    else:
        raise KeyError(f"no registry {registry!r}")
    return " | ".join(names)


PID_RESOLVER = "opsworld_pid"
"""OmegaConf resolver of this process's id: default ``out`` folders end in it, so two runs
started in the same second never share a folder (``outputs/<date>/<time>-<pid>``)."""


def register_help_resolver() -> None:
    """Register :data:`HELP_RESOLVER` and :data:`PID_RESOLVER` (idempotent).

    Entry points call it before Hydra composes their config.
    """
    import os

    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(HELP_RESOLVER):
        OmegaConf.register_new_resolver(HELP_RESOLVER, choices)
    if not OmegaConf.has_resolver(PID_RESOLVER):
        OmegaConf.register_new_resolver(PID_RESOLVER, lambda: str(os.getpid()), use_cache=True)


@dataclass(frozen=True)
class Command:
    """One ``opsworld`` sub-command.

    Attributes:
        module: Import path of the entry-point module; it defines ``main()`` (runs Hydra on
            ``sys.argv``) and ``SCHEMA`` (the dataclass of its config, for key checks).
        help: One line shown by ``opsworld --help``.
        positional: Config key that a leading bare word sets (``bench sim`` -> ``suite=sim``).
    """

    module: str
    help: str
    positional: str | None = None


COMMANDS: dict[str, Command] = {
    "simulate": Command(
        "experiments.simulate",
        "run one scenario under a policy; write telemetry, timeline.png, summary.json",
    ),
    "bench": Command(
        "experiments.bench",
        "benchmarks (sim, incidents, world_model); write experiments/results/<suite>_bench.*",
        positional="suite",
    ),
    "train": Command("experiments.train", "train an SB3 or Dreamer agent; write model, metrics"),
    "evaluate": Command("experiments.evaluate", "score policies on a suite; write results, Pareto"),
    "tune": Command(
        "experiments.tune", "hyperparameter study on Ray Tune (Optuna + ASHA); write best config"
    ),
    "fit-world-model": Command(
        "experiments.fit_world_model", "train a world model on a suite's topology; write checkpoint"
    ),
    "evaluate-forecast": Command(
        "experiments.evaluate_forecast", "score a world model's forecasts vs naive ones on a suite"
    ),
    "export": Command("experiments.export", "export a trained policy or baseline as a bundle"),
    "verify": Command("experiments.verify", "check a policy bundle (sums, specs)", "bundle"),
    "serve": Command("experiments.serve", "serve a policy bundle over HTTP (Open Inference v2)"),
    "exporter": Command("experiments.exporter", "serve a scenario live as a Prometheus target"),
    "shadow": Command("experiments.shadow", "shadow mode: recommend from Prometheus, never act"),
    "shadow-report": Command("experiments.shadow_report", "report on a shadow audit (HTML, MD)"),
    "fidelity": Command(
        "experiments.fidelity", "run a scenario at both fidelities; judge agreement"
    ),
}

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT)."""


def usage() -> str:
    """The top-level help text: usage and the commands with one line each."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {PROG} <command> [key=value ...]",
        "",
        "opsworld: a world model for cloud operations (simulator, RL, policy server).",
        "",
        "commands:",
        *(f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()),
        "",
        f"Run '{PROG} <command> --help' for a command's options. Options are Hydra overrides,",
        f"e.g. '{PROG} simulate scenario=chain3 fidelity=request horizon_s=600 out=runs/x'.",
    ]
    return "\n".join(lines)


def _top_key(override: str) -> str | None:
    """Top-level config key set by a plain ``key=value`` override, else None.

    Returns None for flags (``--cfg``), explicit Hydra appends/deletes (``+k=``, ``~k``),
    ``hydra.*`` settings and words without ``=``.
    """
    if override.startswith(("-", "+", "~")) or "=" not in override:
        return None
    key = override.split("=", 1)[0].split("@", 1)[0]
    top = key.split(".", 1)[0].split("/", 1)[0]
    return None if top == "hydra" else top


def check_overrides(command: str, args: Sequence[str], known: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for an override of a key that ``command`` does not have."""
    for arg in args:
        top = _top_key(arg)
        if top is None or top in known:
            continue
        close = difflib.get_close_matches(top, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown option '{top}' in '{arg}'; {hint}"
            f"'{PROG} {command}' takes: {', '.join(known)} "
            f"(see '{PROG} {command} --help')"
        )


def one_line(message: str) -> str:
    """``message`` on one line: its lines joined by ``" "``, each stripped (blank ones dropped)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(command: str, err: BaseException | str, status: int = 2) -> NoReturn:
    """Print ``opsworld <command>: error: <err>`` as one line on stderr and exit ``status``.

    Raises:
        SystemExit: Always, with ``status`` (2: a usage error, the default).
    """
    print(f"{PROG} {command}: error: {one_line(str(err))}", file=sys.stderr)
    raise SystemExit(status) from None


def job_out(cfg: Any) -> None:
    """In a Hydra multirun, point ``cfg.out`` at the job's own folder (``<out>/<job number>``).

    Every command's sweep dir is ``${out}`` with one sub-folder per job, so ``-m seed=0,1
    out=runs/s`` writes ``runs/s/0`` and ``runs/s/1`` instead of both jobs into ``runs/s``.
    A templated ``out`` (the default ``outputs/<date>/<time>-<pid>``) also becomes the folder
    Hydra made: resolving ``${now:...}`` again later would name a second folder.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    hc = HydraConfig.get()
    raw = OmegaConf.to_container(cfg, resolve=False).get("out")  # type: ignore[union-attr]
    templated = isinstance(raw, str) and "${" in raw  # e.g. the default outputs/<date>/<time>
    if hc.mode == RunMode.MULTIRUN or templated:
        with open_dict(cfg):
            cfg.out = hc.runtime.output_dir


def version() -> str:
    """The installed package's version (``pyproject.toml``), or ``unknown`` outside an install."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("opsworld")
    except PackageNotFoundError:
        return "unknown"


def check_out_arg(args: Sequence[str]) -> None:
    """Reject an ``out=`` override that no run can write to, before Hydra creates it.

    Hydra makes the run's folder (``hydra.run.dir: ${out}``) before the command starts, so a
    file or an unwritable place would end in its traceback; this creates the folder (as Hydra
    would) and says what is wrong in one line. Sweeps (``out`` with ``,``) and
    interpolations are left to the command.

    Raises:
        ConfigError: ``out`` is an existing file, or the folder cannot be created or written.
    """
    import os

    values = [a.split("=", 1)[1] for a in args if a.startswith("out=")]
    for value in values:
        if not value or "${" in value or "," in value:
            continue
        path = Path(value)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"out={value}: is a file, not a folder; give a folder path")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"out={value}: cannot create the folder ({err.strerror or err}); "
                "give a writable folder path"
            ) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(
                f"out={value}: cannot write in it (permission denied); give a writable folder path"
            )


def rewrite_args(cmd: Command, args: Sequence[str]) -> list[str]:
    """Map a leading positional word to ``<positional>=<word>`` and scenario overrides to ``++``."""
    out = list(args)
    if cmd.positional and out and "=" not in out[0] and not out[0].startswith("-"):
        out[0] = f"{cmd.positional}={out[0]}"
    return [f"++{a}" if a.startswith("scenario_overrides.") and "=" in a else a for a in out]


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``opsworld <command> [overrides...]`` to the command's Hydra entry point.

    Args:
        argv: Arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for a usage error (unknown command or option, or a
        bad value: one line on stderr naming the field and the fix), 130 after Ctrl-C (one
        line; the commands save what they have first); Hydra exits by itself (status 1) when
        composing the config fails.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version", "version"):
        print(f"{PROG} {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"{PROG}: unknown command '{name}'; commands: {', '.join(COMMANDS)}\n\n{usage()}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    cmd = COMMANDS[name]
    module = importlib.import_module(cmd.module)
    known = [f.name for f in dataclasses.fields(module.SCHEMA)]
    rest = rewrite_args(cmd, rest)
    try:
        check_overrides(name, rest, known)
        if "out" in known:
            check_out_arg(rest)
    except ConfigError as err:
        print(f"{PROG} {name}: error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    register_help_resolver()
    saved = sys.argv
    sys.argv = [f"{PROG} {name}", *rest]
    try:
        module.main()
    except KeyboardInterrupt as stop:  # a command that saved its work says so in the message
        said = one_line(str(stop)) or "stopped before anything was saved"
        print(f"{PROG} {name}: interrupted: {said}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
