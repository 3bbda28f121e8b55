"""A tools task (``task.type: tools``): the config derives the answer's JSON Schema from
``task.tools``; an API teacher is asked with the tools, one call required, through its official SDK
against a real server on loopback; its calls become the records' ``{name, arguments}`` text, and an
answer that calls nothing, calls twice or writes arguments that are not JSON is set aside by curate."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from fastapi import FastAPI

from potstill.config import load_config
from potstill.curate.stage import curate_stage
from potstill.errors import PotstillError
from potstill.generate.stage import generate_stage
from potstill.records import read_records
from potstill.tasks import get_task
from tests.helpers.live_server import LiveServer

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                        "unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]

# What the loopback teacher does with each input: call a tool, or misbehave as real models do.
INPUTS = {
    "r0": ("weather in Paris", [("get_weather", '{"city": "Paris"}')]),
    "r1": ("time in Tokyo", [("get_time", '{"city": "Tokyo"}')]),
    "r2": ("weather in Oslo in fahrenheit", [("get_weather", '{"city": "Oslo", "unit": "f"}')]),
    "r3": ("time in Lima", [("get_time", '{"city": "Lima"}')]),
    "r4": ("hello there", []),  # answers in text, calling nothing
    "r5": ("weather and time in Rome", [("get_weather", '{"city": "Rome"}'), ("get_time", '{"city": "Rome"}')]),
    "r6": ("weather in Kyiv", [("get_weather", '{"city": "Kyiv"')]),  # arguments cut: not JSON
    "r7": ("weather in Cairo in kelvin", [("get_weather", '{"city": "Cairo", "unit": "k"}')]),  # outside the enum
}


def caller(seen: list) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:
        seen.append(body)
        text = body["messages"][-1]["content"]
        calls = next(c for t, c in INPUTS.values() if t == text)
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
                for i, (n, a) in enumerate(calls)]}
        else:
            message = {"role": "assistant", "content": "Hello! How can I help?"}
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}}

    return app


def project(tmp, url: str = "http://127.0.0.1:9/v1", **task: Any):
    (tmp / "inputs.jsonl").write_text("".join(json.dumps({"id": k, "input": t}) + "\n" for k, (t, _) in INPUTS.items()))
    cfg = {"run_dir": "run", "task": {"type": "tools", "instruction": "Call the tool the user needs.",
                                      "tools": TOOLS, "max_output_tokens": 32, **task},
           "data": {"inputs": "inputs.jsonl"},
           "teacher": {"type": "openai", "model": "gpt-4.1-mini", "base_url": url, "api_key_env": "",
                       "max_retries": 0, "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0}},
           "curate": {"val": 1, "test": 1, "dedup": False}}
    (tmp / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return load_config(tmp / "potstill.yaml")


def test_the_teacher_is_asked_with_the_tools_and_its_calls_are_what_the_student_learns(tmp_path):
    seen: list = []
    with LiveServer(caller(seen)) as srv:
        cfg = project(tmp_path, srv.url + "/v1")
        generate_stage(cfg)
        curate_stage(cfg)
    assert len(seen) == len(INPUTS)
    for body in seen:  # the tools as declared, one call required
        assert body["tools"] == TOOLS and body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
        assert body["messages"][0] == {"role": "system", "content": "Call the tool the user needs."}
    records = {r.id: r for r in read_records(tmp_path / "run" / "teacher.jsonl")}
    assert json.loads(records["r0"].output) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert json.loads(records["r2"].output) == {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "f"}}
    assert records["r4"].output == "Hello! How can I help?"
    assert [k for k, r in records.items() if r.valid] == ["r0", "r1", "r2", "r3"]
    rejected = {json.loads(x)["id"]: json.loads(x)["invalid_reason"]
                for x in (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()}
    assert sorted(rejected) == ["r4", "r5", "r6", "r7"]
    # Each says what was wrong, and the card counts the kinds apart (before: "invalid JSON" for r4,
    # "schema violation at (root)" for r5 and r6 alike).
    assert rejected["r4"] == "no tool call: the answer is text, not a call"
    assert rejected["r5"] == "too many calls: 2 calls, one allowed (task.parallel_tool_calls is false)"
    assert rejected["r6"] == "arguments not JSON: get_weather's arguments are not a JSON object: '{\"city\": \"Kyiv\"'"
    assert rejected["r7"].startswith("schema violation at arguments/unit: 'k' is not one of")
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["rejected_reasons"] == {"no tool call": 1, "too many calls": 1, "arguments not JSON": 1,
                                        "schema violation at arguments/unit": 1}
    kept = [r for split in ("train", "val", "test") for r in read_records(tmp_path / "run" / f"{split}.jsonl")]
    assert sorted(r.id for r in kept) == ["r0", "r1", "r2", "r3"]
    # The student learns the call as compact JSON, name first.
    task = get_task(cfg.task)
    assert task.target(records["r1"]) == '{"name": "get_time", "arguments": {"city": "Tokyo"}}'


def test_the_schema_comes_from_the_tools_and_bad_tools_are_one_line(tmp_path):
    cfg = project(tmp_path)
    schema = cfg.task.json_schema
    assert [b["properties"]["name"] for b in schema["anyOf"]] == [{"const": "get_weather"}, {"const": "get_time"}]
    # The run's saved config (json_schema written out) loads again as it was.
    (tmp_path / "saved.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(tmp_path / "saved.yaml").task.json_schema == schema
    one = project(tmp_path, tools=TOOLS[1:]).task.json_schema  # one tool: its branch alone
    assert one["properties"]["name"] == {"const": "get_time"} and one["additionalProperties"] is False
    bad = {
        "a tools task needs task.tools": {"tools": []},
        r"task.tools\[1\].function.name: 'get_weather' is declared twice": {"tools": [TOOLS[0], TOOLS[0]]},
        r"task.tools\[0\].function.name: 'get weather' is not a function name": {
            "tools": [{"type": "function", "function": {"name": "get weather"}}]},
        r"task.tools\[0\].function.parameters: must be a JSON Schema of type object": {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
        r"task.tools\[0\]: expected \{type: function": {"tools": [{"name": "f"}]},
        "a tools task's schema is derived from task.tools; leave it out": {"json_schema": {"type": "object"}},
    }
    for message, task in bad.items():
        with pytest.raises(PotstillError, match=message):
            project(tmp_path, **task)
    with pytest.raises(PotstillError, match="task.tools is for task.type tools"):
        project(tmp_path, type="extraction", json_schema={"type": "object"})
    with pytest.raises(PotstillError, match="a tools task's teacher is asked with task.tools"):
        from potstill.teachers import get_teacher

        cfg = project(tmp_path)
        get_teacher(cfg.teacher.model_copy(update={"structured_outputs": "on"}), get_task(cfg.task))
    with pytest.raises(PotstillError, match="a tools task's answers are calls"):
        generate_stage(project(tmp_path).model_copy(update={"generate": cfg.generate.model_copy(update={"n": 2})}))


def test_agreement_counts_the_arguments_of_the_same_function(tmp_path):
    task = get_task(project(tmp_path).task)
    call = task.parse('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}')
    assert task.validate(call) is None
    assert task.agree(call, task.parse('{"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}}')) == 1.0
    assert task.agree(call, task.parse('{"name": "get_weather", "arguments": {"city": "Paris"}}')) == 0.5
    assert task.agree(call, task.parse('{"name": "get_time", "arguments": {"city": "Paris", "unit": "c"}}')) == 0.0
    assert task.agree(call, task.parse("not json")) == 0.0
    assert task.validate(task.parse('{"name": "get_time", "arguments": {}}')).startswith("missing property: 'city'")
    assert task.answer_output({"output": "", "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Lima"}'}}]}) == \
        '{"name": "get_time", "arguments": {"city": "Lima"}}'


def test_a_rejected_call_says_what_was_wrong_with_it(tmp_path):
    """Found by a review: an undeclared function, an extra property and two calls in a one-call task
    were all "schema violation at (root): ... is not valid under any of the given schemas"."""
    task = get_task(project(tmp_path).task)

    def why(answer: Any) -> str | None:
        return task.validate(task.parse(json.dumps(answer)))

    assert why({"name": "launch_rocket", "arguments": {}}) == \
        "unknown function: 'launch_rocket' is not one of task.tools (get_weather, get_time)"
    assert why({"name": "get_weather", "arguments": {"city": "Oslo", "country": "NO"}}) == \
        "extra property: 'country' in get_weather's arguments"
    assert why({"name": "get_weather", "arguments": {"unit": "c"}}) == "missing property: 'city' in get_weather's arguments"
    assert why({"name": "get_time", "arguments": {"city": 3}}).startswith("schema violation at arguments/city: 3 is not")
    assert task.validate(task.parse("")) == "no tool call: the answer is empty"
    parallel = get_task(project(tmp_path, parallel_tool_calls=True).task)
    two = [{"name": "get_time", "arguments": {"city": "Rome"}}, {"name": "get_weather", "arguments": {"city": 1}}]
    assert parallel.validate(parallel.parse(json.dumps(two))).startswith("schema violation at 1/arguments/city:")
    assert parallel.validate(parallel.parse("[]")) == "no tool call: an empty list of calls"
    nested = get_task(project(tmp_path, tools=[{"type": "function", "function": {"name": "book", "parameters": {
        "type": "object", "required": ["where"], "properties": {"where": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": False}}}}}]).task)
    assert nested.validate(nested.parse('{"name": "book", "arguments": {"where": {"town": "Oslo"}}}')) == \
        "extra property: 'town' in book's arguments at where"  # (and its city missing: the made-up name first)


def test_an_anthropic_teacher_is_asked_for_any_tool_and_its_tool_use_becomes_the_call(tmp_path):
    from tests.serve.test_tool_calls import anthropic_provider

    seen: list = []
    with LiveServer(anthropic_provider(seen)) as srv:
        cfg = project(tmp_path, srv.url)
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"type": "anthropic",
                                                                                "model": "claude-haiku-4-5"})})
        generate_stage(cfg)
    # One call an answer: Claude is told not to call several at once.
    assert len(seen) == len(INPUTS) and all(b["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
                                            for b in seen)
    assert [t["name"] for t in seen[0]["tools"]] == ["get_weather", "get_time"]
    assert seen[0]["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]
    records = read_records(tmp_path / "run" / "teacher.jsonl")
    # Its text beside the call ("Let me look that up.") is not the answer; the call is.
    assert {r.output for r in records} == {'{"name": "get_weather", "arguments": {"about": "match"}}'}
    assert all(not r.valid and r.invalid_reason == "extra property: 'about' in get_weather's arguments"
               for r in records)


def test_synthesize_writes_requests_for_each_tool(tmp_path):
    """``potstill synthesize`` on a tools task: inputs are split evenly over the functions (its
    default cells), and each request shows the teacher the tools and names the one to need."""
    from potstill.config import SynthesizeConfig
    from potstill.synthesize import prompt, quotas, slot

    task = project(tmp_path).task
    assert quotas(SynthesizeConfig(n=5), task) == {"get_weather": 3, "get_time": 2}
    chat = prompt(task, slot(SynthesizeConfig(n=5), "get_time", 0, []))
    text = chat[-1]["content"]
    assert "get_weather (The weather in a city.), arguments: {" in text and '"enum": ["c", "f"]' in text
    assert "Write a request that needs the tool: get_time." in text and "Kind of input" not in text
    head = prompt(task, slot(SynthesizeConfig(n=5), "get_time", 0, []), completion=True)[0]["content"]
    assert "Requests that need the tool get_time" in head


def test_a_reviewer_corrects_a_call_and_the_tools_schema_checks_the_edit(tmp_path):
    """``potstill review`` on a curated tools run: the card keeps the task's tools (without them the
    page could not build the task), an edited call is checked against the tools' schema (another
    function's name is refused, saying so) and the next curate trains on it."""
    import httpx

    from potstill.config import Config
    from potstill.records import Record, write_jsonl
    from potstill.review.app import create_app
    from tests.helpers.live_server import LiveServer

    run = tmp_path / "run"
    cities = ["Paris", "Tokyo", "Lima", "Oslo", "Rome", "Cairo", "Kyiv", "Berlin", "Madrid", "Dublin"]
    write_jsonl(run / "teacher.jsonl", [
        Record(id=f"r{i}", messages=[{"role": "user", "content": f"time in {c}"}],
               output=json.dumps({"name": "get_time", "arguments": {"city": c.upper()}}), valid=True)
        for i, c in enumerate(cities)])
    cfg = Config(run_dir=str(run), task={"type": "tools", "instruction": "call", "tools": TOOLS},
                 curate={"val": 0, "test": 0, "near_dup": False})
    curate_stage(cfg)
    assert json.loads((run / "card.json").read_text())["task"]["tools"] == TOOLS
    with LiveServer(create_app(run, sample=4)) as served:
        item = httpx.get(served.url + "/api/state").json()["items"][0]
        call = json.loads(item["output"])
        wrong = json.dumps({"name": "get_date", "arguments": call["arguments"]})
        r = httpx.post(served.url + "/api/decisions", json={"id": item["id"], "decision": "edit", "output": wrong})
        assert r.status_code == 400 and "unknown function: 'get_date'" in r.json()["error"]["message"]
        fixed = json.dumps({"name": "get_time", "arguments": {"city": call["arguments"]["city"].title()}})
        r = httpx.post(served.url + "/api/decisions", json={"id": item["id"], "decision": "edit", "output": fixed})
        assert r.status_code == 200, r.text
    curate_stage(cfg)
    rec = next(r for r in read_records(run / "train.jsonl") if r.id == item["id"])
    assert json.loads(rec.output) == json.loads(fixed)


def test_the_pilot_shows_the_untrained_student_the_tools(tmp_path, tiny_model, capsys):
    """Untrained, a student knows neither the functions nor the call's form, and the trained one is
    asked without them (it learnt both): the pilot's untrained student gets them in its system
    prompt (zero-shot), and says so in one line beside its table."""
    from transformers import AutoTokenizer

    from potstill.pilot.stage import pilot_stage
    from potstill.tool_calls import shown_tools

    seen: list = []
    with LiveServer(caller(seen)) as srv:
        cfg = project(tmp_path, srv.url + "/v1")
        cfg = cfg.model_copy(update={"student": cfg.student.model_copy(update={"model": str(tiny_model)}),
                                     "pilot": cfg.pilot.model_copy(update={"n": 4})})
        capsys.readouterr()
        pilot_stage(cfg)
    err = capsys.readouterr().err
    assert "pilot: the untrained student was shown the tools and the call's form in its system prompt" in err
    assert all(b["tool_choice"] == "required" for b in seen)  # the pilot's teacher is generate's
    shown = shown_tools(cfg.task.instruction, TOOLS)
    assert '"name": "get_time"' in shown and shown.startswith("Call the tool the user needs.\n\nAnswer with only")
    tools_tokens = len(AutoTokenizer.from_pretrained(str(tiny_model))(shown)["input_ids"])
    pilot = json.loads((tmp_path / "run" / "pilot.json").read_text())
    assert pilot["models"]["untrained student"]["input_tokens_per_call"] > tools_tokens
