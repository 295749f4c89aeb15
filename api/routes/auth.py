"""Staff sign-in (OAuth2 password flow), token refresh, logout, password change."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.authz import EVERYONE, access, declared
from api.deps import (
    CONSOLE_COOKIE,
    CurrentStaff,
    RedisDep,
    SessionDep,
    SettingsDep,
    audit,
    check_console_request,
    console_key,
    pg_now,
)
from api.errors import TooManyRequests, Unauthorized
from api.schemas import PasswordChangeIn, StaffOut, Token
from api.security import hash_password, issue_access_token, new_token, verify_password
from api.sessions import RefreshRefused, end_all_sessions, end_session, open_session, refresh_session
from store.models import Staff
from store.settings import Environment, Settings

router = APIRouter(prefix="/auth", tags=["auth"])

_DUMMY_HASH = hash_password("no account has this password")
WRONG = "wrong username or password, or the account is locked (try later or ask an administrator)"


def _safe(name: str) -> str:
    return name.replace("\x00", "\\0")[:100]


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/token", response_model=Token, **declared("public", "anyone"))
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    session: SessionDep,
    r: RedisDep,
    settings: SettingsDep,
) -> Token:
    """Exchange username and password for an access token and a refresh token.

    After `CCS_LOGIN_MAX_FAILURES` consecutive failures the account locks for
    `CCS_LOGIN_LOCKOUT_S`; too many failures from one address in a window are refused with 429.
    The answer never says whether the username exists.
    """
    _staff, sid, access_token, refresh = sign_in(form.username, form.password, request, session,
                                                 r, settings)
    return Token(access_token=access_token, expires_in=settings.access_token_ttl_s,
                 refresh_token=refresh, refresh_expires_in=settings.refresh_token_ttl_s)


@router.post("/console", response_model=StaffOut, **declared("public", "anyone"))
def console_sign_in(
    username: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1000)],
    request: Request,
    response: Response,
    session: SessionDep,
    r: RedisDep,
    settings: SettingsDep,
) -> Staff:
    """The console's sign-in: the same accounts, lockout and throttling as `/auth/token`, but the
    session is kept in an HttpOnly, SameSite=Strict cookie that page scripts cannot read."""
    check_console_request(request, settings)
    staff, sid, _access, _refresh = sign_in(username, password, request, session, r, settings)
    value = new_token()
    r.set(console_key(settings.redis_prefix, value), f"{staff.id}:{sid}",
          ex=settings.refresh_token_ttl_s)
    response.set_cookie(CONSOLE_COOKIE, value, max_age=settings.refresh_token_ttl_s, path="/",
                        httponly=True, samesite="strict",
                        secure=settings.environment == Environment.PRODUCTION)
    return staff


def sign_in(name: str, password: str, request: Request, session: Session, r: redis.Redis,
            settings: Settings) -> tuple[Staff, str, str, str]:
    """Check a password with lockout and throttling; (staff, session id, access, refresh)."""
    fails_key = f"{settings.redis_prefix}loginfail:{_address(request)}"
    if int(r.get(fails_key) or 0) >= settings.login_failures_per_address:
        audit(session, None, request, "auth.login_throttled", _safe(name))
        session.commit()
        wait = max(int(r.ttl(fails_key)), 1)
        raise TooManyRequests("too many failed sign-ins from this address; try again later",
                              "too_many_attempts", headers={"Retry-After": str(wait)},
                              extra={"retry_after_s": wait})
    # A name no account can have (NUL, oversized) is simply unknown; it is logged made safe.
    usable = "\x00" not in name and len(name) <= 200
    staff = session.scalars(select(Staff).where(Staff.username == name)
                            .with_for_update()).first() if usable else None
    now = pg_now(session)
    locked = staff is not None and staff.locked_until is not None and staff.locked_until > now
    # argon2 runs in every case, so the answer's timing does not tell a known username (or a
    # locked account) from an unknown one.
    password_ok = verify_password(staff.password_hash if staff is not None else _DUMMY_HASH,
                                  password)
    if staff is None or not staff.active or locked or not password_ok:
        pipe = r.pipeline()
        pipe.incr(fails_key)
        pipe.expire(fails_key, settings.login_failures_window_s)
        pipe.execute()
        detail: dict[str, Any] = {"locked": bool(locked)}
        if staff is not None and staff.active and not locked:
            staff.failed_logins += 1
            if staff.failed_logins >= settings.login_max_failures:
                staff.locked_until = now + timedelta(seconds=settings.login_lockout_s)
                staff.failed_logins = 0
                detail["now_locked_until"] = staff.locked_until.isoformat()
        audit(session, None, request, "auth.login_failed", _safe(name),
              actor_id=staff.id if staff is not None else None, **detail)
        session.commit()
        # The same answer whether the name exists or the account is locked; only the policy
        # (how many failures lock an account, for how long) is told, for the console to word.
        raise Unauthorized(WRONG, "sign_in_refused",
                           extra={"lockout_after": settings.login_max_failures,
                                  "lockout_s": settings.login_lockout_s})
    staff.failed_logins = 0
    staff.locked_until = None
    sid, access_token, refresh = open_session(r, settings, staff.id, staff.role)
    audit(session, None, request, "auth.login", f"staff:{staff.id}", actor_id=staff.id,
          session_id=sid[:8])
    session.commit()
    return staff, sid, access_token, refresh


@router.post("/refresh", response_model=Token, **declared("public", "refresh token holder"))
def refresh(
    refresh_token: Annotated[str, Form(min_length=10, max_length=200)],
    request: Request,
    session: SessionDep,
    r: RedisDep,
    settings: SettingsDep,
) -> Token:
    """A new access token and a new refresh token for a live session (the old one is spent;
    presenting a spent one again ends the session)."""
    try:
        staff_id, sid, new_refresh = refresh_session(r, settings, refresh_token)
    except RefreshRefused as e:
        audit(session, None, request, "auth.refresh_refused", "", reason=str(e))
        session.commit()
        raise Unauthorized(str(e)) from e
    staff = session.get(Staff, staff_id)
    if staff is None or not staff.active:
        end_session(r, settings, staff_id, sid)
        raise Unauthorized("account is disabled")
    return Token(access_token=issue_access_token(settings, staff.id, staff.role, sid),
                 expires_in=settings.access_token_ttl_s, refresh_token=new_refresh,
                 refresh_expires_in=settings.refresh_token_ttl_s)


@router.post("/logout", status_code=204, **access(EVERYONE, "self"))
def logout(ctx: CurrentStaff, request: Request, response: Response, session: SessionDep,
           r: RedisDep, settings: SettingsDep) -> None:
    """End this session at once: its access and refresh tokens stop working, its live feed ends."""
    end_session(r, settings, ctx.id, ctx.session_id)
    cookie = request.cookies.get(CONSOLE_COOKIE)
    if cookie:
        r.delete(console_key(settings.redis_prefix, cookie))
        response.delete_cookie(CONSOLE_COOKIE, path="/")
    audit(session, ctx, request, "auth.logout", f"staff:{ctx.id}")
    session.commit()


@router.get("/me", response_model=StaffOut, **access(EVERYONE, "self"))
def me(ctx: CurrentStaff) -> Staff:
    """The logged-in staff member."""
    return ctx.staff


@router.post("/password", status_code=204, **access(EVERYONE, "self"))
def change_password(body: PasswordChangeIn, ctx: CurrentStaff, request: Request,
                    session: SessionDep, r: RedisDep, settings: SettingsDep) -> None:
    """Change one's own password; every session of the account ends (sign in again)."""
    if not verify_password(ctx.staff.password_hash, body.current_password):
        audit(session, ctx, request, "auth.password_change_refused", f"staff:{ctx.id}")
        session.commit()
        raise Unauthorized("the current password is wrong", "wrong_password")
    ctx.staff.password_hash = hash_password(body.new_password)
    ctx.staff.password_changed_at = pg_now(session)
    audit(session, ctx, request, "auth.password_change", f"staff:{ctx.id}")
    session.commit()
    end_all_sessions(r, settings, ctx.id)
