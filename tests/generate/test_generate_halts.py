"""Answers that failed as every other request would (the key refused, the account out of credit),
HALT_AFTER in a row, stop the run after the requests in flight: generate sent every input and retried each one
(an out-of-credit 429 with the SDK's backoff), so 20,000 inputs with an expired key were 20,000
refused calls and as many error rows before the one line came."""

from __future__ import annotations

import pytest

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.generate.stage import generate_stage
from potstill.ledger import Ledger
from potstill.teachers.api.engine import HALT_AFTER
from tests.generate.loopback import Loopback
from tests.generate.test_generate import SECRET, check_output, project


@pytest.mark.parametrize("fault", ["401", "429-quota"])
def test_a_refused_key_or_no_credit_stops_the_run_after_the_requests_in_flight(tmp_path, monkeypatch, fault):
    n, conc, retries = 120, 4, 1
    monkeypatch.setenv("TEACHER_KEY", SECRET + "x" if fault == "401" else SECRET)
    with Loopback(key=SECRET, no_credit=fault == "429-quota") as srv:
        cfg_path = project(tmp_path, srv.base_url, n, {"concurrency": conc, "max_retries": retries})
        with pytest.raises(PotstillError) as e:
            generate_stage(load_config(cfg_path))
        refused = srv.stats()["faults"][fault]
    msg = str(e.value)
    assert "\n" not in msg and SECRET not in msg
    assert ("401" if fault == "401" else "insufficient_quota") in msg
    assert "not sent" in msg and "rerun" in msg, msg
    # HALT_AFTER refusals in a row, and the requests in flight then, each with its retries.
    assert refused <= (HALT_AFTER + conc - 1) * (1 + retries)
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        assert HALT_AFTER <= ledger.count(status="error") <= HALT_AFTER + conc - 1 and ledger.count(status="ok") == 0
    # Fixed (the right key, credit bought): the rerun answers every input once.
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with Loopback(key=SECRET) as srv:
        summary = generate_stage(load_config(project(tmp_path, srv.base_url, n, {"concurrency": conc})), force=True)
        assert sum(srv.stats()["answered"].values()) == n
    assert summary["errors"] == 0
    check_output(tmp_path / "run" / "teacher.jsonl", n)
