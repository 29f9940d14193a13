"""opsworld environments: the simulator, scenarios and (later) Gymnasium wrappers."""
