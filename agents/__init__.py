"""opsworld agents: baselines and learned policies behind one Policy protocol."""
