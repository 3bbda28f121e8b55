"""Soft labels from an OpenAI-compatible teacher's top log-probs where a label's first token holds
part of a character (a byte-level tokenizer's start of 否, of a Devanagari letter, of an emoji): a
real server on 127.0.0.1 answers as OpenAI does (token ``bytes:\\xe5\\x90``, the true ``bytes``), as
vLLM does (U+FFFD, the bytes lost), read through the official SDK by ``potstill generate``."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from potstill.config import load_config
from potstill.generate import run_generate
from potstill.ledger import Ledger
from potstill.records import read_records
from potstill.teachers.openai_teacher import label_probs_from_logprobs

LABELS = ["肯定的", "否定的", "否認", "中立"]
KEY = "sk-test-label-bytes"


def tok(text: str | None, lp: float, raw: bytes | None = None, vllm: bool = False) -> dict[str, Any]:
    """One token as a server writes it: OpenAI spells part of a character ``bytes:\\xe5\\x90`` and
    sends its bytes; vLLM writes U+FFFD and the bytes of U+FFFD."""
    raw = raw if raw is not None else text.encode()
    try:
        raw.decode()
        text = raw.decode()
    except UnicodeDecodeError:
        text = "\ufffd" if vllm else "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
    return {"token": text, "logprob": math.log(lp), "bytes": list(text.encode() if vllm else raw)}


# 否 is e5 90 a6: a byte-level tokenizer writes its first two bytes as one token, then a6 with what follows.
HI, LO = "否".encode()[:2], "否".encode()[2:]


def answer(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The answer and its tokens' log-probs (each with its top alternatives) for an input."""
    vllm = "vllm" in text
    if "neg" in text:  # 否定的, 90% sure, its first token part of 否
        first = tok(None, 0.9, HI, vllm)
        return "否定的", [{**first, "top_logprobs": [first, tok("肯", 0.06), tok("中", 0.04)]},
                        {**tok(None, 0.99, LO + "定".encode()), "top_logprobs": [tok(None, 0.99, LO + "定".encode())]},
                        {**tok("的", 0.99), "top_logprobs": [tok("的", 0.99)]}]
    if "deny" in text:  # 否認: the first token (part of 否) starts both 否定的 and 否認; 認 decides after 否
        first = tok(None, 0.8, HI)
        return "否認", [{**first, "top_logprobs": [first, tok("中", 0.2)]},
                       {**tok(None, 0.99, LO), "top_logprobs": [tok(None, 0.99, LO)]},
                       {**tok("認", 0.75), "top_logprobs": [tok("認", 0.75), tok("定", 0.25)]}]
    first = tok("肯", 0.7)
    return "肯定的", [{**first, "top_logprobs": [first, tok(None, 0.3, HI)]},
                    {**tok("定", 0.99), "top_logprobs": [tok("定", 0.99)]},
                    {**tok("的", 0.99), "top_logprobs": [tok("的", 0.99)]}]


class Teacher(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text, content = answer(body["messages"][-1]["content"])
        out = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": {"content": content, "refusal": None}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": len(content), "total_tokens": 9 + len(content)},
        }, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def generate(tmp_path, base_url: str, inputs: list[str]):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": t, "input": t}) + "\n" for t in inputs))
    cfg = {"run_dir": "run", "task": {"type": "classification", "labels": LABELS, "instruction": "感情は？"},
           "data": {"inputs": str(tmp_path / "in.jsonl")},
           "teacher": {"type": "openai", "model": "gpt-4o-mini", "base_url": base_url, "api_key_env": "TEACHER_KEY",
                       "logprobs": 3, "max_retries": 0, "timeout_s": 5}}
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    cfg = load_config(tmp_path / "potstill.yaml")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        out, _ = run_generate(cfg, read_records(cfg.data.inputs), ledger)
    return {r.id: r for r in out}


def test_a_first_token_holding_part_of_a_character_counts_for_the_labels_its_bytes_begin(tmp_path, monkeypatch, server):
    monkeypatch.setenv("TEACHER_KEY", KEY)
    recs = generate(tmp_path, server, ["neg", "pos", "deny"])
    neg, pos, deny = recs["neg"], recs["pos"], recs["deny"]
    assert neg.output == "否定的" and neg.logprobs[0]["token"] == "bytes:\\xe5\\x90"
    # The teacher's 0.9 on its own answer, not 0 (its first token spelled as text names no label).
    assert neg.label_probs == pytest.approx({"肯定的": 0.06, "否定的": 0.9, "否認": 0.0, "中立": 0.04}, abs=1e-3)
    # The 0.3 on the partial token beside 肯: it begins both 否定的 and 否認 and is not the token the
    # teacher wrote, so nothing after it says which: shared evenly.
    assert pos.label_probs == pytest.approx({"肯定的": 0.7, "否定的": 0.15, "否認": 0.15, "中立": 0.0}, abs=1e-3)
    # 否認's first token starts 否定的 too: its 0.8 is shared as the tokens after 否 share it (認 0.75, 定 0.25).
    assert deny.label_probs == pytest.approx({"肯定的": 0.0, "否定的": 0.2, "否認": 0.6, "中立": 0.2}, abs=1e-3)


def test_a_server_that_lost_the_bytes_gives_no_soft_label_against_the_answer(tmp_path, monkeypatch, server, capsys):
    monkeypatch.setenv("TEACHER_KEY", KEY)
    recs = generate(tmp_path, server, ["neg vllm", "pos"])
    assert recs["neg vllm"].output == "否定的" and recs["neg vllm"].logprobs[0]["token"] == "\ufffd"
    # Its 0.9 is on a token whose bytes the server lost: the soft label would put 0 on 否定的, the answer.
    assert recs["neg vllm"].valid and recs["neg vllm"].label_probs is None
    assert recs["pos"].label_probs["肯定的"] == pytest.approx(0.7, abs=1e-3)
    assert "1 of 2 answers carry no label_probs" in capsys.readouterr().err


def test_the_token_the_teacher_wrote_counts_where_its_top_k_leaves_it_out():
    # Sampled at a temperature, the written token may be outside its top-k: its own probability counts.
    lps = [{"token": "中", "logprob": math.log(0.05), "top": [{"token": "肯", "logprob": math.log(0.5)},
                                                              {"token": "bytes:\\xe5\\x90", "bytes": list(HI),
                                                               "logprob": math.log(0.4)}]},
           {"token": "立", "logprob": math.log(0.9), "top": [{"token": "立", "logprob": math.log(0.9)}]}]
    probs = label_probs_from_logprobs(lps, LABELS, answer="中立")
    assert probs["中立"] == pytest.approx(0.05 / 0.95) and probs["肯定的"] == pytest.approx(0.5 / 0.95)
