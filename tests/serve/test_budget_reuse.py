"""A served escalation whose client sets ``max_tokens`` below ``teacher.max_tokens`` is another
request than generate's, so it never found generate's answer in the ledger and paid the teacher
again. Now generate's answer that ended by itself within the client's budget serves it (the budget
would not have changed it); a longer one is asked under the client's budget. A real provider on
loopback, the official openai client, the SQLite ledger."""

from __future__ import annotations

from collections import Counter

import yaml

from tests.generate.test_raised_budget import writer
from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, client, rows, write_run


def test_an_escalation_under_a_clients_smaller_budget_reuses_generates_whole_answer(tmp_path, tiny_model, monkeypatch):
    from potstill.generate import label_records
    from potstill.records import Record
    from potstill.serve import run_config
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from potstill.teachers import get_teacher
    from tests.helpers.live_server import LiveServer

    asked: Counter = Counter()  # (text, max_tokens) of each teacher request
    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    with LiveServer(writer(asked)) as fake:
        run = write_run(tmp_path, tiny_model, fake.url + "/v1",
                        task={"type": "freetext", "instruction": "Summarise.", "max_output_tokens": 32})
        cfg = yaml.safe_load((run / "potstill.yaml").read_text())
        cfg["teacher"]["max_tokens"] = 32
        (run / "potstill.yaml").write_text(yaml.safe_dump(cfg))
        service = load_service(run, run_config(run, None), device="cpu")
        service.routing = Routing(confidence_threshold=float("inf"), ood_threshold=float("inf"))
        try:
            short, long = ([{"role": "user", "content": f"summarise in words: {n}"}] for n in (3, 12))
            generating = get_teacher(service.teacher.cfg, service.task)  # generate's own, as in `potstill generate`
            recs, stats = label_records([Record(messages=short), Record(messages=long)], service.task, generating,
                                        service.ledger, stage="generate")
            generating.close()
            assert stats.calls == 2 and [len(r.output.split()) for r in recs] == [3, 12]
            with LiveServer(build_app(service, SERVE_KEY)) as live:
                raw = client(live).chat.completions.with_raw_response.create(model="potstill", messages=short,
                                                                             max_tokens=8)
                assert sum(asked.values()) == 2  # no teacher call: 3 words ended by themselves within 8
                assert raw.headers["x-potstill-reason"] == "low_confidence+cached"
                assert raw.parse().choices[0].message.content == "word word word"
                assert rows(service)[-1]["request_hash"] == recs[0].meta["request_hash"]  # the row that paid
                cut = client(live).chat.completions.create(model="potstill", messages=long, max_tokens=8)
            # 12 words do not fit in 8: the teacher is asked under the client's budget, and cuts.
            assert sum(asked.values()) == 3 and asked[("summarise in words: 12", 8)] == 1
            assert cut.choices[0].message.content == " ".join(["word"] * 8) and cut.choices[0].finish_reason == "length"
        finally:
            service.close()
