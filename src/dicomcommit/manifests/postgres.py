"""The manifest in PostgreSQL, for many hosts committing into one archive at once.

``--manifest postgresql://user@host:port/dbname`` (psycopg 3; libpq's URL, options and
environment: ``PGPASSWORD``, ``~/.pgpass``, ``sslmode``...). The tables are those of the
SQLite manifest, created on first use and versioned (``dicomcommit_schema``); names (target,
path, source) are ``bytea``, their bytes exactly, since a file name need not be UTF-8
(``convert_from(path, 'UTF8')`` reads them as text).

No lock spans hosts. Each final name is arbitrated where it is created (``link(2)``), each
row by its unique key, and each staged file by a claim: a row of ``claims`` keyed by (host,
source), inserted ``ON CONFLICT`` before the file is placed, that only a committer with a
live lease gets, and that leaves in the transaction that records the file. A lease is a row
of ``leases`` with an expiry on the server's clock, renewed in the background; the
transaction that records a batch first locks its lease row (``FOR KEY SHARE``), and
``recover`` deletes an expired one (which waits for that lock) before it finishes the
claims left under it, so a committer and a recover never both record a claim.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg

from dicomcommit._faults import point
from dicomcommit.errors import ManifestError
from dicomcommit.manifests.base import BaseManifest
from dicomcommit.manifests.pgsql import (
    ALL_COLUMNS,
    BYTES_COLUMNS,
    CLAIM_COLUMNS,
    CLAIM_TYPES,
    EXCLUSIVE_LOCK,
    LIVE,
    RENEW,
    SCHEMA,
    SCHEMA_LOCK,
    SCHEMA_VERSION,
    as_bytes,
    as_json,
    as_text,
    claim_of,
    connect,
    copy_in,
    is_sha256,
    lease_seconds,
    load_rows,
    reason,
    record_of,
    settleable,
    shown,
    store,
)
from dicomcommit.manifests.records import (
    REVIEWED,
    Claim,
    NewRecord,
    Record,
    Run,
    Status,
    host_id,
    machine_id,
    now,
    process_alive,
)
from dicomcommit.manifests.sqlite import SQLiteManifest


class PostgresManifest(BaseManifest):
    """The manifest in the PostgreSQL database *url*.

    Args:
        create: create the tables if the database has none yet.
        durable: kept for the interface: PostgreSQL commits durably (``synchronous_commit``
            is the server's setting).

    Raises:
        ManifestError: the server cannot be reached, the database holds no manifest and
            *create* is False, its schema is newer, or ``manifest copy`` moved it.
    """

    shared = True

    def __init__(self, url: str, *, create: bool = False, durable: bool = True, rehearse: bool = False) -> None:
        self.url, self.location, self.host = url, shown(url), host_id()
        self.empty = False  # (a dry run's read) the database has no manifest yet
        self._lease: str | None = None
        self._ttl = lease_seconds()
        try:
            self._conn = connect(url)
        except psycopg.Error as exc:
            raise ManifestError(f"cannot reach the PostgreSQL manifest {self.location}: {reason(exc)}") from exc
        try:
            if rehearse:
                self.empty = self._version() is None
                if not self.empty:
                    self._check_moved()
            else:
                self._upgrade(create)
        except BaseException:
            self._conn.close()
            raise

    def _upgrade(self, create: bool) -> None:
        version = self._version()
        if version == SCHEMA_VERSION:
            return self._check_moved()
        if version is None and not create:
            raise ManifestError(f"no manifest in {self.location}: nothing has been committed with it")
        with self.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            if self._version() is None:  # not another process that got here first
                self._conn.execute(SCHEMA)
                self._conn.execute("INSERT INTO dicomcommit_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        return None

    def _version(self) -> int | None:
        try:
            row = self._conn.execute("SELECT to_regclass('dicomcommit_schema') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return None
            found = self._conn.execute("SELECT max(version) FROM dicomcommit_schema").fetchone()
        except psycopg.Error as exc:
            raise self._failure(exc, "cannot read the manifest") from exc
        version = None if found is None else found[0]
        if version is not None and version > SCHEMA_VERSION:
            raise ManifestError(f"{self.location} has schema {version}, newer than this dicomcommit's {SCHEMA_VERSION}")
        return version

    def _check_moved(self) -> None:
        moved = self._one("SELECT value FROM settings WHERE name = 'moved_to'")
        if moved is not None:
            raise ManifestError(
                f"the manifest {self.location} was moved to {moved[0]} (dicomcommit manifest copy); "
                f"use that one: --manifest {moved[0]} (or DICOMCOMMIT_MANIFEST)"
            )

    def _failure(self, exc: psycopg.Error, what: str) -> ManifestError:
        return ManifestError(f"{what} {self.location}: {reason(exc)}")

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        try:
            return self._conn.execute(sql, args).fetchone()
        except psycopg.Error as exc:
            raise self._failure(exc, "cannot read the manifest") from exc

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except psycopg.Error as exc:
            raise self._failure(exc, "cannot read the manifest") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction (nested ones are savepoints), rolled back on error.

        Raises:
            ManifestError: PostgreSQL failed or cannot be reached; nothing was recorded.
        """
        try:
            with self._conn.transaction():
                yield
        except psycopg.Error as exc:
            raise self._failure(exc, "cannot write the manifest") from exc

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write transaction. It first waits out a ``manifest copy`` (whose EXCLUSIVE lock
        conflicts with this one), then refuses a manifest that was moved meanwhile."""
        with self.transaction():
            self._conn.execute("LOCK TABLE settings IN ROW EXCLUSIVE MODE")
            self._check_moved()
            yield

    def add(self, records: Iterable[NewRecord]) -> dict[tuple[str, str], Record]:
        """Insert *records* in one transaction, as :meth:`SQLiteManifest.add` does, and end
        this committer's claims on their files (checking first that its lease is live)."""
        records = list(records)
        reviewed = [(r.key(), self._host(r)) for r in records if r.claims is None and r.status in REVIEWED]
        with self._writing():
            self._hold_lease()
            store(self._conn, records, self.host)
            if self._lease is not None:
                self._conn.execute(
                    "DELETE FROM claims c USING files_in f WHERE c.lease = %s AND c.source = f.source", (self._lease,)
                )
                taken_over = [as_bytes(r.source) for r in records if r.claims is not None]
                if taken_over:
                    self._conn.execute(
                        "DELETE FROM claims WHERE lease = %s AND source = ANY(%s)", (self._lease, taken_over)
                    )
            point("commit:in-manifest")
            stored = {key: self._by_key(key, host) for key, host in reviewed}
        return {key: record for key, record in stored.items() if record is not None}

    def _host(self, record: NewRecord) -> str:
        return self.host if record.host is None else record.host

    def _hold_lease(self) -> None:
        """Inside a transaction: lock this committer's lease row, so that no recover can
        expire it before the transaction ends; refuse when it has expired already."""
        if self._lease is None:
            return
        row = self._conn.execute(
            "SELECT 1 FROM leases WHERE id = %s AND expires > now() FOR KEY SHARE", (self._lease,)
        ).fetchone()
        if row is None:
            raise ManifestError(
                f"this committer's lease {self._lease} on {self.location} expired (it could not be renewed for "
                f"{self._ttl:g} s); a recover on any host may finish its files. Nothing of this batch was recorded "
                "and its files are still staged: rerun the commit"
            )

    def find(self, source: str, sha256: str, *, host: str | None = None) -> Record | None:
        return self._by_key((source, sha256), self.host if host is None else host)

    def _by_key(self, key: tuple[str, str], host: str) -> Record | None:
        hashed = key[1] if is_sha256(key[1]) else "p:" + os.fsencode(key[1]).hex()
        row = self._one(
            f"SELECT {ALL_COLUMNS} FROM files WHERE host = %s AND source = %s AND "
            "coalesce(sha256, 'p:' || encode(path, 'hex')) = %s",
            (host, as_bytes(key[0]), hashed),
        )
        return None if row is None else record_of(row)

    def update(self, record_id: int, **fields: str | None) -> None:
        allowed = {"status", "path", "detail", "sha256", "resolution", "resolved_by", "resolved_at"}
        if not fields or not set(fields) <= allowed:
            raise ValueError(f"can update only {sorted(allowed)}, not {sorted(fields)}")
        values = [
            as_bytes(v) if k in BYTES_COLUMNS else as_text(v) if k == "detail" and v is not None else v
            for k, v in fields.items()
        ]
        assignments = ", ".join(f"{name} = %s" for name in fields)
        with self._writing():
            self._conn.execute(f"UPDATE files SET {assignments} WHERE id = %s", (*values, record_id))

    def records(
        self,
        status: Status | str | Sequence[Status | str] | None = None,
        *,
        run: str | None = None,
        path: str | None = None,
        resolved: bool = False,
    ) -> list[Record]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            statuses = [str(status)] if isinstance(status, str) else [str(s) for s in status]
            where.append("status = ANY(%s)")
            args.append(statuses)
            if set(statuses) <= REVIEWED:
                where.append("status IN ('conflict', 'invalid')")  # as in the index files_review
        if run is not None:
            where.append("run = %s")
            args.append(run)
        if path is not None:
            where.append("path = %s")
            args.append(as_bytes(path))
        if resolved:
            where.append("resolution IS NOT NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return [record_of(row) for row in self._all(f"SELECT {ALL_COLUMNS} FROM files{clause} ORDER BY id", args)]

    def get(self, record_id: int) -> Record:
        row = self._one(f"SELECT {ALL_COLUMNS} FROM files WHERE id = %s", (record_id,))
        if row is None:
            raise ManifestError(f"no manifest row {record_id} in {self.location}")
        return record_of(row)

    def start_run(self, run: str, *, staging: str, template: str) -> None:
        with self._writing():
            self._conn.execute(
                "INSERT INTO runs (id, started, staging, template, host, pid) VALUES (%s,%s,%s,%s,%s,%s)",
                (run, now(), as_text(staging), as_text(template), self.host, os.getpid()),
            )

    def finish_run(self, run: str, counts: dict[str, int]) -> None:
        with self._writing():
            self._conn.execute(
                "UPDATE runs SET finished = %s, counts = %s WHERE id = %s", (now(), json.dumps(counts), run)
            )

    def run_templates(self) -> list[str]:
        rows = self._all(
            "SELECT template FROM runs GROUP BY template ORDER BY bool_or(finished IS NULL) DESC, max(started) DESC"
        )
        return [template for (template,) in rows]

    def runs(self) -> list[Run]:
        rows = self._all(
            "SELECT id, started, finished, staging, template, host, pid, counts FROM runs ORDER BY started, id"
        )
        return [Run(*row) for row in rows]

    def load(self, records: Sequence[Record], runs: Sequence[Run]) -> None:
        with self.transaction():
            if self._conn.execute("SELECT EXISTS (SELECT 1 FROM files) OR EXISTS (SELECT 1 FROM runs)").fetchone()[0]:  # type: ignore[index]
                raise ManifestError(f"{self.location} is not empty: a copy goes into a new manifest")
            load_rows(self._conn, records, runs)

    @contextlib.contextmanager
    def moving(self, to: str) -> Iterator[None]:
        with self.transaction():
            # EXCLUSIVE: reads go on, every write waits (and then finds the manifest moved).
            self._conn.execute("LOCK TABLE files, runs, claims, settings IN EXCLUSIVE MODE")
            yield
            self._conn.execute(
                "INSERT INTO settings (name, value) VALUES ('moved_to', %s) "
                "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (to,),
            )

    # Claims and leases: see the module docstring.
    @contextlib.contextmanager
    def leased(self) -> Iterator[None]:
        lease = f"{self.host}:{os.getpid()}:{os.urandom(4).hex()}"
        machine = machine_id()
        with self._writing():
            self._expire_dead_here(machine)
            self._conn.execute(
                "INSERT INTO leases (id, host, pid, machine, expires) "
                "VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))",
                (lease, self.host, os.getpid(), machine, self._ttl),
            )
        self._lease = lease
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lease, stop), name="dicomcommit-lease", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self._lease = None
            # Best effort: a lease left behind (the server gone) expires, and recover ends its claims.
            with contextlib.suppress(ManifestError), self.transaction():
                self._conn.execute("DELETE FROM claims WHERE lease = %s", (lease,))
                self._conn.execute("DELETE FROM leases WHERE id = %s", (lease,))

    def _expire_dead_here(self, machine: str) -> None:
        """Expire at once the leases of processes of this very machine (same boot, same PID
        namespace) that are gone: a rerun right after a crash need not wait for them. Only
        a shortcut: correctness never rests on it (a live process taken for dead would only
        work on the same files again, and every name and row is arbitrated anyway)."""
        if not machine:
            return
        rows = self._conn.execute(
            "SELECT id, pid FROM leases WHERE machine = %s AND expires > now()", (machine,)
        ).fetchall()
        dead = [lease for lease, pid in rows if not process_alive(pid)]
        if dead:
            self._conn.execute("UPDATE leases SET expires = now() WHERE id = ANY(%s)", (dead,))

    def _heartbeat(self, lease: str, stop: threading.Event) -> None:
        """Renew *lease* every quarter of its time, on a connection of its own, until *stop*."""
        conn: psycopg.Connection[tuple[Any, ...]] | None = None
        while not stop.wait(self._ttl / 4):
            try:
                conn = conn or connect(self.url)
                renewed = conn.execute(RENEW, (self._ttl, lease)).rowcount
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None  # the next beat reconnects; the batch's own check catches an expiry
                continue
            if not renewed:
                break  # expired: the next claim() or add() says so
        if conn is not None:
            conn.close()

    def claim(self, claims: Sequence[Claim]) -> set[str]:
        if self._lease is None:
            raise ManifestError("claim() needs a lease: call it inside leased()")
        if not claims:
            return set()
        with self._writing():
            renewed = self._conn.execute(RENEW, (self._ttl, self._lease)).rowcount
            if not renewed:
                self._hold_lease()  # raises: the lease expired
            copy_in(
                self._conn,
                "claims_in",
                CLAIM_COLUMNS,
                CLAIM_TYPES,
                [
                    (
                        as_bytes(c.source),
                        as_bytes(c.target),
                        c.sha256,
                        c.size,
                        as_json(c.attrs),
                        c.run,
                        as_bytes(c.staging),
                        self.host,
                        self._lease,
                    )
                    for c in claims
                ],
            )
            rows = self._conn.execute(
                f"INSERT INTO claims ({CLAIM_COLUMNS}) SELECT {CLAIM_COLUMNS} FROM claims_in "
                "ON CONFLICT (host, staging, source) DO UPDATE SET lease = EXCLUDED.lease, run = EXCLUDED.run, "
                "target = EXCLUDED.target, sha256 = EXCLUDED.sha256, size = EXCLUDED.size, attrs = EXCLUDED.attrs "
                f"WHERE claims.lease = EXCLUDED.lease OR NOT {LIVE} RETURNING source"
            ).fetchall()
        return {os.fsdecode(source) for (source,) in rows}

    @property
    def lease(self) -> str | None:
        return self._lease

    def holders(self, status: Status, path: str, sha256: str | None, source: str) -> tuple[list[Record], bool]:
        # One statement, one snapshot: a committer records its file and ends its claim in
        # one transaction, so the name's holder shows up here as a row or as a claim.
        rows = self._all(
            f"WITH c AS (SELECT EXISTS (SELECT 1 FROM claims WHERE sha256 = %s "
            "AND NOT (host = %s AND source = %s AND lease IS NOT DISTINCT FROM %s)) AS busy), "
            f"f AS (SELECT {ALL_COLUMNS} FROM files WHERE path = %s AND status = %s) "
            "SELECT c.busy, f.* FROM c LEFT JOIN f ON true ORDER BY f.id",
            (sha256, self.host, as_bytes(source), self._lease, as_bytes(path), str(status)),
        )
        busy = sha256 is not None and bool(rows and rows[0][0])
        return [record_of(row[1:]) for row in rows if row[1] is not None], busy

    def live_leases(self) -> set[str]:
        return {lease for (lease,) in self._all("SELECT id FROM leases WHERE expires > now()")}

    def expired_claims(self) -> list[Claim]:
        rows = self._all(f"SELECT {CLAIM_COLUMNS} FROM claims WHERE NOT {LIVE} ORDER BY host, source")
        return [claim_of(row) for row in rows]

    def live_claims(self) -> list[Claim]:
        return [claim_of(row) for row in self._all(f"SELECT {CLAIM_COLUMNS} FROM claims WHERE {LIVE}")]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        with self.transaction():
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield

    def settle_claims(self, claims: Sequence[Claim], records: Sequence[NewRecord]) -> list[Claim]:
        leases = sorted({c.lease for c in claims})
        by_key = {(r.host or "", r.source): r for r in records}
        with self._writing():
            # Deleting an expired lease waits for a batch that holds it (FOR KEY SHARE) to end.
            self._conn.execute("DELETE FROM leases WHERE id = ANY(%s) AND expires <= now()", (leases,))
            live = {lease for (lease,) in self._conn.execute("SELECT id FROM leases WHERE id = ANY(%s)", (leases,))}
            dead = [c for c in claims if c.lease not in live]
            ready = settleable(self._conn, dead, by_key)
            # Only the claims still there under their dead lease: one its host's rerun took
            # over in the meantime is that committer's to record.
            ended = self._conn.execute(
                "DELETE FROM claims USING unnest(%s::text[], %s::bytea[], %s::text[]) AS d(h, s, l) "
                "WHERE claims.host = d.h AND claims.source = d.s AND claims.lease = d.l "
                "RETURNING claims.host, claims.source",
                ([c.host for c in ready], [as_bytes(c.source) for c in ready], [c.lease for c in ready]),
            ).fetchall()
            keys = {(host, os.fsdecode(source)) for host, source in ended}
            store(self._conn, [record for key, record in by_key.items() if key in keys], self.host)
        return [c for c in ready if (c.host, c.source) in keys]

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        try:
            self._conn.execute("SELECT pg_advisory_lock(%s)", (EXCLUSIVE_LOCK,))
        except psycopg.Error as exc:
            raise self._failure(exc, "cannot take the resolve/recover lock of") from exc
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):  # a broken session has released it already
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (EXCLUSIVE_LOCK,))

    def read_only(self) -> str | None:
        """Why this session cannot write the rows: a standby server, a read-only session, or
        no UPDATE privilege on the table."""
        standby, session, allowed = self._one(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'),"
            " has_table_privilege('files', 'UPDATE')"
        ) or (False, "off", True)
        if standby:
            return f"{self.location} is a standby server (read only)"
        if session == "on":
            return f"the sessions of {self.location} are read only (default_transaction_read_only)"
        return None if allowed else f"the user of {self.location} may not update its table files"

    def rehearsal(self) -> SQLiteManifest:
        """A copy in memory (SQLite) of every row and run, for a dry run."""
        copy = SQLiteManifest.in_memory(self.location)
        if not self.empty:
            copy.load(self.records(), self.runs())
        return copy

    @classmethod
    def rehearsal_of(cls, url: str) -> SQLiteManifest:
        """A dry run's copy of the manifest *url* (empty when the database has none yet):
        read only; not even the schema is created."""
        with cls(url, create=False, rehearse=True) as manifest:
            return manifest.rehearsal()

    def close(self) -> None:
        self._conn.close()
