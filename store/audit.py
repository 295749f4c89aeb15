"""The audit log's hash chain: verify it, print its head for anchoring.

    python -m store.audit verify [--anchor SEQ:HASH ...] [--json]   # exit 0 intact, 1 tampered
    python -m store.audit head                                      # {"seq": ..., "hash": ...}

The database chains every row when it commits (migration 0012): `hash = sha256(prev_hash ||
canonical(row))`, `prev_hash` being the previous row's hash (32 zero bytes for seq 1). This
module recomputes that chain on its own, streaming over the table in seq order, and reports
what it finds broken: a row whose content no longer matches its hash (edited), a missing seq
(deleted), a row that does not link to the one before it (reordered, inserted, or the row
before rewritten), a row without a chain position (written while the triggers were disabled),
rows missing at the end (the head says more), an anchor that does not match.

A superuser can rewrite the whole chain consistently; only an anchor, a (seq, hash) printed by
`head` and kept where the database's administrators cannot change it, exposes that:
`verify --anchor SEQ:HASH` checks that row SEQ still has that hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

CANONICAL_VERSION = "ccs-audit-v1"
GENESIS = bytes(32)
HASH_LEN = 32


def _field(value: str | None) -> str:
    """One field of the canonical form: `-` for NULL, else `<UTF-8 byte length>:<text>`."""
    if value is None:
        return "-"
    return f"{len(value.encode())}:{value}"


def utc_text(at: datetime) -> str:
    """A timestamp as the canonical form writes it: UTC, microseconds, `Z`."""
    d = at.astimezone(UTC)
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
            f".{d.microsecond:06d}Z")


def canonical(
    seq: int, id: int, at: datetime, staff_id: int | None, action: str, target: str,
    purpose: str, remote: str | None, detail_text: str,
) -> bytes:
    """The bytes a row's hash covers besides the previous hash (SQL: `audit_canonical`).

    `detail_text` is PostgreSQL's text form of the jsonb value (`detail::text`): jsonb stores
    one normalised form (keys sorted, duplicates dropped), so its text is canonical.
    """
    parts = [str(seq), str(id), utc_text(at), None if staff_id is None else str(staff_id),
             action, target, purpose, remote, detail_text]
    return (CANONICAL_VERSION + "".join(_field(p) for p in parts)).encode()


def link_hash(prev_hash: bytes, canonical_bytes: bytes) -> bytes:
    """sha256(prev_hash || canonical form): a row's hash."""
    return hashlib.sha256(prev_hash + canonical_bytes).digest()


@dataclass(frozen=True)
class Anchor:
    """A (seq, hash) recorded outside the database by `head`."""

    seq: int
    hash: bytes

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """`SEQ:HEX` (as printed by `head`)."""
        seq, sep, hexhash = text.partition(":")
        try:
            anchor = cls(int(seq), bytes.fromhex(hexhash))
        except ValueError as e:
            raise ValueError(f"an anchor is SEQ:HASH (64 hex digits), not {text!r}") from e
        if not sep or len(anchor.hash) != HASH_LEN or anchor.seq < 1:
            raise ValueError(f"an anchor is SEQ:HASH (64 hex digits), not {text!r}")
        return anchor


@dataclass(frozen=True)
class Problem:
    """One broken link: what kind, where, and a sentence for people."""

    kind: str  # edited | missing | broken_link | out_of_order | unsealed | head | anchor
    seq: int | None
    id: int | None
    message: str


@dataclass
class VerifyResult:
    """The outcome of one pass over the chain."""

    rows: int = 0
    last_seq: int = 0
    last_hash: bytes = GENESIS
    problems: list[Problem] = field(default_factory=list)
    truncated: bool = False  # more problems than were kept

    @property
    def ok(self) -> bool:
        """True when nothing is broken."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (hashes in hex)."""
        return {
            "ok": self.ok,
            "rows": self.rows,
            "head": {"seq": self.last_seq, "hash": self.last_hash.hex()},
            "first_problem": asdict(self.problems[0]) if self.problems else None,
            "problems": [asdict(p) for p in self.problems],
            "more_problems": self.truncated,
        }


ROWS_SQL = """SELECT seq, id, at, staff_id, action, target, purpose, remote, detail::text,
                     prev_hash, hash
                FROM audit_log ORDER BY seq"""


class _Checker:
    """Folds rows (in seq order) into a VerifyResult."""

    def __init__(self, anchors: Iterable[Anchor], max_problems: int) -> None:
        self.result = VerifyResult()
        self.anchors = {a.seq: a.hash for a in anchors}
        self.max_problems = max_problems
        self.expected_seq = 1
        self.prev = GENESIS

    def problem(self, kind: str, seq: int | None, id: int | None, message: str) -> None:
        if len(self.result.problems) < self.max_problems:
            self.result.problems.append(Problem(kind, seq, id, message))
        else:
            self.result.truncated = True

    def row(self, r: Sequence[Any]) -> None:
        seq, id, at, staff_id, action, target, purpose, remote, detail, prev_hash, stored = r
        res = self.result
        res.rows += 1
        if seq is None:
            self.problem("unsealed", None, id,
                         f"row id {id} has no place in the chain: written while the chain "
                         "triggers were disabled")
            return
        where = f"row seq {seq} (id {id})"
        if seq > self.expected_seq:
            first, last = self.expected_seq, seq - 1
            gap = f"seq {first}" if first == last else f"seq {first}..{last}"
            self.problem("missing", first, None, f"{gap} missing before {where}: deleted")
        elif seq < self.expected_seq:
            self.problem("out_of_order", seq, id, f"{where} repeats a chain position")
        elif prev_hash != self.prev:
            self.problem("broken_link", seq, id,
                         f"{where} does not link to the row before it: that row was rewritten "
                         "with a new hash, or rows were inserted or reordered")
        body = canonical(seq, id, at, staff_id, action, target, purpose, remote, detail)
        if prev_hash is None or stored is None or link_hash(bytes(prev_hash), body) != stored:
            self.problem("edited", seq, id,
                         f"{where} was changed after it was written: its content does not "
                         "match its hash")
        if seq in self.anchors and self.anchors.pop(seq) != stored:
            self.problem("anchor", seq, id, f"{where} does not match the anchored hash: the "
                                             "chain was rewritten since the anchor was taken")
        stored_b = bytes(stored) if stored is not None else b""
        self.expected_seq, self.prev = seq + 1, stored_b
        res.last_seq, res.last_hash = seq, stored_b

    def finish(self, head: tuple[int, bytes] | None) -> VerifyResult:
        res = self.result
        if head is None:
            self.problem("head", None, None, "the chain head (audit_chain_head) is missing")
        elif head[0] > res.last_seq:
            self.problem("missing", res.last_seq + 1, None,
                         f"the chain head is seq {head[0]} but the last row is seq "
                         f"{res.last_seq}: the newest rows were deleted")
        elif head[0] != res.last_seq or bytes(head[1]) != res.last_hash:
            self.problem("head", head[0], None,
                         f"the chain head (seq {head[0]}) does not match the last row "
                         f"(seq {res.last_seq})")
        for seq in sorted(self.anchors):
            self.problem("anchor", seq, None,
                         f"anchored row seq {seq} is not in the log: the log was truncated or "
                         "rewound since the anchor was taken")
        return res


def verify(dsn: str, anchors: Iterable[Anchor] = (), max_problems: int = 100) -> VerifyResult:
    """Recompute the whole chain in one consistent snapshot, streaming (constant memory)."""
    checker = _Checker(anchors, max_problems)
    with psycopg.connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.cursor(name="audit_verify") as cur:
            cur.itersize = 5000
            cur.execute(ROWS_SQL)
            for r in cur:
                checker.row(r)
        head = conn.execute("SELECT seq, hash FROM audit_chain_head").fetchone()
    return checker.finish(None if head is None else (head[0], head[1]))


def head(dsn: str) -> dict[str, Any]:
    """The newest link, to be recorded outside the database (an anchor)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("""SELECT seq, hash, at FROM audit_log WHERE seq IS NOT NULL
                               ORDER BY seq DESC LIMIT 1""").fetchone()
        now = conn.execute("SELECT now()").fetchone()
    assert now is not None
    seq, digest, at = row if row is not None else (0, GENESIS, None)
    return {"seq": seq, "hash": bytes(digest).hex(), "row_at": at.isoformat() if at else None,
            "taken_at": now[0].isoformat(), "anchor": f"{seq}:{bytes(digest).hex()}"}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `verify` (exit 1 on tamper, 2 on error) or `head`."""
    parser = argparse.ArgumentParser(prog="python -m store.audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: from CCS_DATABASE_URL)")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="recompute the chain; exit 1 when it is broken")
    v.add_argument("--anchor", action="append", default=[], metavar="SEQ:HASH",
                   help="a head recorded earlier (repeatable)")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.add_parser("head", help="print the newest (seq, hash) to keep outside the database")
    args = parser.parse_args(argv)
    if args.dsn:
        dsn = args.dsn
    else:
        from store.settings import get_settings

        dsn = get_settings().psycopg_dsn
    try:
        if args.command == "head":
            print(json.dumps(head(dsn)))
            return 0
        anchors = [Anchor.parse(a) for a in args.anchor]
        result = verify(dsn, anchors)
    except (ValueError, psycopg.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict()))
    elif result.ok:
        print(f"ok: {result.rows} rows, head seq {result.last_seq} {result.last_hash.hex()}")
    else:
        print(f"TAMPERED: {len(result.problems)}{'+' if result.truncated else ''} problem(s) "
              f"in {result.rows} rows")
        for p in result.problems:
            print(f"  {p.kind}: {p.message}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
