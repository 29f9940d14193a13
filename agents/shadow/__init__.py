"""Shadow mode: what a policy would have done next to a live cluster, and the report on it."""
