"""Shared fixtures. Each real component has its own plugin module under tests/fixtures/."""

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


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    """Modules whose tests use the shared vLLM server run after those that don't: the server is
    spawned as soon as the tiny model is there (tests.fixtures.vllm) and starts (45-85 s) while
    they run. Whole modules move (in their order), so module fixtures are set up once.
    Tests marked `own_vllm` run a vLLM server of their own: beside the shared one only where two
    servers are the point (tests/test_multibase_vllm.py, first), otherwise after stopping it (two
    slow each other down on 2 cores). Running them last, in file order, keeps a second server away
    from the other tests and spares restarting the shared one (~50 s) afterwards. The modules of
    `vllm_replicas` (a second replica, spawned early beside the shared server) run first among
    the vLLM modules, so that second server is stopped as early as it can be."""
    uses_vllm = {item.module.__name__ for item in items if "vllm_server" in item.fixturenames}
    uses_two = {item.module.__name__ for item in items if "vllm_replicas" in item.fixturenames}

    def order(item) -> tuple[bool, bool, bool]:  # type: ignore[no-untyped-def]
        own = item.get_closest_marker("own_vllm") is not None
        return own, not own and item.module.__name__ in uses_vllm, item.module.__name__ not in uses_two

    items.sort(key=order)
