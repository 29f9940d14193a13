"""Kubernetes controllers reproduced exactly, over telemetry (no simulator imports).

* :mod:`envs.kube.config`: :class:`~envs.kube.config.HPAConfig`, an HPA object and the
  controller's flags.
* :mod:`envs.kube.hpa`: the HPA algorithm and :class:`~envs.kube.hpa.HPAController`.
* :mod:`envs.kube.tuned`: the tuned HPA's settings (``configs/policy/tuned_hpa.yaml``).
"""
