"""Staff login and logout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select

from api.deps import CurrentStaff, RedisDep, SessionDep, SettingsDep, audit, oauth2_scheme
from api.errors import Unauthorized
from api.schemas import StaffOut, Token
from api.security import new_token, token_key, verify_password
from store.models import Staff

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/token", response_model=Token)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    session: SessionDep,
    r: RedisDep,
    settings: SettingsDep,
) -> Token:
    """Exchange username and password for a bearer token (OAuth2 password flow)."""
    staff = session.scalars(select(Staff).where(Staff.username == form.username)).first()
    if staff is None or not staff.active or not verify_password(staff.password_hash, form.password):
        audit(session, None, request, "auth.login_failed", form.username[:100])
        session.commit()
        raise Unauthorized("wrong username or password")
    token = new_token()
    r.set(token_key(settings.redis_prefix, token), staff.id, ex=settings.token_ttl_s)
    audit(session, None, request, "auth.login", f"staff:{staff.id}")
    session.commit()
    return Token(access_token=token, expires_in=settings.token_ttl_s)


@router.post("/logout", status_code=204)
def logout(
    ctx: CurrentStaff,
    token: Annotated[str, Depends(oauth2_scheme)],
    request: Request,
    session: SessionDep,
    r: RedisDep,
    settings: SettingsDep,
) -> None:
    """Revoke the presented token at once."""
    r.delete(token_key(settings.redis_prefix, token))
    audit(session, ctx, request, "auth.logout", f"staff:{ctx.id}")
    session.commit()


@router.get("/me", response_model=StaffOut)
def me(ctx: CurrentStaff) -> Staff:
    """The logged-in staff member."""
    return ctx.staff
