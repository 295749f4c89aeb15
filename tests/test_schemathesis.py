"""Schemathesis over the whole OpenAPI, in-process, as an authenticated city administrator.

Every operation gets generated requests, valid and invalid by the schema (ids out of int32 range,
bad geometry, wrong types ...); none may end in a server error. The administrator sees the whole
organisation, so the requests reach the handlers rather than stopping at a permission check.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from api.app import create_app
from tests.conftest import Org, login

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app()).exclude(
    # The alert feed is Server-Sent Events: a successful request never ends (it streams until
    # the client goes away), so a generated call would hang the test instead of answering.
    path="/api/v1/alerts/stream/live",
)


@pytest.fixture()
def admin(org: Org, client: TestClient) -> dict[str, str]:
    """The city administrator's bearer token, logged in once (password hashing is slow)."""
    return login(client, "admin")


@schema.parametrize()
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_server_error(case: schemathesis.Case, admin: dict[str, str], client: TestClient) -> None:
    # Logging out revokes the token it is called with: give it one of its own.
    headers = login(client, "admin") if case.path == "/api/v1/auth/logout" else dict(admin)
    # A generated Authorization header replaces ours: it is a header like any other then.
    headers.update(case.headers or {})
    case.call_and_validate(headers=headers, checks=[not_a_server_error])
