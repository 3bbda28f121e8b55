"""``ApiTeacher`` and the async engine it runs batches on: bounded concurrency, rate limits, budget.

``concurrency`` workers pull requests from one iterator, so a million inputs never become a
million pending tasks. Before each request a worker takes its share of the rate limits and
checks the budget; after it, the answer goes to ``on_result`` (the ledger commit) before the
worker takes the next one. At any moment at most ``concurrency`` requests are sent but not
committed: that is the most a ``kill -9`` can make a rerun send again.

Retries (429, 5xx, timeouts, dropped connections) are the SDK's: exponential backoff with jitter
that honours ``Retry-After``. The engine sees every HTTP attempt through httpx event hooks, so
it counts retries and lets one 429's ``Retry-After`` pause all workers, not just the one that
got it.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import os
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator

from rich.markup import escape

from potstill import aio
from potstill.config import GenerateConfig, PriceConfig, TeacherConfig
from potstill.errors import PotstillError, redact, url_secrets, url_without_credentials
from potstill.progress import say
from potstill.tasks import Task
from potstill.teachers.api.limits import RateLimiter, retry_after
from potstill.teachers.api.prices import price_for, token_cost
from potstill.teachers.base import OnDelta, OnResult, Response, RunStats, Teacher, halting


#: Answers in a row refused as every other request would be (``halting``: the key, the credit, the model)
#: that stop the run. Not the first: a gateway can refuse one request with a 403 of its own (its
#: content) while the others go through; five in a row, with nothing answered between, is the account.
HALT_AFTER = 5


def max_output(request: dict[str, Any]) -> int:
    """A request's output budget per sample: ``max_tokens``, or ``max_completion_tokens`` (OpenAI's
    reasoning models, where it also covers the hidden reasoning)."""
    return int(request.get("max_completion_tokens") or request.get("max_tokens") or 0)


def check_base_url(url: str, httpx: Any, setting: str = "teacher.base_url") -> None:
    """Refuse a base URL (``setting``: where it was set) the SDK's HTTP client cannot parse (an
    unclosed IPv6 bracket, a port that is not a number) in one line, before the SDK raises
    ``InvalidURL`` from deep inside; the URL is shown without its user info and query, which can
    hold a password."""
    try:
        httpx.URL(url)
    except Exception as e:  # noqa: BLE001 - httpx.InvalidURL, or ValueError/TypeError from its parser
        why = redact(str(e), url_secrets(url))
        raise PotstillError(f"{setting} {url_without_credentials(url)!r} is not a valid URL ({why})") from None


class ApiTeacher(Teacher):
    """A teacher behind an HTTP API: batches on the async engine, single requests on one session."""

    #: The config field naming the key's environment variable, for the error when it is unset.
    key_setting = "teacher.api_key_env"

    #: The variable the adapter's SDK reads its base URL from when given none (``OPENAI_BASE_URL``).
    base_url_env: str | None = None

    supports_samples = True
    remote = True

    def __init__(self, cfg: TeacherConfig, task: Task):
        super().__init__(cfg, task)
        if not cfg.model:
            raise PotstillError(f"teacher.model is required for an {self.type} teacher")
        #: Where requests go, decided once: ``teacher.base_url``, else the URL the SDK would read from
        #: its own variable (None: the provider's API). The client is given it, and its password is
        #: a secret and stays out of the teacher's identity wherever it was set.
        self.base_url: str | None = cfg.base_url or (os.environ.get(self.base_url_env) if self.base_url_env
                                                     else None) or None
        if self.base_url:
            check_base_url(self.base_url, self.http_module(), "teacher.base_url" if cfg.base_url else self.base_url_env)
        self._key: str | None = None
        self._session: Any = None
        self._session_lock = threading.Lock()

    logprobs_refusal = "this API returns no log-probabilities"

    def make_client(self, http_client: Any) -> Any:
        """The SDK's async client over ``http_client`` (reads the key here, never earlier)."""
        raise NotImplementedError

    async def call(self, client: Any, request: dict[str, Any], on_delta: OnDelta | None = None) -> Response:
        """One request (with its n samples); raises on failure after the SDK's retries. ``on_delta``
        (given only where the adapter ``streams``): the answer is streamed and each piece of it handed
        there as it arrives (a ``Delta``); the Response is the one the unstreamed call would give."""
        raise NotImplementedError

    def http_requests(self, request: dict[str, Any]) -> int:
        """HTTP requests ``call`` sends for one request (before the SDK's retries): 1 where the API
        takes ``n``; an adapter that sends each sample alone (Anthropic) says n."""
        return 1

    def error_code(self, e: Exception) -> str | None:
        """The provider's error code for a failed call (OpenAI's ``context_length_exceeded``), which
        says whether the chat itself was refused (serve answers that with the client's 400)."""
        code = getattr(e, "code", None)
        return code if isinstance(code, str) else None

    def estimate_tokens(self, request: dict[str, Any]) -> int:
        """Tokens a request may use, for the TPM bucket and the budget: ~4 characters a token."""
        chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
        return (chars // 4 + 4) * self.http_requests(request) + max_output(request) * int(request.get("n", 1))

    def identity_url(self, default: str) -> str:
        """The server as the teacher's identity names it (the cache key of every request): the base
        URL the client is given (``default``: the SDK's own, where it is given none), without the user
        info and query that carry a proxy's credentials, so a rotated password is not a new teacher; a
        URL without them is as written, so the requests hashed before stay cached."""
        return url_without_credentials(self.base_url) if self.base_url else default

    def secrets(self) -> list[str]:
        """Strings never to show in an error: the key, and a password in the base URL (``teacher.base_url``
        or the SDK's variable). With no ``api_key_env`` the SDK gets a placeholder ('unused'), which is
        no secret."""
        key = self._key if self.cfg.api_key_env else None
        return [key or "", *url_secrets(self.base_url)]

    def http_module(self) -> Any:
        """The httpx-compatible package the SDK takes clients from (httpx; newer SDKs: httpx2)."""
        import httpx

        return httpx

    def run(self, requests: list[dict[str, Any]], on_result: OnResult, stats: RunStats | None = None,
            gcfg: GenerateConfig | None = None) -> None:
        if requests:
            aio.run(run_requests(self, enumerate(requests), on_result, gcfg or GenerateConfig(prices={}),
                                 stats if stats is not None else RunStats()))

    def submit(self, request: dict[str, Any], on_delta: OnDelta | None = None) -> "Future[Response]":
        from potstill.teachers.api.session import ApiSession

        with self._session_lock:
            if self._session is None:
                self._session = ApiSession(self)
        return self._session.submit(request, on_delta if self.streams and streamable(request) else None)

    def close(self) -> None:
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None
        super().close()


# The estimated tokens of one HTTP request of the request ``send`` is sending: the SDK's retries of
# it are charged that much again (the hooks run in the task that sends, so they see it).
_RETRY_TOKENS: contextvars.ContextVar[float] = contextvars.ContextVar("potstill_retry_tokens", default=0.0)


def _hooks(limiter: RateLimiter, stats: RunStats) -> dict[str, list[Callable]]:
    async def on_request(request: Any) -> None:
        stats.attempts += 1
        # Every HTTP attempt beyond the first of each started request is a retry (the SDK's).
        stats.retries = max(0, stats.attempts - stats.started)
        # ``send`` charged each request's first attempt to generate.rpm/tpm; the SDK's retries
        # (a 5xx, a timeout, a 429: providers count unsuccessful requests against their limits too)
        # went out uncharged, as fast as the SDK's backoff. The OpenAI and Anthropic SDKs number
        # each attempt in this header: a retry now waits for the limits and is charged like a send.
        if request.headers.get("x-stainless-retry-count", "0") not in ("", "0"):
            await limiter.acquire(_RETRY_TOKENS.get(), 1)

    async def on_response(response: Any) -> None:
        limiter.observe(response.status_code, response.headers)

    return {"request": [on_request], "response": [on_response]}


def _open(teacher: ApiTeacher, limiter: RateLimiter, stats: RunStats,
          http_client_factory: Callable[..., Any] | None = None) -> tuple[Any, Any]:
    """An HTTP pool (hooked for counting and rate limits) and the SDK client over it."""
    httpx = teacher.http_module()
    factory = http_client_factory or httpx.AsyncClient
    # Keep-alive pool as large as the concurrency: every worker holds one connection.
    size = teacher.cfg.concurrency + 8
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    http = factory(event_hooks=_hooks(limiter, stats), limits=limits, timeout=teacher.cfg.timeout_s)
    try:
        return http, teacher.make_client(http)
    except BaseException:
        asyncio.get_running_loop().create_task(http.aclose())
        raise


def streamable(request: dict[str, Any]) -> bool:
    """Whether a request's answer may be streamed piece by piece: not one asking for several
    samples, whose answers come whole."""
    return int(request.get("n", 1)) == 1


def _param(e: Exception) -> str | None:
    """The request field an SDK's error names (OpenAI's ``param``), or None."""
    param = getattr(e, "param", None)
    return param if isinstance(param, str) else None


async def send(teacher: ApiTeacher, client: Any, req: dict[str, Any], limiter: RateLimiter,
               price: PriceConfig | None, stats: RunStats, on_delta: OnDelta | None = None) -> Response:
    """One request through the limits; a failure (after the SDK's retries) becomes an error response.
    ``on_delta``: the answer streamed, each piece handed there as it arrives (``ApiTeacher.call``)."""
    est = teacher.estimate_tokens(req)
    sends = teacher.http_requests(req)  # each counts against generate.rpm and teacher.concurrency, none is a retry
    # At most teacher.concurrency HTTP requests in flight: n samples sent as n requests hold n slots
    # (past the whole concurrency, the adapter sends them that many at a time: ``call``).
    async with limiter.concurrency.hold(min(sends, teacher.cfg.concurrency)):
        ticket = await limiter.acquire(est, sends)
        stats.started += sends
        _RETRY_TOKENS.set(est / max(1, sends))
        t0 = time.perf_counter()
        try:
            resp = await (teacher.call(client, req, on_delta) if on_delta is not None else teacher.call(client, req))
        except Exception as e:  # noqa: BLE001 - every failure becomes an error row, retried next run
            msg = redact(f"{type(e).__name__}: {e}", teacher.secrets())
            status = getattr(e, "status_code", None)
            headers = getattr(getattr(e, "response", None), "headers", None)  # an SDK's APIStatusError's
            resp = Response(output=None, error=msg[:500], error_status=status if isinstance(status, int) else None,
                            error_code=teacher.error_code(e), error_param=_param(e),
                            retry_after_s=retry_after(headers) if headers is not None else None)
    resp.latency_s = resp.latency_s or time.perf_counter() - t0
    limiter.settle(ticket, resp.input_tokens + resp.output_tokens)
    if price is not None:
        resp.cost_usd = token_cost(price, resp.input_tokens, resp.output_tokens, resp.cached_input_tokens,
                                   resp.cache_write_input_tokens, resp.cache_write_1h_input_tokens)
    return resp


def _commit_again(uncommitted: list[tuple[int, Response]], on_result: OnResult, first: Exception) -> None:
    """Commit once more the answers whose commit failed, after the requests in flight finished; then
    raise: the run stopped sending at the first failure, and says how many paid answers are lost."""
    lost = 0
    for j, resp in uncommitted:
        try:
            on_result(j, resp)
        except Exception:
            lost += 1
    what = f"{type(first).__name__}: {first}"
    kept = (f"{lost} of the answers received could not be written and would be paid for again on a rerun" if lost
            else "every answer received was written after all")
    raise PotstillError(f"generate: stopped, the ledger took no more answers ({what[:300]}); {kept}; "
                        "no other request was sent; rerun the same command once the ledger is free "
                        "(another process holding calls.sqlite, a full disk) to send the rest") from first


def _say_pause(seconds: float, why: str) -> None:
    say(f"[yellow]the provider's rate limit pauses every request for {seconds:.0f} s ({escape(why)}); the run goes on "
        "after it[/yellow]")


async def run_requests(
    teacher: ApiTeacher,
    requests: Iterable[tuple[int, dict[str, Any]]],
    on_result: OnResult,
    gcfg: GenerateConfig,
    stats: RunStats,
    on_tick: Callable[[], None] = lambda: None,
    http_client_factory: Callable[..., Any] | None = None,
) -> None:
    """Answer ``(index, request)`` pairs through ``teacher``, calling ``on_result`` as each completes.

    The budget reads ``stats.calls`` and ``stats.cost_usd``, which ``on_result`` counts
    (``RunStats.count``) before this worker sends anything else. ``HALT_AFTER`` answers in a row that
    failed as every other request would (``halting``) set ``stats.halted``: the requests in flight
    finish, no other is sent.
    """
    limiter = RateLimiter(gcfg.rpm, gcfg.tpm, teacher.cfg.concurrency, on_pause=_say_pause)
    price = price_for(teacher.cfg.model, teacher.cfg.price, gcfg.prices)
    budget = gcfg.budget_usd
    http, client = _open(teacher, limiter, stats, http_client_factory)
    it: Iterator[tuple[int, dict[str, Any]]] = iter(requests)
    held: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()  # put back to wait for an answer
    answered = asyncio.Event()
    in_flight = 0
    streak = 0  # answers in a row that failed as every other request would (``halting``), for one reason
    last: str | None = None  # that reason
    said = ""  # and the error that said it last
    # Answers ``on_result`` could not commit (the ledger locked past SQLite's timeout, the disk full) and why:
    # the first stops the sending, the requests in flight still finish and commit (each is paid for), and
    # these are tried once more at the end, so that a busy ledger costs no answer the provider billed.
    uncommitted: list[tuple[int, Response]] = []
    commit_errors: list[Exception] = []

    def expected_cost(req: dict[str, Any]) -> float:
        # Before any answer, price the worst case (the whole max_tokens); after, the mean of the answers
        # so far. Over answered calls only: a failed one is mostly free (a 400, a 5xx), and counted in the
        # mean it priced the requests in flight near $0 (twelve free errors, then $5 spent on a $2.5 cap).
        paid = stats.calls - stats.errors
        if paid:
            return stats.cost_usd / paid
        est = teacher.estimate_tokens(req)
        out = max_output(req) * int(req.get("n", 1))
        return token_cost(price, max(0, est - out), out)

    async def worker() -> None:
        nonlocal in_flight, streak, last, said
        while not stats.budget_stopped and not stats.halted and not commit_errors:
            item = held.popleft() if held else next(it, None)
            if item is None:
                return
            j, req = item
            if budget is not None and stats.cost_usd + (in_flight + 1) * expected_cost(req) > budget:
                if not in_flight:
                    stats.budget_stopped = True
                    return
                # Over only while the requests in flight are counted at their worst case: wait for one
                # to answer (the estimate then uses real costs) instead of stopping the run for good.
                held.appendleft(item)
                answered.clear()
                await answered.wait()
                continue
            in_flight += 1
            resp = await send(teacher, client, req, limiter, price, stats)
            try:
                on_result(j, resp)  # the ledger commit, before this worker sends anything else
            except Exception as e:
                uncommitted.append((j, resp))
                commit_errors.append(e)
            in_flight -= 1
            why = halting(resp)
            # By the reason, not its words: a gateway's error text may name each request (its id), and a
            # refused key must still stop the run.
            streak = streak + 1 if why and why == last else int(bool(why))
            last, said = why, f"{why}: {resp.error}" if why else ""
            if why and streak >= HALT_AFTER and not stats.halted:  # the requests in flight finish; no other goes out
                stats.halted = said
            answered.set()
            on_tick()

    try:
        await asyncio.gather(*(worker() for _ in range(teacher.cfg.concurrency)))
        if last and streak == stats.calls and not stats.halted:  # fewer than HALT_AFTER, each failing so
            stats.halted = said
        if commit_errors:
            _commit_again(uncommitted, on_result, commit_errors[0])
    finally:
        stats.throttled, stats.pauses = limiter.throttled, limiter.pauses
        stats.lowest_limit = limiter.concurrency.lowest
        await client.close()
        await http.aclose()
