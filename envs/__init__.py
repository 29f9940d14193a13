"""opsworld environments: the simulator, scenarios and the Gymnasium wrappers.

The Gymnasium ids are registered by `import envs.gym` (or `gym.make("envs.gym:<id>")`),
not here: `import envs` stays free of Gymnasium and the simulator.
"""
