"""Audit log: append-only and hash-chained in the database itself.

Every writer (API, workers, psql) goes through the same triggers:

- A new row gets its place in the chain when its transaction commits: a deferred constraint
  trigger locks the one-row `audit_chain_head` (FOR UPDATE), numbers the row `seq = head + 1`,
  and stores `prev_hash` (the head's hash) and
  `hash = sha256(prev_hash || audit_canonical(seq, row))`. The head lock is held only from that
  moment to the end of the commit, and it is the last lock a transaction takes, so concurrent
  writers queue for an instant instead of for their whole request, cannot deadlock on it, and a
  transaction left open (a psql session, a stuck request) holds nothing. Chain order is commit
  order; a rolled-back transaction leaves no gap (`seq` does not come from a sequence). A writer
  at REPEATABLE READ or SERIALIZABLE that races another gets a serialisation failure and must
  retry, as for any contended row; the project writes at READ COMMITTED.
- The canonical form (`ccs-audit-v1`, mirrored in `store/audit.py`) is the fields seq, id, at
  (UTC, microseconds), staff_id, action, target, purpose, remote and detail (jsonb's own text
  form), each written as `-` for NULL or `<byte length>:<UTF-8 text>`: unambiguous whatever the
  text holds. The database assigns `at` (now()); a writer cannot backdate a row, nor supply
  seq/prev_hash/hash.
- UPDATE and DELETE are refused for everyone (the only UPDATE allowed is the sealing trigger's
  own, filling the chain columns of a row not yet sealed, with every other column unchanged).
  TRUNCATE is refused unless the session sets `ccs.audit_maintenance = on` (the test suite does,
  to empty the database between tests); it starts a new chain (the head goes back to seq 0).
  That setting is a guard against accidents, not a privilege: in production the application's
  role should hold only INSERT and SELECT on audit_log (no TRUNCATE, no ownership).
- Rows already present are chained here, in id order.

What this does not stop: a superuser (or the table's owner) can disable the triggers or set
`session_replication_role = replica`, rewrite rows and recompute every later hash, and set the
head to match: the chain then verifies. Tampering that does not recompute the chain (an edited,
deleted or reordered row) is found by `python -m store.audit verify`; a full rewrite, or a
TRUNCATE, is found only against a copy of the head kept out of the attacker's reach. Anchor it:
`python -m store.audit head` prints (seq, hash); store its output periodically somewhere the
database's administrators cannot rewrite (another system's log, a write-once bucket, a signed
e-mail to the supervising authority), and check it with `verify --anchor SEQ:HASH`.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE audit_log
    ADD COLUMN seq       bigint,   -- position in the chain, 1, 2, ...; set when the row commits
    ADD COLUMN prev_hash bytea,    -- the previous row's hash (32 zero bytes for seq 1)
    ADD COLUMN hash      bytea,    -- sha256(prev_hash || audit_canonical(seq, row))
    ADD CONSTRAINT audit_log_at_finite CHECK (isfinite(at));
CREATE UNIQUE INDEX audit_log_seq ON audit_log (seq);
CREATE INDEX audit_log_staff ON audit_log (staff_id, seq);

-- The newest link of the chain: one row, locked by every append until it commits.
CREATE TABLE audit_chain_head (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq        bigint NOT NULL,
    hash       bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION audit_field(t text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN t IS NULL THEN '-' ELSE octet_length(convert_to(t, 'UTF8')) || ':' || t END
$$;

-- The bytes a row's hash covers (besides the previous hash). Keep in step with store/audit.py.
CREATE FUNCTION audit_canonical(seq bigint, r audit_log) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT convert_to(
        'ccs-audit-v1'
        || audit_field(seq::text)
        || audit_field(r.id::text)
        || audit_field(to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        || audit_field(r.staff_id::text)
        || audit_field(r.action)
        || audit_field(r.target)
        || audit_field(r.purpose)
        || audit_field(r.remote)
        || audit_field(r.detail::text),
        'UTF8')
$$;

-- Chain the rows already present, oldest first.
DO $$
DECLARE
    r audit_log%ROWTYPE;
    n bigint := 0;
    h bytea := decode(repeat('00', 32), 'hex');
BEGIN
    FOR r IN SELECT * FROM audit_log ORDER BY id LOOP
        n := n + 1;
        UPDATE audit_log SET seq = n, prev_hash = h, hash = sha256(h || audit_canonical(n, r))
         WHERE id = r.id RETURNING hash INTO h;
    END LOOP;
    INSERT INTO audit_chain_head (seq, hash) VALUES (n, h);
END $$;

CREATE FUNCTION audit_log_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq IS NOT NULL OR NEW.prev_hash IS NOT NULL OR NEW.hash IS NOT NULL THEN
        RAISE EXCEPTION 'audit_log: seq, prev_hash and hash are assigned by the database';
    END IF;
    NEW.at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_before_insert BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_before_insert();

-- Runs at commit: the head lock is the transaction's last lock and is held only to the end.
CREATE FUNCTION audit_log_seal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head   audit_chain_head%ROWTYPE;
    digest bytea;
BEGIN
    SELECT * INTO head FROM audit_chain_head FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit_log: the chain head (audit_chain_head) is missing';
    END IF;
    digest := sha256(head.hash || audit_canonical(head.seq + 1, NEW));
    UPDATE audit_log SET seq = head.seq + 1, prev_hash = head.hash, hash = digest
     WHERE id = NEW.id AND seq IS NULL;
    IF FOUND THEN  -- not found: truncated later in the same transaction
        UPDATE audit_chain_head SET seq = head.seq + 1, hash = digest, updated_at = now();
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER audit_log_seal AFTER INSERT ON audit_log
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_log_seal();

CREATE FUNCTION audit_log_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The sealing trigger's own UPDATE: chain columns of an unsealed row, nothing else.
    IF pg_trigger_depth() > 1 AND OLD.seq IS NULL AND NEW.seq IS NOT NULL
       AND (NEW.id, NEW.at, NEW.staff_id, NEW.action, NEW.target, NEW.purpose, NEW.remote,
            NEW.detail)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.staff_id, OLD.action, OLD.target, OLD.purpose, OLD.remote,
            OLD.detail) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: UPDATE refused (row id %)', OLD.id;
END $$;
CREATE TRIGGER audit_log_refuse_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_update();

CREATE FUNCTION audit_log_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING HINT = 'only TRUNCATE, for maintenance, with SET ccs.audit_maintenance = on '
                     '(it starts a new chain)';
END $$;
CREATE TRIGGER audit_log_refuse_delete BEFORE DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_delete();
CREATE TRIGGER audit_log_refuse_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT
    WHEN (coalesce(current_setting('ccs.audit_maintenance', true), '') <> 'on')
    EXECUTE FUNCTION audit_log_refuse_delete();

-- A deliberate TRUNCATE (maintenance, tests) starts a new chain.
CREATE FUNCTION audit_log_reset_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_chain_head SET seq = 0, hash = decode(repeat('00', 32), 'hex'), updated_at = now();
    RETURN NULL;
END $$;
CREATE TRIGGER audit_log_reset_head AFTER TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reset_head();
"""

DOWNGRADE = r"""
DROP TRIGGER audit_log_reset_head ON audit_log;
DROP TRIGGER audit_log_refuse_truncate ON audit_log;
DROP TRIGGER audit_log_refuse_delete ON audit_log;
DROP TRIGGER audit_log_refuse_update ON audit_log;
DROP TRIGGER audit_log_seal ON audit_log;
DROP TRIGGER audit_log_before_insert ON audit_log;
DROP FUNCTION audit_log_reset_head();
DROP FUNCTION audit_log_refuse_delete();
DROP FUNCTION audit_log_refuse_update();
DROP FUNCTION audit_log_seal();
DROP FUNCTION audit_log_before_insert();
DROP FUNCTION audit_canonical(bigint, audit_log);
DROP FUNCTION audit_field(text);
DROP TABLE audit_chain_head;
DROP INDEX audit_log_staff;
DROP INDEX audit_log_seq;
ALTER TABLE audit_log DROP CONSTRAINT audit_log_at_finite,
    DROP COLUMN hash, DROP COLUMN prev_hash, DROP COLUMN seq;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
