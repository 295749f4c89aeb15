"""Settings refuse placeholder secrets; the ORM mirrors the schema the migrations build."""

from __future__ import annotations

import psycopg
import pytest
from pydantic import ValidationError

from store.models import Base
from store.settings import DEV_SECRET, Environment, Settings


@pytest.mark.parametrize("secret", [DEV_SECRET, "changeme", "", "short-but-real"])
def test_production_refuses_placeholder_or_short_secrets(secret):
    with pytest.raises(ValidationError, match="CCS_SECRET_KEY"):
        Settings(environment=Environment.PRODUCTION, secret_key=secret)


def test_development_accepts_the_placeholder_and_production_a_real_secret():
    assert Settings(environment=Environment.DEVELOPMENT).secret_key == DEV_SECRET
    real = "k" * 16 + "Zq3!x9Lm2Pw7Rt5Y"
    prod = Settings(environment=Environment.PRODUCTION, secret_key=real, metrics_token="m" * 32)
    assert prod.secret_key == real
    # Production also refuses to expose metrics without a token.
    with pytest.raises(ValueError, match="CCS_METRICS_TOKEN"):
        Settings(environment=Environment.PRODUCTION, secret_key=real)


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("CCS_MQTT_PORT", "18830")
    monkeypatch.setenv("CCS_DATABASE_URL", "postgresql+psycopg://u@h:1/db")
    s = Settings()
    assert (s.mqtt_port, s.psycopg_dsn) == (18830, "postgresql://u@h:1/db")


def test_orm_models_match_the_migrated_schema(db: psycopg.Connection):
    for table in Base.metadata.sorted_tables:
        cols = {r[0] for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
            (table.name,))}
        assert cols == {c.name for c in table.columns}, table.name
