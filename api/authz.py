"""Who may call what: every endpoint declares its roles and scope here, and the OpenAPI shows it.

`access(...)` returns the keyword arguments of a route decorator: a dependency that refuses
(403) a staff member whose role is not listed, and an `x-access` entry in the operation's OpenAPI
(`{"roles": [...], "scope": ...}`) from which the authorization-matrix test is generated. A route
without it fails that test.

Scopes say what an allowed caller may reach:
- `jurisdiction`: resources of the caller's organisation subtree only (others answer 404);
- `self`: the caller's own account and settings;
- `city`: the whole system (city-level roles);
- `device`: a phone, authenticated as itself, acting only for itself;
- `public`: no credentials (login, health);
- `token`: a machine caller with a configured bearer token (Prometheus, the broker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import Depends

from api.deps import StaffContext, current_staff
from api.errors import Forbidden
from store.enums import Role

OFFICER, HEAD, DISTRICT, CITY, AUDITOR = (Role.OFFICER, Role.OFFICE_HEAD,
                                         Role.DISTRICT_SUPERVISOR, Role.CITY_ADMIN, Role.AUDITOR)
# Staff who supervise people and so may read their location data.
SUPERVISORS = frozenset({OFFICER, HEAD, DISTRICT, CITY})
# Heads and above: register receivers, manage accounts.
MANAGERS = frozenset({HEAD, DISTRICT, CITY})
EVERYONE = SUPERVISORS | {AUDITOR}
ROLE_REFUSED = "role_not_allowed"  # the error code of a refusal by this layer
SCOPES = {"jurisdiction", "self", "city", "device", "public", "token"}

# A role may hand out roles up to its own rank (auditor and city admin only by a city admin).
RANK = {OFFICER: 0, HEAD: 1, DISTRICT: 2, CITY: 3, AUDITOR: 3}


def _checker(roles: frozenset[Role]) -> Callable[..., StaffContext]:

    def role_check(ctx: StaffContext = Depends(current_staff)) -> StaffContext:
        require_role(ctx, roles)
        return ctx

    return role_check


def access(roles: Iterable[Role], scope: str = "jurisdiction", enforce: bool = True) -> dict[str, Any]:
    """Route keyword arguments for staff endpoints: role check + OpenAPI declaration.

    `enforce=False` only for an endpoint that authenticates differently (the live feed takes
    its token from the query string too) and calls `require_role` itself.
    """
    assert scope in SCOPES, scope
    rs = frozenset(roles)
    declared_ = {"openapi_extra": {"x-access": {"roles": sorted(r.value for r in rs),
                                                "scope": scope}}}
    return {**declared_, "dependencies": [Depends(_checker(rs))]} if enforce else declared_


def require_role(ctx: StaffContext, roles: Iterable[Role]) -> None:
    """The same check as `access`, for endpoints that resolve the staff member themselves."""
    allowed = {r.value for r in roles}
    if ctx.staff.role not in allowed:
        raise Forbidden(f"this needs one of the roles {', '.join(sorted(allowed))}; "
                        f"you are {ctx.staff.role}", ROLE_REFUSED)


def declared(scope: str, who: str) -> dict[str, Any]:
    """Route keyword arguments for non-staff endpoints (`device`, `public`, `token`): the check
    is the endpoint's own dependency (device credentials, a token); this only declares it."""
    assert scope in {"device", "public", "token"}, scope
    return {"openapi_extra": {"x-access": {"roles": [who], "scope": scope}}}
