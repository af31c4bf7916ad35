"""The public wrapper API (zbatch/wrapper.py): the tool's time limit from job_parameters."""

from __future__ import annotations

import pytest

from tests.wrappers.support import context
from zbatch.errors import WrapperError
from zbatch_wrappers.generic import GenericWrapper


def timeout(value: object) -> float | None:
    return GenericWrapper(context({"command": ["true"], "timeout": value})).timeout_s()


def test_absent_timeout_means_no_limit() -> None:
    assert GenericWrapper(context({"command": ["true"]})).timeout_s() is None


@pytest.mark.parametrize(("value", "seconds"), [(60, 60.0), (1.5, 1.5), ("3600", 3600.0)])
def test_timeout_in_seconds(value: object, seconds: float) -> None:
    assert timeout(value) == seconds


@pytest.mark.parametrize(
    "value", ["1h", "abc", "", True, 0, -5, 0.0, float("nan"), float("inf"), 10**9, [60], {"s": 1}]
)
def test_a_timeout_that_is_not_a_positive_number_is_an_error(value: object) -> None:
    """It used to mean "no limit" silently; now the step fails naming the parameter."""
    with pytest.raises(WrapperError, match=r"job_parameters\.timeout .*leave it out for no limit"):
        timeout(value)
