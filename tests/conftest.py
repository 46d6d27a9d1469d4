"""Shared fixtures. Each real component has its own plugin module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.vllm",
    "tests.fixtures.server",
    "tests.fixtures.training",
    "tests.fixtures.families",
    "tests.fixtures.conformance",
]
