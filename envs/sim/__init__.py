"""The cluster simulator: control plane, fluid and request-level engines, telemetry."""
