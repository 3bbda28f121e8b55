"""``generate.engine: batch``: the provider's batch API at ``generate.batch_price`` of the live price.

The order of commits is what makes a ``kill -9`` at any moment safe (nothing sent or paid twice):

1. a batch row and its requests go to the ledger before any upload (state ``preparing``);
2. the uploaded file id and then the batch id are committed as soon as the provider returns
   them. A rerun that finds a ``preparing`` row first looks for what it may have sent before
   dying (a file named after the row's key; an OpenAI batch whose metadata holds the key; an
   Anthropic batch of the same size created after the row) and only then sends;
3. results are committed as they stream in, a few hundred rows at a time. A rerun reads the same
   results again and skips the requests already answered;
4. a batch is marked ``collected`` only after its last result is committed; its expired and
   failed requests are then resubmitted alone, in a new batch.

Requests already answered (live or batch) are never put in a batch; requests held by a batch
that is still open are not put in another one. Every open batch of the provider in the ledger is
collected, whatever this run asks: one left by a killed run under other settings (another
``teacher.max_tokens``) is billed all the same, and its answers may answer this run's inputs as
cached ones do (``collect_open`` waits for those before the cache is read).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from potstill.config import GenerateConfig, PriceConfig
from potstill.errors import PotstillError, redact
from potstill.generate.batch_providers import BatchStatus, is_not_found, is_quota, provider_for
from potstill.teachers.api.engine import max_output
from potstill.teachers.api.prices import price_for, token_cost
from potstill.ledger import Ledger
from potstill.progress import bar, say
from potstill.teachers.base import BUDGET_FIELDS, Response, RunStats, request_hash

#: Result rows committed in one SQLite transaction while a results file streams in: a kill loses
#: at most this many parsed rows, which the rerun reads again from the same (paid) results.
COMMIT_EVERY = 200


def _chunks(prov: Any, items: list[tuple[str, dict[str, Any]]], max_requests: int) -> list[list[tuple[str, dict]]]:
    """Split into batches under the provider's request-count and byte limits (1 MiB kept spare)."""
    out: list[list[tuple[str, dict]]] = []
    cur: list[tuple[str, dict]] = []
    size = 0
    for h, q in items:
        n = len(prov.line(h, q))
        if cur and (len(cur) >= max_requests or size + n > prov.max_bytes - (1 << 20)):
            out.append(cur)
            cur, size = [], 0
        cur.append((h, q))
        size += n
    return out + [cur] if cur else out


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class BatchRun:
    """One ``generate`` over a provider's batch API, counting into the run's ``RunStats``."""

    def __init__(self, teacher: Any, ledger: Ledger, stage: str, gcfg: GenerateConfig, stats: RunStats):
        self.teacher, self.ledger, self.stage, self.gcfg, self.stats = teacher, ledger, stage, gcfg, stats
        self.prov = provider_for(teacher)
        self.share = gcfg.batch_price.get(self.prov.name, 1.0)
        self.items: dict[str, dict[str, dict[str, Any]]] = {}  # batch key -> its requests by hash
        self.rows: dict[str, dict[str, Any]] = {}  # batch key -> its ledger row (model, stage, attempt)
        self.errors: dict[str, str] = {}  # request hash -> why it has no answer
        #: The request hashes this run asks for. An open batch's other requests (a killed run's, under
        #: other settings) are collected, being paid, but never resubmitted.
        self.wanted: set[str] = set()
        self._prices: dict[str, Any] = {}
        self.t0 = time.time()
        self._last_line: tuple = ()
        self.advance: Any = lambda n=1, **kw: None

    # ------------------------------------------------------------------ plan and submit
    def price(self, model: str) -> Any:
        """The live token price of a batch row's model (``teacher.price`` is the teacher's model's)."""
        if model not in self._prices:
            own = self.teacher.cfg.price if model == self.teacher.model_name else PriceConfig()
            self._prices[model] = price_for(model, own, self.gcfg.prices)
        return self._prices[model]

    def open_rows(self) -> list[dict[str, Any]]:
        """Every open batch of this provider in the ledger, its requests read into ``items``."""
        rows = self.ledger.batches(self.prov.name)
        for row in rows:
            self.items[row["key"]] = self.ledger.batch_items(row["key"])
            self.rows[row["key"]] = row
        return rows

    def _resume(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """An earlier run's open batches, each one it was killed before creating found at the provider
        or sent (``_submit``); returns those now at the provider, the ones closed as ``unsent`` left out."""
        for row in rows:
            if row["state"] == "preparing":
                self._submit(row, resumed=True)
        return [r for r in rows if r["state"] != "unsent"]

    def collect(self, rows: list[dict[str, Any]]) -> None:
        """Wait for open batches of an earlier run and commit their answers; resubmit none of them."""
        rows = self._resume(rows)
        held = {h for r in rows for h in self.items[r["key"]]}
        self._poll(rows, len(held - set(self.ledger.lookup(list(held)))))

    def run(self, items: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
        todo = self.wanted = {h for h, _ in items}
        # An open batch of an earlier, killed run: resume it, never resend what it holds. One that holds
        # none of these requests (other settings, another model) is collected too: the provider bills it.
        rows = self.open_rows()
        held_keys = {h for r in rows for h in self.items[r["key"]]}
        if rows:
            say(f"generate: resuming {len(rows)} open {self.prov.name} batch(es) holding {len(held_keys)} requests")
        rows = self._resume(rows)
        held_keys = {h for r in rows for h in self.items[r["key"]]}
        new = [(h, q) for h, q in items if h not in held_keys]
        # The resumed batches are billed when they end, whatever this run sends: their requests not yet
        # answered in the ledger take their share of the budget first, after what this run has collected.
        answered = set(self.ledger.lookup(list(held_keys)))
        resumed = [(self.rows[r["key"]]["model"], h, q) for r in rows for h, q in self.items[r["key"]].items()
                   if h not in answered]
        spent = self.stats.cost_usd + sum(self._worst_cost([(h, q)], m) for m, h, q in resumed)
        rows += self._submit_new(self._within_budget(new, spent), attempt=1)
        self._poll(rows, len(todo | (held_keys - answered)))
        return self.errors

    def _worst_cost(self, items: list[tuple[str, dict[str, Any]]], model: str | None = None) -> float:
        """The requests' cost at the batch price if each used all of its max_tokens."""
        price = self.price(model or self.teacher.model_name)
        usd = 0.0
        for _, q in items:
            est = self.teacher.estimate_tokens(q)
            out = max_output(q) * int(q.get("n", 1))
            usd += token_cost(price, max(0, est - out), out) * self.share
        return usd

    def _within_budget(self, items: list[tuple[str, dict[str, Any]]], spent: float = 0.0) -> list[tuple[str, dict[str, Any]]]:
        """The requests whose worst-case cost (all of max_tokens) fits ``generate.budget_usd`` after
        ``spent`` (the worst case of the open batches this run resumes)."""
        budget = self.gcfg.budget_usd
        if budget is None:
            return items
        keep = []
        if spent > budget:
            say(f"[yellow]generate: the open batches resumed may cost up to ${spent:.4f}, above generate.budget_usd "
                f"${budget:g}; no new batch is sent[/yellow]")
        for h, q in items:
            spent += self._worst_cost([(h, q)])
            if spent > budget:
                self.stats.budget_stopped = True
                break
            keep.append((h, q))
        return keep

    def _submit_new(self, items: list[tuple[str, dict[str, Any]]], attempt: int) -> list[dict[str, Any]]:
        cap = min(self.gcfg.batch_max_requests or self.prov.max_requests, self.prov.max_requests)
        rows = []
        for chunk in _chunks(self.prov, items, cap):
            key = f"potstill-{uuid.uuid4().hex}"
            self.ledger.batch_new(key, self.prov.name, self.teacher.model_name, self.stage, attempt, chunk)
            self.items[key] = dict(chunk)
            row = {"key": key, "attempt": attempt, "batch_id": None, "file_id": None, "state": "preparing",
                   "requests": len(chunk), "created_at": time.time(), "model": self.teacher.model_name,
                   "stage": self.stage}
            self.rows[key] = row
            self._submit(row, resumed=False)
            rows.append(row)
        return rows

    def _submit(self, row: dict[str, Any], resumed: bool) -> None:
        """Upload and create one batch, committing each provider id as soon as it exists. A killed
        run's row that holds none of this run's requests is only looked for at the provider: found,
        it is collected (billed); never sent, it is closed as ``unsent`` (nothing to pay for)."""
        key, prov = row["key"], self.prov
        lines = [prov.line(h, q) for h, q in self.items[key].items()]
        send = not self.wanted.isdisjoint(self.items[key])
        try:
            if prov.uses_files and not row["file_id"]:
                fid = (prov.find_file(key) if resumed else None) or (prov.upload(key, b"".join(lines)) if send else None)
                if fid:
                    self.ledger.batch_update(key, file_id=fid)
                    row["file_id"] = fid
            claimed = {r["batch_id"] for r in self.ledger.batches(open_only=False) if r["batch_id"]}
            bid = ((prov.find_batch(key, row, claimed) if resumed else None)
                   or (prov.create(key, row["file_id"], lines) if send else None))
            if bid is None:
                self.ledger.batch_update(key, state="unsent")
                row.update(state="unsent")
                return
        except Exception as e:  # noqa: BLE001 - provider refusals become one line; the row is given up
            status = getattr(e, "status_code", None)
            if status is None or status >= 500:
                # The batch may exist despite the error: the row stays ``preparing``, so the rerun
                # looks for it before sending anything (run_batch turns this into one line).
                raise
            self.ledger.batch_update(key, state="refused")
            what = "quota exceeded" if is_quota(e) else f"HTTP {status}"
            # What the user does next depends on the refusal: a key or permission is not fixed by waiting.
            then = ("Rerun when the quota allows" if is_quota(e) or status == 429 else
                    f"Check the key in ${self.teacher.cfg.api_key_env} and its access to the batch API, then rerun"
                    if status in (401, 403) else "Fix the request the provider names, then rerun")
            raise PotstillError(
                f"generate: the {prov.name} batch API refused a batch of {row['requests']} requests ({what}: "
                f"{self._clean(e)}); nothing in it was billed and answers already committed are kept. {then}") from None
        self.ledger.batch_update(key, batch_id=bid, state="submitted")
        row.update(batch_id=bid, state="submitted")
        self.stats.started += row["requests"]

    def _redact(self, text: str | None) -> str:
        """A provider's words (a batch's failure reason, a results line's error) without the key:
        a gateway can quote the credentials it refused, as a live call's error can."""
        return redact(str(text or ""), self.teacher.secrets())

    def _clean(self, e: Exception) -> str:
        return redact(str(getattr(e, "message", None) or e), self.teacher.secrets())[:200]

    # ------------------------------------------------------------------ poll and collect
    def _poll(self, rows: list[dict[str, Any]], total: int) -> None:
        pending = {r["key"]: r for r in rows}
        counts: dict[str, BatchStatus] = {}
        with bar(f"{self.stage}: {self.prov.name} batches", total) as advance:
            self.advance = advance
            while pending:
                for key, row in list(pending.items()):
                    try:
                        st = self.prov.status(row["batch_id"])
                    except Exception as e:  # noqa: BLE001 - an id the provider does not know is given up
                        if not is_not_found(e):
                            raise
                        del pending[key]
                        for new in self._lost(row):
                            pending[new["key"]] = new
                        continue
                    counts[key] = st
                    self.ledger.batch_update(key, state=st.state, done=st.done, failed=st.failed, expired=st.expired)
                    if st.ended:
                        retry = self._collect(row, st)
                        if retry is None:  # another project's batch, taken for ours after a crash
                            self._disown(row)
                            if row["state"] == "unsent":
                                del pending[key]
                            continue
                        self.ledger.batch_update(key, state="collected")
                        del pending[key]
                        for new in self._resubmit(key, retry, row["attempt"] + 1):
                            pending[new["key"]] = new
                self._progress(counts, len(pending))
                if pending:
                    time.sleep(self.gcfg.batch_poll_s)

    def _disown(self, row: dict[str, Any]) -> None:
        """A batch taken for ours after a crash (``find_batch``) whose results hold none of our
        requests: another project's on the same key. A marker row keeps its id claimed, so that no
        search takes it again, and the search for ours goes on (or ours is sent)."""
        key, bid = row["key"], row["batch_id"]
        say(f"generate: {self.prov.name} batch {bid}, taken for ours after a crash, holds none of our "
            f"{row['requests']} requests in its results: it is another project's; the search for ours goes on")
        marker = f"foreign-{bid}"
        self.ledger.batch_new(marker, self.prov.name, row["model"], row["stage"], row["attempt"], [])
        self.ledger.batch_update(marker, batch_id=bid, state="foreign")
        self.ledger.batch_update(key, batch_id=None, state="preparing")
        row.update(batch_id=None, state="preparing")
        self.stats.started -= row["requests"]  # counted again when ours is found or sent
        self._submit(row, resumed=True)

    def _lost(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """A batch id the provider answers 404 for (a key of another project or workspace, a batch
        deleted): nothing more can come from it, so its row is closed as ``lost`` and the requests of
        it that this run asks for, not answered, go out again; waiting would never end."""
        key, bid = row["key"], row["batch_id"]
        self.ledger.batch_update(key, state="lost")
        answered = set(self.ledger.lookup(list(self.items[key])))
        again = [(h, q) for h, q in self.items[key].items() if h in self.wanted and h not in answered]
        say(f"generate: {self.prov.name} batch {bid} is not found at the provider (404: a key of another project or "
            "workspace?); it is marked lost in the ledger and "
            + (f"its {len(again)} unanswered requests are sent again" if again else "none of its requests is asked for now"))
        return self._submit_new(again, attempt=row["attempt"]) if again else []

    def _progress(self, counts: dict[str, BatchStatus], n_open: int) -> None:
        done = sum(s.done for s in counts.values())
        failed = sum(s.failed for s in counts.values())
        expired = sum(s.expired for s in counts.values())
        fields = {"open": n_open, "failed": failed, "expired": expired, "elapsed": _elapsed(time.time() - self.t0)}
        self.advance(0, **fields)
        if (done, failed, expired, n_open) != self._last_line:  # a log line only when something moved
            self._last_line = (done, failed, expired, n_open)
            say(f"generate: {self.prov.name} batches: {n_open} open, {done} done, {failed} failed, "
                f"{expired} expired, {fields['elapsed']} elapsed")

    def _collect(self, row: dict[str, Any], st: BatchStatus) -> dict[str, dict[str, Any]] | None:
        """Commit an ended batch's results; return the requests to resubmit (expired, failed, missing),
        or None where its results hold none of its requests (not ours: ``_disown``)."""
        key, bid = row["key"], row["batch_id"]
        items = self.items[key]
        if st.problem:
            self.ledger.batch_update(key, state="refused")
            what = "quota exceeded" if st.quota else "failed"
            raise PotstillError(f"generate: {self.prov.name} batch {bid} {what} ({self._redact(st.problem)}); "
                                f"none of its {len(items)} requests was billed and answers already committed are kept. Rerun to resubmit them")
        answered = set(self.ledger.lookup(list(items)))
        seen: set[str] = set()
        retry: dict[str, dict[str, Any]] = {}
        buf: list = []
        malformed: list[str] = []
        read = ours = 0  # result lines parsed, and those of a request of this batch
        if not st.sources:
            say(f"generate: {self.prov.name} batch {bid} ended ({st.state}) with no results file id; "
                f"its {len(items)} requests are resubmitted")
        for src in st.sources:
            try:
                for no, line in enumerate(self.prov.lines(src), 1):
                    mine = self._take_line(key, line, f"{src} line {no}", items, answered, seen, retry, buf, malformed)
                    read += mine is not None
                    ours += bool(mine)
                    if len(buf) >= COMMIT_EVERY:
                        self._flush(buf)
            except Exception as e:  # noqa: BLE001 - a vanished results file: resubmit what it held
                if not is_not_found(e):
                    raise
                say(f"generate: {self.prov.name} batch {bid}: results file {src} is not found at the provider (404); "
                    "the requests it held are resubmitted")
        self._flush(buf)
        if read and not ours:
            return None
        if malformed:
            say(f"generate: {self.prov.name} batch {bid}: {len(malformed)} malformed results line(s) (first: "
                f"{malformed[0]}); their requests are resubmitted")
        for h, q in items.items():
            if h not in seen and h not in answered:
                retry[h] = q
        if retry and st.sources:
            say(f"generate: {self.prov.name} batch {bid} {st.state}: {len(items) - len(retry)} of {len(items)} "
                f"answered, {len(retry)} expired, failed or missing are resubmitted alone")
        # Only what this run asks for goes out again: the rest was asked under other settings.
        return {h: q for h, q in retry.items() if h in self.wanted}

    def _take_line(self, key: str, line: str, where: str, items: dict, answered: set, seen: set, retry: dict,
                   buf: list, malformed: list) -> bool | None:
        """Take one results line; return whether it is of a request of this batch (None: no line read)."""
        if not line.strip():
            return None
        try:
            item = self.prov.parse(line)
        except Exception as e:  # noqa: BLE001 - any unreadable line is reported once and its request resent
            malformed.append(f"{where}: {type(e).__name__}")
            return None
        h = item.custom_id
        if h not in items or h in seen or h in answered:
            return h in items
        seen.add(h)
        if item.response is not None:
            buf.append((key, h, items[h], item.response))
        elif item.retry:
            retry[h] = items[h]
        else:
            buf.append((key, h, items[h], Response(output=None, error=f"batch item: {self._redact(item.error)}")))
        return True

    def _flush(self, buf: list) -> None:
        """Commit answered results in one transaction, priced at the batch share of the live price."""
        from potstill.generate import ledger_call

        if not buf:
            return
        calls = []
        for key, h, q, resp in buf:
            row = self.rows[key]  # a killed run's batch keeps its own model and stage
            resp.cost_usd = token_cost(self.price(row["model"]), resp.input_tokens, resp.output_tokens,
                                       resp.cached_input_tokens, resp.cache_write_input_tokens,
                                       resp.cache_write_1h_input_tokens) * self.share
            call = ledger_call(h, self.teacher, row["stage"], q, resp)
            if row["model"] != self.teacher.model_name:
                call.model, call.prompt_hash = row["model"], self._prompt_hash(q, row["model"])
            call.price_multiplier = self.share
            calls.append(call)
            self.stats.count(resp)
            if call.status != "ok" and h in self.wanted:
                self.errors[h] = resp.error or "no output"
            elif call.status != "ok":
                self.stats.errors -= 1  # asked under other settings: no input of this run failed
        self.ledger.record_many(calls)
        self.advance(len(buf))
        buf.clear()

    def _prompt_hash(self, request: dict[str, Any], model: str) -> str:
        """``Teacher.prompt_hash`` as a teacher of ``model`` (otherwise this one) computes it, so that
        answers collected for another model are reused across max_tokens by that model only."""
        ident = {k: v for k, v in self.teacher.identity().items() if k not in BUDGET_FIELDS}
        return request_hash({**ident, "model": model}, {k: v for k, v in request.items() if k not in BUDGET_FIELDS})

    def _resubmit(self, key: str, retry: dict[str, dict[str, Any]], attempt: int) -> list[dict[str, Any]]:
        if not retry:
            return []
        if attempt > 1 + self.gcfg.batch_resubmits:
            buf = [(key, h, q, Response(output=None, error=f"batch item expired or failed {attempt - 1} times"))
                   for h, q in retry.items()]
            self._flush(buf)
            return []
        self.stats.retries += len(retry)
        return self._submit_new(list(retry.items()), attempt)


def run_batch(teacher: Any, items: list[tuple[str, dict[str, Any]]], ledger: Ledger, stage: str,
              gcfg: GenerateConfig, stats: RunStats) -> dict[str, str]:
    """Answer ``(request_hash, request)`` pairs through the provider's batch API, committing into ``ledger``
    and counting into ``stats``; returns the error of each request left without an answer."""
    return _one_line(teacher, lambda: BatchRun(teacher, ledger, stage, gcfg, stats).run(items))


def collect_open(teacher: Any, ledger: Ledger, stage: str, gcfg: GenerateConfig, stats: RunStats,
                 wanted: dict[str, dict[str, Any]]) -> None:
    """Before the cache is read: wait for the open batches of this provider that a killed run left
    under other settings and whose answers may answer ``wanted`` (by hash, the requests this run
    asks for) as cached ones do (``cached_answers``: the same prompt under another
    ``teacher.max_tokens``). Sent again, those requests would be paid twice. A batch that holds any
    of ``wanted`` is left to ``run_batch``, which resumes it beside the new batches."""
    if not teacher.supports_batch:
        return
    rows = [r for r in ledger.batches(open_only=True) if r["provider"] != teacher.type]
    if rows:
        ids = ", ".join(r["batch_id"] or r["key"] for r in rows[:3]) + (", ..." if len(rows) > 3 else "")
        say(f"[yellow]generate: {len(rows)} open batch(es) of another provider ({ids}) are billed when they end and "
            f"not collected by this {teacher.type} teacher: a run of generate.engine batch with their teacher "
            "collects them[/yellow]")
    rows = ledger.batches(teacher.type)
    if not rows:  # no client made, no key read: a run answered from the cache needs neither
        return
    prompts = {teacher.prompt_hash(q) for q in wanted.values()}
    items = {r["key"]: ledger.batch_items(r["key"]) for r in rows}
    rows = [r for r in rows if not wanted.keys() & items[r["key"]].keys()
            and any(teacher.prompt_hash(q) in prompts for q in items[r["key"]].values())]
    if not rows:
        return
    say(f"generate: collecting {len(rows)} open {teacher.type} batch(es) of a killed run first, holding "
        f"{sum(len(items[r['key']]) for r in rows)} requests asked under other settings (teacher.max_tokens); "
        "billed when they end, their answers may answer inputs here as cached ones do")

    def collect() -> None:
        run = BatchRun(teacher, ledger, stage, gcfg, stats)
        keys = {r["key"] for r in rows}
        run.collect([r for r in run.open_rows() if r["key"] in keys])

    _one_line(teacher, collect)


def _one_line(teacher: Any, work: Any) -> Any:
    try:
        return work()
    except PotstillError:
        raise
    except Exception as e:
        # An SDK error after its own retries (the network down): one line, and everything sent so
        # far stays in the ledger for the rerun to resume.
        if not type(e).__module__.startswith(("openai", "anthropic")):
            raise
        msg = redact(f"{type(e).__name__}: {e}", teacher.secrets())[:300]
        raise PotstillError(f"generate: the {teacher.type} batch API failed ({msg}); batches already submitted "
                            "are in the ledger and a rerun resumes them") from None
