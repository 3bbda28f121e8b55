"""``data.inputs``, checked in one pass and then read again as often as a stage needs, never held whole.

``potstill generate`` labels its inputs ``WINDOW`` at a time (``generate.stream_labels``) in three
passes (the ledger's answers, the sending, the records written), each reading the file again here:
held whole, the parsed inputs took 1.5 KB each at 40 words, 2.8 KB at 200 (a million: GBs;
tests/generate/test_generate_memory.py). The first pass checks everything ``load_inputs`` refused or
warned about, in its order, and counts the records; the later passes make each record as the first
did, only of the lines asked for (the sending pass: those not answered from the ledger).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.hub_files import is_hub_file, local_file
from potstill.progress import say
from potstill.records import Record, id_clash, instructions_to_meta, iter_numbered, read_objects, record_of
from potstill.tasks import get_task
from potstill.tasks.base import GoldTally, Task


BLOCK = 64  # lines read between two looks at the file (~2 KB each: ~130 KB held)


class OwnInstructions:
    """The records of a file with their own instruction: a system or developer message, moved to
    ``meta.system`` (``instructions_to_meta``) as each is ``add``-ed, or one ``potstill import`` already
    put there, other than ``instruction`` (``task.instruction``, which takes its place: an imported
    log of the same prompt is no news). ``say`` it in one line, with how many prompts they hold: an
    answer written under "Reply in French" is otherwise learnt under another instruction, unsaid."""

    SEEN = 1000  # distinct prompts held to count them (a prompt templated per user would be one a record)

    def __init__(self, instruction: str | None = None) -> None:
        self.instruction = (instruction or "").strip()
        self.n = 0
        self.seen: set[str] = set()

    def add(self, r: Record) -> None:
        instructions_to_meta(r)
        own = r.meta.get("system")
        if isinstance(own, str) and own.strip() and own.strip() != self.instruction:
            self.n += 1
            if len(self.seen) < self.SEEN:
                self.seen.add(own.strip())

    def say(self, path: str | Path, total: int) -> None:
        if not self.n:
            return
        prompts = len(self.seen)
        different = f" ({prompts:,}{'+' if prompts >= self.SEEN else ''} different)" if prompts > 1 else ""
        say(f"[yellow]warning:[/yellow] {escape(str(path))}: {self.n} of {total} records have a "
            f"system or developer message{different}; it is kept in meta.system, not sent: task.instruction "
            "is the system message of every prompt (teacher, training, evaluate, serve)")


def instructions_aside(path: str | Path, records: list[Record], instruction: str | None = None) -> None:
    """Move each record's system and developer messages to ``meta.system`` (``instructions_to_meta``),
    saying in one line how many records have their own (``OwnInstructions``), as ``InputFile`` does
    for ``data.inputs``: ``curate.real_data``'s, before the student trains on them."""
    own = OwnInstructions(instruction)
    for r in records:
        own.add(r)
    own.say(path, len(records))


class InputFile(Sequence[Record]):
    """The records of ``data.inputs`` up to ``data.limit``, read from the file at each pass
    (``__iter__``) or from where the last read left off (``records[i]``, forward; backwards reads
    from the start again). ``beyond()``: the records past the limit.

    ``hold``: keep the records of the first pass instead (``load_inputs``; a task whose own
    ``check_gold`` needs them all, a plugin's written before ``gold_tally``). A file changed while
    it is read in passes (a later pass would pair one input's answer with another's record) stops
    the run with one line."""

    def __init__(self, cfg: Config, hold: bool = False):
        self.path, self.columns, self.names = cfg.data.inputs, cfg.data.columns, cfg.data.label_names
        self.task = get_task(cfg.task)
        # A task that checks gold only on a whole list (check_gold overridden) is given one.
        hold = hold or type(self.task).check_gold is not Task.check_gold
        # A hub file is fetched once (hf_hub_download asks the hub again at each call): every pass reads that copy.
        self._hub = is_hub_file(self.path)
        self._local = local_file(str(self.path)) if self._hub else Path(self.path)
        self._stamp = _stamp(self._local)
        limit = cfg.data.limit
        tally = self.task.gold_tally(self.path)
        first: dict[str, tuple[int, str]] = {}
        clash = misnamed = None
        own, total = OwnInstructions(cfg.task.instruction), 0
        held: list[tuple[int, Record]] | None = [] if hold else None
        # Every line is read before the first clash or class index is refused, as when the file was read whole:
        # a malformed line further on is the error a user sees first.
        for lineno, r in iter_numbered(self.path, self.columns, self._objects()):
            clash = clash or id_clash(first, self.path, lineno, r)
            own.add(r)
            misnamed = misnamed or self._name(lineno, r)
            if held is not None:
                held.append((lineno, r))
            elif limit is None or total < limit:
                tally.add(lineno, r)
            total += 1
        del first
        if clash:
            raise PotstillError(clash)
        own.say(self.path, total)
        if misnamed:
            raise PotstillError(misnamed)
        self.total = total
        self.n = total if limit is None else min(total, limit)
        if not self.n:
            raise PotstillError(f"{self.path}: no records")
        if held is not None:
            self.task.check_gold(held[: self.n], self.path, cfg.data.max_unknown_gold)
        else:
            tally.finish(cfg.data.max_unknown_gold)
        self.held = None if held is None else [r for _, r in held]
        self._cursor: Iterator[tuple[int, tuple[int, dict[str, Any]]]] | None = None
        self._next = 0  # the index of the record the cursor reads next

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Record]:
        if self.held is not None:
            return iter(self.held[: self.n])
        return self._records(0, self.n, gold=True)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        if self.held is not None:
            return self.held[i]
        if self._cursor is None or i < self._next:
            self._cursor = enumerate(self._objects(check=True))
        for k, (lineno, obj) in self._cursor:  # those before i are skipped as JSON, never made records
            if k == i:
                self._next = k + 1
                return self._made(lineno, obj, self.task.gold_tally(self.path))
        raise PotstillError(self._changed())  # the file ended before the record the first pass counted

    def beyond(self) -> Iterator[Record]:
        """The records past ``data.limit``, as ``load_inputs`` read them (gold left as written): none
        without a limit."""
        if self.held is not None:
            return iter(self.held[self.n :])
        return self._records(self.n, self.total, gold=False) if self.n < self.total else iter(())

    def _records(self, start: int, stop: int, gold: bool) -> Iterator[Record]:
        """Records ``start`` to ``stop`` as the first pass made them, read from the file again."""
        # Its counts were judged in the first pass; here it respells each record's gold the same way.
        tally = self.task.gold_tally(self.path) if gold else None
        k = -1
        for k, (lineno, obj) in enumerate(self._objects(check=True)):
            if k >= start:
                yield self._made(lineno, obj, tally)
            if k + 1 >= stop:
                break
        if k + 1 < stop or _stamp(self._local) != self._stamp:
            raise PotstillError(self._changed())

    def _made(self, lineno: int, obj: dict[str, Any], tally: GoldTally | None) -> Record:
        r = record_of(self.path, lineno, obj, self.columns)
        instructions_to_meta(r)
        self._name(lineno, r)
        if tally is not None:
            tally.add(lineno, r)
        return r

    def _name(self, lineno: int, r: Record) -> str | None:
        """Name ``r``'s class index (``data.label_names``) in place; what is wrong with it, or None."""
        names = self.names
        if not names or r.label is None:
            return None
        if not (r.label.isascii() and r.label.isdigit() and int(r.label) < len(names)):
            return (f"{self.path}:{lineno}: label {r.label!r} is not a class index into data.label_names "
                    f"(0 to {len(names) - 1})")
        r.label = names[int(r.label)]
        return None

    def _objects(self, check: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """The file's objects (``read_objects``), its errors naming ``data.inputs`` as written.

        ``check`` (a later pass): none once the file is not the one the first pass read. A request
        made from an edited line would be committed to the ledger under the hash of the line as it
        was, and answer it on every later run; so the objects come ``BLOCK`` at a time, each block
        handed on only once a ``stat`` after reading it finds the file as it was (a write before
        the read shows in it). A ``stat`` a line made a pass of 20,000 inputs 30-45% slower (2-core VM)."""
        if check and _stamp(self._local) != self._stamp:  # a file changed before the pass: not its parse errors
            raise PotstillError(self._changed())
        objects = self._read()
        while check:
            block = list(itertools.islice(objects, BLOCK))
            if _stamp(self._local) != self._stamp:
                raise PotstillError(self._changed())
            if not block:
                return
            yield from block
        yield from objects

    def _read(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            yield from read_objects(self._local)
        except PotstillError as e:
            if not self._hub:
                raise
            raise PotstillError(str(e).replace(str(self._local), str(self.path))) from None

    def _changed(self) -> str:
        return (f"{self.path}: changed while this run read it (the inputs are read again at each pass, not held); "
                "the answers so far are in the ledger: rerun to go on with the file as it is now")


def _stamp(path: Path) -> tuple[int, ...] | None:
    """What tells a file's versions apart without reading it: where it is, its size, when it was last
    written and when that changed (which no tool can set back); None: there is none, reading it says so."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def load_inputs(cfg: Config) -> list[Record]:
    """The inputs, gold labels checked against the task's label set (see ``Task.check_gold``), held."""
    return list(InputFile(cfg, hold=True))
