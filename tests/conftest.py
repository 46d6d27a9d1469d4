"""Shared fixtures. Each real component has its own plugin module under tests/fixtures/."""

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis's too-slow health check times input generation: on a loaded 2-core machine (vLLM,
# training and other suites beside it) it failed a property test that is not about speed (35 s to
# draw one input, seen under load 15). Speed is measured in bench/, never asserted in tests.
settings.register_profile("ratchet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ratchet")

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.vllm",
    "tests.fixtures.server",
    "tests.fixtures.training",
    "tests.fixtures.families",
    "tests.fixtures.conformance",
]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules whose tests use the shared vLLM server run after those that don't: the server is
    spawned as soon as the tiny model is there (tests.fixtures.vllm) and starts (45-85 s) while
    they run. Whole modules move (in their order), so module fixtures are set up once.
    Tests marked `own_vllm` run a vLLM server of their own: beside the shared one only where two
    servers are the point (tests/test_multibase_vllm.py, first), otherwise after stopping it (two
    slow each other down on 2 cores). Running them last, in file order, keeps a second server away
    from the other tests and spares restarting the shared one (~50 s) afterwards. The modules of
    `vllm_replicas` (a second replica, spawned early beside the shared server) run first among
    the vLLM modules, so that second server is stopped as early as it can be. Among the others,
    the modules that need no tiny model go first, while it is built (~45 s, one core): the first
    module, which needed it, used to wait for it with the other core idle.

    Under pytest-xdist (`make test`: `-n 2 --dist loadgroup`), the vLLM modules are one group, run
    first, in the order above, by one worker (one shared server, its start-up the first thing that
    worker does), while the other worker runs the other modules, each module a group of its own
    (module fixtures set up once). Tests marked `both_cores` (the end-to-end loop, which keeps both
    cores busy by itself) run last among those of the shared server, by when the other worker has
    most likely finished, so that the two don't share the cores. Not shown by a measurement: the
    loop's own spread hides it (259-448 s across five runs, 433 s in a run where it ran alone,
    2026-12-03). In one process, about 45% of the 2 cores were idle through the
    modules that don't use vLLM (vmstat, 2026-12-03): they are I/O- and subprocess-bound."""
    from tests.fixtures.models import running_under_xdist  # a plugin module: imported once registered

    uses_vllm = {item.module.__name__ for item in items if "vllm_server" in item.fixturenames}
    uses_two = {item.module.__name__ for item in items if "vllm_replicas" in item.fixturenames}
    uses_model = {item.module.__name__ for item in items if "tiny_model_dir" in item.fixturenames}
    xdist = running_under_xdist()

    def in_vllm_group(item: pytest.Item) -> bool:
        return item.get_closest_marker("own_vllm") is not None or item.module.__name__ in uses_vllm

    def order(item: pytest.Item) -> tuple[bool, ...]:
        own = item.get_closest_marker("own_vllm") is not None
        not_first = item.module.__name__ not in uses_two
        needs_model = item.module.__name__ in uses_model
        if xdist:
            alone = item.get_closest_marker("both_cores") is not None
            return not in_vllm_group(item), own, alone, needs_model, not_first
        return own, not own and item.module.__name__ in uses_vllm, needs_model, not_first

    items.sort(key=order)
    if xdist:
        for item in items:
            item.add_marker(pytest.mark.xdist_group("vllm" if in_vllm_group(item) else item.module.__name__))
