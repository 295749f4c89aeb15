"""One settings class for service URLs, secrets and thresholds (env prefix CCS_)."""

from __future__ import annotations

import json
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev-secret-change-me"}
DEV_SECRET = "dev-secret-change-me"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


class Environment(StrEnum):
    """Where the system runs; only development accepts placeholder secrets."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class Settings(BaseSettings):
    """Everything configurable, read from CCS_* environment variables or a .env file."""

    model_config = SettingsConfigDict(env_prefix="CCS_", env_file=".env", extra="ignore")

    environment: Environment = Environment.DEVELOPMENT
    secret_key: str = DEV_SECRET

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/ccs"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "ccs:"
    # Redis Sentinel (docs/high-availability.md): "host:port,host:port,..." of the sentinels;
    # empty: CCS_REDIS_URL is the one Redis, as without Sentinel. With sentinels every client
    # connects to the master they name CCS_REDIS_SENTINEL_MASTER (store/redisconn.py); the URL
    # then gives only the database number, credentials and TLS of the data nodes.
    redis_sentinels: str = ""
    redis_sentinel_master: Annotated[str, Field(min_length=1)] = "ccs"
    redis_sentinel_password: str | None = None  # the sentinels' own requirepass, if any
    # Socket timeouts of sentinel-managed connections (a master host that vanished must not
    # hang a worker); a client that sets its own keeps it.
    redis_sentinel_socket_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    # After relaying alert events to the live feed, wait until this many replicas have them
    # (Redis WAIT, at most redis_wait_timeout_ms): a failover then cannot drop an event the
    # outbox already marked published. 0: no waiting (a single Redis has no replica).
    redis_wait_replicas: Annotated[int, Field(ge=0)] = 0
    redis_wait_timeout_ms: Annotated[int, Field(ge=1)] = 500
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1884  # the project's own Mosquitto (deploy/mosquitto/mosquitto.conf)
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_client_id: str = "ccs-ingest"
    mqtt_session_expiry_s: int = 7 * 86400
    # Namespace on a shared broker (e.g. "ccs/"): every topic this system uses starts with it.
    mqtt_topic_prefix: str = ""
    # The alert worker's command publisher may use its own broker account (write-only to the
    # command topics); unset, it uses CCS_MQTT_USERNAME/CCS_MQTT_PASSWORD.
    mqtt_commands_username: str | None = None
    mqtt_commands_password: str | None = None
    # Secured broker (deploy/mosquitto/secure.conf, docs/broker-security.md): the port phones are
    # told at re-enrolment (its device listener; unset: mqtt_port), the directory where
    # store/broker_sync.py writes the password and ACL files (empty: no sync), the broker's pid
    # file (it is sent SIGHUP after each change) and the period of the full safety resync.
    mqtt_device_port: int | None = None
    # The OwnTracks enrolment link (QR code in the console) configures the app for MQTT (the
    # device listener above; tls when that listener has TLS) or for HTTP (CCS_PUBLIC_BASE_URL).
    owntracks_mode: Literal["mqtt", "http"] = "mqtt"
    mqtt_device_tls: bool = False
    mqtt_auth_dir: str = ""
    mqtt_broker_pid_file: str = ""
    broker_resync_s: float = 300.0
    # Shared secret EMQX presents (Authorization: Bearer ...) on the HTTP auth/ACL hooks
    # (api/routes/broker.py); empty: the hooks are disabled.
    broker_hook_secret: str = ""

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"
    # The console's map: without a tile URL it draws the shipped district boundaries on a plain
    # background (a closed network has no tile server). With one, e.g. an intranet AMap or
    # Tianditu mirror "https://tiles.example/{z}/{x}/{y}.png", say which system its tiles use:
    # gcj02 (AMap, Tencent) or wgs84 (Tianditu/CGCS2000, OSM); overlays are converted to match.
    console_tile_url: str = ""
    console_tile_crs: Literal["wgs84", "gcj02"] = "wgs84"
    # What `{s}` in the tile URL stands for, one character each (Leaflet's rule): "abc" for OSM,
    # "1234" for AMap's webrd0{s}.is.autonavi.com, "01234567" for Tianditu's t{s}.tianditu.gov.cn.
    console_tile_subdomains: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,16}$")] = "abc"
    console_tile_attribution: str = ""
    # Staff sessions: short-lived JWT access tokens, refresh tokens for a working shift, and
    # a server-side session record that logout, disabling an account or a refresh-token
    # replay deletes at once.
    access_token_ttl_s: int = 15 * 60
    refresh_token_ttl_s: int = 12 * 3600
    login_max_failures: int = 5  # consecutive failures before the account locks
    login_lockout_s: int = 15 * 60
    login_failures_per_address: int = 30  # failed logins from one address per window → 429
    login_failures_window_s: int = 15 * 60
    # Bearer token for Prometheus scrapes of /api/v1/metrics; unset: metrics need no token
    # (refused outside development).
    metrics_token: str | None = None

    # Ingest hot path
    batch_max_messages: int = 2000
    batch_max_wait_ms: int = 20
    max_payload_bytes: int = 64 * 1024
    max_fixes_per_message: int = 1000
    max_future_s: int = 600
    max_age_s: int = 30 * 86400
    # Concurrent writers (store/state.py): a device's owner lease, how long a writer waits for
    # devices another one holds before the batch counts as a transient failure, and how far
    # back a state Redis lost is folded again from positions.
    device_owner_ttl_s: float = 10.0
    device_owner_wait_s: float = 15.0
    state_rebuild_window_s: float = 2 * 86400.0
    # ...and at most this many of its newest fixes: enough for every rule's memory at real
    # reporting intervals (the frozen-location rule needs 12 fixes over 2 h: 100 fixes cover
    # it for phones reporting every 72 s or less often), cheap enough that folding every
    # device again after Redis lost its data takes seconds, not minutes.
    state_rebuild_max_fixes: int = 100
    # Engine states an ingest worker keeps decoded in memory, with the version it last read or
    # wrote: a batch then fetches from Redis only the states another writer changed since
    # (about 1 kB of memory each; 0 turns the cache off). Redis stays the one truth.
    state_cache_devices: Annotated[int, Field(ge=0)] = 400_000
    # MQTT ingest workers, each with its own client id and persistent session (mqtt_client_id +
    # "-" + worker id; empty: the hostname and the worker's index). How several split the load:
    # - "partition" (Mosquitto): each subscribes to every report with a plain subscription and
    #   processes the devices of its partition, crc32(device id) mod ingest_workers ==
    #   ingest_worker_index, acknowledging the others unread. Mosquitto keeps plain
    #   subscriptions of persistent sessions across its own restarts, shared ones it does not
    #   (2.0: a report published after a broker restart and before the workers subscribed
    #   again would be acknowledged to the phone and dropped). Every worker must run with the
    #   same ingest_workers: change it with all of them stopped.
    # - "share" (an EMQX cluster): an MQTT 5 shared subscription $share/{mqtt_share_group}/...,
    #   dispatched by client id hash so that one phone's reports reach one worker in order.
    ingest_dispatch: Literal["partition", "share"] = "partition"
    ingest_workers: Annotated[int, Field(ge=1)] = 1
    ingest_worker_index: Annotated[int, Field(ge=0)] = 0
    ingest_worker_id: str = ""
    mqtt_share_group: str = "ccs-ingest"
    # Silences are judged only up to the lowest MQTT ingest worker's watermark (everything it
    # received before it is committed); a worker that wrote none for this long counts as gone.
    ingest_watermark_max_lag_s: float = 300.0
    # HTTP ingest: this many threads per API process, each with a pipeline of its own, record
    # the waiting requests in batches (api/routes/ingest.py). Fewer threads make larger
    # batches (on the bench one took 787 requests/s, two 680, eight 369: BENCHMARKS.md); two,
    # so that one slow batch does not hold every phone of the process; with
    # `http_ingest_queue_max` requests already waiting, a new one is answered 503 with Retry-After.
    http_ingest_pipelines: Annotated[int, Field(ge=1)] = 2
    http_ingest_queue_max: Annotated[int, Field(ge=1)] = 5000
    # Transient failures (database or Redis unreachable) are retried with this backoff: doubling
    # from the minimum, at most 2 s apart, so a failover (a new PostgreSQL primary after Patroni's
    # 10-20 s, a new Redis master) is found within 2 s of completing (with 30 s a worker slept
    # 7 s after writes were possible again, past the 30-s target once a failover outlasts 15.5 s).
    # A retry is one TCP connection to HAProxy or a sentinel.
    ingest_retry_min_s: float = 0.5
    ingest_retry_max_s: float = 2.0
    # A worker's /livez, /readyz and /metrics (store/observe.py; 0: none). Each process on a
    # host needs its own (deploy/systemd: 9100 + the ingest worker's index, 9120 alerts, 9121
    # delivery, 9122 broker sync); in a container 9100.
    health_port: Annotated[int, Field(ge=0, le=65535)] = 0
    # Where it listens: the host's own monitoring by default; a container image sets 0.0.0.0
    # (the kubelet and Prometheus reach the pod's address). No personal data is served there.
    health_host: str = "127.0.0.1"
    # "text" for a terminal, "json" (one object a line, with fix_id / alert_id fields) for a
    # log collector; deploy/ sets json.
    log_format: Literal["text", "json"] = "text"
    # The workers' cyclic garbage collector (store/runtime.py): a young-generation collection
    # every this many allocations (the interpreter's default, 700, costs the engine a third of
    # its time with a large state in memory; `make bench-engine` shows both); 0: the default.
    gc_threshold: Annotated[int, Field(ge=0)] = 50_000
    # The scheduler recomputes the audit log's hash chain this often and publishes the outcome
    # (Redis `<prefix>audit:verified`; the API's /metrics: ccs_audit_chain_ok).
    audit_verify_every_s: Annotated[int, Field(ge=60)] = 3600

    # HTTP API hardening (api/limits.py, api/headers.py, store/ratelimit.py)
    max_body_bytes: int = 256 * 1024  # any request body; the phone endpoints keep max_payload_bytes
    max_zone_body_bytes: int = 8 * 1024 * 1024  # POST and PUT /zones: a precise boundary can be megabytes
    ingest_rate_per_min: int = 120  # HTTP ingest requests per device per minute, on average ...
    ingest_rate_burst: int = 60  # ... and back to back (a phone uploading its offline buffer)
    # HTTP ingest requests with unknown credentials, per source address: this many a minute on
    # average (and back to back) are kept as dead letters, each cut to the sample size; beyond
    # that they are answered 429 and only counted.
    ingest_unknown_rate_per_min: int = 6
    ingest_unknown_rate_burst: int = 10
    ingest_unknown_sample_bytes: int = 1024
    # Origins allowed to call the API from a browser (CORS), comma-separated or a JSON list;
    # empty: no cross-origin access at all.
    cors_origins: Annotated[list[str], NoDecode] = []

    alert_feed_maxlen: int = 100_000

    # Active confirmation (alerts/confirm.py): when the engine's evidence is suggestive it asks
    # the phone for a fix now (`report_location` on devices/{id}/cmd, OwnTracks reportLocation).
    # At most this many commands per device in any hour (battery): the excess is recorded as
    # throttled and not sent. A request unanswered within the window expires, with no alert
    # (the engine falls back to its passive rule).
    confirm_max_per_hour: int = 6
    confirm_answer_window_s: float = 240.0

    # Notification delivery (webhooks, e-mail): retried with exponential backoff until delivered
    # or expired; a claimed notification returns to the queue if its worker dies (lease).
    delivery_backoff_base_s: float = 2.0
    delivery_backoff_max_s: float = 300.0
    delivery_lease_s: float = 120.0  # above the slowest send (SMTP: up to 10 s per step)
    delivery_expire_s: float = 24 * 3600.0
    delivery_concurrency: int = 16  # sends in flight per channel
    webhook_timeout_s: float = 5.0
    smtp_host: str = ""  # empty: e-mail notifications wait, counted as pending, until it is set
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout_s: float = 10.0
    smtp_from: str = "ccs-alerts@localhost"
    # Compliance reports (alerts/reports.py): local days and months are those of this zone; the
    # scheduler sends the previous month's reports from this many hours after the month ends
    # (late fixes buffered on phones have arrived by then) to the staff who chose them.
    report_timezone: str = "Asia/Shanghai"
    report_monthly_after_h: Annotated[float, Field(ge=0, le=240)] = 2.0
    # Webhook receivers on private or loopback addresses (an SMS gateway on the intranet):
    # refused unless allowed here, so alert details cannot be aimed at internal services.
    webhook_allow_private: bool = False

    # Retention of operational tables (alerts/retention.py), enforced by the leader-elected
    # scheduler in small batches; 0 keeps a table's rows for ever. Only finished rows go:
    # unpublished outbox rows, pending notifications, open roll-calls and location requests stay.
    retention_outbox_days: float = 7.0  # published rows: the live feed and fan-out are done
    retention_notifications_days: float = 180.0  # delivered or expired, with their attempts
    retention_notification_attempts_days: float = 180.0
    # Alert history is evidence: kept while the person is supervised, and after the supervision
    # ends for this many years (a new offence within 5 years of the sentence makes a recidivist,
    # Criminal Law art. 65, so the record may matter that long).
    retention_alert_events_years: float = 5.0
    retention_device_messages_days: float = 30.0  # raw non-location messages (status, events)
    retention_roll_calls_days: float = 400.0  # answered, missed or cancelled: a year's review
    retention_location_requests_days: float = 90.0  # answered, expired or throttled
    retention_dead_letters_days: float = 30.0  # rejected input, kept to diagnose phones
    # Positions (store/partitions.py): kept while the person is supervised and this long after
    # the supervision ends; a daily partition goes (archived first, then dropped) once every
    # person in it is past that. Partitions are made this many days ahead; statements that lock
    # the positions table give up after positions_lock_timeout_ms, and an insert arriving while
    # one waits queues behind it at most that long (the target: ingest never blocked 100 ms).
    retention_positions_years: float = 5.0
    positions_archive_dir: str = ".run/archive/positions"
    positions_premake_days: Annotated[int, Field(ge=2)] = 7
    positions_lock_timeout_ms: Annotated[int, Field(ge=10)] = 50
    positions_retire_per_run: Annotated[int, Field(ge=0)] = 3
    positions_archive_rows_per_s: Annotated[int, Field(ge=0)] = 20_000  # 0: as fast as it goes
    # The archive pauses while an ingest worker spends at least this share of its time on
    # batches (saturated: the broker holds a backlog), at most positions_archive_max_yield_s per
    # day archived (a paused COPY holds its snapshot).
    positions_archive_yield_busy: Annotated[float, Field(gt=0, le=1)] = 0.8
    positions_archive_max_yield_s: Annotated[float, Field(ge=0)] = 600.0
    # Track files streamed at once by one API process, each on a database connection of its own
    # (beyond the pool); one more is refused with 429 `exports_busy` and a Retry-After.
    exports_max_concurrent: Annotated[int, Field(ge=1)] = 4
    positions_restored_keep_days: float = 90.0  # a restored day is not retired again before
    retention_batch: int = 2000  # rows per delete statement (each its own short transaction)
    retention_max_batches: int = 20  # per table and run; the rest waits for the next run

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [o.strip().rstrip("/") for o in text.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.ingest_worker_index >= self.ingest_workers:
            raise ValueError(f"CCS_INGEST_WORKER_INDEX={self.ingest_worker_index} must be below "
                             f"CCS_INGEST_WORKERS={self.ingest_workers} (indexes count from 0)")
        if self.environment != Environment.DEVELOPMENT and (
            self.secret_key.strip().lower() in PLACEHOLDER_SECRETS or len(self.secret_key) < 32
        ):
            raise ValueError(
                "CCS_SECRET_KEY must be set to a random value of at least 32 characters "
                f"outside development (environment={self.environment.value})"
            )
        host = urlsplit(self.public_base_url).hostname or ""
        if self.environment == Environment.DEVELOPMENT and host not in LOOPBACK_NAMES \
                and self.secret_key.strip().lower() in PLACEHOLDER_SECRETS:
            # A deployment that forgot CCS_ENVIRONMENT must not sign tokens with a public key.
            raise ValueError(
                f"CCS_PUBLIC_BASE_URL is {self.public_base_url}, not a local address, but "
                "CCS_SECRET_KEY is the development placeholder: set CCS_ENVIRONMENT=production "
                "and a real CCS_SECRET_KEY")
        if self.environment == Environment.PRODUCTION and self.smtp_username \
                and not self.smtp_starttls:
            raise ValueError("CCS_SMTP_USERNAME needs CCS_SMTP_STARTTLS=true in production "
                             "(the password would cross the network in clear)")
        if self.environment == Environment.PRODUCTION and not self.metrics_token:
            raise ValueError("CCS_METRICS_TOKEN must be set in production (Prometheus scrapes "
                             "/api/v1/metrics with it as a bearer token)")
        if self.environment == Environment.PRODUCTION and not (
                self.mqtt_username and self.mqtt_password):
            raise ValueError("CCS_MQTT_USERNAME and CCS_MQTT_PASSWORD must be set in production: "
                             "the services' own broker account (the broker takes no anonymous "
                             "client; docs/broker-security.md)")
        if self.environment == Environment.PRODUCTION and not self.mqtt_device_tls:
            raise ValueError("CCS_MQTT_DEVICE_TLS=true is required in production: a phone sends "
                             "its secret in the MQTT CONNECT, so its listener takes TLS only "
                             "(deploy/mosquitto/production.conf, or TLS in front of the broker)")
        return self

    @property
    def mqtt_commands_credentials(self) -> tuple[str | None, str | None]:
        """Username and password of the command publisher's broker account."""
        if self.mqtt_commands_username:
            return self.mqtt_commands_username, self.mqtt_commands_password
        return self.mqtt_username, self.mqtt_password

    @property
    def psycopg_dsn(self) -> str:
        """The database URL without SQLAlchemy's driver suffix, for raw psycopg."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


_override: Settings | None = None


@lru_cache(maxsize=1)
def _from_env() -> Settings:
    return Settings()


def get_settings() -> Settings:
    """The process-wide settings (tests may install an override)."""
    return _override if _override is not None else _from_env()


def set_settings(settings: Settings | None) -> None:
    """Install (or clear, with None) a settings override; used by tests and launchers."""
    global _override
    _override = settings


__all__ = ["Environment", "Settings", "get_settings", "set_settings"]
