"""Test fixtures on the real services: PostgreSQL/PostGIS, Redis and Mosquitto.

The test database is built by the real migrations. A missing service fails loudly with the
command that starts it; nothing is mocked and nothing is skipped.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.deps import reset_redis
from store.db import migrate, reset_engine, session_factory
from store.settings import Environment, Settings, set_settings

ADMIN_DSN = os.environ.get("CCS_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# One database per checkout and worker: two clones testing on one machine never share one.
_CHECKOUT = hashlib.sha1(str(Path(__file__).resolve().parent.parent).encode()).hexdigest()[:8]
TEST_DB = f"ccs_test_{_CHECKOUT}_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
HOW_TO_START = (
    "start it with `make services` (deploy/ensure-services.sh), or on this machine: "
    "PostgreSQL `pg_ctlcluster --skip-systemctl-redirect 15 main start`, Redis `redis-server "
    "--daemonize yes --port 6379 --save '' --appendonly yes --appendfsync everysec "
    "--auto-aof-rewrite-percentage 400 --auto-aof-rewrite-min-size 1gb`, the "
    "project's Mosquitto `mosquitto -d -c deploy/mosquitto/mosquitto.conf`"
)
PASSWORD = "correct horse battery staple"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests (`@pytest.mark.long`: the fault-injection and failover runs, the longest
    browser and export tests) first, in file order; the others keep theirs.

    `make test` runs on two processes with pytest-xdist's `load` distribution, which hands the
    collection out in order, a first chunk of about a quarter of each process's share to each:
    the long tests all go to one process and run one after another from the start (the
    fault-injection runs never share the machine with each other), while the other works through
    the short ones, and neither is left alone with a minute-long test at the end. The order is
    the same in every process, as xdist requires."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def _require_port(name: str, port: int) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as e:
        pytest.fail(f"{name} is not reachable on 127.0.0.1:{port} ({e}); {HOW_TO_START}",
                    pytrace=False)


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a fresh, migrated test database and an isolated Redis prefix."""
    _require_port("PostgreSQL", 5432)
    _require_port("Redis", 6379)
    _require_port("Mosquitto (the project's, deploy/mosquitto/mosquitto.conf)", 1884)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEST_DB}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{TEST_DB}"
    s = Settings(
        environment=Environment.TEST,
        secret_key=secrets.token_urlsafe(40),
        database_url=url,
        redis_prefix=f"ccs-test-{os.getpid()}:",
        mqtt_client_id=f"ccs-test-ingest-{os.getpid()}",
        # Tests own a namespace on the shared broker: other traffic cannot reach their workers.
        mqtt_topic_prefix=f"ccs-test-{os.getpid()}/",
        batch_max_wait_ms=5,
        # The tests' webhook receivers listen on 127.0.0.1 (refused by default: SSRF guard).
        webhook_allow_private=True,
        positions_archive_dir=str(tmp_path_factory.mktemp("position-archives")),
    )
    set_settings(s)
    reset_engine()
    reset_redis()
    migrate(url)
    yield s
    set_settings(None)
    reset_engine()


@pytest.fixture()
def rds(settings: Settings) -> Iterator[redis.Redis]:
    """Redis client; this run's keys are removed after each test."""
    r = redis.Redis.from_url(settings.redis_url)
    yield r
    keys = list(r.scan_iter(match=settings.redis_prefix + "*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


TABLES = ("notification_attempts, notifications, staff_channels, webhook_endpoints, "
          "audit_log, device_messages, dead_letters, outbox, alert_events, alert_suspensions, "
          "alerts, positions, devices, permit_events, travel_permits, key_periods, "
          "supervisee_changes, roll_calls, sanctions, supervisee_zones, rule_profiles, "
          "supervisees, zones, staff, org_units, metric_counts, last_positions, "
          "position_archives, position_hours, report_deliveries, compliance_reports")


@pytest.fixture()
def db(settings: Settings, rds: redis.Redis) -> Iterator[psycopg.Connection]:
    """A raw connection to an emptied test database."""
    with psycopg.connect(settings.psycopg_dsn, autocommit=True) as conn:
        conn.execute("SET ccs.audit_maintenance = on")  # audit_log refuses TRUNCATE otherwise
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        conn.execute("RESET ccs.audit_maintenance")
        yield conn


@pytest.fixture()
def session(db: psycopg.Connection) -> Iterator[Session]:
    """An ORM session on the emptied test database."""
    with session_factory()() as s:
        yield s


@dataclass
class Org:
    """A small real organisation: Wuhan, two districts with an office each, real boundaries."""

    city_id: int
    district_ids: dict[str, int]  # adcode -> bureau
    office_ids: dict[str, int]
    zone_ids: dict[str, int]  # adcode -> home-area zone (GCJ-02 district boundary)
    staff: dict[str, int]  # username -> id
    supervisee_id: int  # in Jiang'an office, home area Jiang'an
    other_supervisee_id: int  # in Jianghan office


JIANGAN, JIANGHAN = "420102", "420103"


_HASH: list[str] = []


def _password_hash(hasher) -> str:  # type: ignore[no-untyped-def]
    if not _HASH:
        _HASH.append(hasher(PASSWORD))
    return _HASH[0]


@pytest.fixture()
def org(session: Session, rds: redis.Redis, settings: Settings) -> Org:
    """City bureau > two district bureaus > one office each; officer, supervisor, admin."""
    from functools import partial

    from api.security import hash_password
    from geofence.model import CRS
    from store.demo import create_staff, create_unit, create_zone, load_regions
    from store.enums import OrgKind, Role
    from store.models import Supervisee
    from store.registry import bump_config_version

    create_staff = partial(create_staff, password_hash=_password_hash(hash_password))
    fc = load_regions()
    feats = {f["properties"]["adcode"]: f for f in fc["features"]}
    city = create_unit(session, None, OrgKind.CITY_BUREAU, "武汉市司法局", adcode="420100")
    staff = {"admin": create_staff(session, city, "admin", Role.CITY_ADMIN, PASSWORD).id}
    districts, offices, zones, sups = {}, {}, {}, {}
    for code in (JIANGAN, JIANGHAN):
        f = feats[code]
        slug = f["properties"]["name_en"].lower().replace("'", "")
        d = create_unit(session, city, OrgKind.DISTRICT_BUREAU, f["properties"]["name"] + "司法局",
                        adcode=code)
        o = create_unit(session, d, OrgKind.JUDICIAL_OFFICE, f["properties"]["name"] + "司法所")
        z = create_zone(session, d, f["properties"]["name"], f["geometry"], CRS.GCJ02, adcode=code)
        districts[code], offices[code], zones[code] = d.id, o.id, z.id
        staff[f"{slug}-supervisor"] = create_staff(session, d, f"{slug}-supervisor",
                                                   Role.DISTRICT_SUPERVISOR, PASSWORD).id
        staff[f"{slug}-officer"] = create_staff(session, o, f"{slug}-officer", Role.OFFICER,
                                                PASSWORD).id
        sup = Supervisee(office_id=o.id, full_name=f"Test {slug}", case_number=f"T-{code}",
                         supervision_type="probation", home_zone_id=z.id)
        session.add(sup)
        session.flush()
        sups[code] = sup.id
    session.commit()
    bump_config_version(rds, settings.redis_prefix)
    return Org(city.id, districts, offices, zones, staff, sups[JIANGAN], sups[JIANGHAN])


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    """The real FastAPI app in-process."""
    from api.app import create_app

    with TestClient(create_app()) as c:
        yield c


def login(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Authorization header for a staff member."""
    r = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium under Playwright, one per test module (tests/browser.py). Not one per
    session: Playwright's synchronous API runs an event loop in the main thread while it is
    open, and later tests that call asyncio.run() would find it running."""
    from tests.browser import chromium

    with chromium() as b:
        yield b
