"""Scenario schema, built-in scenarios and the loader."""
