"""The review page (FastAPI): one record at a time, keyboard decisions, progress and error rate."""

from __future__ import annotations

import contextlib
import secrets
import threading
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from potstill.config import CurateConfig, TaskConfig
from potstill.errors import PotstillError
from potstill.records import Record, check_ids, content_text, read_json, read_numbered
from potstill.review.guard import Guard, allowed_hosts
from potstill.review.page import PAGE
from potstill.review.sample import stratified_sample
from potstill.review.store import DECISIONS, ReviewStore, error_rate
from potstill.tasks import get_task
from potstill.tasks.answers import output_problem
from potstill.tool_calls import call_names, call_text


class Shown(BaseModel):
    decision: str
    label: str | None = None
    output: str | None = None


class Decision(BaseModel):
    id: str
    decision: str
    label: str | None = None
    output: str | None = None  # an edit's corrected answer
    # The record's decision as the client last saw it (null: undecided). Given, the decision is refused
    # when the store holds another (made since in another tab), rather than replacing it unseen.
    previous: Shown | None = None
    # The version of the decisions the client holds (``state``'s or the last answer's): the answer
    # holds the decisions changed since. Absent: only this record's.
    since: str | None = None


class SampleDecisions:
    """The review sample's decisions, kept in memory with the version at which each last changed, so
    that a decision is answered with what changed since the client's version, not the whole sample.

    review.sqlite is read again only when another connection wrote to it (``ReviewStore.data_version``:
    a second review server, a script); this server's own decisions update the memory as they are
    stored. Versions are ``epoch:n``, the epoch this server's own: a version from another server (one
    restarted since) says nothing here, and gets every decision.
    """

    def __init__(self, store: ReviewStore, ids: list[str]):
        self.store, self.ids = store, set(ids)
        self.epoch = secrets.token_hex(4)
        self.mine: dict[str, dict[str, Any]] = {}
        self.changed_at: dict[str, int] = {}  # record id -> the version at which its decision last changed
        self.n = 0
        self.seen: int | None = None  # review.sqlite's data_version when it was last read
        self.sync()

    @property
    def version(self) -> str:
        return f"{self.epoch}:{self.n}"

    def sync(self) -> None:
        """Read review.sqlite again if another connection committed to it since it was last read."""
        now_version = self.store.data_version()
        if now_version == self.seen:
            return
        self.seen = now_version
        now = {k: d for k, d in self.store.decisions().items() if k in self.ids}
        for k in sorted(now.keys() | self.mine.keys()):
            if now.get(k) != self.mine.get(k):
                self._set(k, now.get(k))

    def _set(self, record_id: str, d: dict[str, Any] | None) -> None:
        self.n += 1
        self.changed_at[record_id] = self.n
        if d is None:  # a row deleted by hand
            self.mine.pop(record_id, None)
        else:
            self.mine[record_id] = d

    def decide(self, record_id: str, *args: Any) -> None:
        self._set(record_id, self.store.decide(record_id, *args))

    def since(self, version: str | None) -> dict[str, dict[str, Any] | None]:
        """The decisions changed after ``version`` (null where one was removed)."""
        epoch, _, n = (version or "").partition(":")
        start = int(n) if epoch == self.epoch and n.isdigit() else 0
        return {k: self.mine.get(k) for k, at in self.changed_at.items() if at > start}


def _same(stored: dict[str, Any] | None, shown: Shown | None) -> bool:
    """Whether the stored decision is the one the client showed (a label only counts for a relabel,
    a text only for an edit: the page keeps neither for the others)."""
    if stored is None or shown is None:
        return stored is None and shown is None
    return (stored["decision"] == shown.decision
            and (shown.decision != "relabel" or stored["label"] == shown.label)
            and (shown.decision != "edit" or stored["output"] == shown.output))


def _said(d: dict[str, Any]) -> str:
    return f"relabel to {d['label']}" if d["decision"] == "relabel" else d["decision"]


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """An OpenAI-style error body, so every client of potstill's servers parses failures one way."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def load_run(run_dir: str | Path, sample: int, seed: int = 0) -> tuple[list[str], list[Any]]:
    """(label set, sampled records) of a curated run; a clear error when the run is not curated."""
    run = Path(run_dir)
    card_path, teacher = run / "card.json", run / "teacher.jsonl"
    if not teacher.exists() or not card_path.exists():
        raise PotstillError(f"{run}: no teacher.jsonl and card.json here: run `potstill generate` and `potstill curate` first")
    card = read_json(card_path)  # cut short or edited into something else: one line naming it
    labels = list((card.get("task") or {}).get("labels") or [])
    parse = get_task(TaskConfig(type="classification", labels=labels)).parse if labels else None
    numbered = read_numbered(teacher)
    check_ids(teacher, numbered)  # a decision is kept by id: two inputs under one id would share it
    records = stratified_sample([r for _, r in numbered], sample, seed, labelled=bool(labels), parse=parse)
    if not records:
        raise PotstillError(f"{teacher}: no valid teacher outputs to review")
    return labels, records


def earlier_turns(rec: Record) -> list[dict[str, str]]:
    """The messages of a conversation before its last user message (``Record.text``, shown as the
    input): a chat log's answer is judged on what the teacher read, not on "Tell me more." alone."""
    return _turns(rec.messages, 0, _last_user(rec.messages))


def later_turns(rec: Record) -> list[dict[str, str]]:
    """The messages after the last user message: an agent's calls and the tools' results, which the
    answer after them (a reply in words, ``task.tool_choice: auto``) is judged on."""
    return _turns(rec.messages, _last_user(rec.messages) + 1, len(rec.messages))


def _last_user(messages: list[dict[str, Any]]) -> int:
    """The index of a chat's last user message (the input the page shows), or its length if none."""
    return max((n for n, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))


def _turns(messages: list[dict[str, Any]], start: int, end: int) -> list[dict[str, str]]:
    """Messages ``start:end`` as role and text: an assistant's calls as the student writes them, a tool
    result under the name of the function it answers."""
    names = call_names(messages)
    out = []
    for m in messages[start:end]:
        role, text = str(m.get("role")), content_text(m.get("content"))
        if m.get("tool_calls"):
            text = "\n".join(t for t in (text, call_text(m["tool_calls"])) if t)
        elif role == "tool":
            role = f"tool {names.get(str(m.get('tool_call_id'))) or m.get('name') or ''}".strip()
        out.append({"role": role, "text": text})
    return out


def load_checks(run_dir: str | Path) -> tuple[Any, CurateConfig]:
    """(task, curate's rules) as the run's last curate validated teacher outputs: an edited answer
    passes the same checks, so the server refuses one that curate would set aside.

    card.json holds the task and the rules; a card written before it held ``json_schema`` leaves
    the schema to RUN/potstill.yaml, the settings the stages last ran with.
    """
    run = Path(run_dir)
    card = read_json(run / "card.json")
    task = dict(card.get("task") or {})
    saved: Any = None
    if (run / "potstill.yaml").exists() and (task.get("type") == "tools" or task.get("type") == "extraction"
                                             and not task.get("json_schema")):
        saved = yaml.safe_load((run / "potstill.yaml").read_text(encoding="utf-8")) or {}
        saved = ((saved.get("task") or {}) if isinstance(saved, dict) else {})
    if task.get("type") == "extraction" and not task.get("json_schema") and saved is not None:
        task["json_schema"] = saved.get("json_schema")
    if task.get("type") == "tools":
        # Its schema is derived from the tools and how they are answered (a card before 2026-12-06 left
        # parallel_tool_calls and tool_choice out: RUN/potstill.yaml's then).
        task.pop("json_schema", None)
        for key in ("parallel_tool_calls", "tool_choice"):
            if key not in task and isinstance(saved, dict) and key in saved:
                task[key] = saved[key]
    f = card.get("filters") or {}
    rules = CurateConfig(**{k: f[k] for k in ("min_output_chars", "max_output_chars", "output_regex") if k in f})
    return get_task(TaskConfig(**{k: v for k, v in task.items() if v is not None})), rules


def create_app(run_dir: str | Path, sample: int = 60, seed: int = 0, host: str = "127.0.0.1",
               token: str | None = None) -> FastAPI:
    """The review app of a server bound to ``host``; ``token``: the one every request must carry
    (``guard``; None: none, for a caller that serves it to itself)."""
    run = Path(run_dir)
    labels, records = load_run(run, sample, seed)
    task, rules = load_checks(run)
    by_id = {r.id: r for r in records}
    # The answer a stored teacher output gives, as curate reads it (a relabel to its label, an edit
    # to an answer the task reads the same, is no teacher error).
    parse = task.parse
    store = ReviewStore(run / "review.sqlite")
    lock = threading.Lock()
    decisions = SampleDecisions(store, list(by_id))
    # What the page shows of each record, built once: a decision changes only its ``decision``.
    shown = [{"id": r.id, "context": earlier_turns(r), "text": r.text, "after": later_turns(r), "output": r.output,
              "gold": r.label,
              "slice": r.slice, "samples": r.samples, "agreement": r.meta.get("agreement")} for r in records]
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        store.close()

    app = FastAPI(title="potstill review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(Guard, hosts=allowed_hosts(host), token=token)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":  # its loc is a byte offset, not a field
            return _error(400, "the body is not valid JSON", None)
        param = ".".join(str(x) for x in err["loc"][1:]) or None
        return _error(400, f"{param or 'body'}: {err['msg']}", param)

    def progress() -> dict[str, Any]:
        rate = error_rate(decisions.mine, parse)
        return {"reviewed": len(decisions.mine), "total": len(records),
                "teacher_error_rate": None if rate is None else round(rate, 4)}

    def state() -> dict[str, Any]:
        with lock:
            decisions.sync()
            items = [{**it, "decision": decisions.mine.get(it["id"])} for it in shown]
            return {"labels": labels, "items": items, "progress": progress(), "version": decisions.version}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/state")
    def get_state() -> dict[str, Any]:
        return state()

    @app.post("/api/decisions")
    def decide(body: Decision) -> Any:
        rec = by_id.get(body.id)
        if rec is None:
            shown_id = body.id if len(body.id) <= 100 else body.id[:100] + "…"  # not a megabyte echoed back
            return _error(404, f"record {shown_id!r} is not in this review sample", "id", "record_not_found")
        if body.decision not in DECISIONS:
            return _error(400, f"decision must be one of {', '.join(DECISIONS)}", "decision", "invalid_decision")
        if body.decision == "relabel" and body.label not in labels:
            return _error(400, f"label must be one of {', '.join(labels) or '(no label set: relabel needs one)'}",
                          "label", "invalid_label")
        if body.decision == "edit":
            if labels:  # the answer is a label: a relabel names it, and keeps the soft label one-hot
                return _error(400, "this task has a label set: relabel the record instead of editing its answer",
                              "decision", "invalid_decision")
            if body.output is None:
                return _error(400, "output: an edit needs the corrected answer", "output", "invalid_output")
            cut = next((n for n, ch in enumerate(body.output) if "\ud800" <= ch <= "\udfff"), None)
            if cut is not None:  # JSON's \ud83d alone (half an emoji pasted): no UTF-8 file, SQLite's included, holds it
                return _error(400, f"output: not valid Unicode: character {cut + 1} is half of a character (a lone "
                                   "surrogate, as from a cut emoji); delete it or paste the whole character",
                              "output", "invalid_output")
            problem = output_problem(body.output, task, rules)
            if problem is not None:  # curate would set it aside: say why now, while the reviewer can fix it
                return _error(400, f"output: {problem}", "output", "invalid_output")
        with lock:
            decisions.sync()
            stored = decisions.mine.get(rec.id)
            if "previous" in body.model_fields_set and not _same(stored, body.previous):
                now = _said(stored) if stored else "no decision"
                return _error(409, f"record {rec.id} holds another decision ({now}) since this page showed it, made "
                                   "in another tab: the page now shows it; decide again to replace it",
                              "previous", "decision_conflict")
            decisions.decide(rec.id, body.decision, body.label, rec.output, body.output)
            changed = decisions.since(body.since) if "since" in body.model_fields_set else {rec.id: decisions.mine[rec.id]}
            # What changed, not the sample: a keypress costs one decision (and any made elsewhere since).
            return {"decisions": changed, "progress": progress(), "version": decisions.version}

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, sample: int = 60, seed: int = 0) -> None:
    from potstill import listen
    from potstill.progress import say

    # Bound first, as serve does: a taken port is one line before review.sqlite is made, which a
    # failed review left behind, and curate then read as a new input and ran again.
    sock = listen.bind(host, port)
    token = secrets.token_urlsafe(24)
    try:
        app = create_app(run_dir, sample, seed, host, token)
    except BaseException:
        sock.close()
        raise
    say(f"review: http://{host}:{listen.url_port(sock)}/?token={token}  (a accept, r reject, 1-9 relabel, l any label, e edit, arrows move; Ctrl+C to "
        "stop, then `potstill curate` applies the decisions)")
    listen.run(app, sock)
