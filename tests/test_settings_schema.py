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


BROKER = {"mqtt_username": "ccs-ingest", "mqtt_password": "p" * 32, "mqtt_device_tls": True}


def test_development_accepts_the_placeholder_and_production_a_real_secret():
    assert Settings(environment=Environment.DEVELOPMENT).secret_key == DEV_SECRET
    real = "k" * 16 + "Zq3!x9Lm2Pw7Rt5Y"
    prod = Settings(environment=Environment.PRODUCTION, secret_key=real, metrics_token="m" * 32,
                    **BROKER)
    assert prod.secret_key == real
    # Production also refuses to expose metrics without a token.
    with pytest.raises(ValueError, match="CCS_METRICS_TOKEN"):
        Settings(environment=Environment.PRODUCTION, secret_key=real, **BROKER)


def test_production_refuses_an_anonymous_broker_and_phones_without_tls():
    real = "k" * 16 + "Zq3!x9Lm2Pw7Rt5Y"
    base = {"environment": Environment.PRODUCTION, "secret_key": real, "metrics_token": "m" * 32}
    with pytest.raises(ValueError, match="CCS_MQTT_USERNAME and CCS_MQTT_PASSWORD"):
        Settings(**base, mqtt_device_tls=True)
    with pytest.raises(ValueError, match="CCS_MQTT_USERNAME and CCS_MQTT_PASSWORD"):
        Settings(**base, mqtt_username="ccs-ingest", mqtt_device_tls=True)
    with pytest.raises(ValueError, match="CCS_MQTT_DEVICE_TLS=true"):
        Settings(**{**base, **BROKER, "mqtt_device_tls": False})
    assert Settings(**base, **BROKER).mqtt_device_tls
    # Development keeps the anonymous local broker of `make run`.
    assert Settings(environment=Environment.DEVELOPMENT).mqtt_username is None


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
