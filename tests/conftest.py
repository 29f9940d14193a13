"""Shared fixtures: a real Prometheus for the live tests (tests/prometheus_fixture.py).

Also the hypothesis profile ``mutation`` (``--hypothesis-profile=mutation``, used by
``tests/mutation/run_mutation.py``): no shrinking and no deadline. Under a mutant a property
test only has to fail; shrinking the failing example to its simplest form (which can take
hundreds more calls) changes no verdict. And a deadline overrun on a loaded machine is no
verdict on the mutant either: without a deadline only a failed assertion kills.
"""

from hypothesis import Phase, settings
from prometheus_fixture import exporter, prometheus, scraped  # noqa: F401  (session fixtures)

settings.register_profile(
    "mutation",
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    deadline=None,
    print_blob=False,
)
