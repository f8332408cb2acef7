"""The skip policy every test session runs under (pytest loads the conftest.py at the rootdir for every test
path below it, whichever session's environment runs it; it needs nothing but pytest).

With ``CI`` set (``true``, ``1`` or ``yes``), a skipped test fails the run: a skip there would hide a feature
that CI never tested. The one exception is a test for another platform, whose skip reason starts with
:data:`OTHER_PLATFORM` (``pytest.mark.skipif(sys.platform != "linux", reason="other platform: ...")``).
Outside CI a skip stays a skip, listed with its reason by ``-ra``. See docs/dev/testing.md.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

OTHER_PLATFORM = "other platform:"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _fail_a_skip_ci_does_not_allow(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not _in_ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if reason.startswith(OTHER_PLATFORM):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI, which allows no skip but one for another platform "
        f"(a reason starting with {OTHER_PLATFORM!r}; see docs/dev/testing.md): {reason}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    report = yield
    assert isinstance(report, pytest.TestReport)
    _fail_a_skip_ci_does_not_allow(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, object, object]:
    report = yield
    assert isinstance(report, pytest.CollectReport)
    _fail_a_skip_ci_does_not_allow(report)
    return report
