"""Broker credentials: each device's secret in Mosquitto's password-file format, and a NOTIFY.

`devices.broker_hash` is the device secret hashed the way Mosquitto's password file stores it
(`$6$<salt>$<sha512(secret + salt)>`, computed at enrolment from the plaintext, which is never
stored), so the broker's password file can be regenerated from the database at any time.
Devices enrolled before this migration have none: they cannot connect to the secured broker
until they are re-enrolled (`POST /devices/{id}/reenrol`).

A statement-level trigger announces every change to the devices table on the channel
`ccs_broker_credentials`; the broker-sync process (`python -m store.broker_sync --watch`)
listens, regenerates the files and signals the broker, whichever code path changed a device.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE devices ADD COLUMN broker_hash text;

CREATE FUNCTION devices_broker_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ccs_broker_credentials', '');
    RETURN NULL;
END $$;

CREATE TRIGGER devices_broker_notify
    AFTER INSERT OR DELETE OR UPDATE OF id, broker_hash, active ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION devices_broker_notify();
"""

DOWNGRADE = r"""
DROP TRIGGER devices_broker_notify ON devices;
DROP FUNCTION devices_broker_notify();
ALTER TABLE devices DROP COLUMN broker_hash;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
