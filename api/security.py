"""Staff passwords (argon2), staff sessions (JWT access tokens, refresh tokens) and device secrets.

A staff login opens a session: a random session id kept in Redis for the refresh token's
lifetime. The access token is a short-lived JWT (HS256) naming the staff member and the session;
every request checks its signature and expiry and that the session still exists, so logout,
disabling an account or a replayed refresh token end every token of the session at once. The
refresh token is opaque and single-use: each refresh issues a new one, and presenting a used one
again ends the session (someone copied it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from store.settings import Settings

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "ccs"
JWT_AUDIENCE = "ccs-api"

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """argon2id hash of a staff password."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when the password matches the stored hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    """A random opaque token (refresh tokens, session ids)."""
    return secrets.token_urlsafe(32)


def _jwt_key(settings: Settings) -> bytes:
    # A key of its own, derived from the one secret, so a token key never doubles as another.
    return hmac.new(settings.secret_key.encode(), b"ccs staff access tokens v1", hashlib.sha256).digest()


def issue_access_token(settings: Settings, staff_id: int, role: str, session_id: str) -> str:
    """A signed, short-lived access token for one staff session."""
    now = int(time.time())
    claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": str(staff_id), "role": role,
              "sid": session_id, "iat": now, "exp": now + settings.access_token_ttl_s,
              "jti": secrets.token_hex(8)}
    return jwt.encode(claims, _jwt_key(settings), algorithm=JWT_ALGORITHM)


def decode_access_token(settings: Settings, token: str) -> dict[str, Any] | None:
    """The token's claims if its signature, issuer, audience and expiry hold; None otherwise."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, _jwt_key(settings), algorithms=[JWT_ALGORITHM], audience=JWT_AUDIENCE,
            issuer=JWT_ISSUER, options={"require": ["exp", "iat", "sub", "sid"]})
    except jwt.PyJWTError:
        return None
    return claims


def session_key(prefix: str, session_id: str) -> str:
    """Redis key of a live staff session (value: the staff id)."""
    return f"{prefix}sess:{session_id}"


def staff_sessions_key(prefix: str, staff_id: int) -> str:
    """Redis set of a staff member's session ids (to end them all at once)."""
    return f"{prefix}staff-sess:{staff_id}"


def refresh_key(prefix: str, token: str) -> str:
    """Redis key of a refresh token: only its digest is stored."""
    return f"{prefix}refresh:{hashlib.sha256(token.encode()).hexdigest()}"


def used_refresh_key(prefix: str, token: str) -> str:
    """Redis key remembering a refresh token already exchanged (replay detection)."""
    return f"{prefix}refresh-used:{hashlib.sha256(token.encode()).hexdigest()}"


def new_device_secret() -> str:
    """A 256-bit device secret, URL-safe (it travels in Traccar Client's URL path)."""
    return secrets.token_urlsafe(32)


def hash_device_secret(secret: str) -> str:
    """SHA-256 of a device secret.

    Device secrets are 256-bit random values, not human passwords: a fast hash is safe against
    guessing and lets every HTTP fix be authenticated without an argon2 round.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, secret_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_device_secret(secret), secret_hash)


def new_device_id() -> str:
    """A device identifier: short, unguessable enough, safe in MQTT topics and URLs."""
    return "d" + secrets.token_hex(8)
