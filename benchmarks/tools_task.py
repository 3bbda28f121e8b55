"""A tools task (``task.type: tools``) end to end, then served through the official openai client.

    PYTHONPATH=src:. nice -n 5 python benchmarks/tools_task.py [--out benchmarks/tools_task.json]
    PYTHONPATH=src:. nice -n 5 python benchmarks/tools_task.py --parallel [--out benchmarks/tools_task_parallel.json]
    PYTHONPATH=src:. nice -n 5 python benchmarks/tools_task.py --agent [--out benchmarks/tools_task_agent.json]
    PYTHONPATH=src:. nice -n 5 python benchmarks/tools_task.py --agent --rounds [--out benchmarks/tools_task_rounds.json]

The teacher is an OpenAI-compatible server on loopback that calls one of three tools by fixed
rules (weather in a city, with a unit where asked; the time in a city; a timer of N minutes): a
stand-in for a frontier model's function calling whose right answer is known. Inputs are requests
written from templates over 20 cities (seed 0). ``potstill run`` (pilot, generate, curate, LoRA
training of the bundled SmolLM2-135M-Instruct, evaluate) runs on them; then ``potstill serve``'s own
app, with ``serve.guided_json`` on, answers NEW requests (12 cities never in training, half in the
training templates, half in new ones) that offer the task's tools, and each answer, and the
student's own (``potstill.student_output``, escalated or not), is checked against the rule.

``--parallel``: ``task.parallel_tool_calls`` on, and half the requests ask two things at once
("weather in Oslo and also the time in Lima", the same tool twice too), which the teacher answers
with one call per clause in one answer; calls are compared as sets.

``--agent``: ``task.tool_choice: auto``, and half the inputs are the turn after the call: the chat
holds the request, the teacher's call and the tool's result (made up by fixed rules: a temperature
and sky from the city's name, a clock time, the timer's confirmation), which the teacher answers
with a reply in words that carries the result's values ("It is 14 degrees C and cloudy in Oslo.").
Served answers are checked against the rule: the call on a first turn, the exact reply after one.
``--agent --rounds``: the inputs are first requests only and ``generate.tool_rounds: 1`` makes the
turns after them, the teacher playing each called function (here by the same rules); served as
``--agent``.

Reported: eval.json's agreement and verdict, the stage times, and for the served requests who
answered, the share of answers whose calls match the rule, by who answered, and the student's
latency. Exits 1 (correctness) when a served answer is not well-formed calls of the task's tools
(exactly one without ``--parallel``; a reply's text with ``--agent`` after a result), or a served
answer from the teacher differs from the rule (the route changed the teacher's answer).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks import finish  # noqa: E402
from tests.helpers.live_server import LiveServer  # noqa: E402

CITIES = ("Paris Tokyo Lima Oslo Rome Cairo Kyiv Berlin Madrid Dublin Vienna Prague Lisbon Athens Seoul Delhi "
          "Quito Nairobi Sydney Toronto").split()
NEW_CITIES = "Reykjavik Bogota Hanoi Accra Perth Manila Havana Tunis Riga Minsk Sofia Zagreb".split()
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                                          "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "description": "The local time in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "set_timer", "parameters": {
        "type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1}}, "required": ["minutes"],
        "additionalProperties": False}}},
]


def rule(text: str) -> dict[str, Any]:
    """The teacher's call for a request."""
    if m := re.search(r"weather .*in ([A-Z][a-z]+)", text):
        args: dict[str, Any] = {"city": m.group(1)}
        if "fahrenheit" in text:
            args["unit"] = "f"
        elif "celsius" in text:
            args["unit"] = "c"
        return {"name": "get_weather", "arguments": args}
    if m := re.search(r"time .*in ([A-Z][a-z]+)", text):
        return {"name": "get_time", "arguments": {"city": m.group(1)}}
    if m := re.search(r"(\d+) minute", text):
        return {"name": "set_timer", "arguments": {"minutes": int(m.group(1))}}
    return {"name": "get_time", "arguments": {"city": "UTC"}}


JOIN = re.compile(r" and also |; also |, and then ")  # the training joiners, then a new one


def rules(text: str) -> list[dict[str, Any]]:
    """The teacher's calls for a request: one per clause."""
    return [rule(c) for c in JOIN.split(text)]


def same_calls(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Whether two answers make the same calls, in any order."""
    return sorted(json.dumps(c, sort_keys=True) for c in a) == sorted(json.dumps(c, sort_keys=True) for c in b)


def compound(rng: random.Random, cities: list[str], n: int, new: bool = False) -> list[str]:
    """Half single requests, half two joined (``JOIN``; the new templates' joiner is one training never saw)."""
    out = []
    while len(out) < n:
        one = requests(rng, cities, 1, new)[0]
        if rng.random() < 0.5:
            two = requests(rng, cities, 1, new)[0]
            joiner = ", and then " if new else rng.choice([" and also ", "; also "])
            one = one.rstrip("?") + joiner + two[0].lower() + two[1:]
        if one not in out:
            out.append(one)
    return out


def requests(rng: random.Random, cities: list[str], n: int, new: bool = False) -> list[str]:
    out = []
    for _ in range(n):
        k, c = rng.random(), rng.choice(cities)
        if k < 0.4:
            u = rng.choice(["", " in fahrenheit", " in celsius"])
            forms = [f"What's the weather in {c}{u}?", f"Tell me the weather in {c}{u} please", f"weather in {c}{u}"]
            if new:
                forms = [f"how is the weather today in {c}{u}", f"Could you check the weather in {c}{u}?"]
        elif k < 0.7:
            forms = [f"What time is it in {c}?", f"Current time now in {c}", f"what's the time in {c} right now"]
            if new:
                forms = [f"tell me the local time in {c}", f"Do you know the time in {c}?"]
        else:
            m = rng.randint(1, 90)
            forms = [f"Set a timer for {m} minutes", f"remind me in {m} minutes", f"timer {m} minutes please"]
            if new:
                forms = [f"start a {m} minute countdown", f"can you set {m} minutes on the timer"]
        out.append(rng.choice(forms))
    return list(dict.fromkeys(out))


SKIES = ["sunny", "cloudy", "rainy", "windy", "foggy"]


def result(call: dict[str, Any]) -> str:
    """What the tool returns for a call (fixed by its arguments): the tool message's content."""
    a = call["arguments"]
    if call["name"] == "get_weather":
        seed = sum(map(ord, a["city"]))
        temp = seed % 30 - 3
        if a.get("unit") == "f":
            temp = round(temp * 9 / 5 + 32)
        return json.dumps({"temp": temp, "unit": a.get("unit", "c"), "sky": SKIES[seed % 5]})
    if call["name"] == "get_time":
        seed = sum(map(ord, a["city"])) * 7
        return json.dumps({"time": f"{seed % 24:02d}:{seed % 60:02d}"})
    return json.dumps({"ok": True, "minutes": a["minutes"]})


def reply(call: dict[str, Any], out: str) -> str:
    """The teacher's reply in words once the tool answered ``call`` with ``out``."""
    r, a = json.loads(out), call["arguments"]
    if call["name"] == "get_weather":
        return f"It is {r['temp']} degrees {r['unit'].upper()} and {r['sky']} in {a['city']}."
    if call["name"] == "get_time":
        return f"It is {r['time']} in {a['city']}."
    return f"Your {r['minutes']}-minute timer is running."


def after(text: str) -> list[dict[str, Any]]:
    """The chat of the turn after the call: the request, the teacher's call, the tool's result."""
    call = rule(text)
    return [{"role": "user", "content": text},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_0", "type": "function", "function": {
                "name": call["name"], "arguments": json.dumps(call["arguments"])}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": result(call)}]


def teacher_app(calls: list) -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        last = body["messages"][-1]
        if not body.get("tools"):  # playing a function (generate.tool_rounds): its declaration and arguments
            declared, args = last["content"].split("\n", 1)
            call = {"name": json.loads(declared.removeprefix("Function: "))["name"],
                    "arguments": json.loads(args.removeprefix("Arguments: "))}
            return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                                                                                "content": result(call)}}],
                    "usage": {"prompt_tokens": 90, "completion_tokens": 12, "total_tokens": 102}}
        if last["role"] == "tool" and body.get("tool_choice") != "required":
            call = body["messages"][-2]["tool_calls"][0]["function"]
            words = reply({"name": call["name"], "arguments": json.loads(call["arguments"])}, last["content"])
            return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": words}}],
                    "usage": {"prompt_tokens": 160, "completion_tokens": 14, "total_tokens": 174}}
        made = rules(last["content"])
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": None, "tool_calls": [
                        {"id": f"call_{i}", "type": "function", "function": {
                            "name": call["name"], "arguments": json.dumps(call["arguments"])}}
                        for i, call in enumerate(made)]}}],
                "usage": {"prompt_tokens": 120, "completion_tokens": 20, "total_tokens": 140}}

    return app


def folded(text: Any) -> str:
    return " ".join(str(text).split()).lower()


def judged_calls(text: str, r: Any, route: dict, schemas: dict, parallel: bool, failures: list) -> tuple[bool, bool]:
    """(the served calls match the rule, the student's own do): one call (or with ``parallel`` one or
    more) of the task's tools, each within its schema, else a failure."""
    import jsonschema

    calls = r.choices[0].message.tool_calls or []
    made: list[dict[str, Any]] = []
    if (len(calls) == 1 or parallel and calls) and all(c.function.name in schemas for c in calls):
        made = [{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in calls]
        for call in made:
            try:
                jsonschema.validate(call["arguments"], schemas[call["name"]])
            except jsonschema.ValidationError as e:
                failures.append(f"{text!r}: the {route['answered_by']}'s call breaks its schema: {e.message}")
    else:
        failures.append(f"{text!r}: not {'calls' if parallel else 'one call'} of the task's tools "
                        f"({route['answered_by']})")
    right = bool(made) and same_calls(made, rules(text))
    try:
        own = json.loads(route["student_output"])
    except json.JSONDecodeError:
        own = None
    own = [own] if isinstance(own, dict) else own if isinstance(own, list) else []
    if route["answered_by"] == "teacher" and not right:
        failures.append(f"{text!r}: the teacher's calls came back changed: {made}")
    return right, all(isinstance(c, dict) for c in own) and bool(own) and same_calls(own, rules(text))


def judged_reply(text: str, r: Any, route: dict, failures: list) -> tuple[bool, bool]:
    """(the served reply is the rule's, the student's own is): after a result, a reply in words."""
    call = rule(text)
    want = folded(reply(call, result(call)))
    got = r.choices[0].message.content
    right = not r.choices[0].message.tool_calls and got is not None and folded(got) == want
    if route["answered_by"] == "teacher" and not right:
        failures.append(f"{text!r}: the teacher's reply came back changed: {got!r}")
    try:
        own = json.loads(route["student_output"])
    except json.JSONDecodeError:
        own = None
    return right, isinstance(own, dict) and folded(own.get("content", "")) == want


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--served", type=int, default=60, help="new requests sent to the server")
    ap.add_argument("--parallel", action="store_true", help="task.parallel_tool_calls, half the requests two at once")
    ap.add_argument("--agent", action="store_true", help="task.tool_choice auto, half the inputs after a tool's result")
    ap.add_argument("--rounds", action="store_true", help="with --agent: first requests only, generate.tool_rounds 1")
    args = ap.parse_args()
    if args.parallel and args.agent:
        ap.error("--parallel and --agent are measured apart")
    if args.rounds and not args.agent:
        ap.error("--rounds goes with --agent")
    asked = compound if args.parallel else requests
    import openai

    from potstill.config import load_config
    from potstill.pipeline import run_all
    from potstill.serve import run_config
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tools-task-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    texts = asked(rng, CITIES, 400)
    # --agent: every other input is the turn after its call (the same request, so the split keeps them together).
    inputs = [{"id": f"q{i}", "messages": after(t)} if args.agent and i % 2 and not args.rounds
              else {"id": f"q{i}", "input": t}
              for i, t in enumerate(texts)]
    (work / "inputs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in inputs))
    seen: list = []
    failures: list[str] = []
    out: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "inputs": len(texts),
                           "parallel": args.parallel, "agent": args.agent, "rounds": args.rounds}
    with LiveServer(teacher_app(seen)) as teacher:
        cfg_dict = {"run_dir": "run", "task": {"type": "tools", "instruction": "Call the tool the user's request needs.",
                                               "max_output_tokens": 96 if args.parallel else 48, "tools": TOOLS,
                                               "parallel_tool_calls": args.parallel,
                                               **({"tool_choice": "auto"} if args.agent else {})},
                    "data": {"inputs": "inputs.jsonl"},
                    "teacher": {"type": "openai", "base_url": teacher.url + "/v1", "model": "gpt-4.1-mini",
                                "api_key_env": "", "price": {"input_per_mtok": 0.4, "output_per_mtok": 1.6}},
                    "pilot": {"n": 20}, "curate": {"test": 60}, "train": {"method": "lora", "epochs": 2},
                    "generate": {"tool_rounds": 1 if args.rounds else 0},
                    "evaluate": {"latency_samples": 10},
                    "serve": {"api_key_env": "", "guided_json": True}}
        (work / "potstill.yaml").write_text(yaml.safe_dump(cfg_dict))
        cfg = load_config(work / "potstill.yaml")
        t0 = time.perf_counter()
        run_all(cfg)
        out["run_s"] = round(time.perf_counter() - t0, 1)
        run = Path(cfg.run_dir)
        out["timings"] = json.loads((run / "timings.json").read_text())
        ev = json.loads((run / "eval.json").read_text())
        student = ev["models"]["student"]
        out["eval"] = {"n_test": ev["n_test"], "decision": ev["verdict"]["decision"], "reason": ev["verdict"]["reason"],
                       "agreement": student["agreement_with_teacher"], "agreement_ci": ev["agreement_ci"]["student"],
                       "untrained_agreement": ev["models"]["untrained student"]["agreement_with_teacher"],
                       "student_p50_s": student["latency_batch1"]["p50_s"], "engine": student["engine"]}
        out["teacher_requests_generate"] = len(seen)

        # Served: new requests offering the task's tools, through the official client.
        service = load_service(run, run_config(run, None), device="cpu")
        rng = random.Random(1)
        same = asked(rng, NEW_CITIES, args.served // 2)
        new = [(t, "training templates") for t in same] + \
            [(t, "new templates") for t in asked(rng, NEW_CITIES, args.served - len(same), new=True)]
        served = []
        try:
            with LiveServer(build_app(service, None)) as live:
                client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)
                schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
                for k, (text, group) in enumerate(new):
                    turn = args.agent and k % 2 == 1  # --agent: every other one is the turn after its call
                    msgs = after(text) if turn else [{"role": "user", "content": text}]
                    t1 = time.perf_counter()
                    r = client.chat.completions.create(model="potstill", messages=msgs, tools=TOOLS)
                    dt = time.perf_counter() - t1
                    route = r.model_extra["potstill"]
                    row = {"text": text, "group": group, "two_at_once": len(rules(text)) > 1, "after_result": turn,
                           "answered_by": route["answered_by"], "reason": route["reason"], "seconds": round(dt, 3)}
                    if turn:
                        row["right"], row["student_right"] = judged_reply(text, r, route, failures)
                    else:
                        row["right"], row["student_right"] = judged_calls(text, r, route, schemas, args.parallel,
                                                                          failures)
                    served.append(row)
        finally:
            service.close()
    def summary(rows: list[dict]) -> dict[str, Any]:
        answered = [s for s in rows if s["answered_by"] == "student"]
        return {
            "requests": len(rows),
            "student_share": round(len(answered) / len(rows), 3),
            "right_share": round(sum(s["right"] for s in rows) / len(rows), 3),
            # The student's own call on every request, whoever answered: what routing protects against.
            "student_alone_right_share": round(sum(s["student_right"] for s in rows) / len(rows), 3),
            "student_answered_right_share": round(sum(s["right"] for s in answered) / len(answered), 3)
            if answered else None,
            "student_p50_s": round(statistics.median(s["seconds"] for s in answered), 3) if answered else None,
            "reasons": {r: sum(s["reason"] == r for s in rows) for r in sorted({s["reason"] for s in rows})},
            "wrong_student_calls": [s["text"] for s in answered if not s["right"]],
        }

    out["served"] = {g: summary([s for s in served if s["group"] == g]) for g in ("training templates", "new templates")}
    if args.parallel:
        out["served_two_at_once"] = summary([s for s in served if s["two_at_once"]])
        out["served_one"] = summary([s for s in served if not s["two_at_once"]])
    if args.agent:
        out["served_first_turn"] = summary([s for s in served if not s["after_result"]])
        out["served_after_result"] = summary([s for s in served if s["after_result"]])
    out["served_requests"] = served
    print(json.dumps({k: out[k] for k in ("run_s", "eval", "served")}, indent=1))
    finish(out, failures, args.out)


if __name__ == "__main__":
    main()
