"""The ledger's schema: numbered, append-only migrations (applied by ``potstill.sqlite_migrations``)
and the SQL fragments its queries share. A new column or table is a new entry at the end; an
applied entry never changes, since every ledger on disk recorded it as done."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the calls table.
    """
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_hash TEXT NOT NULL,
        role TEXT NOT NULL,            -- teacher | student
        stage TEXT NOT NULL,           -- pilot | generate | evaluate | serve | ...
        model TEXT NOT NULL,
        request TEXT NOT NULL,         -- canonical JSON of what was sent (never a key)
        response TEXT,                 -- JSON of the parsed response
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cached_input_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        latency_s REAL NOT NULL DEFAULT 0,
        status TEXT NOT NULL,          -- ok | error
        error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX calls_hash ON calls(request_hash, status);
    CREATE INDEX calls_role_stage ON calls(role, stage);
    """,
    # 2: why the model stopped; and each generate run's plan, so `potstill cost` can show cache
    # hits and price the inputs still unanswered, even for a run that was killed.
    """
    ALTER TABLE calls ADD COLUMN stop_reason TEXT;
    CREATE TABLE generate_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        stage TEXT NOT NULL,
        model TEXT NOT NULL,
        inputs INTEGER NOT NULL,       -- records in the input file
        unique_requests INTEGER NOT NULL,
        cache_hits INTEGER NOT NULL,   -- inputs answered from the ledger at the start
        retries INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,          -- running | done | budget | errors (| error | stale: migration 3)
        started_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE generate_plan (
        run_id INTEGER NOT NULL,
        request_hash TEXT NOT NULL,
        PRIMARY KEY (run_id, request_hash)
    ) WITHOUT ROWID;
    """,
    # 3: who runs a generate run, so the next run can tell a crashed one (status stale) from a
    # live one; a run that ends by an exception is marked error.
    """
    ALTER TABLE generate_runs ADD COLUMN pid INTEGER;
    ALTER TABLE generate_runs ADD COLUMN host TEXT;
    """,
    # 4: provider batches (generate.engine: batch). A batch row and its requests are committed
    # before anything is uploaded, and its provider ids as soon as they are known, so a rerun
    # after kill -9 finds (or polls) the same batch instead of paying for the requests twice.
    # A call answered through a batch keeps the price multiplier it was billed at.
    """
    ALTER TABLE calls ADD COLUMN price_multiplier REAL NOT NULL DEFAULT 1;
    CREATE TABLE batches (
        key TEXT PRIMARY KEY,          -- our name: the upload's file name and the batch's metadata
        provider TEXT NOT NULL,        -- openai | anthropic
        model TEXT NOT NULL,
        stage TEXT NOT NULL,
        attempt INTEGER NOT NULL,      -- 1, then +1 for each resubmission of expired/failed items
        batch_id TEXT,
        file_id TEXT,
        state TEXT NOT NULL,           -- preparing | submitted | <provider status> | collected | refused
        requests INTEGER NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        expired INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE batch_items (
        batch_key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        request TEXT NOT NULL,         -- canonical JSON, so a resumed batch commits without the inputs
        PRIMARY KEY (batch_key, request_hash)
    ) WITHOUT ROWID;
    """,
    # 5: the teacher a generate run asked (hash of its identity), so a run keeps the requests that
    # earlier runs of the same teacher left unanswered (a budget stop, then a trial with a smaller
    # data.limit) in `potstill cost`'s projection, and a run of another teacher drops them.
    """
    ALTER TABLE generate_runs ADD COLUMN identity TEXT;
    """,
    # 6: the Responses API's stored responses (`potstill serve`, store: true): each response as
    # the client got it and every input item the model read (earlier turns' included), so a later
    # request names it as previous_response_id and the conversation needs no walk of a chain.
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,           -- resp_...
        previous_id TEXT,              -- the previous_response_id it was asked with
        input TEXT NOT NULL,           -- JSON list of input items, each with its id
        response TEXT NOT NULL,        -- JSON of the Response object
        created_at REAL NOT NULL
    );
    """,
    # 7: OpenAI's Files and Batch APIs on `potstill serve`: each File and Batch object as a client
    # gets it (its content on disk, RUN/serve_files/), so a restarted server lists them and resumes a
    # batch it was running.
    """
    CREATE TABLE serve_files (
        id TEXT PRIMARY KEY,           -- file-...
        object TEXT NOT NULL,          -- JSON of the File object
        created_at REAL NOT NULL
    );
    CREATE TABLE serve_batches (
        id TEXT PRIMARY KEY,           -- batch_...
        object TEXT NOT NULL,          -- JSON of the Batch object
        created_at REAL NOT NULL
    );
    """,
    # 8: the key of a teacher request whatever its output budget (``Teacher.prompt_hash``), so that a
    # raised teacher.max_tokens reuses the answers that ended below the old one (``Ledger.whole_answers``).
    """
    ALTER TABLE calls ADD COLUMN prompt_hash TEXT;
    CREATE INDEX calls_prompt ON calls(prompt_hash) WHERE prompt_hash IS NOT NULL;
    """,
    # 9: the server process answering a background response (pid, host), so that a server starting
    # beside it on the same run leaves it be, and one starting after it died fails what it left.
    """
    ALTER TABLE responses ADD COLUMN pid INTEGER;
    ALTER TABLE responses ADD COLUMN host TEXT;
    """,
    # 10: the server process running each Batch API batch (pid, host), so that a server starting on
    # the same run resumes only the batches whose server is gone, not one a live server still runs.
    """
    ALTER TABLE serve_batches ADD COLUMN pid INTEGER;
    ALTER TABLE serve_batches ADD COLUMN host TEXT;
    """,
    # 11: a background response's request as the client sent it (its body and request id), kept while
    # it is answered, so a server starting after the one answering it died asks it again.
    """
    ALTER TABLE responses ADD COLUMN request TEXT;
    """,
    # 12: the generate run a run belongs to (generate.tool_rounds: each round's steps are runs of
    # their own), so `potstill cost` reports one generate with its rounds, not its last step.
    """
    ALTER TABLE generate_runs ADD COLUMN parent INTEGER;
    """,
    # 13: the student's share of a served request the teacher answered (its forward's seconds at
    # student.usd_per_hour), kept apart from the row's cost_usd, the teacher's bill: it was added to
    # it, so `potstill cost` booked the student's compute under the teacher's model.
    """
    ALTER TABLE calls ADD COLUMN student_cost_usd REAL NOT NULL DEFAULT 0;
    """,
    # 14: the part of a call's output tokens a reasoning model spent thinking (OpenAI's
    # completion_tokens_details.reasoning_tokens), so `potstill cost` says why eight one-word answers
    # cost 2,416 output tokens. Rows written before it read 0.
    """
    ALTER TABLE calls ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
    """,
]

#: Stop reasons of an answer that ended by itself (OpenAI and local: stop; Anthropic: end_turn,
#: stop_sequence), which a larger output budget would not have changed.
NATURAL_STOPS = ("stop", "end_turn", "stop_sequence")
#: Stop reasons of an answer the provider stopped as unsafe (Anthropic: refusal, with the words Claude 4
#: wrote before it; OpenAI: content_filter, the content withheld or cut): whatever text it holds, it is
#: no answer to learn (curate sets it aside, import skips it).
REFUSED_STOPS = ("refusal", "content_filter")

#: Batch states after which nothing more comes from the provider: ``lost`` is a batch id the
#: provider answers 404 for (a key of another project or workspace); ``foreign`` marks (a row with no
#: requests) a batch taken for ours after a crash whose results held none of our requests; ``unsent``
#: is a killed run's row never sent that no later run asked for (nothing was billed).
BATCH_CLOSED = ("collected", "refused", "lost", "foreign", "unsent")


def billed(column: str) -> str:
    """A row's ``column`` (its tokens) as the provider billed them, for a SUM: 0 on a served escalation
    answered by reusing an earlier teacher answer (serve's ``+cached``, ``teacher_cached`` in its
    response, $0), whose row keeps the reused call's tokens for `potstill requests`; summed, they
    counted that call's tokens twice beside its cost once."""
    return f"(CASE WHEN stage='serve' AND json_extract(response, '$.teacher_cached') THEN 0 ELSE {column} END)"


# Calls and their cost at the live price: a batch answer is billed at price_multiplier of it.
LIVE_SUM = ("SELECT COUNT(*), COALESCE(SUM(CASE WHEN price_multiplier > 0 THEN cost_usd / price_multiplier"
            " ELSE cost_usd END), 0)")
