"""Query profiles: which PromQL fills which Telemetry field.

A profile is a YAML file (``configs/queries/kube.yaml`` is the one shipped) validated by
:class:`QueryProfile`:

.. code-block:: yaml

    name: kube
    service_label: deployment     # the label naming the service in every per-service result
    variables:                    # ${name} in the queries; override per cluster
      namespace: opsworld
      window: 1m
    services:                     # Telemetry.SERVICE_FIELDS -> PromQL, one series per service
      rps: sum by (deployment) (rate(http_requests_total{namespace="${namespace}"}[${window}]))
    cluster:                      # Telemetry.CLUSTER_FIELDS -> PromQL, one scalar-like series
      nodes_ready: sum(kube_node_status_condition{condition="Ready",status="true"})
    freshness:                    # optional: the age of the newest sample, seconds
      query: time() - max(timestamp(kube_deployment_status_replicas_ready))
      max_age_s: 60

Variables are substituted with :meth:`string.Template.safe_substitute`, so PromQL's own
``$1`` in ``label_replace`` stays as it is. A field name that is not a Telemetry field, an
unknown key, or a query that names an undefined ``${variable}`` fails at load with the field
and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from envs.core.telemetry import CLUSTER_FIELDS, SERVICE_FIELDS

PROFILE_DIR = Path(__file__).resolve().parents[2] / "configs" / "queries"
"""Where named profiles live (``kube`` -> ``configs/queries/kube.yaml``)."""

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ProfileError(ValueError):
    """A query profile that cannot work; the message names the field and the fix."""


class Freshness(BaseModel):
    """How old the newest sample may be before the whole frame counts as missing."""

    model_config = ConfigDict(extra="forbid")
    query: str
    max_age_s: Annotated[float, Field(gt=0)] = 60.0


class QueryProfile(BaseModel):
    """A validated query profile; see the module docstring."""

    model_config = ConfigDict(extra="forbid")
    name: str
    service_label: str = "deployment"
    variables: dict[str, str] = Field(default_factory=dict)
    services: dict[str, str]
    cluster: dict[str, str] = Field(default_factory=dict)
    freshness: Freshness | None = None

    @field_validator("services")
    @classmethod
    def _service_fields(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v) - set(SERVICE_FIELDS))
        if bad:
            raise ValueError(
                f"unknown Telemetry service field(s) {bad}; use {list(SERVICE_FIELDS)}"
            )
        return v

    @field_validator("cluster")
    @classmethod
    def _cluster_fields(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v) - set(CLUSTER_FIELDS))
        if bad:
            raise ValueError(
                f"unknown Telemetry cluster field(s) {bad}; use {list(CLUSTER_FIELDS)}"
            )
        return v

    @model_validator(mode="after")
    def _variables_defined(self) -> QueryProfile:
        for where, query in self.raw_queries():
            missing = sorted(set(_VAR.findall(query)) - set(self.variables))
            if missing:
                raise ValueError(
                    f"{where} uses undefined variable(s) {missing}; add them under 'variables:'"
                )
        return self

    def raw_queries(self) -> list[tuple[str, str]]:
        """``(where, query)`` for every query before substitution."""
        out = [(f"services.{k}", q) for k, q in self.services.items()]
        out += [(f"cluster.{k}", q) for k, q in self.cluster.items()]
        if self.freshness is not None:
            out.append(("freshness.query", self.freshness.query))
        return out

    def with_variables(self, **values: str) -> QueryProfile:
        """A copy with some variables replaced (e.g. ``namespace``, ``window``)."""
        unknown = sorted(set(values) - set(self.variables))
        if unknown:
            raise ProfileError(
                f"profile {self.name!r} has no variable(s) {unknown}; "
                f"it has {sorted(self.variables)}"
            )
        return self.model_copy(update={"variables": {**self.variables, **values}})

    def render(self, query: str) -> str:
        """``query`` with the profile's variables substituted."""
        return Template(query).safe_substitute(self.variables)


def load_profile(spec: str | Path | dict[str, Any]) -> QueryProfile:
    """Load a profile by name (``kube``), by path, or from a mapping.

    Raises:
        ProfileError: Unknown name, unreadable file, bad YAML or a schema violation.
    """
    if isinstance(spec, dict):
        raw, source = spec, "<mapping>"
    else:
        path = Path(spec)
        if path.suffix not in (".yaml", ".yml") and not path.exists():
            path = PROFILE_DIR / f"{spec}.yaml"
            if not path.exists():
                names = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
                raise ProfileError(f"unknown query profile {spec!r}; one of {names} or a YAML path")
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ProfileError(f"cannot read query profile {path}: {err}") from None
        source = str(path)
    try:
        return QueryProfile.model_validate(raw)
    except ValidationError as err:
        raise ProfileError(f"bad query profile {source}: {err}") from None
