"""Fixtures shared by the integration tests of one service (the infrastructure ones are in tests/conftest.py)."""

from tests.integration.writer_support import writer_env_fixture as writer_env_fixture
