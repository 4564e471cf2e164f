"""Test-suite wiring: the real local Kubernetes cluster fixtures are available to every test."""

pytest_plugins = ["tests.cluster.fixtures"]
