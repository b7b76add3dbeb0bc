"""The API fuzzed from its own OpenAPI schema (schemathesis) against the live stack: no
request, however odd, gets a 5xx.

Driven through hypothesis directly, one operation at a time (schemathesis' pytest plugin
does not load under this pytest version)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from harness.stack import Stack

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 40


def fuzz_operation(
    operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode, base_url: str
) -> int:
    """Runs the generated requests of one operation; returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        response = case.call(base_url=base_url, timeout=60)
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()
    return sent


def test_no_request_gets_a_server_error(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    # Valid requests (positive) and requests that break the schema on purpose (negative).
    sent = {
        f"{mode.value} {operation.label}": fuzz_operation(operation, mode, stack.api_url)
        for operation in operations
        for mode in schemathesis.GenerationMode
    }
    print(sent)
    assert sum(sent.values()) >= len(operations) * EXAMPLES_PER_OPERATION, sent
