"""Redistill learns from an escalation whose client sent `stop`: serve keeps the teacher's whole answer.

Serve asks the teacher without the client's stop strings and cuts the text it sends; since serve
keeps the whole answer in the row (``teacher_output``, marked by ``teacher_stop_reason``), the cut
text is not all there is. Redistill still left out every escalation whose request named a `stop`
(many SDKs and agent frameworks always send one), cut or not, as "escalated_cut": the traffic it is
meant to learn from, dropped. Real parts: a tiny free-text student served by the real app on
loopback, the real tiny teacher server, the official openai client and the run's calls.sqlite."""

from __future__ import annotations

import math

import openai

from potstill.ledger import Ledger
from potstill.redistill.traffic import read_traffic
from potstill.serve.routing import Routing
from tests.helpers.chat_server import ChatServer
from tests.helpers.live_server import LiveServer
from tests.helpers.tiny import make_lively_model_dir
from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, TEXTS, write_run

FREETEXT = {"type": "freetext", "instruction": "name the topic", "max_output_tokens": 6}


def test_an_escalation_cut_by_the_clients_stop_is_learnt_whole(tmp_path, tiny_model, monkeypatch):
    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("SERVE_KEY", SERVE_KEY)
    whole, sent = {}, {}
    # A teacher whose answers vary (the tied default repeats one word), so a stop string cuts them.
    with ChatServer(str(make_lively_model_dir(tmp_path / "teacher")), api_key=TEACHER_KEY) as teacher:
        run = write_run(tmp_path, tiny_model, teacher.base_url, task=FREETEXT)
        cfg = run_config(run, None)
        service = load_service(run, cfg, device="cpu")
        service.routing = Routing(confidence_threshold=math.inf, ood_threshold=math.inf)  # all to the teacher
        try:
            with LiveServer(build_app(service, serve_key(cfg))) as live:
                client = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0)
                for text in TEXTS:
                    msgs = [{"role": "user", "content": text}]
                    # The teacher's answer to the chat, asked directly (no ledger row): greedy, so serve gets it too.
                    whole[text] = service.teacher.submit(service.teacher_request(msgs)[1]).result().output
                    words = whole[text].split()
                    # A stop string inside the answer where it has two words, else one it never holds.
                    stop = " " + words[1] if len(words) >= 2 and whole[text].count(" " + words[1]) == 1 else "zzz"
                    c = client.chat.completions.create(model="potstill", messages=msgs, stop=[stop])
                    assert c.model_extra["potstill"]["answered_by"] == "teacher"
                    sent[text] = c.choices[0].message.content
                # A max_tokens under the teacher's own (4): the teacher was asked for less, no whole answer exists.
                client.chat.completions.create(model="potstill", max_tokens=2,
                                               messages=[{"role": "user", "content": "the team and the goal"}])
        finally:
            service.close()

    cut = [t for t in TEXTS if sent[t] != whole[t]]
    assert len(cut) >= 3, (whole, sent)  # the stop strings did cut what the clients got
    assert all(whole[t].startswith(sent[t]) for t in TEXTS)
    with Ledger(run / "calls.sqlite") as ledger:
        traffic = read_traffic(ledger, service.task, teacher_max_tokens=cfg.teacher.max_tokens)
    learnt = {r.messages[0]["content"]: r.output for r in traffic.escalated}
    assert learnt == whole  # every stop request, with the teacher's whole answer
    assert traffic.counts["escalated_cut"] == 1  # the max_tokens one only
