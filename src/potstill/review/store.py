"""Review decisions in SQLite (``review.sqlite`` in the run directory), read by the next `curate`.

One row per record id: the latest decision wins, so a reviewer can change their mind. An
``edit`` (a task without a label set) keeps the reviewer's corrected answer in ``output``. The file
lives beside ``calls.sqlite`` rather than inside it because the curate stage fingerprints it: a
new decision reruns curate, while teacher traffic does not.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from potstill.errors import PotstillError
from potstill.sqlite_migrations import apply_migrations

DECISIONS = ("accept", "reject", "relabel", "edit")

# Numbered and append-only, applied like the ledger's (``potstill.sqlite_migrations.apply_migrations``).
MIGRATIONS = [
    """CREATE TABLE decisions (
        record_id TEXT PRIMARY KEY,
        decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'relabel')),
        label TEXT,
        teacher_output TEXT,
        decided_at TEXT NOT NULL
    )""",
    # 2. ``edit``: the CHECK names the decisions, and SQLite cannot alter a CHECK, so the table is
    # rebuilt with its rows (in the migration's one transaction: a crash leaves the old table).
    """CREATE TABLE decisions_v2 (
        record_id TEXT PRIMARY KEY,
        decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'relabel', 'edit')),
        label TEXT,
        teacher_output TEXT,
        decided_at TEXT NOT NULL,
        output TEXT,
        CHECK ((decision = 'edit') = (output IS NOT NULL))
    );
    INSERT INTO decisions_v2 (record_id, decision, label, teacher_output, decided_at)
        SELECT record_id, decision, label, teacher_output, decided_at FROM decisions;
    DROP TABLE decisions;
    ALTER TABLE decisions_v2 RENAME TO decisions;""",
]


class ReviewStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # Rollback journal (not WAL): after a commit the whole state is in this one file, so the
        # curate stage's content hash of it sees every decision.
        with _named(self.path):  # a folder in its place, no permission: the CLI's line names the file
            self.db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            with _named(self.path):
                apply_migrations(self.db, MIGRATIONS)
        except sqlite3.DatabaseError as e:  # another file in its place: say which, and leave it as it is
            self.db.close()
            if isinstance(e, sqlite3.OperationalError):  # locked, disk full, ...: not about what the file is
                raise
            raise PotstillError(f"{self.path}: not a potstill review store (SQLite: {e}); move it aside") from None

    def __enter__(self) -> "ReviewStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def decide(self, record_id: str, decision: str, label: str | None = None, teacher_output: str | None = None,
               output: str | None = None) -> dict[str, Any]:
        """Store a decision and give it back as ``decisions`` reads it. ``output``: an edit's corrected
        answer (the caller has validated it against the task)."""
        if decision not in DECISIONS:
            raise PotstillError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        if decision == "relabel" and not label:
            raise PotstillError("a relabel decision needs the new label")
        if decision == "edit" and output is None:
            raise PotstillError("an edit decision needs the corrected answer")
        row = {"decision": decision, "label": label if decision == "relabel" else None, "teacher_output": teacher_output,
               "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "output": output if decision == "edit" else None}
        with _named(self.path), self.db:
            self.db.execute(
                "INSERT INTO decisions (record_id, decision, label, teacher_output, decided_at, output) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(record_id) DO UPDATE SET decision=excluded.decision, label=excluded.label, "
                "teacher_output=excluded.teacher_output, decided_at=excluded.decided_at, output=excluded.output",
                (record_id, row["decision"], row["label"], row["teacher_output"], row["decided_at"], row["output"]),
            )
        return row

    def data_version(self) -> int:
        """SQLite's ``data_version``: it changes when *another* connection (a second review server, a
        script) commits to the file, never for this one's own commits, so a reader that keeps the
        decisions it wrote re-reads the table only then."""
        with _named(self.path):
            return self.db.execute("PRAGMA data_version").fetchone()[0]

    def decisions(self) -> dict[str, dict[str, Any]]:
        with _named(self.path):
            rows = self.db.execute("SELECT record_id, decision, label, teacher_output, decided_at, output "
                                   "FROM decisions").fetchall()
        return {r[0]: {"decision": r[1], "label": r[2], "teacher_output": r[3], "decided_at": r[4], "output": r[5]}
                for r in rows}


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """A SQLite error raised inside leaves carrying ``path`` as ``filename`` (sqlite3 names no file),
    as the ledger's do, so the CLI's one line says it was review.sqlite."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        if not getattr(e, "filename", None):
            e.filename = str(path)  # type: ignore[attr-defined]
        raise


def migrate_in(run_dir: str | Path) -> None:
    """Bring ``run_dir``'s review.sqlite to this schema (the curate stage's ``before``: it hashes the
    file next); an absent file stays absent."""
    path = Path(run_dir) / "review.sqlite"
    if path.exists():
        ReviewStore(path).close()


def load_decisions(path: str | Path) -> dict[str, dict[str, Any]]:
    """Decisions by record id; an absent file means no review yet."""
    path = Path(path)
    if not path.exists():
        return {}
    with ReviewStore(path) as store:
        return store.decisions()


def error_rate(decisions: dict[str, dict[str, Any]], parse: Callable[[str], Any] | None = None) -> float | None:
    """Share of reviewed records where the teacher was wrong: rejected, relabelled to another
    label, or edited to another answer.

    A relabel to the label the teacher already gave (``parse`` reads it from the stored teacher
    output, "Sports." naming sports) confirms the teacher: a reviewer labelling by number key
    presses the right label whatever the teacher said. So does an edit that the task reads as the
    teacher's answer (JSON with other spacing, a summary with a line break moved).
    """
    if not decisions:
        return None

    def wrong(d: dict[str, Any]) -> bool:
        if d["decision"] not in ("relabel", "edit"):
            return d["decision"] == "reject"
        said = d.get("teacher_output")
        if said is None:
            return True
        read = parse if parse is not None else str.strip
        return read(said) != (d["label"] if d["decision"] == "relabel" else read(d.get("output") or ""))

    return sum(wrong(d) for d in decisions.values()) / len(decisions)
