"""A served escalation answered from generate's n-sample answer, through the official openai
client: the usage it reports is that of the one sample it serves, as a fresh call's is."""

from __future__ import annotations

import pytest
import yaml
from fastapi import FastAPI

from potstill.config import GenerateConfig
from potstill.generate import label_records
from potstill.records import Record
from potstill.serve import run_config
from potstill.serve.app import build_app
from potstill.serve.routing import Routing
from potstill.serve.service import load_service
from potstill.teachers import get_teacher
from tests.helpers.live_server import LiveServer
from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, client, rows, write_run

TOKENS = {"tech": ["tech"], "sports": ["sp", "orts"]}  # what each answer costs in completion tokens


def provider(asked: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        asked.append(body)
        answers = ["tech", "sports", "sports"][: int(body.get("n") or 1)]  # the first sample is outvoted
        choices = []
        for i, a in enumerate(answers):
            choice = {"index": i, "message": {"role": "assistant", "content": a}, "finish_reason": "stop"}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": t, "logprob": -0.1, "bytes": None,
                                                   "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": None}]}
                                                  for t in TOKENS[a]]}
            choices.append(choice)
        out = sum(len(TOKENS[a]) for a in answers)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices,
                "usage": {"prompt_tokens": 9, "completion_tokens": out, "total_tokens": 9 + out}}

    return app


@pytest.mark.parametrize("logprobs", [0, 1], ids=["no-logprobs", "logprobs"])
def test_a_reused_n_sample_answer_reports_the_tokens_of_the_sample_it_serves(tmp_path, tiny_model, monkeypatch,
                                                                             logprobs):
    """generate paid for 3 samples (5 completion tokens); serve reused them as the majority sample
    'sports' (2 tokens, as a fresh call for it reports) but reported all 5 as completion_tokens,
    in the client's usage and in its ledger row."""
    asked: list[dict] = []
    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    with LiveServer(provider(asked)) as fake:
        run = write_run(tmp_path, tiny_model, fake.url + "/v1")
        cfg = yaml.safe_load((run / "potstill.yaml").read_text())
        cfg["generate"] = {"n": 3}
        cfg["teacher"]["logprobs"] = logprobs
        (run / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        service = load_service(run, run_config(run, None), device="cpu")
        service.routing = Routing(confidence_threshold=float("inf"), ood_threshold=float("inf"))
        try:
            msg = [{"role": "user", "content": "the striker scored twice in the cup final"}]
            generating = get_teacher(service.teacher.cfg, service.task)
            (rec,), _ = label_records([Record(messages=msg)], service.task, generating, service.ledger,
                                      stage="generate", gcfg=GenerateConfig(n=3))
            generating.close()
            assert rec.output == "sports" and rec.meta["output_tokens"] == 5  # generate's bill: all 3 samples
            with LiveServer(build_app(service, SERVE_KEY)) as live:
                c = client(live).chat.completions.create(model="potstill", messages=msg)
            assert len(asked) == 1 and c.choices[0].message.content == "sports"
            assert c.usage.completion_tokens == 2
            row = rows(service)[-1]
            # Reused: not paid again (the teacher's 9 + 2 tokens would be $3.4e-5; the row holds the student's seconds).
            assert row["output_tokens"] == 2 and row["cost_usd"] < 1e-6
            paid = service.ledger.rows(stage="generate")
            assert [(r["output_tokens"], r["cost_usd"] > 0) for r in paid] == [(5, True)]
        finally:
            service.close()
