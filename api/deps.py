"""Dependencies: database session, Redis, the current staff member and their jurisdiction."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import Depends, Header, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from api.errors import Forbidden, NotFound, Unauthorized
from api.security import decode_access_token
from api.sessions import session_info
from store import redisconn
from store.db import session_factory
from store.models import AuditLog, Device, OrgUnit, Staff, Supervisee
from store.settings import Settings, get_settings

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)

# The console's sign-in lives in an HttpOnly, SameSite=Strict cookie that scripts cannot read;
# its value names the session in Redis (`console:{value}` → "staff_id:session_id").
CONSOLE_COOKIE = "ccs_console"
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "ccs-console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def console_key(prefix: str, value: str) -> str:
    return f"{prefix}console:{value}"


def check_console_request(request: Request, settings: Settings) -> None:
    """CSRF defence for cookie-authenticated requests that change something: they must carry
    the console's own header (a cross-site form cannot set it, and a cross-site script cannot
    without a CORS preflight, which no origin passes) and, when the browser names an origin,
    come from this one."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get(CSRF_HEADER) != CSRF_VALUE:
        raise Forbidden(f"a console request that changes something needs the header "
                        f"X-Requested-With: {CSRF_VALUE}")
    origin = request.headers.get("origin")
    if origin is not None and origin != same_origin(request):
        raise Forbidden("request from another origin refused")


def same_origin(request: Request) -> str:
    """This server's origin as the browser sees it (scheme://host[:port])."""
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"


def get_session() -> Iterator[Session]:
    """One session per request, committed by the endpoint that writes."""
    with session_factory()() as session:
        yield session


_redis: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """Process-wide Redis client."""
    global _redis
    if _redis is None:
        _redis = redisconn.sync_client(get_settings())
    return _redis


def reset_redis() -> None:
    """Forget the cached client (tests switch settings)."""
    global _redis
    _redis = None


SessionDep = Annotated[Session, Depends(get_session)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


@dataclass
class StaffContext:
    """The authenticated staff member and the organisation subtree they may see."""

    staff: Staff
    unit: OrgUnit
    unit_ids: frozenset[int]
    session_id: str = ""

    @property
    def id(self) -> int:
        return self.staff.id

    def can_see_unit(self, unit_id: int) -> bool:
        """True when the unit lies in this staff member's subtree."""
        return unit_id in self.unit_ids


def current_staff(
    request: Request,
    session: SessionDep,
    r: RedisDep,
    settings: SettingsDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> StaffContext:
    """Resolve the bearer token (integrations) or the console's session cookie to a staff
    member and their jurisdiction."""
    cookie = request.cookies.get(CONSOLE_COOKIE)
    if token:
        claims = decode_access_token(settings, token)
        if claims is None:
            raise Unauthorized("token is invalid or expired")
        sid, subject = claims["sid"], claims["sub"]
    elif cookie:
        check_console_request(request, settings)
        found = r.get(console_key(settings.redis_prefix, cookie)) if len(cookie) < 100 else None
        if found is None:
            raise Unauthorized("the console session has ended; sign in again")
        subject, _, sid = found.decode().partition(":")  # type: ignore[union-attr]
    else:
        raise Unauthorized("a bearer token is required (POST /api/v1/auth/token)")
    info = session_info(r, settings, sid)
    # The session must exist and belong to the token's subject (a token naming someone else
    # with one's own session id is refused).
    if info is None or str(info[0]) != subject:
        raise Unauthorized("the session has ended (logged out, or the account was changed)")
    staff = session.get(Staff, info[0])
    if staff is None or not staff.active:
        raise Unauthorized("account is disabled")
    if info[1] < int(staff.password_changed_at.timestamp()):
        raise Unauthorized("the password changed after this sign-in; sign in again")
    unit = session.get(OrgUnit, staff.org_unit_id)
    assert unit is not None
    ids = session.scalars(
        select(OrgUnit.id).where(OrgUnit.path.startswith(unit.path, autoescape=True))
    ).all()
    request.state.staff_id = staff.id
    return StaffContext(staff, unit, frozenset(ids), sid)


CurrentStaff = Annotated[StaffContext, Depends(current_staff)]


def supervisee_in_jurisdiction(
    session: Session, ctx: StaffContext, supervisee_id: int
) -> Supervisee:
    """The supervisee, if it exists and the staff member may see it (404 otherwise)."""
    sup = session.get(Supervisee, supervisee_id)
    # Out-of-jurisdiction looks exactly like absent: no probing for who exists.
    if sup is None or not ctx.can_see_unit(sup.office_id):
        raise NotFound(f"supervisee {supervisee_id} not found")
    return sup


def device_in_jurisdiction(session: Session, ctx: StaffContext, device_id: str) -> Device:
    """The device, if it exists and belongs to a supervisee the staff member may see (404)."""
    dev = session.get(Device, device_id)
    if dev is None:
        raise NotFound(f"device {device_id} not found")
    supervisee_in_jurisdiction(session, ctx, dev.supervisee_id)
    return dev


def unit_path_ids(unit: OrgUnit) -> list[int]:
    """The unit and every unit above it, from its materialised path ("/1/2/5/")."""
    return [int(p) for p in unit.path.strip("/").split("/") if p]


def require_unit(ctx: StaffContext, unit_id: int) -> None:
    """Refuse acting on an organisation unit outside the staff member's subtree."""
    if not ctx.can_see_unit(unit_id):
        raise Forbidden(f"organisation unit {unit_id} is outside your jurisdiction")


def audit(
    session: Session,
    ctx: StaffContext | None,
    request: Request,
    action: str,
    target: str,
    purpose: str = "",
    actor_id: int | None = None,
    **detail: Any,
) -> None:
    """Record a staff action or a read of location data (committed with the request).

    `actor_id` names the staff member when there is no signed-in context yet (a sign-in).
    """
    session.add(
        AuditLog(
            staff_id=ctx.id if ctx else actor_id,
            action=action,
            target=target,
            purpose=purpose,
            remote=request.client.host if request.client else None,
            detail=detail,
        )
    )


def commit_config_change(
    session: Session, ctx: StaffContext, request: Request, r: redis.Redis, settings: Settings,
    action: str, target: str, purpose: str = "", **detail: Any,
) -> None:
    """Audit, commit, and tell every worker that devices, people, zones or rules changed."""
    from store.registry import bump_config_version

    audit(session, ctx, request, action, target, purpose, **detail)
    session.commit()
    bump_config_version(r, settings.redis_prefix)


def pg_now(session: Session) -> Any:
    """Database time (one clock for every component)."""
    return session.execute(text("SELECT now()")).scalar_one()


def current_device(
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Device:
    """A phone, authenticated by HTTP Basic with its device id and secret."""
    from api.security import secret_matches

    if not authorization or not authorization.lower().startswith("basic "):
        raise Unauthorized("device credentials required (Basic device_id:secret)")
    try:
        user, _, password = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise Unauthorized("malformed Basic credentials") from e
    dev = session.get(Device, user)
    if dev is None or not dev.active or not secret_matches(password, dev.secret_hash):
        raise Unauthorized("unknown device or wrong secret")
    return dev


CurrentDevice = Annotated[Device, Depends(current_device)]
