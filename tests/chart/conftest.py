"""The chart tests' fixtures: the session's test cluster (for the install test)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # The cluster fixtures, unless a conftest closer to the root registered them already.
    if not config.pluginmanager.has_plugin("tests.cluster.fixtures"):
        config.pluginmanager.import_plugin("tests.cluster.fixtures")
