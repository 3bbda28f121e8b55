"""schemathesis against the live server's OpenAPI schema, and a bounded loopback load test that
checks the ledger kept one row per request."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve.conftest import SERVE_KEY, TEXTS

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
# Cases per operation: bounded so the eleven operations take ~35 s on 2 busy cores (raise it with
# POTSTILL_SCHEMATHESIS_EXAMPLES for a longer hunt).
EXAMPLES = int(os.environ.get("POTSTILL_SCHEMATHESIS_EXAMPLES", "20"))


@pytest.mark.parametrize("path,method", [("/v1/chat/completions", "POST"), ("/v1/models", "GET"),
                                         ("/health", "GET"), ("/metrics", "GET"),
                                         ("/v1/responses/{response_id}", "GET"),
                                         ("/v1/responses/{response_id}/input_items", "GET"),
                                         ("/v1/responses/{response_id}", "DELETE"), ("/tokenize", "POST"),
                                         ("/detokenize", "POST"), ("/v1/messages", "POST"),
                                         ("/v1/messages/count_tokens", "POST")])
def test_schemathesis_finds_no_5xx_and_no_schema_violation(served, path, method):
    service, live = served
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json", headers={"Authorization": f"Bearer {SERVE_KEY}"})
    op = schema[path][method]
    before = len(service.ledger.rows(stage="serve"))
    seen: list[int] = []

    from hypothesis import given

    @given(case=op.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        resp = case.call_and_validate(base_url=live.url, headers={"Authorization": f"Bearer {SERVE_KEY}"},
                                      checks=CHECKS, timeout=30)
        seen.append(resp.status_code)

    run()
    assert seen and all(s < 500 for s in seen)
    if path in ("/v1/chat/completions", "/v1/messages"):
        # Every generated chat request, accepted or refused, left exactly one ledger row.
        assert len(service.ledger.rows(stage="serve")) - before == len(seen)


# The acceptance run is 2,000 requests (POTSTILL_SERVE_LOAD_N=2000, ~3 min on 2 busy cores, and
# benchmarks/serve.py records it in serve_load.json); the suite sends 400 to stay inside its budget.
LOAD_N = int(os.environ.get("POTSTILL_SERVE_LOAD_N", "400"))


def test_load_mixed_requests_at_concurrency_32_lose_no_row(served):
    """LOAD_N requests, 32 in flight, a quarter of them invalid in four different ways."""
    service, live = served
    n, conc = LOAD_N, 32
    before = service.ledger.count(stage="serve")
    # Sentences of the tiny vocabulary as training saw them, so both the student and the teacher answer.
    ok_body = lambda i: {"model": "potstill", "messages": [{"role": "user", "content": TEXTS[i % 10] + " the" * ((i // 10) % 3)}]}  # noqa: E731
    bad = [
        lambda i: {"model": "potstill", "messages": []},
        lambda i: {"model": "potstill"},
        lambda i: {"model": "potstill", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
        lambda i: "not json",
    ]
    statuses: list[int] = []

    async def go() -> None:
        sem = asyncio.Semaphore(conc)
        async with httpx.AsyncClient(base_url=live.url, timeout=60,
                                     limits=httpx.Limits(max_connections=conc)) as c:
            async def one(i: int) -> None:
                body = bad[(i // 4) % 4](i) if i % 4 == 3 else ok_body(i)
                content = body if isinstance(body, str) else json.dumps(body)
                async with sem:
                    r = await c.post("/v1/chat/completions", content=content,
                                     headers={"Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"})
                statuses.append(r.status_code)

            await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(go())
    assert len(statuses) == n
    assert all(s in (200, 400) for s in statuses), sorted(set(statuses))
    assert statuses.count(400) == n // 4
    assert service.ledger.count(stage="serve") - before == n
    assert service.ledger.count(stage="serve", status="error") >= n // 4
    new = service.ledger.rows(stage="serve")[-n:]
    assert {r["role"] for r in new if r["status"] == "ok"} == {"student", "teacher"}
