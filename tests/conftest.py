"""Shared test configuration.

Backend fixtures live in ``tests/fixtures/<backend>.py``; each provides a
``<backend>_store_factory`` fixture returning a callable that builds a new, unopened
QueueStore pointing at the same (real) backend, so tests can close one instance
and replay through a fresh one.

A missing backend is a skip with one line saying why; under CI (``CI=true``) every
skip is turned into a failure by ``pytest_runtest_makereport`` below.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

pytest_plugins = [
    "tests.fixtures.sqlite",
    "tests.fixtures.file",
    "tests.fixtures.postgres",
    "tests.fixtures.mysql",
    "tests.fixtures.memcached",
    "tests.fixtures.server",
]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    """In CI a skipped test is a failed test: nothing may silently not run."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI, which must run every test: {reason}"
