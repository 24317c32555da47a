"""Schemathesis over the running server's OpenAPI schema: no input makes it answer 5xx."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 15


@pytest.mark.parametrize("authorized", [False, True], ids=["as-generated", "with-valid-token"])
def test_no_input_makes_the_api_fail(server, authorized):
    """Generated requests as they come (mostly refused), then again with a valid token
    and a real session id, so bodies and parameters reach the handlers."""
    schema = schemathesis.openapi.from_url(f"{server.http}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/sessions", "/v1/sessions/{session_id}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case: schemathesis.Case) -> None:
            if authorized:
                session = httpx.post(f"{server.http}/v1/sessions", json={}, timeout=10).json()
                case.headers = {
                    **(case.headers or {}),
                    "Authorization": f"Bearer {session['token']}",
                }
                if case.path_parameters and "session_id" in case.path_parameters:
                    case.path_parameters["session_id"] = session["session_id"]
            # A turn runs the embedded model on two shared cores: allow what the server
            # allows itself (llm.timeout, 20 s) rather than a client's usual 10 s.
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        call()
