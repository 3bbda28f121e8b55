"""A served run: the student engine, the teacher fallback, the calibrated routing and the ledger.

``load_service(run_dir, cfg)`` loads ``run_dir/student``, calibrates routing on ``val.jsonl`` (``serve.calibration``;
cached in ``run_dir/serve/`` and redone when the student, the splits or the targets change),
and opens ``run_dir/calls.sqlite``, where every request becomes one row with ``stage='serve'``.

The teacher side (the request an escalation sends, and its answer from the ledger or the teacher)
is ``escalation.TeacherSide``, mixed in.

Hot swap: ``Service.reload`` (``POST /admin/reload``, or ``Service.watch`` polling where
``run_dir/student`` points) loads and calibrates a promoted student beside the live one, then
replaces the ``Live`` reference in one assignment; requests in flight finish on the old one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from potstill.config import Config
from potstill.errors import PotstillError, cannot_load, one_line, redact
from potstill.engines import section_engine
from potstill.engines.calibration import weights_of
from potstill.ledger import Ledger, ServedCall
from potstill.ledger_rows import billed_tokens
from potstill.models.loading import model_identity
from potstill.models.prompting import RefusedChat
from potstill.progress import say
from potstill.records import read_records
from potstill.serve.calibration import _servable, calibrate_run
from potstill.serve.escalation import TeacherError, TeacherSide
from potstill.serve.engine import Batcher, ServedStudent, StudentAnswer, first_stop
from potstill.serve.formats import answer_problem, format_schema
from potstill.serve.routing import Routing, ood_distance
from potstill.serve.streaming import LiveText, openai_logprob
from potstill.serve.teacher_queue import ClientGone, TeacherBusy, TeacherQueue
from potstill.tasks import Task, get_task
from potstill.teachers import Response, Teacher, get_teacher
from potstill.serve.tool_routing import as_asked, reshaped, student_calls, student_tools_answer
from potstill.tool_calls import as_tool_calls, fresh_ids, student_turns


# A promoted student that failed to load (a transient out-of-memory, a file still being written) is
# tried again after this long, doubling up to an hour: not every poll (each try loads and calibrates).
RELOAD_RETRY_S = 60.0


class LogprobsUnavailable(ValueError):
    """A client asked for ``logprobs`` and the student the request entered gives none (its engine
    scores no tokens): the client's 400, before the student runs, as whether it or the teacher will
    answer is not known yet."""


class Live:
    """One student as served: engine, batcher, routing and OOD reference, swapped as one reference.

    A request takes the ``Live`` it starts on (``Service.acquire``) and keeps it to the end, so
    a swap never mixes one student's answer with another's thresholds. A retired ``Live`` closes
    its batcher only once its last request has released it: requests in flight finish on the
    old engine.
    """

    def __init__(self, name: str, path: str, engine: ServedStudent, routing: Routing, reference: torch.Tensor,
                 batch_size: int, batch_wait_ms: float):
        self.name, self.path, self.engine, self.routing, self.reference = name, path, engine, routing, reference
        self.batcher = Batcher(engine, batch_size, batch_wait_ms)
        self._lock = threading.Lock()
        self._inflight = 0
        self._retired = False
        self.closed = threading.Event()

    def enter(self) -> bool:
        with self._lock:
            if self._retired:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            last = self._retired and self._inflight == 0
        if last:
            self._close_soon()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            idle = self._inflight == 0
        if idle:
            self._close_soon()

    def _close_soon(self) -> None:
        # Batcher.close joins the worker thread: never on the event loop.
        def close() -> None:
            self.batcher.close()
            self.closed.set()

        threading.Thread(target=close, name="potstill-retire", daemon=True).start()


def student_dir(run_dir: Path) -> Path:
    """RUN/student with symlinks resolved: after a promotion it points into RUN/students/<id>/."""
    return (Path(run_dir) / "student").resolve()


class Service(TeacherSide):
    def __init__(self, cfg: Config, task: Task, engine: ServedStudent, teacher: Teacher, routing: Routing,
                 reference: torch.Tensor, ledger: Ledger, student_name: str, run_dir: Path | None = None,
                 student_path: str = "", device: str = "auto"):
        self.cfg = cfg
        self.task = task
        self.teacher = teacher
        self.ledger = ledger
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = device
        # The one reference every request reads; a hot swap is one assignment to it.
        self.live = Live(student_name, student_path, engine, routing, reference, cfg.serve.batch_size,
                         cfg.serve.batch_wait_ms)
        self.swaps: list[dict[str, Any]] = []
        self._reload_lock = threading.Lock()
        self._failed: tuple[str, float, float] | None = None  # (path, monotonic time of the next try, delay)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._identity: tuple[Teacher, dict[str, Any]] | None = None
        self._teacher_queue: TeacherQueue | None = None  # the teacher's calls in flight and waiting: ``_asked``
        self._warned_usage = False  # said once: the teacher's streams carry no token usage

    # The current student's parts, read through the live reference (tests and /health use these).
    @property
    def engine(self) -> ServedStudent:
        return self.live.engine

    @property
    def batcher(self) -> Batcher:
        return self.live.batcher

    @property
    def student_name(self) -> str:
        return self.live.name

    @property
    def reference(self) -> torch.Tensor:
        return self.live.reference

    @property
    def routing(self) -> Routing:
        return self.live.routing

    @routing.setter
    def routing(self, value: Routing) -> None:
        self.live.routing = value

    @property
    def teacher_name(self) -> str:
        return self.teacher.model_name

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.live.batcher.close()
        self.teacher.close()
        self.ledger.close()

    # ------------------------------------------------------------------ hot swap
    def acquire(self) -> Live:
        """The live student, entered; a request that lost a race with a swap takes the new one."""
        while True:
            live = self.live
            if live.enter():
                return live

    def reload(self, force: bool = False) -> dict[str, Any]:
        """Load and calibrate RUN/student if it changed, then swap it in; the old one keeps serving meanwhile.

        Returns what happened: {swapped, student, previous?, seconds?}. Raises PotstillError when the
        new student cannot be loaded (the old one stays live).
        """
        if self.run_dir is None:
            raise PotstillError("this service was not loaded from a run directory, so it cannot reload")
        with self._reload_lock:
            path = str(student_dir(self.run_dir))
            old = self.live
            if path == old.path and not force:
                return {"swapped": False, "student": old.name}
            t0 = time.perf_counter()
            new = _load_live(self.run_dir, self.cfg, self.task, self.device, path)
            load_s = time.perf_counter() - t0
            self.live = new  # the swap: engine, routing, reference and name change together
            old.retire()
            info = {"swapped": True, "student": new.name, "previous": old.name, "path": path,
                    "load_and_calibrate_s": round(load_s, 3), "at": time.time()}
            self.swaps.append(info)
            self._failed = None
            say(f"serve: now serving {new.name} (was {old.name}); loaded and calibrated in {load_s:.1f} s "
                "while the old student kept serving")
            return info

    def watch(self, interval_s: float) -> None:
        """Poll RUN/student every ``interval_s`` seconds and hot-swap a promoted student in."""
        if interval_s <= 0 or self.run_dir is None or self._watcher is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                path = str(student_dir(self.run_dir))
                failed = self._failed if self._failed is not None and self._failed[0] == path else None
                if path == self.live.path or (failed is not None and time.monotonic() < failed[1]):
                    continue
                try:
                    self.reload()
                except Exception as e:  # noqa: BLE001 - a broken promotion must not stop serving
                    delay = min(3600.0, failed[2] * 2) if failed is not None else RELOAD_RETRY_S
                    self._failed = (path, time.monotonic() + delay, delay)
                    say(escape(f"serve: could not load the promoted student {path} ({e}); still serving "
                               f"{self.live.name}, trying again in {delay:.0f} s (or at once on POST /admin/reload)"))

        self._watcher = threading.Thread(target=loop, name="potstill-reload-watch", daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------------ answering
    async def _student_answer(self, live: Any, read: list[dict], guide: Any) -> StudentAnswer | None:
        """The student's answer through the batcher, or None where its engine failed on this chat (any
        exception but a chat its template refuses, which is the client's 400): logged, with the
        traceback, for the teacher to answer instead."""
        try:
            return await asyncio.wrap_future(live.batcher.submit(read) if guide is None else
                                             live.batcher.submit(read, guide))
        except RefusedChat:
            raise
        except Exception as e:  # noqa: BLE001 - the teacher is the fallback; the log says what broke
            # Escaped: a traceback's brackets (d[key], [/x]) are rich markup, which would fail the fallback.
            told = redact(f"{type(e).__name__}: {e}", self.teacher.secrets())[:300]  # cut after: a cut key is not found
            trace = redact("".join(traceback.format_exception(e)).rstrip(), self.teacher.secrets())
            say(f"[yellow]serve: the student {escape(live.name)} failed on a request ({escape(told)}); the teacher "
                f"answers it (reason student_error)[/yellow]\n{escape(trace)}")
            return None

    async def answer(self, messages: list[dict], max_tokens: int | None = None, stop: Sequence[str] = (),
                     teacher_messages: list[dict] | None = None, tools: dict[str, Any] | None = None,
                     logprobs: int | None = None, response_format: dict[str, Any] | None = None,
                     live_text: LiveText | None = None) -> ServedCall:
        """Route one chat (user-side messages only) and return the answer, ready for the ledger.

        ``max_tokens`` (the client's ``max_completion_tokens`` or ``max_tokens``): generated answers
        end after that many tokens with ``finish_reason`` ``length``. The student still generates to
        the task's budget and is routed on that whole answer (what it was calibrated on), then cut;
        the teacher is asked for at most that many. ``stop`` (the client's): the answer ends before
        the first of these strings it holds, ``finish_reason`` ``stop``; both models generate as
        configured and the text is cut (the teacher's ``output_tokens`` stay what it was paid for).
        Label answers are whole labels, never cut. A chat longer than the student's context goes
        to the teacher unseen by the student (reason ``too_long``; no confidence or distance), and
        so does one the student failed on (reason ``student_error``: an exception in its engine, a
        compile that broke, ...; logged with its traceback), as the teacher is the fallback.
        ``teacher_messages``: the chat as the teacher gets it where it holds more than the
        student's text (tool turns' ``tool_calls`` and ``tool_call_id``). ``tools``: a client's
        function tools the model may call (``ChatRequest.tool_request``; the teacher must
        ``supports_tools``): the student cannot call one, so the teacher answers unasked of the
        student (reason ``tools``), and its tool calls go in ``extra["tool_calls"]``; except a tools
        task's student offered the task's own tools (``student_calls``), routed as any answer, whose
        call goes there whole (never cut), or to the teacher where ``tool_choice`` forces another
        function (reason ``tools``). ``logprobs``
        (the client's ``top_logprobs``, 0 without; None: not asked): the answer's tokens' log-probs
        in ``ServedCall.logprobs``, the student's from its own forward (``ServedStudent.logprobs``),
        the teacher's as it returned them; else ``logprobs_unavailable`` says why. ``response_format``
        (``ChatRequest.format_request``): a student answer that is not that JSON goes to the teacher
        (reason ``response_format``), asked in the format where it takes one; a teacher answer that
        is not says why in ``extra["response_format_problem"]``. Under ``serve.guided_json`` the
        student decodes its answer under the format (``student_guide``). ``live_text``: where an
        escalation the teacher answers anew goes as it is written (where it ``streams``; the route first)."""
        live = self.acquire()
        try:
            # Checked on the student this request entered, which answers it and scores its tokens: the
            # route checked whichever was live before, and a swap could come between the two.
            cannot = live.engine.logprobs_unavailable if logprobs is not None else None
            if cannot:
                raise LogprobsUnavailable(cannot)
            # Tokenising 1 MB of text takes ~0.5 s: off the event loop; a usual chat (~70 us) on it.
            long = sum(len(m["content"]) for m in messages) > 50_000
            calls = student_calls(self.task, tools, teacher_messages)
            # A chat's tool turns whole: the student reads them as text (``PromptFormat.query``), as it learnt them.
            read = student_turns(messages, teacher_messages)
            if tools is not None and not calls:
                over: str | None = "the student cannot call tools"
            else:
                over = await asyncio.to_thread(live.engine.over_context, read) if long else \
                    live.engine.over_context(read)
            a: StudentAnswer | None = None
            guide = self.student_guide(live, response_format) if over is None else None
            if over is None:
                a = await self._student_answer(live, read, guide)
            if a is not None:
                dist: float | None = ood_distance(a.embedding[None], live.reference)[0]
                # Decoded under the client's own schema (or pattern), the answer is judged by it (below),
                # not by the task's, which it replaces for this request.
                theirs = guide is not None and (response_format["type"] in ("regex", "choice", "grammar")
                                                or bool((response_format.get("json_schema") or {}).get("schema")))
                who, reason = live.routing.decide(a.confidence, dist, None if theirs else a.invalid,
                                                  a.truncated and self.cfg.serve.escalate_truncated)
                if who == "student" and answer_problem(a.output, response_format):
                    who, reason = "teacher", "response_format"
                who, reason, reply = student_tools_answer(self.task, tools, calls, a.parsed, who, reason)
            else:
                dist, who, reply = None, "teacher", None
                reason = "student_error" if over is None else "too_long" if tools is None else "tools"
            student_cost = a.seconds * self.cfg.student.usd_per_hour / 3600 if a is not None else 0.0
            max_tokens, stop = self.escalation_limits(max_tokens, stop, tools, response_format)
            h, req = self.teacher_request(teacher_messages or messages, max_tokens, tools, logprobs, response_format)
            common = dict(request={"messages": messages}, answered_by=who, confidence=a.confidence if a else None,
                          ood_distance=dist, student_output=a.output if a else "", student=live.name, request_hash=h)
            if who == "student" and reply is not None:
                # A reply in words, which the student wrote as JSON, the call's form (no logprobs of it), ends
                # at a client's stop or max_tokens as a generated text does; its tokens are the reply's.
                content, n_out, finish = live.engine.shorten_reply(reply, max_tokens, stop)
                return ServedCall(content=content, model=live.name, reason=reason, input_tokens=a.prompt_tokens,
                                  output_tokens=n_out, cost_usd=student_cost, finish_reason=finish,
                                  logprobs_unavailable="the student wrote this reply as the JSON of its tools' "
                                  "answers, whose tokens are not the reply's" if logprobs is not None else None, **common)
            if who == "student" and calls:
                # A call is whole, as a label is: never cut by a client's max_tokens or stop.
                return ServedCall(content="", model=live.name, reason=reason, input_tokens=a.prompt_tokens,
                                  output_tokens=a.output_tokens, cost_usd=student_cost, finish_reason="tool_calls",
                                  extra={"tool_calls": as_tool_calls(a.parsed)},
                                  logprobs_unavailable="the answer is a tool call, which has no content tokens"
                                  if logprobs is not None else None, **common)
            if who == "student":
                # Still entered: its engine scores the tokens before a swap may retire it.
                content, n_out, finish = live.engine.shorten(a, max_tokens, stop)
                lps, why = None, None
                if logprobs is not None:
                    try:
                        lps = await asyncio.to_thread(live.engine.logprobs, read, a, content, n_out, logprobs)
                    except PotstillError as e:  # an engine that cannot score this answer (ctranslate2 past a window)
                        why = str(e)
                return ServedCall(content=content, model=live.name, reason=reason, input_tokens=a.prompt_tokens,
                                  output_tokens=n_out, cost_usd=student_cost, finish_reason=finish, logprobs=lps,
                                  logprobs_unavailable=why, **common)
        finally:
            live.release()
        if not self.streams() or reshaped(self.task, self.teacher, tools, calls):
            live_text = None
        elif live_text is not None:
            live_text.route = {"answered_by": "teacher", "reason": reason, "confidence": common["confidence"],
                               "student": live.name}
        try:
            r, cached, common["request_hash"] = await self._ask_teacher(h, req, live_text)
        except (TeacherError, TeacherBusy, ClientGone) as e:
            # The failed request's row still holds the student's seconds on it (``failure_reply``).
            e.spent = {"student": live.name, "student_cost_usd": student_cost}
            raise
        if cached and r.tool_calls:  # an answer served again: its calls get ids of their own, as OpenAI's
            ids = {} if live_text is None else live_text.call_ids
            r = dataclasses.replace(r, tool_calls=fresh_ids(r.tool_calls, ids))
        extra: dict[str, Any] = {"teacher_latency_s": 0.0 if cached else r.latency_s}
        if live_text is not None and live_text.first_at is not None:
            # The teacher's time to its first text (or tool call), what a streaming client waited past the student.
            extra["teacher_first_text_s"] = round(live_text.first_at - live_text.asked_at, 6)
        if live_text is not None and not cached and r.input_tokens == 0 and not self._warned_usage:
            self._warned_usage = True
            say(f"serve: the teacher {self.teacher_name}'s stream carried no token usage, so streamed escalations "
                "are logged with 0 tokens and $0; set serve.stream_teacher false to have them counted")
        if cached:
            extra["teacher_cached"] = True
        elif r.provider_request_id:  # the provider's id of this escalation, for its support and its bill
            extra["teacher_request_id"] = r.provider_request_id
        if r.label_probs:
            # The teacher's soft label, kept so `potstill redistill` can distil from served escalations.
            extra["teacher_label_probs"] = r.label_probs
        # The teacher's whole answer, so a repeat of this request can be answered from this row
        # (``Ledger.served_escalations``) whatever a client's stop strings cut from what was sent.
        extra["teacher_stop_reason"] = r.stop_reason or "stop"
        if r.logprobs is not None and req.get("logprobs"):
            extra["teacher_logprobs"] = r.logprobs
        content, finish = r.output, _finish_reason(r.stop_reason)
        if self.task.cfg.type == "tools":
            content, finish, r = as_asked(self.task, r, finish, calls, offered=tools is not None)
        at = first_stop(content, stop)
        if at >= 0:
            extra["teacher_output"] = content
            content, finish = content[:at], "stop"
        problem = None if r.tool_calls else answer_problem(r.output, response_format)
        if problem:  # the whole answer, as the student's is judged: a client's stop string may cut any JSON
            extra["response_format_problem"] = problem
        if r.tool_calls:  # whatever cut the text before them; a call cut at the teacher's budget stays length
            extra["tool_calls"] = r.tool_calls
            finish = "length" if finish == "length" else "tool_calls"
        lps, why = None, None
        if logprobs is not None:
            why = self.teacher_logprobs_unavailable()
            if why is None and r.logprobs is None:
                why = "the teacher returned no log-probabilities"
            elif why is None:
                lps = openai_logprobs(r.logprobs, content, r.output, logprobs)
        return ServedCall(content=content, model=self.teacher_name, reason=reason + ("+cached" if cached else ""),
                          # The teacher's bill, and apart from it the student's seconds on the request first.
                          **billed_tokens(r), cost_usd=0.0 if cached else r.cost_usd, student_cost_usd=student_cost,
                          extra=extra,
                          finish_reason=finish, logprobs=lps, logprobs_unavailable=why, **common)

    def streams(self) -> bool:
        """Whether an escalation can be streamed as the teacher writes it (``LiveText``): under
        ``serve.stream_teacher``, with a teacher that ``streams``."""
        return self.cfg.serve.stream_teacher and self.teacher.streams

    def student_guide(self, live: Live, response_format: dict[str, Any] | None) -> dict | None:
        """The JSON Schema the student decodes a request's answer under, as vLLM's guided decoding
        does for ``response_format``: under ``serve.guided_json``, a ``json_schema`` format's schema
        (none given: any JSON value) or, for ``json_object``, any object; None where nothing is
        asked, guidance is off, or the student scores labels (it then answers as configured, and
        an answer that is not the format goes to the teacher). vLLM's ``regex`` and ``choice``
        formats guide by their pattern (``models.regex_constraint``), its ``grammar`` by the grammar
        (``models.grammar_constraint``, GBNF or Lark). An answer decoded under a client's
        ``json_schema``, regex, choice or grammar is judged by it alone, not by an extraction task's
        schema, which it replaces for the request; under ``json_object`` the task's schema still holds."""
        if response_format is None or not self.cfg.serve.guided_json or not live.engine.guides:
            return None
        return format_schema(response_format)

    def log_failure(self, request: dict[str, Any], answered_by: str, model: str, latency_s: float,
                    body: dict[str, Any], error: str, teacher_hash: str | None = None,
                    billed: Response | None = None, request_id: str | None = None,
                    endpoint: str | None = None, spent: dict[str, Any] | None = None) -> None:
        """The ledger row of a request that got an error (rejected, or the teacher failed).

        ``teacher_hash``: the hash of the request a failed teacher got (``TeacherError``); else the
        chat's escalation hash (``_escalation_hash``). ``billed``: the teacher's failed answer, whose
        tokens and cost (a refusal's, billed by the provider) the row keeps, so the ledger is the bill.
        ``request_id``: the response's ``x-request-id``, and ``endpoint``: the path asked, kept in
        the logged request (as an answered request's row keeps them). ``spent``: the student that
        handled an escalation that then failed and its seconds on it (``student``, ``student_cost_usd``),
        the student's spend as on an answered escalation's row."""
        h = teacher_hash if teacher_hash is not None else self._escalation_hash(request)
        request = {**request, **{k: v for k, v in (("request_id", request_id), ("endpoint", endpoint)) if v is not None}}
        paid = {} if billed is None else {**billed_tokens(billed), "cost_usd": billed.cost_usd}
        self.ledger.record_served(ServedCall(request=request, answered_by=answered_by, model=model, latency_s=latency_s,
                                             status="error", error=error, error_body=body, request_hash=h, **paid,
                                             **(spent or {})))


def openai_logprobs(compact: list[dict[str, Any]], content: str, output: str, top: int) -> list[dict[str, Any]]:
    """A teacher's log-probs as its adapter keeps them ({token, logprob, top}, rounded to 1e-4 nats)
    in OpenAI's ``logprobs.content`` form, ``top`` alternatives each, for the ``content`` sent: every
    token of the teacher's ``output``, or where a client's stop string cut it, the tokens wholly
    inside what is left (as far as the token strings spell the text)."""
    out, text = [], ""
    for t in compact:
        text += t["token"]
        if content != output and not content.startswith(text):
            break
        out.append(openai_logprob(t, top))
    return out


def _finish_reason(stop: str | list[str] | None) -> str:
    """OpenAI's ``finish_reason`` for a teacher's stop reason: ``length`` where it ran out of tokens
    (OpenAI ``length``, Anthropic ``max_tokens``), else ``stop``."""
    stops = stop if isinstance(stop, list) else [stop]
    return "length" if any(s in ("length", "max_tokens") for s in stops) else "stop"


def _served(cfg: Config, path: str, task: Task, device: str, run_dir: Path) -> ServedStudent:
    """The student at ``path`` in the engine ``serve`` names (engine, dtype, quantization, recheck),
    compiled and warmed on the run's val inputs first where ``serve.compile`` asks."""
    s = cfg.serve
    engine = ServedStudent(section_engine(s, path, device=device, compile=s.compile, task=task, client_formats=True),
                           task)
    engine.weights_digest = weights_of(model_identity(path, Path(path)))
    val_path = run_dir / "val.jsonl"
    if s.compile and val_path.exists():  # without val, calibrate_run says what is missing
        # All of val: a generating student on static caches warms each row bucket on its longest inputs.
        val = [r.messages for r in _servable(engine, read_records(val_path), val_path, quiet=True)[0]]
        say(f"serve: compiling the student (torch.compile) on {min(len(val), s.batch_size)} val inputs; "
            "minutes on a small CPU")
        seconds = engine.engine.warm_compiled("serve", lambda: engine.warm(val, s.batch_size, guided=s.guided_json))
        say(f"serve: student compiled and warmed in {seconds:.0f} s")
    return engine


def _load_live(run_dir: Path, cfg: Config, task: Task, device: str, path: str) -> Live:
    if not (Path(path) / "config.json").exists() and not (Path(path) / "adapter_config.json").exists():
        raise PotstillError(f"{path}: no trained student (run `potstill train` first)")
    try:
        engine = _served(cfg, path, task, device, run_dir)
    except PotstillError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken promotion is the caller's one-line error, not a crash
        raise cannot_load(str(path), e) from None
    # Apart from the load, as load_service does: a calibration that fails (its cache cannot be written)
    # is no fault of the student's, which loaded. Still one line (a 409, the watcher's log), its own.
    try:
        routing, reference = calibrate_run(run_dir, cfg, engine, task)
    except PotstillError:
        raise
    except Exception as e:  # noqa: BLE001 - as above
        raise one_line(f"cannot calibrate routing for {path}", e) from None
    return Live(engine.served_name, path, engine, routing, reference, cfg.serve.batch_size, cfg.serve.batch_wait_ms)


def load_service(run_dir: Path, cfg: Config, recalibrate: bool = False, ledger_path: Path | None = None,
                 device: str = "auto") -> Service:
    run_dir = Path(run_dir)
    path = student_dir(run_dir)
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise PotstillError(f"{run_dir / 'student'}: no trained student (run `potstill train` first)")
    task = get_task(cfg.task)
    teacher = get_teacher(cfg.teacher, task, prices=cfg.generate.prices)  # escalations billed as generate bills
    t0 = time.perf_counter()
    try:
        engine = _served(cfg, str(path), task, device, run_dir)
    except PotstillError:
        raise
    except Exception as e:  # noqa: BLE001 - as _load_live says it for a hot swap: one line, not a traceback
        raise cannot_load(str(path), e) from None
    # Outside the student's load: a calibration that fails (its cache cannot be written) is no fault of
    # the student's, and says so itself.
    routing, reference = calibrate_run(run_dir, cfg, engine, task, force=recalibrate)
    st = routing.stats
    say(f"serve: student loaded and routing calibrated in {time.perf_counter() - t0:.1f} s; on val: "
        f"{st['val_escalation']:.0%} escalated, agreement {st['val_agreement']:.3f} "
        f"(student alone {st['val_student_alone_agreement']:.3f})")
    if hasattr(teacher, "lm"):
        # A local teacher is loaded now, before the first request, not at the first escalation on its own
        # thread: transformers sets torch's process-wide default dtype while it loads a model (bf16 for
        # the quickstart's gemma), so a load beside the student's forward made the student's tensors bf16
        # (a compile's guard failed, then index_add_ on every request once two loads' save and restore interleaved).
        teacher.lm()
    ledger = Ledger(ledger_path or run_dir / "calls.sqlite")
    return Service(cfg, task, engine, teacher, routing, reference, ledger, student_name=engine.served_name,
                   run_dir=run_dir, student_path=str(path), device=device)
