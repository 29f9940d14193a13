"""Hydra config groups (YAML) for the opsworld commands."""
