"""`potstill import`: existing teacher traffic into records, with provenance in ``meta``.

Formats (``--format auto`` picks one per line, by its keys):

* ``finetune``: OpenAI fine-tuning JSONL, ``{"messages": [..., {"role": "assistant", ...}]}``; the answer
  is the last assistant turn trained on (``weight`` 1, the default), the turns before it the prompt.
* ``openai-log``: OpenAI chat-completion logs: the Batch API output (``{"custom_id",
  "response": {"body": <chat.completion>}}``, joined to its input file by ``custom_id`` through
  ``--requests``), Anthropic's Message Batches results (``{"custom_id", "result": {"type":
  "succeeded", "message"}}``, joined the same way to the batch's ``{"custom_id", "params"}``
  requests) or ``{"request": <body>, "response": <chat.completion>}`` lines (LiteLLM's logging payload
  names the request's ``messages`` beside its ``response``); the same with a
  Responses API request (``input``, ``instructions``) and ``response`` object (a Batch sent to
  ``/v1/responses`` holds one as its ``body``).
* ``pairs``: ``{"request"|"prompt"|"input": ..., "response"|"output"|"completion": ...}``
  where each side is a string, a chat request/completion, or an Anthropic message; an ``output``
  that is none of these but a JSON object or array (an extraction's answer) is its JSON text.
* ``stored``: OpenAI stored completions (``store: true``) as exported through the API: one
  ``chat.completion`` object a line (what ``GET /v1/chat/completions`` lists), with its input
  messages (``GET /v1/chat/completions/{id}/messages``) under ``input_messages`` or ``messages``.
  Stored Responses alike: one ``response`` object a line (``GET /v1/responses/{id}``) with its input
  items (``GET /v1/responses/{id}/input_items``, whose page lists the newest first: ``"order":
  "asc"`` in the page says otherwise) under ``input_items``, or the request's ``input``.
* ``served``: potstill's own served traffic, the ``serve`` rows of a ``calls.sqlite``.

Every record keeps where it came from: ``meta.source`` (file), ``meta.line`` (or ledger row
id), ``meta.format`` and, where the log has them, ``teacher``, ``usage`` and ``finish_reason``.
The instruction (a system or developer message) goes to ``meta.system``, not the record's messages.
An Anthropic request that ends with an assistant turn (a prefill, ``{``) has Claude go on from it: the
answer is the prefill and the message's text, the record's messages end before the prefill.

A logged answer that is a tool call is skipped (no text to distil), unless asked to keep calls
(``tool_calls=True``, ``--tool-calls``): then it is the ``{name, arguments}`` text a tools task
(``task.type: tools``) learns, its text beside the call (Claude's "Let me look that up.") left out.
An Anthropic conversation's tool turns are read into OpenAI's form (``messages_format``), as serve reads them,
and so are the legacy function-calling turns (``function_call``, ``role: "function"``).

What a text student cannot learn from is skipped and counted, one line per reason, never the whole
file refused for it (``answers.NoText``): a refusal, an empty answer, a failed or unfinished request
(an error body, Anthropic's ``pause_turn``), a request with image, audio or file parts or a server
tool's call. A line of the wrong shape is one error naming it, and nothing is written.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from potstill.errors import PotstillError
from potstill.importers.answers import (RESPONSE_KEYS, NoText, answer_of, as_reply, check_media, failed,
                                        kept_call, message_calls, response_answer, split_prefill)
from potstill.inputs import OwnInstructions
from potstill.ledger import Ledger
from potstill.ledger_rows import ServedCall
from potstill.messages_format import chat_messages as anthropic_chat
from potstill.progress import bar, say
from potstill.records import (CUT_GZIP, MAX_LINE, Record, _delimiter, atomic_write, bounded_lines, content_text,
                              dump_jsonl, gzipped, open_lines, read_objects, record_problem, table_suffix, user_key)
from potstill.responses_format import ResponsesInputError, chat_messages

FORMATS = ("auto", "finetune", "openai-log", "pairs", "stored", "served")
# The instruction's roles: OpenAI's newer models take it as a developer message (serve drops both alike).
INSTRUCTION_ROLES = ("system", "developer")


def _objects(msgs: list[Any], where: str) -> list[dict[str, Any]]:
    """``msgs`` when each is an object (a message), else one line naming the first that is not."""
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise PotstillError(f"{where}: messages.{i}: expected an object with role and content, got {type(m).__name__}")
    return msgs


def _responses_input(items: Any, instructions: Any, where: str) -> list[dict[str, Any]]:
    """A Responses API request's ``input`` (and ``instructions``) as chat messages. A response object
    whose request used a stored prompt gives its ``instructions`` as input items (the prompt's own
    developer and system messages), not a string: they come first, as the string would."""
    check_media(items)  # before chat_messages, which refuses them as the server does
    check_media(instructions)
    try:
        msgs = chat_messages(items)
        first = chat_messages(instructions) if isinstance(instructions, list) else []
    except ResponsesInputError as e:
        raise PotstillError(f"{where}: {e}") from None
    if isinstance(instructions, str) and instructions:
        first = [{"role": "system", "content": instructions}]
    return first + msgs


def _is_items(side: Any) -> bool:
    """Whether a list is Responses input items rather than chat messages (items name their type)."""
    return isinstance(side, list) and any(isinstance(m, dict) and ("type" in m and "role" not in m
                                                                   or m.get("type") == "message") for m in side)


# Content blocks only Anthropic's Messages API sends: its tool turns and an assistant's thinking.
CLAUDE_BLOCKS = ("tool_use", "tool_result", "thinking", "redacted_thinking")
# Anthropic's server tools (web search, code execution, MCP), run by Anthropic: a call and its result.
SERVER_TOOL_USES = ("server_tool_use", "mcp_tool_use")


def _claude_turns(msgs: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """An Anthropic conversation's tool turns (an agent's log) in OpenAI's form, as an OpenAI log holds
    them and a tools task learns them: ``tool_use`` blocks an assistant's ``tool_calls``, ``tool_result``
    blocks ``tool`` messages, ``thinking`` left out (``messages_format.chat_messages``, as serve reads
    them). Messages with none of those blocks come back as they are. ``NoText`` for a server tool's
    call or result (a web search's), which a student cannot run, and for image parts."""
    types = {b.get("type") for m in msgs if isinstance(m.get("content"), list) for b in m["content"]
             if isinstance(b, dict)}
    if any(t in SERVER_TOOL_USES or str(t).endswith("_tool_result") and t != "tool_result" for t in types):
        raise NoText("its request holds a server tool's call or result (web search, code execution), which a "
                     "student cannot run", distil=False)
    if not types & set(CLAUDE_BLOCKS):
        return msgs
    check_media(msgs)
    try:
        return anthropic_chat(msgs, drop=("thinking", "redacted_thinking"))
    except ResponsesInputError as e:
        raise PotstillError(f"{where}: {e}") from None


def _legacy_functions(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The legacy function-calling turns (OpenAI's before tools: an assistant's ``function_call`` and the
    ``role: "function"`` message of its result) as the tool turns they became, which records and every
    teacher take: ``tool_calls`` and ``role: "tool"``, each result answering the call before it by an id
    made here (the legacy turns carry none). Other messages come back as they are."""
    if not any(m.get("role") == "function" or m.get("function_call") for m in msgs):
        return msgs
    out, call = [], None
    for i, m in enumerate(msgs):
        if isinstance(m.get("function_call"), dict) and not m.get("tool_calls"):
            call = f"call_{i}"
            m = {**{k: v for k, v in m.items() if k != "function_call"},
                 "tool_calls": [{"id": call, "type": "function", "function": m["function_call"]}]}
        elif m.get("role") == "function":
            m = {"role": "tool", "tool_call_id": call or f"call_{i}", "content": m.get("content")}
        out.append(m)
    return out


def _messages(side: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(side, str):
        return [{"role": "user", "content": side}]
    if isinstance(side, dict) and "input" in side and "messages" not in side:  # a Responses API request
        return _responses_input(side["input"], side.get("instructions"), where)
    if _is_items(side):
        return _responses_input(side, None, where)
    if isinstance(side, dict) and isinstance(side.get("messages"), list):
        msgs = _claude_turns(_objects(list(side["messages"]), where), where)
        if side.get("system"):  # an Anthropic request
            msgs.insert(0, {"role": "system", "content": side["system"]})
        return msgs
    if isinstance(side, list):
        return _claude_turns(_objects(side, where), where)
    if isinstance(side, dict) and isinstance(side.get("prompt"), str):  # the legacy /v1/completions request
        return [{"role": "user", "content": side["prompt"]}]
    raise PotstillError(f"{where}: cannot find the request's messages")


def _stored_content(m: dict[str, Any]) -> Any:
    """A stored message's content: the messages endpoint lists one sent as content parts with
    ``content: null`` and the parts, every field present and null where unused, under ``content_parts``."""
    if m.get("content") is None and isinstance(m.get("content_parts"), list):
        return [{k: v for k, v in p.items() if v is not None} if isinstance(p, dict) else p for p in m["content_parts"]]
    return m.get("content", "")


def _detect(obj: dict[str, Any]) -> str:
    if obj.get("object") in ("chat.completion", "response") and ("choices" in obj or "output" in obj):
        return "stored"
    if "custom_id" in obj and ("response" in obj or isinstance(obj.get("result"), dict)):
        return "openai-log"
    if isinstance(obj.get("response"), dict) and (obj["response"].get("choices") or "body" in obj["response"]
                                                  or obj["response"].get("object") == "response"):
        return "openai-log"
    if "messages" in obj and not any(k in obj for k in ("request", "response", "prompt")):
        return "finetune"
    return "pairs"


def _trained_turn(msgs: list[dict[str, Any]], where: str) -> int:
    """The index of a fine-tuning line's target: its last assistant turn trained on (``weight`` 1, the
    default), as OpenAI fine-tunes it; ``weight: 0`` marks a turn the model is not trained to write.
    ``NoText`` where every assistant turn has weight 0."""
    for i, m in enumerate(msgs):
        w = m.get("weight", 1)
        if m.get("role") == "assistant" and (w not in (0, 1) or isinstance(w, bool)):
            raise PotstillError(f"{where}: messages.{i}.weight: expected 0 or 1, got {w!r}")
    trained = [i for i, m in enumerate(msgs) if m.get("role") == "assistant" and m.get("weight", 1) == 1]
    if not trained:
        raise NoText("its assistant turns all have weight 0 (not trained on)")
    return trained[-1]


def _check_failed(obj: dict[str, Any], resp: Any, key: str | None = "response") -> None:
    """``NoText`` where a logged call failed: an app that logs every call logs its failures too, the
    error body as the response (``{"error": {...}}``) or no response (null) and the error beside it
    (LiteLLM's ``error_str``, its ``status: "failure"``).
    An ``output`` that is an object is an answer (an extraction's), whatever its keys."""
    if key == "response" and failed(resp) or key and resp is None and (obj.get("error") or obj.get("error_str")):
        raise NoText("its request failed")
    if obj.get("status") == "failure" and "call_type" in obj:  # LiteLLM's payload of a failed call
        raise NoText("its request failed")


def _from_line(obj: dict[str, Any], fmt: str, where: str, requests: Requests | None, keep: bool) -> Record:
    kind = _detect(obj) if fmt == "auto" else fmt
    meta: dict[str, Any] = {}
    if kind == "finetune":
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not msgs or _objects(msgs, where)[-1].get("role") != "assistant":
            raise PotstillError(f"{where}: expected messages ending with an assistant turn")
        t = _trained_turn(msgs, where)
        target = msgs[t]
        kept = kept_call(message_calls(target, where), keep)
        if not kept and message_calls(target, where):  # words beside the call included, as in the logs
            raise NoText("its answer is a tool call")
        if not kept and target.get("content") is None:  # OpenAI's refusal comes with content null
            if target.get("refusal"):
                raise NoText("its answer is a refusal")
            raise PotstillError(f"{where}: messages.{t}: an assistant message without content")
        # ``weight`` (0: an assistant turn not trained on) is the fine-tuning file's, not the chat's:
        # a chat API refuses a message field it does not know. The turns after the target go: they
        # answer a later question, which the record does not ask.
        prompt = [{k: v for k, v in m.items() if k != "weight"} for m in msgs[:t]]
        output = kept or as_reply(content_text(target.get("content")), keep)
    elif kind == "openai-log":
        if "custom_id" in obj:
            if requests is None:  # the output holds answers only; the prompts are in the batch's input file
                raise PotstillError(f"{where}: a Batch API output line (custom_id {obj['custom_id']!r}) holds no "
                                    "request: give the batch's input file with --requests")
            req = requests.get(obj["custom_id"])
            if req is None:
                raise PotstillError(f"{where}: custom_id {obj['custom_id']!r} is not in the --requests file")
            if obj.get("error"):  # vLLM's run_batch writes failures into the output file; OpenAI an expiry
                raise NoText("its request failed")
            result = obj.get("result")
            if isinstance(result, dict) and "response" not in obj:  # an Anthropic Message Batches result
                if result.get("type") != "succeeded":  # errored, canceled, expired: no answer
                    raise NoText("its request failed")
                obj = {**obj, "response": result.get("message")}
            meta["custom_id"] = obj["custom_id"]
        else:
            # A completions log may name its prompt alone; LiteLLM's logging payload its messages.
            req = next((obj[k] for k in ("request", "prompt", "messages") if k in obj), None)
            _check_failed(obj, obj.get("response"))
        prompt, prefill = split_prefill(_messages(req, where), obj.get("response"))
        output, meta2 = answer_of(obj.get("response"), where, keep, prefill)
        meta.update(meta2)
    elif kind == "stored" and obj.get("object") == "response":
        # A stored response (GET /v1/responses/{id}) with its input items (GET .../input_items, or the
        # request's input) under input_items or input.
        side = obj.get("input_items", obj.get("input"))
        if isinstance(side, dict) and isinstance(side.get("data"), list):  # the input items list endpoint's page
            if side.get("has_more"):
                raise PotstillError(f"{where}: its input_items page holds part of the conversation (has_more); "
                                    "fetch every item (the SDK's auto-paging, or limit=100)")
            # That endpoint lists the newest item first unless asked order=asc, which the page does not say.
            side = side["data"][::-1] if side.get("order", "desc") == "desc" else side["data"]
        if not isinstance(side, (list, str)):
            raise PotstillError(f"{where}: a stored response needs its input items under input_items")
        prompt = _responses_input(side, obj.get("instructions"), where)
        output, meta = response_answer(obj, keep)
        if obj.get("metadata"):
            meta["metadata"] = obj["metadata"]
    elif kind == "stored":
        side = obj.get("input_messages", obj.get("messages"))
        if isinstance(side, dict) and isinstance(side.get("data"), list):  # the messages list endpoint's page
            side = side["data"]
        if not isinstance(side, list):
            raise PotstillError(f"{where}: a stored completion needs its input messages under input_messages")
        # The listing's extra fields go (id, ...); a tool call's own fields stay, or its turn has no content.
        prompt = [{"role": m.get("role", "user"), "content": _stored_content(m),
                   **{k: m[k] for k in ("tool_calls", "tool_call_id") if m.get(k)}} for m in _objects(side, where)]
        output, meta = answer_of({k: v for k, v in obj.items() if k not in ("input_messages", "messages")}, where, keep)
        if obj.get("metadata"):
            meta["metadata"] = obj["metadata"]
    elif kind == "pairs":
        req = next((obj[k] for k in ("request", "prompt", "input", "messages") if k in obj), None)
        key = next((k for k in ("response", "output", "completion") if k in obj), None)
        resp = obj[key] if key else None
        _check_failed(obj, resp, key)
        if req is None or resp is None:
            raise PotstillError(f"{where}: expected a request (request|prompt|input) and a response (response|output|completion)")
        prompt, prefill = split_prefill(_messages(req, where), resp)
        if key == "output" and (isinstance(resp, list) or isinstance(resp, dict) and not RESPONSE_KEYS & resp.keys()):
            # A JSON answer (an extraction's object; a table's JSON cell of `output` is read as one), as
            # a record's output object is: its JSON text.
            output, meta = json.dumps(resp, ensure_ascii=False), {}
        else:
            output, meta = answer_of(resp, where, keep, prefill)
    else:
        raise PotstillError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if not output.strip():  # content "": nothing to learn, and a replay teacher would answer nothing
        raise NoText("its answer is empty", distil=False)
    prompt = _legacy_functions(prompt)
    # Records hold the user-side conversation; the system instruction belongs to the task.
    system = [m for m in prompt if m.get("role") in INSTRUCTION_ROLES]
    user = [m for m in prompt if m.get("role") not in INSTRUCTION_ROLES]
    if not user:
        raise PotstillError(f"{where}: the request has no user message")
    check_media(prompt)
    # What an input file is checked against when generate reads it: refused here, at its own line.
    problem = record_problem({"messages": prompt})
    if problem:
        raise PotstillError(f"{where}: {problem}")
    if system:
        meta["system"] = content_text(system[0].get("content", ""))
    meta["format"] = kind
    try:
        return Record(messages=user, output=output, meta={k: v for k, v in meta.items() if v is not None})
    except ValidationError as e:  # text that cannot be written as UTF-8 (a lone surrogate), ...
        raise PotstillError(f"{where}: {e.errors()[0]['msg']}") from None


class Requests:
    """A batch's requests by ``custom_id``: OpenAI's Batch input (``body``) or Anthropic's Message
    Batches requests (``params``, as ``messages.batches.create`` takes them, one a line), read once and
    kept as JSON text in a private temporary SQLite file (deleted when closed), not in memory: a
    batch's input file may be 200 MB (OpenAI's limit; Anthropic's 256 MB), which held as Python
    objects took several times that. ``get`` reads one request back; a later line of the same
    ``custom_id`` replaces an earlier one, as before."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise PotstillError(f"--requests {path}: {'a directory, not' if path.is_dir() else 'not found; expected'} "
                                f"a Batch API input JSONL")
        # "": SQLite's private temporary database, on disk past its page cache (2 MB by default).
        self._db = sqlite3.connect("")
        self._db.execute("CREATE TABLE requests (custom_id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID")
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?)", self._lines(path))
        except BaseException:
            self._db.close()
            raise

    @staticmethod
    def _lines(path: Path) -> Iterator[tuple[str, str]]:
        # read_objects: a byte-order mark dropped, a line that is not JSON or not UTF-8 named as an input file's.
        for lineno, obj in read_objects(path):
            body = obj.get("body", obj.get("params"))
            if not isinstance(obj.get("custom_id"), str) or not isinstance(body, dict):
                raise PotstillError(f"{path}:{lineno}: expected a batch request line with custom_id and body (OpenAI) "
                                    "or params (Anthropic)")
            yield obj["custom_id"], json.dumps(body)

    def get(self, custom_id: Any) -> Any:
        """The request body of ``custom_id``, or None where the file has none."""
        if not isinstance(custom_id, str):  # the file's are strings: no request is this one's
            return None
        row = self._db.execute("SELECT body FROM requests WHERE custom_id = ?", (custom_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def close(self) -> None:
        self._db.close()


def import_served(db: Path, keep: bool = False) -> Iterator[Record]:
    """Records from the ``serve`` rows of a ledger (what a served student or its fallback answered),
    yielded as the rows are read; ``keep``: an escalation's tool calls as a tools task's call text,
    else the row is skipped (counted in one line once the rows are read). The ledger is checked here,
    before the first record is asked for."""
    if not db.exists():
        raise PotstillError(f"{db}: ledger not found")
    try:
        ledger = Ledger(db, readonly=True)
    except PotstillError as e:
        if "not a potstill ledger" not in str(e):
            raise
        # The ledger's own advice, "move it aside", is for a file in a run's calls.sqlite place; this
        # is the user's input, read as the wrong format (a JSONL log given --format served, say).
        with open(db, "rb") as f:
            sqlite = f.read(16) == b"SQLite format 3\x00"
        what = "a SQLite database with no served calls table" if sqlite else "not a SQLite database"
        raise PotstillError(f"{db}: {what}; --format served reads the calls.sqlite `potstill serve` writes: give "
                            "that, or this file's own --format (auto, finetune, openai-log, pairs or stored)") from None
    return _served_records(ledger, db, keep)


# Served rows read at a time: a row holds its request and answer (a few KB), so a page is a few MB
# however many rows the ledger holds (``Ledger.served`` returns them all as one list).
SERVED_PAGE = 1000


def _served_rows(ledger: Ledger) -> Iterator[ServedCall]:
    """Every ``ok`` serve row of ``ledger``, oldest first, a page at a time (keyed by id, so rows
    logged while it reads are read too, once)."""
    after = 0
    while page := ledger.served(after_id=after, first=SERVED_PAGE):
        after = page[-1].id
        yield from page


def _served_records(ledger: Ledger, db: Path, keep: bool) -> Iterator[Record]:
    calls, first = 0, None
    with ledger:
        for row in _served_rows(ledger):
            if row.extra.get("tool_calls") and not keep:  # an escalation answered with a client's tools: no text
                calls, first = calls + 1, first or row.id
                continue
            user = [m for m in _messages(row.request, f"{db}#calls.id={row.id}") if m.get("role") not in INSTRUCTION_ROLES]
            yield Record(messages=user, output=kept_call(row.extra.get("tool_calls"), keep) or as_reply(row.content or "", keep), meta={
                "format": "served", "source": str(db), "ledger_id": row.id, "teacher": row.model, "role": row.answered_by,
                "input_tokens": row.input_tokens, "output_tokens": row.output_tokens, "created_at": row.created_at,
                # As the client got it: "length" where the answer ran to its budget, which curate sets aside as
                # truncated (curate.real_data), as for an OpenAI log's finish_reason.
                "finish_reason": row.finish_reason})
    if calls:
        say(f"[yellow]import: {calls} served row(s) skipped, their answer is a tool call with no text to distil "
            f"(first: calls.id={first})[/yellow]")


def import_traffic(path: str | Path, out: str | Path, fmt: str = "auto", requests: str | Path | None = None,
                   tool_calls: bool = False) -> int:
    """Read traffic from ``path`` and write records to ``out`` (atomically); returns the count.
    ``tool_calls``: keep answers that are tool calls, as a tools task's ``{name, arguments}`` text."""
    path, out = Path(path), Path(out)
    if fmt not in FORMATS:
        raise PotstillError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    for given in (path, requests):
        if given is not None and out.resolve() == Path(given).resolve():
            raise PotstillError(f"--out {out} is the file being imported; name another file (it would be replaced)")
    if out.is_dir():  # else found only at the final rename, after the whole file was read
        raise PotstillError(f"--out {out} is a folder; name the records file to write (-o {out.name}/records.jsonl)")
    if fmt == "served" or (fmt == "auto" and path.suffix in (".sqlite", ".db")):
        return _write(out, path, import_served(path, tool_calls))
    if not path.exists():
        raise PotstillError(f"{path}: file not found")
    if path.is_dir():
        raise PotstillError(f"{path} is a directory, not a traffic file")
    if table_suffix(path):  # a CSV cell may span lines: its rows counted, not its lines
        total = _table_rows(path)
    else:
        total = _line_count(path)
    reqs = Requests(Path(requests)) if requests else None
    try:
        return _write(out, path, _log_records(path, read_objects(path), total, fmt, reqs, tool_calls))
    finally:
        if reqs is not None:
            reqs.close()


# The decompressed bytes of a gzip log counted for the bar before the import reads it: past them the
# count is scaled by the share of the compressed file read. Counting it all decompressed it once more
# first (a 1 MB file can hold 1 GiB).
COUNT_GZIP = 64 * 2**20


def _line_count(path: Path) -> int:
    """How many non-blank lines a JSONL log holds, for the progress bar only (about as many, for a gzip
    file of more than ``COUNT_GZIP`` bytes): 0 (no total) where a gzip file is cut short or damaged,
    which ``read_objects`` names in one line (as it names a line not UTF-8 or too long)."""
    n, text, read = 0, False, 0
    try:
        with gzip.open(path, "rb") if gzipped(path) else open(path, "rb") as f:
            while piece := f.readline(1 << 20):  # a piece at a time: a line may be endless
                text = text or bool(piece.strip())
                if piece.endswith(b"\n"):
                    n, text = n + text, False
                read += len(piece)
                if read > COUNT_GZIP and isinstance(f, gzip.GzipFile):
                    return round(n * path.stat().st_size / max(1, f.fileobj.tell()))
    except (OSError, *CUT_GZIP):
        return 0
    return n + text


def _table_rows(path: Path) -> int:
    """About how many rows a CSV, TSV or Parquet file holds, for the progress bar only, read without
    holding them: a Parquet file's footer says, a CSV is parsed once (C's csv reader, cells not kept).
    Rows with no cell are counted and skipped later. 0 (no total) where the file cannot be read:
    ``read_objects`` names what is wrong."""
    try:
        if table_suffix(path) == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        import csv

        limit = csv.field_size_limit(MAX_LINE)  # as read_objects reads it: a cell may be a whole document
        try:
            with open_lines(path, newline="") as f:  # gzipped too (in.csv.gz)
                rows = csv.reader(bounded_lines(f, path), delimiter=_delimiter(path))
                return max(0, sum(1 for cells in rows if any(cells)) - 1)
        finally:
            csv.field_size_limit(limit)
    except Exception:  # noqa: BLE001 - not this function's to name: read_objects says it in one line
        return 0


def _log_records(path: Path, rows: Iterable[tuple[int, dict[str, Any]]], total: int, fmt: str,
                 reqs: Requests | None, keep: bool) -> Iterator[Record]:
    """A log's records, yielded line by line; what was skipped or cut is said in one line per reason
    once every line is read."""
    several, first_several, written = 0, 0, 0
    skipped: dict[str, tuple[int, int]] = {}  # why -> (lines, the first of them)
    # Inputs seen, by 64 bits of their replay key (~60 bytes each: 18 MB for 300k lines); and the repeats.
    seen: set[int] = set()
    repeats, first_repeat = 0, 0
    own = OwnInstructions()  # the logged system prompts, which curate and generate do not send
    with bar(f"import {path.name}", total) as advance:
        for lineno, obj in rows:
            advance(1)
            try:
                rec = _from_line(obj, fmt, f"{path}:{lineno}", reqs, keep)
            except NoText as e:  # nothing to distil; one log line is no reason to refuse the file
                n, first = skipped.get(str(e), (0, lineno))
                skipped[str(e)] = (n + 1, first)
                continue
            rec.meta.update({"source": str(path), "line": lineno})
            if rec.meta.get("choices"):
                several, first_several = several + 1, first_several or lineno
            key = int(user_key(rec.messages)[:16], 16)
            if key in seen:
                repeats, first_repeat = repeats + 1, first_repeat or lineno
            seen.add(key)
            own.add(rec)
            written += 1
            yield rec
    own.say(path, written)
    if several:
        # The log's usage is the whole completion's: its completion_tokens are every choice's together (a
        # replay teacher reads no length from it), which the kept answer alone did not take.
        say(f"[yellow]import: {several} logged completion(s) held several choices (n > 1); the first choice of "
            f"each is its answer, the others are left out; meta.choices counts them, and meta.usage, as logged, "
            f"counts the tokens of them all (first at {path}:{first_several})[/yellow]")
    if repeats:
        # Kept: each is a call the log's app made; a replay teacher answers an input once, with the first.
        say(f"[yellow]import: {repeats} line(s) repeat the input of an earlier line; all are written, and a replay "
            f"teacher answers each input with the first of them, as its user got it (first at {path}:{first_repeat})[/yellow]")
    for why, (n, first) in skipped.items():
        say(f"[yellow]import: {n} line(s) skipped, {why} (first at {path}:{first})[/yellow]")


def _write(out: Path, path: Path, records: Iterable[Record]) -> int:
    """Write ``records`` to ``out`` as they come, into the temp file ``atomic_write`` renames at the end:
    a bad line, a file with nothing to import or Ctrl-C removes the temp and leaves ``out`` as it was.
    Memory is one record and the skipped lines' counts, not the log: a 282 MB log of 300k lines peaked
    at 933 MB of RSS held whole, 48 MB streamed (benchmarks/import_memory.json)."""
    with atomic_write(out) as f:
        n = dump_jsonl(f, records)
        if not n:
            raise PotstillError(f"{path}: no records to import")
    return n
