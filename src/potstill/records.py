"""The Record: one example as it flows through every stage, and JSONL I/O with file:line errors.

A record holds the user-side ``messages`` (OpenAI chat format, no task instruction: the task adds
that when it renders a prompt), the teacher's ``output`` and, for classification, its distribution
over labels (``label_probs``, a soft label independent of any tokenizer), optional gold ``label``
or ``reference``, ``slice`` tags, and ``meta`` (provenance: teacher model, tokens, cost, source).
"""

from __future__ import annotations

import codecs
import gzip
import json
import math
import re
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from potstill.atomic import (  # noqa: F401  (re-exported: records kept the writers before atomic.py)
    atomic_dir, atomic_files, atomic_write, dump_jsonl, finishing, write_json, write_jsonl, write_text,
)
from potstill.errors import PotstillError
from potstill.hub_files import is_hub_file, local_file
from potstill.responses_format import surrogate_at
from potstill.hashing import hash_obj


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = ""
    messages: list[dict[str, Any]]
    output: str | None = None
    label_probs: dict[str, float] | None = None
    logprobs: list[dict[str, Any]] | None = None
    samples: list[str] | None = None
    label: str | None = None
    reference: Any = None
    slice: list[str] = Field(default_factory=list)
    valid: bool | None = None
    invalid_reason: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            self.id = hash_obj(self.messages)[:16]

    @property
    def text(self) -> str:
        """The content of the last user message: what a classifier or extractor reads."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return content_text(m.get("content"))
        return ""


def content_text(content: Any) -> str:
    """A message's text: a string as it is, OpenAI's list of text parts joined (as the server and
    the ledger join them), None as ''."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _coerce(obj: dict[str, Any]) -> dict[str, Any]:
    """Accept the shorthand ``{"input": "..."}`` for a single user message, an extraction's gold
    ``label`` (or a real example's ``output``) given as the JSON object itself rather than as its text,
    a whole-number gold ``label`` (also written as a float, ``5.0``) and one ``slice`` tag as text.
    The caller's dict is left as it was."""
    obj = dict(obj)
    if "messages" not in obj and "input" in obj:
        obj["messages"] = [{"role": "user", "content": obj.pop("input")}]
    for key in ("label", "output"):
        # A record holds answers as text (what a teacher wrote, what the student learns), so an object
        # or array becomes its JSON; the extraction task parses it back to the same value.
        if isinstance(obj.get(key), (dict, list)):
            obj[key] = json.dumps(obj[key], ensure_ascii=False)
    # A whole-number gold (a star rating, 5) is the label the config's YAML number 5 became: '5'. A
    # writer that types the column as float (pandas, with a gap in it) writes it 5.0; a fraction is no label.
    label = obj.get("label")
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if isinstance(label, int) and not isinstance(label, bool):
        obj["label"] = str(label)
    if isinstance(obj.get("slice"), str):
        obj["slice"] = [obj["slice"]]
    if isinstance(obj.get("id"), int) and not isinstance(obj["id"], bool):  # a numeric id column
        obj["id"] = str(obj["id"])
    return obj


_CLOSE = {"{": "}", "[": "]"}


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}" if "\n" in text.rstrip("\n") else f"column {col}"


def _unclosed(text: str) -> tuple[list[tuple[str, int]], int | None]:
    """Brackets still open at the end of ``text`` (with positions), and where an unclosed string began."""
    stack: list[tuple[str, int]] = []
    string_at, escaped = None, False
    for i, ch in enumerate(text):
        if string_at is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                string_at = None
        elif ch == '"':
            string_at = i
        elif ch in _CLOSE:
            stack.append((ch, i))
        elif ch in "}]" and stack and _CLOSE[stack[-1][0]] == ch:
            stack.pop()
    return stack, string_at


def json_problem(text: str) -> str | None:
    """What is wrong with a JSON text, said where a person looks: None if it parses.

    ``json`` reports the position where parsing stopped; for text cut short that is the end of
    the line (or, with the newline, "line 2 column 1"), far from anything to fix. Here a text that
    ends too early names the brackets or string left open; other errors show the text around them.
    """
    text = text.rstrip("\r\n")
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as e:
        err = e
    stack, string_at = _unclosed(text)
    if err.msg.startswith("Unterminated string"):
        return f"a string opened at {_where(text, err.pos)} is never closed (missing '\"')"
    if err.pos >= len(text.rstrip()) and stack:
        missing = "".join(_CLOSE[c] for c, _ in reversed(stack))
        kind = "object" if stack[-1][0] == "{" else "array"
        return (f"the text ends inside the {kind} opened at {_where(text, stack[-1][1])}: "
                f"missing {missing!r} at the end")
    near = text[max(0, err.pos - 15): err.pos + 15]
    if err.msg == "Extra data":
        return f"unexpected text after the JSON value at {_where(text, err.pos)}: {text[err.pos:err.pos + 30]!r}"
    return f"{err.msg[0].lower()}{err.msg[1:]} at {_where(text, err.pos)}, near {near!r}"


GZIP_MAGIC = b"\x1f\x8b"


def gzipped(path: str | Path) -> bool:
    """Whether a file is gzip-compressed (by its first bytes, whatever its name: a log archived as
    ``.jsonl.gz``, one renamed)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


# What reading a gzip file cut short (a download that stopped) or damaged raises.
CUT_GZIP = (gzip.BadGzipFile, EOFError, zlib.error)


def not_whole_gzip(path: Path, e: BaseException) -> PotstillError:
    return PotstillError(f"{path}: gzip-compressed, but not a whole gzip file ({e}); fetch it again, or gunzip what "
                         "there is")


def open_lines(path: str | Path, errors: str = "strict", newline: str | None = None) -> IO[str]:
    """A JSONL (or CSV) file as text, decompressed as it is read where it is gzip-compressed (never held
    whole). utf-8-sig: a byte-order mark at the start (Windows Notepad, Excel's "UTF-8" CSV export) is
    dropped, not read as part of the first line ('unexpected UTF-8 BOM'); elsewhere it is UTF-8."""
    if gzipped(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors=errors, newline=newline)
    return open(path, encoding="utf-8-sig", errors=errors, newline=newline)


# The most of one line read (characters, bytes where ASCII): a record is a few kB, a few MB with images
# as data URLs. A gzip file of 1 MB holds a line of 1 GiB, which read whole took 2.6 GB of memory.
MAX_LINE = 64 * 2**20


def bounded_lines(f: IO[str], path: str | Path) -> Iterator[str]:
    """The lines of ``f``, each read holding at most ``MAX_LINE`` characters: one longer stops in one
    line naming it, before the rest of it is read (``readline``'s limit reads 8 kB at a time)."""
    lineno = 0
    while line := f.readline(MAX_LINE + 1):
        lineno += 1
        if len(line) > MAX_LINE and line[-1] not in "\r\n":
            raise PotstillError(f"{path}:{lineno}: a line longer than {MAX_LINE >> 20} MiB, which no record "
                                "needs (a gzip file that decompresses to one endless line?): not read further")
        yield line


def _not_utf8(path: Path) -> str:
    """Where a file that failed to decode as UTF-8 first stops being UTF-8 (line and byte)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with gzip.open(path, "rb") if gzipped(path) else open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        lineno, at = 1, 0  # the line, and the byte in it where this piece starts
        while piece := f.readline(1 << 20):  # a piece at a time: a line may be endless
            try:
                decoder.decode(piece)  # a character cut between two pieces waits for the next
            except UnicodeDecodeError as e:
                # Windows tools (PowerShell's ``>``, Notepad's "Unicode") write UTF-16 with this mark.
                hint = "; it looks like UTF-16: save it as UTF-8" if head in (b"\xff\xfe", b"\xfe\xff") else ""
                held = len(e.object) - len(piece)  # bytes of a character begun in the piece before
                return (f"{path}:{lineno}: not UTF-8 (byte {e.object[e.start]:#04x}, the line's byte "
                        f"{at + e.start - held + 1}){hint}")
            lineno, at = (lineno + 1, 0) if piece.endswith(b"\n") else (lineno, at + len(piece))
    return f"{path}: not UTF-8"


# Columns of a table (CSV, TSV, Parquet) whose cells hold JSON in a text format: a CSV cell is text,
# so a chat, a tag list or an extraction's object arrives as its JSON.
_JSON_COLUMNS = ("messages", "slice", "meta", "label_probs", "logprobs", "samples", "reference", "label", "output")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def table_suffix(path: Path) -> str:
    """Which table ``path`` names (.csv, .tsv, .parquet), by its suffix or, gzipped, the one before .gz
    (in.csv.gz: read as it is decompressed); '' for any other file (JSONL, gzipped or not)."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        suffix = Path(path.stem).suffix.lower()
    return suffix if suffix in TABLE_SUFFIXES else ""
# pandas' index, never a field: ``to_csv`` writes it as a first column with no name (which
# ``read_csv`` names 'Unnamed: 0', and a later ``to_csv(index=False)`` keeps), ``to_parquet`` and
# ``datasets.Dataset.from_pandas`` as ``__index_level_0__`` when it is not 0, 1, 2, ...
_INDEX_COLUMN = re.compile(r"|Unnamed: \d+|__index_level_\d+__")


def _cell(path: Path, where: int, key: str, value: Any) -> Any:
    """A table cell as a JSONL line would hold it: a text cell of a JSON column that starts like a
    JSON array or object is parsed (the tags ``["a", "b"]``, a chat), anything else kept as it is."""
    if key == "messages" and isinstance(value, list):  # Parquet's structs give every field of every message
        return [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m for m in value]
    if key == "label" and isinstance(value, str) and re.fullmatch(r"-?\d+\.0+", value.strip()):
        return str(int(float(value)))  # a whole-number label a float column wrote (pandas: 5.0), as in JSONL
    starts = ("{",) if key in ("label", "output", "reference") else ("[", "{")  # an answer in brackets is text
    if key in _JSON_COLUMNS and isinstance(value, str) and value.lstrip()[:1] in starts:
        try:
            parsed = json.loads(value)
            cut = _lone_surrogate(parsed) if _SURROGATE_ESCAPE.search(value) else None  # as in a JSONL line
            if cut:
                raise PotstillError(f"{path}:{where}: column {key}: {cut}")
            return _cell(path, where, key, parsed)
        except json.JSONDecodeError:
            if key not in ("label", "output", "reference"):
                raise PotstillError(f"{path}:{where}: column {key}: malformed JSON: {json_problem(value)}") from None
    return value  # a label or answer that only looks like JSON stays text; the task judges it


def _delimiter(path: Path) -> str:
    """A TSV's tab; a CSV's comma, unless its header has none and a semicolon (what Excel writes as
    "CSV" where the decimal separator is a comma: German, French, ...) or a tab (a TSV named .csv)."""
    if table_suffix(path) == ".tsv":
        return "\t"
    with open_lines(path, newline="") as f:
        header = next(bounded_lines(f, path), "")
    return next((d for d in (";", "\t") if d in header), ",") if "," not in header else ","


# Parquet rows read at a time: 4,096 rows of a few KB of text each are a few MB, however many the file holds.
PARQUET_BATCH = 4096


def _table_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, object) for each row of a CSV / TSV (a header row names the fields; the number is the
    file line the row ends on) or Parquet file (the number is the row, from 1). An empty cell or a
    null is a field left out, as a JSONL line would leave it. A CSV or TSV may be gzipped (in.csv.gz)."""
    kind = table_suffix(path)[1:].upper()
    if kind == "PARQUET":
        if gzipped(path):  # pyarrow reads a Parquet file at its footer first: a gzip stream has none to seek to
            raise PotstillError(f"{path}: a gzip-compressed Parquet file, which is read only as it is (it compresses "
                                "its columns itself): gunzip it first")
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise PotstillError(f"{path}: reading Parquet needs pyarrow: pip install 'potstill[parquet]'") from None
        # A batch of rows at a time, not the table: a file's rows as Python objects hold several times its size.
        # Read through a 1 MB buffer, not a row group's column chunks at once (pre_buffer): the peak then
        # stays near flat in the file's row groups (600k rows: 140 MB RSS, 181 MB pre-buffered; measured).
        batches, row = None, 0
        while True:
            try:  # not Parquet, cut short (found at the row group cut), a type pyarrow cannot read
                batches = batches or pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False).iter_batches(
                    batch_size=PARQUET_BATCH)
                batch = next(batches, None)
                rows = batch.to_pylist() if batch is not None else []
            except (pa.ArrowException, OSError) as e:
                raise PotstillError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
            if batch is None:
                break
            for obj in rows:
                row += 1
                # NaN: Polars and DuckDB keep a float column's NaN (pandas writes it as null); a gap either way.
                cells = {k: v for k, v in obj.items() if v is not None and v != "" and not _INDEX_COLUMN.fullmatch(k)
                         and not (isinstance(v, float) and math.isnan(v))}
                if cells:
                    yield row, {k: _cell(path, row, k, v) for k, v in cells.items()}
        return
    import csv

    # csv refuses a cell over 131,072 characters by default; a long document (a contract, a
    # transcript to summarise) is an ordinary input, up to a line's limit.
    limit = csv.field_size_limit(MAX_LINE)
    try:
        with open_lines(path, newline="") as f:
            reader = csv.DictReader(bounded_lines(f, path), delimiter=_delimiter(path))
            if not reader.fieldnames:
                return
            if reader.fieldnames[0].lstrip().startswith("{"):  # its header would be half a JSON object
                raise PotstillError(f"{path}:1: this is JSONL (a JSON object a line), not a "
                                    f"{kind}: name the file .jsonl")
            named = [k for k in reader.fieldnames if not _INDEX_COLUMN.fullmatch(k)]
            if len(set(named)) < len(named):
                raise PotstillError(f"{path}:1: a column name appears twice in the header: {reader.fieldnames}")
            for obj in reader:
                if None in obj:  # more cells than the header names
                    raise PotstillError(f"{path}:{reader.line_num}: {len(reader.fieldnames) + len(obj[None])} cells "
                                        f"for {len(reader.fieldnames)} columns")
                cells = {k: v for k, v in obj.items() if v not in (None, "") and not _INDEX_COLUMN.fullmatch(k)}
                if cells:
                    yield reader.line_num, {k: _cell(path, reader.line_num, k, v) for k, v in cells.items()}
    except csv.Error as e:
        raise PotstillError(f"{path}: malformed {kind}: {e}") from None
    except CUT_GZIP as e:
        raise not_whole_gzip(path, e) from None
    except UnicodeDecodeError:
        raise PotstillError(_not_utf8(path)) from None
    finally:
        csv.field_size_limit(limit)


# A JSON escape of half a UTF-16 pair (\ud83d): json.loads takes it alone, as a lone surrogate, which
# no UTF-8 file holds, so writing the record (train.jsonl, the ledger, review.sqlite) would fail later.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(obj: Any) -> str | None:
    """Where a parsed JSON value holds a lone surrogate, in the server's words for it, or None."""
    found = surrogate_at(obj)
    return None if found is None else f"{found[0] or 'value'}: {found[1]}, as from an emoji cut in two"


def read_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file, or each row of a CSV, TSV or
    Parquet file (by its suffix, that before .gz for a gzipped one; see ``_table_objects``); a bad line raises
    one error naming file and line."""
    if is_hub_file(path):  # read from the Hugging Face cache; messages name the hf:// file
        local = local_file(str(path))
        try:
            yield from read_objects(local)
        except PotstillError as e:
            raise PotstillError(str(e).replace(str(local), str(path))) from None
        return
    path = Path(path)
    if not path.exists():
        raise PotstillError(f"{path}: file not found")
    if path.is_dir():
        raise PotstillError(f"{path} is a directory, not a JSONL file")
    suffix = path.suffix.lower()
    if suffix != ".parquet":
        with open(path, "rb") as f:
            if f.read(4) == b"PAR1":  # Parquet's magic number: as text, 'not UTF-8' at a line of binary
                raise PotstillError(f"{path}: this is a Parquet file, not a {suffix[1:].upper() or 'JSONL'}: "
                                    "name the file .parquet")
    if table_suffix(path):
        yield from _table_objects(path)
        return
    try:
        with open_lines(path) as f:
            for lineno, line in enumerate(bounded_lines(f, path), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise PotstillError(f"{path}:{lineno}: malformed JSON: {json_problem(line)}") from None
                if not isinstance(obj, dict):
                    raise PotstillError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                cut = _lone_surrogate(obj) if _SURROGATE_ESCAPE.search(line) else None  # a pair is one character
                if cut:
                    raise PotstillError(f"{path}:{lineno}: {cut}")
                yield lineno, obj
    except UnicodeDecodeError:
        # The decoder reads ahead in blocks, so its error knows neither line nor offset in the file.
        raise PotstillError(_not_utf8(path)) from None
    except CUT_GZIP as e:
        raise not_whole_gzip(path, e) from None


# OpenAI's chat roles: a teacher refuses (or a chat template drops) any other.
ROLES = ("system", "developer", "user", "assistant", "tool")
# A prompt's own instructions, not its input: the task instruction takes their place everywhere
# (generate, train, evaluate), and serve drops a client's.
INSTRUCTION_ROLES = ("system", "developer")


def instructions_to_meta(r: Record) -> bool:
    """Move ``r``'s system and developer messages to ``meta.system`` (as ``potstill import`` does);
    True when it had one.

    Kept in the messages, the teacher answered them and the student trained on them after the task
    instruction, but serve drops them, so the served student read prompts it was not trained on. The
    record's id stays the one its messages as written gave it (a review decision is kept by id).
    """
    own = [m for m in r.messages if m.get("role") in INSTRUCTION_ROLES]
    if not own:
        return False
    r.messages = [m for m in r.messages if m.get("role") not in INSTRUCTION_ROLES]
    text = "\n\n".join(content_text(m.get("content")) for m in own)
    r.meta["system"] = f"{r.meta['system']}\n\n{text}" if r.meta.get("system") else text
    return True


def user_key(messages: list[dict[str, Any]]) -> str:
    """The key a replay teacher finds a recorded answer by: the text of a chat's user turns (a chat logged
    with content parts finds the answer recorded for the same words as a string)."""
    return hash_obj([content_text(m.get("content")) for m in messages if m.get("role") == "user"])


def record_problem(obj: dict[str, Any]) -> str | None:
    """What makes an input line unusable as a prompt (None: nothing), found when it is read: a
    teacher would be paid to answer an empty prompt, or refuse the request part-way through a run.

    Only what no teacher accepts is refused: an empty conversation, a role it does not know, a
    message without content (an assistant turn of tool calls may have none), no user text at all.
    """
    if "messages" not in obj and "input" in obj:
        text = obj["input"]
        if not isinstance(text, str):
            return f"input: expected a string, got {type(text).__name__} ({json.dumps(text)[:40]})"
        return "input: empty text" if not text.strip() else None
    if "messages" not in obj:
        keys = ", ".join(map(str, list(obj)[:8])) or "nothing"
        return f'no "input" (the text) or "messages" (OpenAI chat) field; this line has: {keys}'
    messages = obj.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None  # the Record model says what is wrong with its type
    if not messages:
        return "messages: empty list"
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return f"messages.{i}.role: {role!r} is not one of {', '.join(ROLES)}"
        if content is None and not (role == "assistant" and m.get("tool_calls")):
            return f"messages.{i}: a {role} message without content"
        if content is not None and not isinstance(content, (str, list)):
            return f"messages.{i}.content: expected a string or a list of parts, got {type(content).__name__}"
        for j, part in enumerate(content if isinstance(content, list) else []):
            # A student reads text only: an image it never sees cannot be what its answer is learnt from.
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = (f"of type {part['type']!r}" if isinstance(part, dict) and "type" in part else
                        "without a text" if isinstance(part, dict) else f"that is a {type(part).__name__}")
                return (f"messages.{i}.content.{j}: a part {kind}; potstill distils text, so content is a string "
                        "or a list of parts of type 'text'")
    if not any(m["role"] == "user" and content_text(m["content"]).strip() for m in messages):
        return "messages: no user message with text"
    return None


def read_numbered(path: str | Path, columns: dict[str, str] | None = None) -> list[tuple[int, Record]]:
    """(line number, record) for each record of a JSONL file, so later checks can name file:line.
    ``columns`` (``data.columns``): read each field from the column it names, and nothing else."""
    return list(iter_numbered(path, columns))


def iter_numbered(path: str | Path, columns: dict[str, str] | None = None,
                  objects: Iterable[tuple[int, dict[str, Any]]] | None = None) -> Iterator[tuple[int, Record]]:
    """``read_numbered`` one record at a time; ``objects``: the file's objects as ``read_objects``
    gives them (a hub file's already fetched: ``inputs.InputFile``)."""
    seen: set[str] = set()
    any_row = False
    for lineno, obj in read_objects(path) if objects is None else objects:
        if columns:
            seen.update(obj)
        any_row = True
        yield lineno, record_of(path, lineno, obj, columns)
    for field, col in (columns or {}).items():
        if any_row and col not in seen:
            raise PotstillError(f"{path}: no row has a column {col!r} (data.columns.{field}); its columns: "
                                f"{', '.join(sorted(map(str, seen)))}")


def record_of(path: str | Path, lineno: int, obj: dict[str, Any], columns: dict[str, str] | None = None) -> Record:
    """The record line ``lineno`` of ``path`` holds (``obj``, as ``read_objects`` parsed it), or
    one error naming file and line."""
    if columns:
        text = columns.get("input") or columns.get("messages")
        if text and text not in obj:
            field = "input" if "input" in columns else "messages"
            raise PotstillError(f"{path}:{lineno}: no {text!r} (data.columns.{field}) in this row; it has: "
                                f"{', '.join(map(str, list(obj)[:8])) or 'nothing'}")
        # A table's JSON text (a chat, a tag list) is parsed by the field it becomes, as if so named.
        obj = {field: _cell(path, lineno, field, obj[col]) for field, col in columns.items() if col in obj}
    problem = record_problem(obj)
    if problem:
        raise PotstillError(f"{path}:{lineno}: {problem}")
    try:
        return Record.model_validate(_coerce(obj))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "record"
        raise PotstillError(f"{path}:{lineno}: {where}: {err['msg']}") from None


def check_ids(path: str | Path, numbered: Iterable[tuple[int, Record]]) -> None:
    """One id names one input: two lines with one id and different messages are refused, naming both.

    A user's own ids (a ticket number, a CRM's row id) can repeat; the review keeps a decision by
    record id and shows one record per id, so a reviewer's reject of one ticket also removed another
    that nobody saw, or was dropped as stale against the other's answer. The same input twice (one
    id, the same messages) is a duplicate, which curate drops, and is allowed.
    """
    first: dict[str, tuple[int, str]] = {}
    for lineno, r in numbered:
        clash = id_clash(first, path, lineno, r)
        if clash:
            raise PotstillError(clash)


def id_clash(first: dict[str, tuple[int, str]], path: str | Path, lineno: int, r: Record) -> str | None:
    """``check_ids``' error for ``r`` (None: its id is new, or names the same messages), ``first``
    holding each id's first line and messages' hash."""
    key = hash_obj(r.messages)
    n, seen = first.setdefault(r.id, (lineno, key))
    if seen == key:
        return None
    return (f"{path}:{lineno}: id {r.id!r} is also line {n}'s, with another input; a review decision is kept by id "
            "and would judge both: give each input its own id, or leave id out (potstill derives one from the "
            "messages)")


def read_records(path: str | Path) -> list[Record]:
    """Read a JSONL file of records; a bad line raises one error naming file and line."""
    return [r for _, r in read_numbered(path)]


def read_json(path: str | Path) -> dict[str, Any]:
    """One JSON object from a file a stage wrote (``write_json``); a file cut short or edited into
    something else raises one error naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PotstillError(_not_utf8(path)) from None
    problem = json_problem(text)
    if problem:
        raise PotstillError(f"{path}: malformed JSON: {problem}")
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise PotstillError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj
