"""Fixtures for the statistics tests."""

import pytest
from stats_synthetic import make_moments, make_runs


@pytest.fixture
def runs():
    return make_runs()


@pytest.fixture
def moments(runs):
    return make_moments(runs)


def pytest_collection_modifyitems(config, items):
    """Keep `slow` simulations out of the default run: they run only when `-m` selects them."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow simulation: run with `pytest -m slow` (nox -s slow)")
    for item in items:
        if "slow" in item.keywords and "tests/stats" in str(item.path).replace("\\", "/"):
            item.add_marker(skip)
