"""Staff passwords (argon2), bearer tokens (opaque, in Redis) and device secrets."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

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
    """A random bearer token."""
    return secrets.token_urlsafe(32)


def token_key(prefix: str, token: str) -> str:
    """Redis key of a token: only its digest is stored."""
    return f"{prefix}tok:{hashlib.sha256(token.encode()).hexdigest()}"


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
