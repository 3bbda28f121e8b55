"""Time to an escalation's first text through ``potstill serve`` and the official openai client:
streamed as the teacher writes it (``serve.stream_teacher``) against the whole answer in one chunk.

    POTSTILL_LLAMA_SERVER=.../llama-server HF_HUB_OFFLINE=1 PYTHONPATH=src:. \\
        python benchmarks/stream_escalations.py [--rounds 3] [--max-tokens 96]
    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/stream_escalations.py --teacher local

The teacher: llama.cpp's ``llama-server`` (OpenAI-compatible) serving the bundled
SmolLM2-135M-Instruct (Q4_1 GGUF) on loopback, greedy, one request at a time: a stand-in for a
remote API whose answers take a second or more. ``--teacher local``: the same model as a ``local``
teacher in the server's own process (engine ``transformers``, fp32, greedy; written to
``stream_escalations_local.json``), with no ``teacher`` mode. The served run: a free-text task (answer the
support ticket), a tiny random student, routing forced to the teacher and ``reuse_escalations``
off, so every request is an escalation the teacher answers anew. Inputs: the 15 tickets of
``examples/data/tickets.jsonl``. Each round, each input goes through every mode in turn:

* ``streamed``: ``stream: true`` with ``serve.stream_teacher`` on (the default);
* ``whole``: ``stream: true`` with it off (the answer in one chunk once the teacher is done: the
  behaviour before);
* ``teacher``: the openai client streaming straight from llama-server (what potstill adds).

Recorded per mode: p50 / p95 of the client's time to its first content chunk and to the stream's
end (seconds). Correctness (exit 1): each input's text is the same in every mode and round, and each
ledger row of a streamed escalation carries the tokens of that input's whole one (``--break-stream``
loses each streamed answer's last piece on the client's side: the check fails).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

from benchmarks.guide_host import _machine
from potstill.models.loading import resolve_bundled
from potstill.records import Record

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_teacher(gguf: Path) -> tuple[subprocess.Popen, str]:
    binary = os.environ.get("POTSTILL_LLAMA_SERVER") or shutil.which("llama-server")
    if not binary:
        sys.exit("set POTSTILL_LLAMA_SERVER to a llama-server binary (benchmarks/export.build_server builds one)")
    port = free_port()
    proc = subprocess.Popen([binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", "4096",
                             "-np", "1", "--no-webui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=5).models.list()
            return proc, url
        except openai.APIError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("llama-server did not start")


def timed(call, drop_last: bool = False) -> tuple[float, float, str]:
    """Seconds from sending to the first content chunk and to the end, and the text, of one streamed
    answer (``call`` sends the request and returns the SDK's stream; ``drop_last``: its last piece lost)."""
    t0 = time.perf_counter()
    first, parts = None, []
    for ch in call():
        if ch.choices and ch.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - t0
            parts.append(ch.choices[0].delta.content)
    text = "".join(parts[:-1] if drop_last else parts)
    return first if first is not None else math.nan, time.perf_counter() - t0, text


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(math.ceil(q * len(xs))) - 1)], 4)


def main() -> int:  # noqa: C901 - one linear benchmark
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out")
    ap.add_argument("--teacher", choices=["llama-server", "local"], default="llama-server")
    ap.add_argument("--break-stream", action="store_true",
                    help="drop each streamed answer's last piece as a lossy relay would: the text check must fail")
    args = ap.parse_args()
    local = args.teacher == "local"
    args.out = args.out or str(Path(__file__).with_name("stream_escalations" + ("_local" if local else "") + ".json"))
    modes = ("streamed", "whole") if local else ("streamed", "whole", "teacher")

    from potstill.serve import run_config, serve_key
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from potstill.serve.service import load_service
    from tests.helpers.live_server import LiveServer
    from tests.helpers.tiny import make_model_dir
    from tests.serve.conftest import SERVE_KEY, TEACHER_KEY, write_run

    tickets = [json.loads(x)["input"] for x in (ROOT / "examples/data/tickets.jsonl").read_text().splitlines()]
    proc, teacher_url = start_teacher(resolve_bundled("smollm2-135m-instruct")) if not local else (None, "http://unused")
    failures: list[str] = []
    times: dict[str, dict[str, list[float]]] = {m: {"first": [], "end": []} for m in modes}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["TEACHER_KEY"], os.environ["SERVE_KEY"] = TEACHER_KEY, SERVE_KEY
            student = make_model_dir(Path(tmp) / "student")
            run = write_run(Path(tmp), student, teacher_url, reuse_escalations=False,
                            task={"type": "freetext", "instruction": "Reply to this support ticket in two or three "
                                  "sentences.", "max_output_tokens": 8})
            cfg = run_config(run, None)
            cfg.teacher.max_tokens, cfg.teacher.timeout_s = args.max_tokens, 120
            if local:
                from potstill.config import TeacherConfig

                cfg.teacher = TeacherConfig(type="local", model="bundled:smollm2-135m-instruct",
                                            max_tokens=args.max_tokens)
            service = load_service(run, cfg, device="cpu")
            service.routing = Routing(confidence_threshold=math.inf, ood_threshold=math.inf)
            direct = openai.OpenAI(base_url=teacher_url, api_key=TEACHER_KEY, max_retries=0, timeout=120)
            texts: dict[int, set[str]] = {i: set() for i in range(len(tickets))}
            tokens: dict[int, set[tuple[int, int]]] = {i: set() for i in range(len(tickets))}
            with LiveServer(build_app(service, serve_key(cfg))) as live:
                served = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0, timeout=120)
                for r in range(args.rounds):
                    for i, ticket in enumerate(tickets):
                        msgs = [{"role": "user", "content": ticket}]
                        for mode in modes:
                            if mode == "teacher":
                                req = service.teacher.request(Record(messages=msgs))  # what the served teacher gets
                                first, end, text = timed(lambda: direct.chat.completions.create(**req, stream=True))
                            else:
                                service.cfg.serve.stream_teacher = mode == "streamed"
                                first, end, text = timed(lambda: served.chat.completions.create(
                                    model="potstill", messages=msgs, stream=True),
                                    drop_last=args.break_stream and mode == "streamed")
                                row = service.ledger.rows(stage="serve")[-1]
                                if row["status"] != "ok" or row["role"] != "teacher":
                                    failures.append(f"ticket {i} {mode}: row {row['status']} {row['role']}")
                                tokens[i].add((row["input_tokens"], row["output_tokens"]))
                            texts[i].add(text)
                            if r or i:  # the very first request warms llama-server and the SDKs
                                times[mode]["first"].append(first)
                                times[mode]["end"].append(end)
                    print(f"round {r + 1}: " + ", ".join(
                        f"{m} first {statistics.median(v['first']):.3f} s end {statistics.median(v['end']):.3f} s"
                        for m, v in times.items() if v["first"]), flush=True)
            service.close()
        for i in texts:
            if len(texts[i]) != 1:
                failures.append(f"ticket {i}: {len(texts[i])} different texts across modes and rounds")
            if len(tokens[i]) != 1:
                failures.append(f"ticket {i}: ledger tokens differ between streamed and whole: {sorted(tokens[i])}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    result = {
        "command": ("" if local else "POTSTILL_LLAMA_SERVER=... ") + "HF_HUB_OFFLINE=1 PYTHONPATH=src:. python "
                   f"benchmarks/stream_escalations.py --teacher {args.teacher} --rounds {args.rounds} "
                   f"--max-tokens {args.max_tokens}",
        "machine": _machine(),
        "teacher": "local (transformers fp32, in the server's process)" if local else "llama-server",
        "teacher_model": "bundled SmolLM2-135M-Instruct Q4_1, greedy",
        "inputs": len(tickets), "rounds": args.rounds, "max_tokens": args.max_tokens,
        "seconds": {m: {"first_p50": pct(v["first"], 0.5), "first_p95": pct(v["first"], 0.95),
                        "end_p50": pct(v["end"], 0.5), "end_p95": pct(v["end"], 0.95), "n": len(v["first"])}
                    for m, v in times.items()},
        "mean_output_tokens": round(statistics.mean(next(iter(t))[1] for t in tokens.values() if t), 1),
        "failures": failures,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
