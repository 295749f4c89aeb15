"""Database engines and migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from store.settings import get_settings

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")

_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None


def get_engine() -> Engine:
    """The process-wide SQLAlchemy engine (pooled)."""
    global _engine, _sessionmaker
    if _engine is None:
        _engine = create_engine(get_settings().database_url, pool_pre_ping=True, pool_size=10)
        _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def session_factory() -> sessionmaker[Session]:
    """A sessionmaker bound to the process-wide engine."""
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker


def reset_engine() -> None:
    """Drop the cached engine (after settings change, e.g. in tests)."""
    global _engine, _sessionmaker
    if _engine is not None:
        _engine.dispose()
    _engine = None
    _sessionmaker = None


def connect_raw(autocommit: bool = False, **params: Any) -> psycopg.Connection:
    """A plain psycopg connection for the hot path (COPY, batched SQL) or a long read of its own
    (`params`: libpq connection parameters such as `application_name`)."""
    return psycopg.connect(get_settings().psycopg_dsn, autocommit=autocommit, **params)


def migrate(url: str | None = None) -> None:
    """Bring the database schema to the newest migration."""
    cfg = Config(str(ALEMBIC_INI))
    if url is not None:
        cfg.attributes["url"] = url
    command.upgrade(cfg, "head")


if __name__ == "__main__":
    migrate()
    print("database migrated to head")
