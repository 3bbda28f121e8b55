"""The teacher's configured price reprices evaluate's teacher cost per call, break-even and verdict:
a replay teacher (recorded traffic, $0 to replay) priced per call, and an API teacher's recorded
tokens at a new token price. A ledger row of generate.n samples is priced as one answer, the call
a student takes over."""

import json
import shutil

import pytest

from potstill.config import PriceConfig, TaskConfig, load_config
from potstill.evaluate.stage import evaluate_stage
from potstill.ledger import Call, Ledger, ServedCall
from potstill.records import Record
from potstill.report import measure_teacher
from potstill.tasks import get_task


def _run(tmp_path, tiny_model, teacher: dict, rows: list[dict], served: tuple[ServedCall, ...] = ()):
    """A run of 4 test inputs whose teacher answers are ledger rows ``rows`` (one per input), and
    ``served`` requests logged by serve beside them."""
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"input": f"text {i}", "output": f"summary {i}", "meta": {"request_hash": f"h{i}"}} for i in range(4)]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    shutil.copytree(tiny_model, run / "student")
    with Ledger(run / "calls.sqlite") as ledger:
        for i, row in enumerate(rows):
            ledger.record(Call(request_hash=f"h{i}", role="teacher", stage="generate", request={"i": i},
                               **{"response": {"output": f"summary {i}"}, **row}))
        for call in served:
            ledger.record_served(call)
    cfg = load_config(overrides={"run_dir": str(run), "task": {"type": "freetext", "instruction": "answer",
                                                                "max_output_tokens": 2},
                                 "teacher": teacher, "student.model": str(tiny_model),
                                 "student.usd_per_hour": 0.01,
                                 "evaluate": {"latency_samples": 2, "batch_size": 2, "include_untrained": False,
                                              "monthly_calls": 100000},
                                 "report": {"min_slice_n": 2, "bootstrap_samples": 100},
                                 # The untrained student runs to its 2-token budget on every input: served
                                 # cut, so that these figures are the teacher's price beside the student's alone.
                                 "serve": {"escalate_truncated": False}})
    evaluate_stage(cfg)
    return json.loads((run / "eval.json").read_text())


def test_a_replay_teacher_priced_per_call_is_not_free(tmp_path, tiny_model):
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text(json.dumps({"messages": [{"role": "user", "content": "x"},
                                                {"role": "assistant", "content": "y"}]}) + "\n")
    ev = _run(tmp_path, tiny_model, {"type": "replay", "model": "gpt-4o", "replay_path": str(traffic),
                                     "price": {"usd_per_call": 0.02}},
              [{"model": "gpt-4o", "cost_usd": 0.0}] * 4)
    t = ev["models"]["teacher"]
    assert t["cost_per_1k_calls_usd"] == pytest.approx(20.0)
    assert "usd_per_call" in t["cost_source"]
    cheaper = ev["verdict"]["checks"][1]
    assert cheaper["check"].startswith("student cheaper") and cheaper["pass"], cheaper
    assert ev["break_even"]["saving_per_call_usd"] > 0
    assert ev["one_time"]["generation_usd"] == 0.0  # replaying paid nothing: the one-time spend stays the ledger's


def test_a_token_price_reprices_the_recorded_tokens(tmp_path, tiny_model):
    # Recorded at $0.001 a call; at $2/$8 per Mtok, 1,000 input (400 cached at $0.5) + 100 output tokens is
    # (600 * 2 + 400 * 0.5 + 100 * 8) / 1e6 = $0.0022 at the live price, the batched half (price_multiplier 0.5)
    # too: the calls a student takes over are interactive.
    rows = [{"model": "gpt-4.1", "input_tokens": 1000, "cached_input_tokens": 400, "output_tokens": 100,
             "cost_usd": 0.001, "price_multiplier": 0.5 if i % 2 else 1.0} for i in range(4)]
    ev = _run(tmp_path, tiny_model, {"type": "openai", "model": "gpt-4.1",
                                     "price": {"input_per_mtok": 2, "output_per_mtok": 8, "cached_input_per_mtok": 0.5}},
              rows)
    t = ev["models"]["teacher"]
    assert t["cost_per_1k_calls_usd"] == pytest.approx(1000 * 0.0022)
    assert t["ledger_cost_per_1k_calls_usd"] == pytest.approx(1.0)
    assert "teacher.price" in t["cost_source"]


def test_a_token_price_reprices_cache_writes_above_input(tmp_path, tiny_model):
    # Anthropic: 3,100 input tokens of which 2,000 cache reads and 1,000 cache writes (in the response),
    # at $3 input: (100 * 3 + 1000 * 3.75 + 2000 * 0.3 + 10 * 15) / 1e6 = $0.0048 a call.
    rows = [{"model": "claude-sonnet-4-5", "input_tokens": 3100, "cached_input_tokens": 2000, "output_tokens": 10,
             "response": {"output": f"summary {i}", "cache_write_input_tokens": 1000}} for i in range(4)]
    ev = _run(tmp_path, tiny_model, {"type": "anthropic", "model": "claude-sonnet-4-5",
                                     "price": {"input_per_mtok": 3, "output_per_mtok": 15, "cached_input_per_mtok": 0.3}},
              rows)
    assert ev["models"]["teacher"]["cost_per_1k_calls_usd"] == pytest.approx(1000 * 0.0048)


def test_calls_answered_through_a_batch_api_are_priced_live_in_the_break_even(tmp_path, tiny_model):
    """generate.engine batch paid half the live price ($0.001 a call recorded, price_multiplier 0.5); after
    the switch the traffic the student takes over is interactive, at $0.002 a call. The teacher's cost per
    call, the cost check and the break-even use the live price; the recorded spend stays beside it and in
    the one-time cost."""
    rows = [{"model": "claude-sonnet-4-5", "input_tokens": 300, "output_tokens": 10, "cost_usd": 0.001,
             "price_multiplier": 0.5} for _ in range(4)]
    ev = _run(tmp_path, tiny_model, {"type": "anthropic", "model": "claude-sonnet-4-5"}, rows)
    t = ev["models"]["teacher"]
    assert t["cost_per_1k_calls_usd"] == pytest.approx(2.0)
    assert t["ledger_cost_per_1k_calls_usd"] == pytest.approx(1.0)
    assert "live price" in t["cost_source"] and "batch" in t["cost_source"]
    student = ev["models"]["student"]["cost_per_1k_calls_usd"] / 1000
    assert ev["break_even"]["saving_per_call_usd"] == pytest.approx(0.002 - student)
    assert ev["one_time"]["generation_usd"] == pytest.approx(0.004)  # what was paid
    (row,) = [r for r in ev["latency_cost"] if r["model"] == "teacher"]
    assert "live price" in row["source"] and "$1 per 1k" in row["source"]


def test_n_samples_in_one_request_are_priced_as_one_answer(tmp_path, tiny_model):
    """generate.n = 5 through OpenAI: one request, the prompt billed once and 5 answers' output. At gpt-4.1's
    built-in $2/$8 per Mtok, 1,000 prompt + 5 x 200 output tokens is $0.0100 a row; the call a student takes
    over is one answer, (1000 * 2 + 200 * 8) / 1e6 = $0.0036. The latency stays the whole request's, said so."""
    rows = [{"model": "gpt-4.1", "input_tokens": 1000, "output_tokens": 1000,
             "cost_usd": 0.0100, "latency_s": 2.0, "response": {"output": f"summary {i}", "samples": [f"summary {i}"] * 5}}
            for i in range(4)]
    ev = _run(tmp_path, tiny_model, {"type": "openai", "model": "gpt-4.1"}, rows)
    t = ev["models"]["teacher"]
    assert t["cost_per_1k_calls_usd"] == pytest.approx(3.6)
    assert (t["input_tokens_per_call"], t["output_tokens_per_call"]) == pytest.approx((1000, 200))
    student = ev["models"]["student"]["cost_per_1k_calls_usd"] / 1000
    assert ev["break_even"]["saving_per_call_usd"] == pytest.approx(0.0036 - student)
    assert "generate.n = 5" in t["samples_note"] and "one sample's" in t["samples_note"]
    assert "samples_note" in t["cost_source"]
    assert t["latency_batch1"]["p50_s"] == pytest.approx(2.0)  # not split: the ledger does not time samples apart
    (row,) = [r for r in ev["latency_cost"] if r["model"] == "teacher"]
    assert t["samples_note"] in row["source"] and t["samples_note"] in ev["sources"]["teacher"]
    assert ev["one_time"]["generation_usd"] == pytest.approx(0.04)  # what was paid: all 5 samples of each


def test_n_samples_as_n_requests_are_priced_as_one_request(tmp_path):
    """generate.n = 3 through Anthropic: 3 requests, each billing its prompt (1,000 tokens, 800 read from the
    cache), summed in one row with each one's [input, output] in ``sample_tokens``. One call is one request:
    at claude-sonnet-4's built-in $3/$15 ($0.30 a cache read), (200 * 3 + 800 * 0.3 + 100 * 15) / 1e6 = $0.00234,
    and at a teacher.price of $1/$5 ($0.10 a read), (200 * 1 + 800 * 0.1 + 100 * 5) / 1e6 = $0.00078."""
    task = get_task(TaskConfig(type="freetext", instruction="Summarise."))
    recs = []
    with Ledger(tmp_path / "calls.sqlite") as ledger:
        for i in range(4):
            ledger.record(Call(request_hash=f"h{i}", role="teacher", stage="generate", request={"i": i, "n": 3},
                               model="claude-sonnet-4-5", input_tokens=3000, cached_input_tokens=2400, output_tokens=300,
                               cost_usd=3 * 0.00234, response={"output": "a", "samples": ["a", "b", "c"],
                                                               "sample_tokens": [[1000, 120], [1000, 100], [1000, 80]]}))
            recs.append(Record(messages=[{"role": "user", "content": f"t{i}"}], output="a",
                               meta={"request_hash": f"h{i}"}))
        recorded = measure_teacher(task, recs, ledger)
        priced = measure_teacher(task, recs, ledger, price=PriceConfig(input_per_mtok=1, output_per_mtok=5,
                                                                        cached_input_per_mtok=0.1))
    assert recorded["cost_per_1k_calls_usd"] == pytest.approx(2.34)
    assert (recorded["input_tokens_per_call"], recorded["output_tokens_per_call"],
            recorded["cached_tokens_per_call"]) == pytest.approx((1000, 100, 800))
    assert priced["cost_per_1k_calls_usd"] == pytest.approx(0.78)
    assert priced["ledger_cost_per_1k_calls_usd"] == pytest.approx(2.34)
    assert "generate.n = 3" in priced["samples_note"] and "samples_note" in priced["cost_source"]


def test_batch_api_answers_are_left_out_of_the_teachers_latency(tmp_path, tiny_model):
    """A batch-API answer is recorded with latency 0.0 s (a batch times no interactive call): a teacher
    generated in batches read p50 / p95 0.000 s in the CLI, eval.json and report.html, and every student
    looked slower than it. Those rows are left out: all batched, the latency is not measured (null, '-')."""
    rows = [{"model": "claude-sonnet-4-5", "input_tokens": 300, "output_tokens": 10, "cost_usd": 0.001,
             "price_multiplier": 0.5, "latency_s": 0.0} for _ in range(4)]
    ev = _run(tmp_path, tiny_model, {"type": "anthropic", "model": "claude-sonnet-4-5"}, rows)
    lat = ev["models"]["teacher"]["latency_batch1"]
    assert (lat["n"], lat["p50_s"], lat["p95_s"]) == (0, None, None) and "not measured" in lat["source"]
    (row,) = [r for r in ev["latency_cost"] if r["model"] == "teacher"]
    assert row["p50_s"] is None and row["source"].startswith("latency not measured")
    html = (tmp_path / "run" / "report.html").read_text()
    cost = html[html.index("<section id='cost'>"):html.index("</section>", html.index("<section id='cost'>"))]
    assert "<td class='l'>teacher</td><td class=''>-</td><td class=''>-</td>" in cost and "0.000 s" not in cost
    # Live calls beside batched ones: the live calls alone are timed.
    task = get_task(TaskConfig(type="freetext", instruction="Summarise."))
    with Ledger(tmp_path / "mixed.sqlite") as ledger:
        for i in range(4):
            ledger.record(Call(request_hash=f"m{i}", role="teacher", stage="generate", request={"i": i},
                               model="claude-sonnet-4-5", cost_usd=0.001, response={"output": "a"},
                               latency_s=[0.4, 0.0, 0.6, 0.0][i], price_multiplier=[1.0, 0.5, 1.0, 0.5][i]))
        m = measure_teacher(task, [Record(messages=[{"role": "user", "content": f"t{i}"}], output="a",
                                          meta={"request_hash": f"m{i}"}) for i in range(4)], ledger)
    assert (m["latency_batch1"]["n"], m["latency_batch1"]["p50_s"]) == (2, pytest.approx(0.5))
    assert m["latency_batch1"]["batch_api_left_out"] == 2


def test_a_self_hosted_teacher_is_priced_by_the_hour_over_its_busy_seconds(tmp_path, tiny_model, monkeypatch, capsys):
    """vLLM behind teacher.type openai, priced {usd_per_hour: 3.6}: the ledger bills no token price for its
    model ($0 a call), and usd_per_hour was read for a local teacher only, so the teacher cost nothing and
    the verdict was NO-GO whatever the student's quality. Its calls are priced by the seconds the server was
    busy with them: two calls in flight together over 100-103 s and two over 200-201.5 s kept it busy 4.5 s
    (their summed latencies, 6 s, would bill the batched ones twice); at $3.6/h ($0.001/s) that is $0.0045,
    $1.125 per 1,000 calls. `potstill cost` says the same."""
    import yaml

    from potstill.cli import main

    spans = [(100.0, 102.0), (101.0, 103.0), (200.0, 201.0), (200.5, 201.5)]
    rows = [{"model": "Qwen/Qwen2.5-7B-Instruct", "input_tokens": 30, "output_tokens": 10, "cost_usd": 0.0,
             "created_at": end, "latency_s": end - start} for start, end in spans]
    teacher = {"type": "openai", "model": "Qwen/Qwen2.5-7B-Instruct", "base_url": "http://127.0.0.1:8000/v1",
               "api_key_env": "", "price": {"usd_per_hour": 3.6}}
    ev = _run(tmp_path, tiny_model, teacher, rows)
    t = ev["models"]["teacher"]
    assert t["cost_per_1k_calls_usd"] == pytest.approx(1.125)  # before: 0.0
    assert t["ledger_cost_per_1k_calls_usd"] == 0.0
    assert "usd_per_hour=3.6" in t["cost_source"] and "4.5 s" in t["cost_source"]
    cheaper = ev["verdict"]["checks"][1]
    assert cheaper["check"].startswith("student cheaper") and cheaper["pass"], cheaper
    (tmp_path / "run" / "potstill.yaml").write_text(yaml.safe_dump(
        {"task": {"type": "freetext", "instruction": "answer"}, "teacher": teacher}))
    monkeypatch.setattr("sys.argv", ["potstill", "cost", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "by the hour" in x]
    assert "busy 4.5 s with these 4 answers" in line and "$0.0045" in line and "$1.1250 per 1,000" in line


def test_a_self_hosted_teachers_generation_is_priced_by_the_hour_in_the_one_time_cost(tmp_path, tiny_model):
    """The same vLLM teacher priced {usd_per_hour: 3.6}: its cost per call was priced by its busy seconds,
    but the one-time cost of generating the dataset read the ledger's $0 for those calls, so distilling
    cost nothing and the break-even came at once. Its generate calls, busy 4.5 s (as above), are $0.0045
    at $0.001/s; a served escalation's 50 s (at 300-350 s) is a cost of running, left out as before."""
    spans = [(100.0, 102.0), (101.0, 103.0), (200.0, 201.0), (200.5, 201.5)]
    rows = [{"model": "Qwen/Qwen2.5-7B-Instruct", "input_tokens": 30, "output_tokens": 10, "cost_usd": 0.0,
             "created_at": end, "latency_s": end - start} for start, end in spans]
    escalation = ServedCall(request={"messages": [{"role": "user", "content": "q"}]}, answered_by="teacher",
                            model="Qwen/Qwen2.5-7B-Instruct", content="a", request_hash="s0", created_at=350.0,
                            latency_s=50.0)
    teacher = {"type": "openai", "model": "Qwen/Qwen2.5-7B-Instruct", "base_url": "http://127.0.0.1:8000/v1",
               "api_key_env": "", "price": {"usd_per_hour": 3.6}}
    ev = _run(tmp_path, tiny_model, teacher, rows, served=(escalation,))
    o, be = ev["one_time"], ev["break_even"]
    assert o["generation_usd"] == pytest.approx(0.0045)  # before: 0.0
    assert o["total_usd"] == pytest.approx(0.0045 + o["train_usd"])
    assert be["one_time_usd"] == pytest.approx(o["total_usd"]) and be["calls"] > 0
    said = ev["sources"]["generation_usd"]
    assert "priced by the hour in place of the ledger's $0.0000" in said and "busy 4.5 s" in said
    assert "usd_per_hour=3.6" in said and "$0.0045" in said
