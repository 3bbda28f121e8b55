"""Numbered, append-only SQLite migrations recorded in a ``_migrations`` table: the ledger's and the
review store's schemas evolve through them (simonw/llm's pattern)."""

from __future__ import annotations

import sqlite3
import time


def _statements(script: str) -> list[str]:
    """A migration's SQL statements, split where SQLite says each is complete (comments and strings kept)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf)
            buf = ""
    return out + ([buf] if buf.strip() else [])


def _applied(db: sqlite3.Connection) -> set[int]:
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='_migrations'").fetchone():
        return set()
    return {r[0] for r in db.execute("SELECT id FROM _migrations")}


def behind(db: sqlite3.Connection, migrations: list[str]) -> bool:
    """Whether some of ``migrations`` are not yet applied to ``db``."""
    return len(_applied(db)) < len(migrations)


def apply_migrations(db: sqlite3.Connection, migrations: list[str]) -> None:
    """Apply the numbered, append-only ``migrations`` not yet recorded in ``_migrations``.

    All pending ones run in one write transaction with their records, so a crash leaves none
    half-applied and two processes opening a new file at once migrate it once (the second waits
    for the lock, then finds the work done). A file versioned by ``PRAGMA user_version`` (review
    stores before they used this) counts its first ``user_version`` migrations as applied.
    """
    if not behind(db, migrations):
        return
    if db.in_transaction:
        db.commit()
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, applied_at REAL)")
        done = _applied(db)
        if not done:
            done = set(range(1, db.execute("PRAGMA user_version").fetchone()[0] + 1))
            db.executemany("INSERT INTO _migrations VALUES (?, ?)", ((i, time.time()) for i in sorted(done)))
        for i, sql in enumerate(migrations, 1):
            if i not in done:
                for statement in _statements(sql):
                    db.execute(statement)
                db.execute("INSERT INTO _migrations VALUES (?, ?)", (i, time.time()))
        db.commit()
    except BaseException:
        db.rollback()
        raise


def _name(x: str) -> str:
    return '"' + x.replace('"', '""') + '"'


def read_as_migrated(db: sqlite3.Connection, migrations: list[str]) -> None:
    """Let ``db``, behind ``migrations`` and not to be written (a read-only file), be read as if they were
    applied, without writing a byte of it: each table they add is an empty TEMP table, and each table they add
    columns to a TEMP view of it with those columns at their defaults. Unqualified names find the temp schema
    first, so every read sees the current schema (``SELECT *`` its column order). For additive migrations:
    new tables, columns with defaults and indexes, as every one of the ledger's is."""
    full = sqlite3.connect(":memory:")
    try:
        apply_migrations(full, migrations)
        tables = full.execute("SELECT name, sql FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
                              " AND name <> '_migrations'").fetchall()
        for table, sql in tables:
            have = {r[1] for r in db.execute(f"PRAGMA main.table_info({_name(table)})")}
            cols = [(r[1], r[4]) for r in full.execute(f"PRAGMA table_info({_name(table)})")]  # name, default
            if not have:
                db.execute(sql.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
            elif any(c not in have for c, _ in cols):
                shown = ", ".join(_name(c) if c in have else f"{'NULL' if d is None else d} AS {_name(c)}"
                                  for c, d in cols)
                db.execute(f"CREATE TEMP VIEW {_name(table)} AS SELECT {shown} FROM main.{_name(table)}")
    finally:
        full.close()
