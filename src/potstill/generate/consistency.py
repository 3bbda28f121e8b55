"""Self-consistency over n samples: the majority answer and how many samples agree with it."""

from __future__ import annotations

from typing import Any, Callable

from potstill.tasks.answers import vote
from potstill.teachers.base import Response


def majority(samples: list[str], parse: Callable[[str], Any],
             validate: Callable[[Any], str | None]) -> tuple[str | None, float]:
    """(the sample ``vote`` picks, share of samples that agree with it)."""
    i, agreement = vote(samples, parse, validate)
    return (None if i is None else samples[i]), agreement


def sample_logprobs(answer: dict[str, Any], i: int) -> list[dict[str, Any]] | None:
    """The top-k log-probs of sample ``i`` of a stored n-sample answer, or None where they are not
    known: token-level KD must train on the log-probs of the very text it is taught. A ledger row
    written before ``sample_logprobs`` existed holds choice 0's only, good for a sample of the same text."""
    per_sample = answer.get("sample_logprobs")
    if per_sample is not None:
        return per_sample[i] if i < len(per_sample) else None
    samples = answer.get("samples") or []
    return answer.get("logprobs") if samples and samples[0] == samples[i] else None


def sample_output_tokens(answer: dict[str, Any], i: int) -> int:
    """Sample ``i``'s completion tokens in a stored n-sample answer whose ``output_tokens`` counts
    all n (what the provider billed). Exact where the provider tells: one request per sample
    (``sample_tokens``, Anthropic) or one log-prob per token; else the sample's share of the
    characters (OpenAI reports one ``completion_tokens`` for all its choices)."""
    per_request = answer.get("sample_tokens")
    if per_request is not None and i < len(per_request):
        return int(per_request[i][1])
    logprobs = (answer.get("sample_logprobs") or [None] * (i + 1))[i]
    if logprobs is not None:
        return len(logprobs)
    samples, total = answer["samples"], int(answer.get("output_tokens") or 0)
    chars = sum(len(s) for s in samples)
    return round(total * len(samples[i]) / chars) if chars else total // len(samples)


def one_sample(answer: dict[str, Any], i: int) -> dict[str, Any]:
    """A stored n-sample answer as the answer of its sample ``i`` alone, with that sample's text,
    log-probs, stop reason and tokens: what a single-sample call would have returned (serve reuses
    generate's answer so). ``cost_usd`` stays what all n cost: a reuse is billed nothing anyway."""
    out = {k: v for k, v in answer.items() if k not in ("samples", "sample_logprobs", "sample_tokens")}
    out["output"] = answer["samples"][i]
    out["logprobs"] = sample_logprobs(answer, i)
    out["output_tokens"] = sample_output_tokens(answer, i)
    per_request = answer.get("sample_tokens")
    if per_request is not None and i < len(per_request):
        out["input_tokens"] = int(per_request[i][0])  # each sample was a request of its own, its prompt billed each time
    stop = answer.get("stop_reason")
    if isinstance(stop, list) and i < len(stop):
        out["stop_reason"] = stop[i]
    return out


def rest_request(request: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """``request`` (n samples) asking only for the samples ``earlier`` (a failed attempt's answered
    ones, already paid) lacks; one sample is a request without ``n``, as the adapters write it."""
    rest = int(request.get("n", 1)) - len(earlier["samples"])
    out = {k: v for k, v in request.items() if k != "n"}
    return {**out, "n": rest} if rest > 1 else out


PAID = ("input_tokens", "output_tokens", "cost_usd")


def paid(answer: dict[str, Any]) -> dict[str, Any]:
    """What an answer cost in all (``PAID``): its own row's, plus what earlier failed attempts paid
    for the samples it took from them (``Response.earlier_paid``). A record's meta holds this; the
    ledger's spend is the rows', each billed once."""
    before = answer.get("earlier_paid") or {}
    return {k: (answer.get(k) or 0) + (before.get(k) or 0) for k in PAID}


def with_earlier(earlier: dict[str, Any], resp: Response) -> Response:
    """``resp`` (the answer to ``rest_request``) with ``earlier``'s samples before its own. Its
    tokens and cost stay its own: the earlier ones are billed in the earlier (error) row, and kept
    as ``earlier_paid``, so the record says what all its samples cost."""
    if resp.output is None and not resp.samples:
        return resp  # nothing new answered: the earlier row still holds what was
    resp.earlier_paid = paid(earlier)
    new = resp.samples or [resp.output]
    stops = resp.stop_reason if isinstance(resp.stop_reason, list) else [resp.stop_reason]
    old_stops = earlier.get("stop_reason")
    old_stops = old_stops if isinstance(old_stops, list) else [old_stops] * len(earlier["samples"])
    tokens = resp.sample_tokens or [[resp.input_tokens, resp.output_tokens]]
    samples = [*earlier["samples"], *new]
    resp.samples = samples
    resp.sample_tokens = [*earlier["sample_tokens"], *tokens] if earlier.get("sample_tokens") else None
    resp.stop_reason = [*old_stops, *stops]
    if resp.output is not None:
        resp.output = samples[0]
    return resp
