"""Hydra entry points and committed results."""
