"""The whole teacher contract: what an adapter declares, what it implements, what it may override.

A teacher turns a record into a *request* (a JSON-able dict: what is sent, never a key) and
answers requests. Callers hash ``identity() + request`` with ``request_hash`` to look the
ledger up, so a request already answered is never sent again, and write one ledger row per
answer as it arrives through ``on_result``. A third-party adapter subclasses ``Teacher`` and
registers it under the ``potstill.teachers`` entry point group, as the built-ins do.

Declared (class attributes; the defaults suit an in-process model):

- ``type``: the name used in ``teacher.type``.
- ``supports_samples``: one request can carry ``n`` samples (``generate.n``); generate sets
  ``n`` before building requests and refuses ``n > 1`` when this is False.
- ``supports_logprobs``: answers can carry top-k ``logprobs`` (``teacher.logprobs``); without it,
  ``teacher.logprobs > 0`` is refused at construction with ``logprobs_refusal``.
- ``supports_batch``: the adapter can send a whole run through a provider's batch API (cheaper,
  hours of latency); generate uses it only when asked to.
- ``remote``: requests go over the network (``teacher.base_url``), so they can be spread over
  several endpoints (``generate.ray_endpoints``).
- ``supports_tools``: ``with_tools`` adds a client's function tools to a request and answers carry
  the model's ``tool_calls`` (serve sends it the tool requests the student cannot answer).

Implemented by every adapter:

- ``identity()``: everything besides the request that determines the answer.
- ``request(record)``: the request for one record (defaults to its messages).
- ``run(requests, on_result, stats, gcfg)``: answer a batch, calling ``on_result(i, response)``
  as each completes. The caller counts answers into ``stats`` (``RunStats.count``); ``run`` may
  add what only it sees (HTTP attempts, retries, a budget stop). ``gcfg`` carries the rate
  limits and budget for adapters that pace themselves.

Overridable:

- ``submit(request)``: one request answered in the background, for a server escalating live
  traffic; it runs on one long-lived worker (one model, one client) for the teacher's life.
  ``answer_one`` waits for it. The default runs ``run([request])`` on a single worker thread,
  which also serialises access to an in-process model.
- ``with_tools(request, tools, tool_choice, parallel_tool_calls)``: the request with OpenAI-format
  function tools in the API's own terms (only where ``supports_tools``).
- ``with_response_format(request, response_format)``: the request constrained to an OpenAI-format
  ``response_format`` (json_object, json_schema) in the API's own terms, or None where the API
  cannot constrain its answer so (the default); serve checks the answer either way. An adapter
  that can passes its requests through ``structured(request)``, which asks for the extraction
  task's schema when ``teacher.structured_outputs`` is on (refused for an adapter that cannot).
- ``label_probs(answer)``: the soft label of an answer (new or from the ledger) over the task's
  labels as they are now; the default is the one stored with it.
- ``close()``: free the model or client; the teacher is not used after it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

from potstill.config import GenerateConfig, TeacherConfig
from potstill.errors import PotstillError
from potstill.hashing import hash_obj
from potstill.records import Record
from potstill.tasks import Task, extraction_schema


@dataclass
class Response:
    """One answer. ``error`` set (and ``output`` None) means the request failed."""

    output: str | None
    label_probs: dict[str, float] | None = None
    logprobs: list[dict[str, Any]] | None = None
    samples: list[str] | None = None
    #: With n > 1 samples and logprobs: each sample's top-k log-probs (``logprobs`` is sample 0's).
    sample_logprobs: list[list[dict[str, Any]] | None] | None = None
    #: With n > 1 samples sent as n requests (Anthropic): each one's [input_tokens, output_tokens].
    sample_tokens: list[list[int]] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    #: Part of ``input_tokens`` written to the provider's prompt cache (Anthropic), billed above input.
    cache_write_input_tokens: int = 0
    #: Part of ``cache_write_input_tokens`` kept in the cache for an hour (Anthropic), billed above a 5-minute write.
    cache_write_1h_input_tokens: int = 0
    #: Part of ``output_tokens`` the model spent on hidden reasoning (OpenAI's ``reasoning_tokens``), where said.
    reasoning_tokens: int | None = None
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None
    #: A failed request's HTTP status from the provider (400: it refused the request itself, e.g. a
    #: chat over its context) and the provider's error code (``context_length_exceeded``), where known.
    error_status: int | None = None
    error_code: str | None = None
    #: The request field a failed request was refused for, where the provider names it (OpenAI's ``param``).
    error_param: str | None = None
    #: A failed request's wait in seconds the provider asked for (``Retry-After``), where it sent one.
    retry_after_s: float | None = None
    #: Why the model stopped (``stop``, ``length``, ``end_turn``...); one per sample when n > 1.
    stop_reason: str | list[str] | None = None
    #: The tools the model called, in OpenAI's form ({id, type: function, function: {name, arguments}}).
    tool_calls: list[dict[str, Any]] | None = None
    #: With n > 1 samples, what earlier failed attempts at the same request paid for the samples they
    #: did answer ({input_tokens, output_tokens, cost_usd}): billed in their error rows, so not in this
    #: answer's own tokens and cost (its row bills only the samples it asked for). See ``consistency.paid``.
    earlier_paid: dict[str, float] | None = None
    #: The model that wrote the answer where it is not the teacher's own ``model_name``: a replay
    #: teacher's recording of a logged model's (gpt-4o-mini-2024-07-18, as ``potstill import`` read it).
    model: str | None = None
    #: The provider's id of the HTTP request that answered (OpenAI's ``x-request-id``, Anthropic's
    #: ``request-id``), what its support asks for about one answer or one charge.
    provider_request_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.output is not None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


OnResult = Callable[[int, Response], None]


def token_bytes(entry: dict[str, Any]) -> bytes:
    """The bytes of one kept logprobs entry (a token or one of its ``top`` alternatives). An entry
    keeps its ``bytes`` (OpenAI's field) only where its text does not spell them: a token holding part
    of a character split across tokens (CJK, emoji), whose text is escaped or U+FFFD."""
    if entry.get("bytes") is not None:
        return bytes(entry["bytes"])
    return str(entry.get("token", "")).encode("utf-8", "surrogatepass")  # a lone surrogate: bytes that match nothing


@dataclass(frozen=True)
class Delta:
    """A piece of an answer as the teacher writes it (``Teacher.submit``'s ``on_delta``): new
    ``text``, the ``logprobs`` of the tokens that text holds (as the adapter keeps them: token,
    logprob, top, rounded), and ``tool_calls`` fragments in OpenAI's chunk form (``index``; ``id``,
    ``type`` and the function's ``name`` where a call begins; a piece of its ``arguments``). The first
    piece may carry ``input_tokens``, the prompt's tokens as the teacher counted them before it wrote
    (an Anthropic ``message_start``'s); None where the count comes with the end only (OpenAI's usage chunk)."""

    text: str = ""
    logprobs: list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    input_tokens: int | None = None


OnDelta = Callable[[Delta], None]


def join_fragment(calls: dict[int, dict[str, Any]], fragment: dict[str, Any]) -> None:
    """A tool-call fragment (OpenAI's chunk form) joined to the call it continues in ``calls`` (by
    index: id, name and arguments so far), as the openai SDK joins a streamed answer's calls."""
    call = calls.setdefault(fragment.get("index", 0), {"id": None, "name": "", "arguments": ""})
    fn = fragment.get("function") or {}
    call["id"] = fragment.get("id") or call["id"]
    call["name"] += fn.get("name") or ""
    call["arguments"] += fn.get("arguments") or ""


def is_refusal(error: str | None) -> bool:
    """Whether a failed answer's error is the model refusing the request (OpenAI's ``refusal: ...``,
    Anthropic's ``stop_reason refusal``): billed, and as a rule refused again if asked again."""
    return bool(error) and (error.startswith("refusal") or error.startswith("stop_reason refusal"))


# A request's own fields, the same in every request of a run: a 400 (or a 404: a model served on another
# endpoint, as gpt-5-pro is on /v1/responses only) that names one refuses the run's settings, not the chat.
REQUEST_FIELDS = ("model", "max_tokens", "max_completion_tokens", "temperature", "reasoning_effort", "logprobs",
                  "top_logprobs", "n", "stream_options", "parallel_tool_calls", "response_format", "thinking")


def halting(resp: Response) -> str | None:
    """Why every other request would fail as ``resp`` did, or None: the key refused (401), no
    permission (403), the account out of credit (``insufficient_quota``, a 429 the SDK retries as if
    it would pass), no such model, or a setting the server refuses (OpenAI's ``unsupported_parameter``
    and ``unsupported_value``, a 400 or 404 naming one of ``REQUEST_FIELDS``: reasoning_effort sent to a
    chat model). Sending the rest would only repeat it, thousands of times (the engine stops after
    ``HALT_AFTER`` such answers in a row)."""
    if resp.ok:
        return None
    if resp.error_code in ("insufficient_quota", "model_not_found"):
        return resp.error_code
    if resp.error_code in ("unsupported_parameter", "unsupported_value") or (
            resp.error_status in (400, 404) and resp.error_param in REQUEST_FIELDS):
        return f"the server refuses the request's {resp.error_param or 'parameters'} (HTTP {resp.error_status})"
    return {401: "the key was refused", 403: "the key has no permission"}.get(resp.error_status or 0)


@dataclass
class RunStats:
    """One run's numbers: answers (counted by the caller), what the sender saw, and what generate adds."""

    inputs: int = 0
    cache_hits: int = 0
    calls: int = 0  # answers received, failed ones included
    errors: int = 0
    invalid: int = 0
    unsent: int = 0
    started: int = 0  # requests handed to the network
    attempts: int = 0  # HTTP attempts, retries included
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    budget_stopped: bool = False
    throttled: int = 0  # 429 responses, retries included
    pauses: int = 0  # times every worker was paused (clustered 429s, or a rate-limit header at zero)
    lowest_limit: float = 0.0  # the lowest the adaptive limit on requests in flight went
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    fewer_samples: int = 0  # answers with fewer than generate.n samples (a server that ignores n)
    refused: int = 0  # inputs the teacher refused (this run or an earlier one): not sent again
    #: Inputs answered by a request asked under another output budget whose answer ended by itself
    #: within this one (``Ledger.whole_answers``); counted in ``cache_hits`` too.
    whole_reused: int = 0
    #: Why the sender stopped taking requests (``halting``: the key refused, no credit), or None.
    halted: str | None = None
    #: The ledger's row for this run (``generate_runs``), which a tool round's runs name as their parent.
    run_id: int | None = None

    def count(self, resp: Response) -> None:
        self.calls += 1
        self.errors += not resp.ok
        self.input_tokens += resp.input_tokens
        self.output_tokens += resp.output_tokens
        self.cost_usd += resp.cost_usd

    def merge(self, other: "RunStats") -> None:
        """Add another worker's answers and sending numbers (a Ray shard's)."""
        for name in ("calls", "errors", "started", "attempts", "retries", "input_tokens", "output_tokens", "cost_usd",
                     "throttled", "pauses"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.budget_stopped |= other.budget_stopped
        self.halted = self.halted or other.halted
        if other.lowest_limit:  # 0.0: that worker never ran the adaptive limit
            self.lowest_limit = min(self.lowest_limit or other.lowest_limit, other.lowest_limit)

    def add_run(self, other: "RunStats") -> None:
        """Add a later ``label_records`` run of the same stage (a tool round's): ``merge``'s sending
        numbers and what that run made of its answers (its inputs are not this run's inputs)."""
        self.merge(other)
        for name in ("cache_hits", "invalid", "unsent", "refused", "fewer_samples", "whole_reused", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.invalid_reasons.items():
            self.invalid_reasons[k] = self.invalid_reasons.get(k, 0) + v


def request_hash(identity: dict[str, Any], request: dict[str, Any]) -> str:
    """The ledger key of a request: the same for generate, redistill and a served escalation."""
    return hash_obj({"teacher": identity, "request": request})


# A request's output budget, in the request (OpenAI, Anthropic) or the teacher's identity (local, replay).
BUDGET_FIELDS = ("max_tokens", "max_completion_tokens")


class Teacher:
    """Base of every adapter; see the module docstring for the contract."""

    type: ClassVar[str] = "teacher"
    supports_samples: ClassVar[bool] = False
    supports_logprobs: ClassVar[bool] = False
    #: Why ``teacher.logprobs`` is refused when ``supports_logprobs`` is False.
    logprobs_refusal: ClassVar[str] = "this teacher returns no log-probabilities"
    #: Whether the teacher takes ``teacher.thinking_budget`` (Anthropic's extended thinking).
    supports_thinking: ClassVar[bool] = False
    #: Whether a classification teacher gives each answer's distribution over labels without
    #: ``teacher.logprobs`` (a local teacher reads it from its own logits).
    writes_label_probs: ClassVar[bool] = False
    supports_batch: ClassVar[bool] = False
    remote: ClassVar[bool] = False
    supports_tools: ClassVar[bool] = False
    #: Whether ``submit`` can hand its answer on piece by piece as the teacher writes it (``on_delta``:
    #: a served escalation streamed live): its text, tokens' log-probabilities and tool calls. Not
    #: with several samples, which come whole.
    streams: ClassVar[bool] = False
    #: USD per million tokens by model prefix (``generate.prices``) for answers outside ``run``
    #: (``submit``) when ``teacher.price`` names none; None: the built-in table. ``run`` takes
    #: generate's own. Set by ``get_teacher``; a teacher billed by the hour ignores it.
    prices: dict[str, dict[str, float]] | None = None

    def __init__(self, cfg: TeacherConfig, task: Task):
        self.cfg = cfg
        self.task = task
        fmt = self.task_format()
        if fmt is not None and self.with_response_format({}, fmt) is None:
            article = "an" if self.type[:1] in ("a", "e", "i", "o", "u") else "a"
            raise PotstillError(f"teacher.structured_outputs {cfg.structured_outputs}: {article} {self.type} teacher "
                                f"cannot constrain its answers to a {fmt['type'].replace('json_', '')}; set it to off" +
                                ("; curate still drops answers task.grammar does not derive"
                                 if fmt["type"] == "grammar" else ""))
        if cfg.logprobs and not self.supports_logprobs:
            # Refused here, before any answer: ignored, it left records without the top-k data asked for,
            # and train's kd then failed on something that did not name this setting.
            raise PotstillError(f"teacher.logprobs: {self.logprobs_refusal}; set it to 0")
        if getattr(cfg, "thinking_budget", None) and not self.supports_thinking:
            raise PotstillError(f"teacher.thinking_budget: the {self.type} teacher has no extended thinking (Anthropic's); "
                                "an OpenAI reasoning model takes teacher.reasoning_effort; unset it")
        #: Samples per input; generate sets it from ``generate.n`` (only above 1 when ``supports_samples``).
        self.n = 1
        self._worker: ThreadPoolExecutor | None = None
        self._worker_lock = threading.Lock()

    def secrets(self) -> list[str]:
        """What must never be printed of this teacher (a key, a password in its URL), for ``redact``:
        none for one that holds none (local, replay); the API teachers name theirs."""
        return []

    @classmethod
    def logprobs_problem(cls, cfg: TeacherConfig) -> str | None:
        """Why a teacher of config ``cfg`` can return no log-probabilities (read before it is built:
        preflight asks it of a KD run's teacher), or None where ``teacher.logprobs`` would get them."""
        return None if cls.supports_logprobs else cls.logprobs_refusal

    @property
    def model_name(self) -> str:
        return self.cfg.model or self.type

    def identity(self) -> dict[str, Any]:
        """Everything besides the request that determines the answer (model, prompt, sampling)."""
        raise NotImplementedError

    def prompt_hash(self, request: dict[str, Any]) -> str:
        """``request_hash`` with the output budget left out of request and identity: one key for the
        same request under any ``teacher.max_tokens`` (``Ledger.whole_answers``). The identity is
        read once per teacher (a local one hashes its weights' files)."""
        if getattr(self, "_budgetless", None) is None:
            self._budgetless = {k: v for k, v in self.identity().items() if k not in BUDGET_FIELDS}
        return request_hash(self._budgetless, {k: v for k, v in request.items() if k not in BUDGET_FIELDS})

    def former_identity(self) -> dict[str, Any] | None:
        """An identity this teacher's answers were keyed by in an earlier potstill, which still
        answers for it (a local model's path as written); None where there is none."""
        return None

    def request(self, record: Record) -> dict[str, Any]:
        return {"messages": record.messages}

    def run(self, requests: list[dict[str, Any]], on_result: OnResult, stats: RunStats | None = None,
            gcfg: GenerateConfig | None = None) -> None:
        """Answer every request, calling ``on_result(index, response)`` as each one completes."""
        raise NotImplementedError

    def submit(self, request: dict[str, Any], on_delta: OnDelta | None = None) -> "Future[Response]":
        """Answer one request on the teacher's single long-lived worker. ``on_delta``: where a
        teacher that ``streams`` hands each piece of its answer (a ``Delta``) as it arrives (called
        on another thread); others, and requests for several samples, ignore it."""
        with self._worker_lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"potstill-{self.type}")
        return self._worker.submit(self._answer_now, request)

    def answer_one(self, request: dict[str, Any]) -> Response:
        """One request, waited for (thread-safe)."""
        return self.submit(request).result()

    def _answer_now(self, request: dict[str, Any]) -> Response:
        got: list[Response] = []
        self.run([request], lambda i, r: got.append(r))
        return got[0] if got else Response(output=None, error="the teacher returned no answer")

    def with_tools(self, request: dict[str, Any], tools: list[dict[str, Any]], tool_choice: str | dict | None = None,
                   parallel_tool_calls: bool | None = None) -> dict[str, Any]:
        """``request`` offering the model OpenAI-format function ``tools``; ``tool_choice`` ('auto',
        'required' or {type: function, function: {name}}) and ``parallel_tool_calls`` as OpenAI's
        chat completions take them, None where the client left them out."""
        raise NotImplementedError(f"a {self.type} teacher cannot call tools")

    def task_format(self) -> dict[str, Any] | None:
        """The task's JSON Schema as a structured-output format in chat completions' form
        (``teacher.structured_outputs``; a free-text task's ``grammar`` as potstill's own grammar
        format, ``serve.formats``), or None where it is off."""
        mode = self.cfg.structured_outputs
        if mode == "off":
            return None
        task = self.task.cfg
        if task.type == "tools":
            raise PotstillError(f"teacher.structured_outputs {mode}: a tools task's teacher is asked with task.tools, "
                                "one call required, not for a response format; set it to off (a function's "
                                "strict: true holds its arguments to its parameters)")
        if task.type == "freetext" and task.grammar is not None:  # a greedy local teacher decodes under it
            return {"type": "grammar", "grammar": task.grammar}
        schema = extraction_schema(self.task.cfg, f"teacher.structured_outputs {mode}", "ask for", "off",
                                   also=" (or free text with task.grammar, for a local teacher)")
        return {"type": "json_schema", "json_schema": {"name": "extraction", "schema": schema,
                                                       "strict": mode == "strict"}}

    def task_tools(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` offering a tools task's ``task.tools``, a call required (one, or with
        ``task.parallel_tool_calls`` one or more; ``task.tool_choice: auto``: the teacher's choice,
        a call or a reply in words), where the teacher can call tools; one that cannot (local,
        replay) answers with the call written as text."""
        if self.task.cfg.type != "tools" or not self.supports_tools:
            return request
        one = None if self.task.cfg.parallel_tool_calls or not self.tells_parallel() else False
        return self.with_tools(request, self.task.cfg.tools or [], self.task.cfg.tool_choice, one)

    def tells_parallel(self) -> bool:
        """Whether this teacher's API takes ``parallel_tool_calls`` (OpenAI's o-series models refuse
        the field): where it does not, a one-call task's teacher is not told, and an answer with
        several calls is set aside by curate."""
        return True

    def structured(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` asking for the task's format where ``teacher.structured_outputs`` is on."""
        fmt = self.task_format()
        return request if fmt is None else self.with_response_format(request, fmt) or request

    def unstructured(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` without the fields ``structured`` added for the task's format: a served
        request that is not the task's (a client's tools, which a teacher decoding the whole answer
        under the task's schema could never call) asks its own way."""
        fmt = self.task_format()
        added = None if fmt is None else self.with_response_format({}, fmt)
        return {k: v for k, v in request.items() if k not in (added or {})}

    def with_response_format(self, request: dict[str, Any], response_format: dict[str, Any]) -> dict[str, Any] | None:
        """``request`` asking for an answer in ``response_format`` (chat completions' form, see
        ``potstill.serve.formats``), or None where this API takes no such constraint."""
        return None

    def label_probs(self, answer: dict[str, Any]) -> dict[str, float] | None:
        """The distribution over ``task.labels`` of an answer (``Response.to_json()``, maybe cached)."""
        return answer.get("label_probs")

    def token_cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
                   cache_write_input_tokens: int = 0, cache_write_1h_input_tokens: int = 0) -> float:
        from potstill.teachers.api.prices import token_cost

        return token_cost(self.cfg.price, input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens,
                          cache_write_1h_input_tokens)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
