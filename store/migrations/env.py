"""Alembic environment: the URL comes from the settings, or from config attribute `url`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from store.models import Base
from store.settings import get_settings

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Run migrations against a live connection."""
    url = config.attributes.get("url") or get_settings().database_url
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
