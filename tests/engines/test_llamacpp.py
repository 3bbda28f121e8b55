"""Engine llamacpp: a tiny byte-level BPE Llama built from a config, taught the label set, converted
by llama.cpp's converter and run by a real ``llama-server``.

llama.cpp is not a Python package: the tests that run the server need ``llama-server`` on PATH (or
``POTSTILL_LLAMA_SERVER``) and skip without it (CI has none: building it takes about 15 minutes on 2
cores). The conversion and the missing-binary error run everywhere.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import openai
import pytest
import torch

from potstill.engines import load_engine
from potstill.engines.llamacpp import SERVER_ENV
from potstill.errors import PotstillError
from potstill.models.loading import cache_dir, load_lm, save_lm
from potstill.models.prompting import label_token_ids
from tests.engines.conftest import CHAT, LABELS, MSGS, SHOTS, _teach
from tests.export.conftest import make_bpe_model
from tests.helpers.live_server import LiveServer
from tests.helpers.llama import has_llama_server as _has_server
from tests.helpers.llama import needs_llama_server as needs_server

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def taught_bpe(tmp_path_factory) -> Path:
    src = make_bpe_model(tmp_path_factory.mktemp("bpe-src") / "model")
    lm = load_lm(str(src), device="cpu")
    _teach(lm, steps=120)
    out = tmp_path_factory.mktemp("bpe-taught") / "student"
    save_lm(lm.model, lm.tokenizer, out)
    return out


@pytest.fixture(scope="module")
def engines(taught_bpe):
    if not _has_server():
        pytest.skip("llama-server not on PATH")
    made = {q: load_engine("llamacpp", str(taught_bpe), device="cpu", quantization=q) for q in ("none", "int8")}
    yield made
    for e in made.values():
        e.close()


def test_a_missing_llama_server_names_how_to_get_it(taught_bpe, monkeypatch, tmp_path):
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PotstillError) as e:
        load_engine("llamacpp", str(taught_bpe), device="cpu")
    assert "\n" not in str(e.value) and "llama-server" in str(e.value) and SERVER_ENV in str(e.value)
    assert not (cache_dir() / "engines" / "llamacpp").exists()  # refused before converting anything
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "nothing"))
    with pytest.raises(PotstillError, match="not an executable file"):
        load_engine("llamacpp", str(taught_bpe), device="cpu")


def test_a_bad_context_size_in_the_extra_arguments_is_one_line_before_any_conversion(taught_bpe, monkeypatch):
    from potstill.engines.llamacpp import ARGS_ENV

    for given, says in (("--ctx-size lots", "--ctx-size takes a whole number of positions"),
                        ("--threads 2 -c", "-c takes a whole number of positions"),
                        ("-c 128", "-c 128 leaves 8 positions to each of engine llamacpp's 16 slots; give at least 256")):
        monkeypatch.setenv(ARGS_ENV, given)
        with pytest.raises(PotstillError) as e:
            load_engine("llamacpp", str(taught_bpe), device="cpu")
        assert str(e.value) == f"{ARGS_ENV}: {says}"
    assert not (cache_dir() / "engines" / "llamacpp").exists()


def test_conversion_is_cached_by_content_and_a_corrupt_model_leaves_no_entry(taught_bpe, tmp_path):
    import shutil

    from potstill.engines.convert import GGUF, INFO, gguf_model

    model = tmp_path / "m"
    shutil.copytree(taught_bpe, model)
    path, where, key = gguf_model(str(model), "q8_0")
    assert path.name == GGUF and path.stat().st_size > 0 and (where / INFO).exists()
    mtime = path.stat().st_mtime_ns
    assert gguf_model(str(model), "q8_0") == (path, where, key) and path.stat().st_mtime_ns == mtime
    f32, _, key32 = gguf_model(str(model), "f32")
    assert key32 != key and f32.stat().st_size > path.stat().st_size
    bad = tmp_path / "bad"
    shutil.copytree(taught_bpe, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    before = set((cache_dir() / "engines" / "llamacpp").iterdir())
    with pytest.raises(PotstillError) as e:
        gguf_model(str(bad), "q8_0")
    assert "\n" not in str(e.value) and "GGUF" in str(e.value)
    assert set((cache_dir() / "engines" / "llamacpp").iterdir()) == before  # no entry, no temp dir left


@needs_server
@pytest.mark.parametrize("fmt", [CHAT, SHOTS], ids=["chat", "shots"])
@pytest.mark.parametrize("quant", ["none", "int8"])
def test_llamacpp_gives_the_labels_transformers_gives(taught_bpe, engines, quant, fmt):
    ref = load_engine("transformers", str(taught_bpe), device="cpu")
    ids = label_token_ids(ref.tokenizer, fmt, LABELS)
    want = ref.score_labels(fmt, MSGS, ids)
    got = engines[quant].score_labels(fmt, MSGS, ids, batch_size=4)
    assert got.logits.argmax(-1).tolist() == want.logits.argmax(-1).tolist()
    p_want, p_got = torch.softmax(want.logits, -1), torch.softmax(got.logits, -1)
    assert (p_want - p_got).abs().max() < (1e-3 if quant == "none" else 0.05)
    assert got.embeddings.shape == (len(MSGS), 64) and torch.allclose(got.embeddings.norm(dim=-1), torch.ones(len(MSGS)))


@pytest.fixture(scope="module")
def taught_wide(tmp_path_factory) -> Path:
    """Rows of 256 weights, so that the GGUF mixes hold Q4_K / Q5_K / Q6_K blocks, not fallbacks."""
    src = make_bpe_model(tmp_path_factory.mktemp("wide-src") / "model", hidden=256, intermediate=512, layers=4,
                         init=0.02)
    lm = load_lm(str(src), device="cpu")
    _teach(lm, steps=60)
    out = tmp_path_factory.mktemp("wide-taught") / "student"
    save_lm(lm.model, lm.tokenizer, out)
    return out


@needs_server
@pytest.mark.parametrize("quant,kind,tol", [("q6_k", "Q6_K", 0.04), ("q5_k_m", "Q5_K", 0.05), ("q4_k_m", "Q4_K", 0.08),
                                            ("q4_0", "Q4_0", 0.2)])
def test_llama_server_reads_potstills_gguf_mixes(taught_wide, quant, kind, tol):
    """llama.cpp's own kernels on the blocks potstill wrote (``quantization: q4_k_m`` ...): the labels
    transformers fp32 gives, with probabilities as close as the bits allow."""
    import gguf

    from potstill.engines.convert import gguf_model

    ref = load_engine("transformers", str(taught_wide), device="cpu")
    e = load_engine("llamacpp", str(taught_wide), device="cpu", quantization=quant)
    try:
        assert e.identity.endswith(f"#llamacpp-{quant}")
        path = gguf_model(str(taught_wide), quant)[0]
        assert kind in {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
        for fmt in (CHAT, SHOTS):
            ids = label_token_ids(ref.tokenizer, fmt, LABELS)
            want, got = ref.score_labels(fmt, MSGS, ids), e.score_labels(fmt, MSGS, ids, batch_size=4)
            assert got.logits.argmax(-1).tolist() == want.logits.argmax(-1).tolist()
            gap = (torch.softmax(want.logits, -1) - torch.softmax(got.logits, -1)).abs().max()
            assert gap < tol, (quant, fmt.kind, float(gap))
    finally:
        e.close()


@needs_server
def test_llamacpp_f32_generates_what_transformers_fp32_generates(taught_bpe, engines):
    ref = load_engine("transformers", str(taught_bpe), device="cpu")
    want = ref.generate(CHAT, MSGS, 12, batch_size=1)
    for bs in (1, 4):
        got = engines["none"].generate(CHAT, MSGS, 12, batch_size=bs)
        assert got.texts == want.texts and got.tokens == want.tokens and got.output_tokens == want.output_tokens
        assert max(abs(a - b) for a, b in zip(got.mean_logprob, want.mean_logprob)) < 5e-3  # float32 sums in another order
    assert engines["none"].identity.endswith("#llamacpp-f32") and engines["int8"].identity.endswith("#llamacpp-q8_0")


@needs_server
def test_generation_keeps_the_batch_width_in_flight_and_answers_in_order(taught_bpe, engines, monkeypatch):
    """Generation sends one request per prompt, up to batch_size at once (a slot freed by a short
    answer takes the next prompt); answers come back in the prompts' order, progress counts each."""
    e = engines["none"]
    many = (MSGS * 3)[:7]
    want = e.generate(CHAT, many, 12, batch_size=1)
    sent, live, most = [], [0], [0]
    lock, together = threading.Lock(), threading.Barrier(3, timeout=30)  # the first 3 must be in flight at once
    real = e.server.post

    def post(path, body):
        with lock:
            sent.append(body["prompt"])
            first = len(sent) <= 3
            live[0] += 1
            most[0] = max(most[0], live[0])
        if first:
            together.wait()
        try:
            return real(path, body)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(e.server, "post", post)
    ticks = []
    got = e.generate(CHAT, many, 12, batch_size=3, progress=ticks.append)
    assert got.texts == want.texts and got.tokens == want.tokens
    assert len(sent) == 7 and all(isinstance(p[0], int) for p in sent)  # one prompt (a list of ids) per request
    assert most[0] == 3 and sum(ticks) == 7


@needs_server
def test_on_text_streams_what_the_whole_request_answers(taught_bpe, engines):
    """``on_text`` (a local teacher's streamed escalation): llama-server's stream gathered into the
    unstreamed answer (text, tokens, mean log-prob, stop string kept), handed on in pieces."""
    e = engines["none"]
    longest = 0
    for msg in MSGS:
        want = e.generate(CHAT, [msg], 12)
        for kw in ({}, {"stop": [want.texts[0][1:3]]} if len(want.texts[0]) >= 3 else {}):
            pieces: list[str] = []
            got = e.generate(CHAT, [msg], 12, on_text=pieces.append, **kw)
            whole = e.generate(CHAT, [msg], 12, **kw)
            assert "".join(pieces) == got.texts[0] == whole.texts[0] and got.tokens == whole.tokens
            assert got.output_tokens == whole.output_tokens
            if not kw:  # past a stop string the unstreamed answer leaves its tokens' probabilities out
                assert got.mean_logprob == whole.mean_logprob
            longest = max(longest, len(pieces))
    assert longest > 1
    with pytest.raises(ValueError, match="one answer"):
        e.generate(CHAT, MSGS[:2], 4, on_text=print)


@needs_server
def test_stop_strings_end_the_text_as_in_transformers_and_sampling_follows_its_seed(taught_bpe, engines):
    e = engines["none"]
    free = e.generate(CHAT, MSGS[:3], 12, batch_size=3)
    stop = [t[1:3] for t in free.texts if len(t) >= 3][:1]
    assert stop, free.texts
    cut = e.generate(CHAT, MSGS[:3], 12, batch_size=3, stop=stop)
    for a, b in zip(free.texts, cut.texts):
        assert b == (a[: a.index(stop[0]) + len(stop[0])] if stop[0] in a else a)
    # (At higher temperatures this random tiny model samples lone UTF-8 continuation bytes, which
    # llama-server's output parser refuses with a 500: an error line, see the next test's kind.)
    s1 = e.generate(CHAT, MSGS[:3], 12, batch_size=3, temperature=0.7, seed=7)
    s2 = e.generate(CHAT, MSGS[:3], 12, batch_size=3, temperature=0.7, seed=7)
    s3 = e.generate(CHAT, MSGS[:3], 12, batch_size=3, temperature=0.7, seed=8)
    assert s1.texts == s2.texts and s1.texts != s3.texts


@needs_server
def test_a_server_that_died_is_one_clear_error(taught_bpe):
    e = load_engine("llamacpp", str(taught_bpe), device="cpu", quantization="int8")
    log = Path(e.server.log.name)
    try:
        e.server.proc.kill()
        e.server.proc.wait()
        with pytest.raises(PotstillError) as err:
            e.generate(CHAT, MSGS[:1], 4)
        assert "\n" not in str(err.value) and "llama-server" in str(err.value)
    finally:
        e.close()
    assert not log.exists()  # the server's log goes with it


@needs_server
def test_closing_the_engine_stops_its_server(taught_bpe):
    code = ("from potstill.engines import load_engine\n"
            f"e = load_engine('llamacpp', {str(taught_bpe)!r}, device='cpu')\n"
            "print(e.server.proc.pid, flush=True)\n")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr[-2000:]
    pid = int(out.stdout.split()[-1])
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower() or \
        Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"


@needs_server
def test_labels_outside_the_top_tokens_are_read_from_the_whole_vocabulary(taught_bpe, engines, monkeypatch):
    from potstill.engines import llamacpp

    e = engines["none"]
    ids = label_token_ids(e.tokenizer, CHAT, LABELS)
    rare = ids + [len(e.tokenizer) - 1]  # a token no prompt here makes likely: never among the first TOP
    whole = e.score_labels(CHAT, MSGS, rare, batch_size=4)
    assert torch.isfinite(whole.logits).all()
    monkeypatch.setattr(llamacpp, "TOP", 1)  # the first ask returns as many tokens as labels: the rare one missing
    asked_again = e.score_labels(CHAT, MSGS, rare, batch_size=4)
    assert torch.allclose(asked_again.logits, whole.logits, atol=1e-5)


@needs_server
def test_token_logprobs_are_transformers_fp32_ones_with_rare_tokens_read_from_the_whole_vocabulary(taught_bpe, engines,
                                                                                                monkeypatch):
    from potstill.engines import llamacpp
    from potstill.models.generation import token_logprobs

    lm = load_lm(str(taught_bpe), device="cpu")
    e = engines["none"]
    prompt = e._ids(CHAT, MSGS[:1])[0]
    answer = e.tokenizer.encode(" the phone rang", add_special_tokens=False) + [len(e.tokenizer) - 1]  # ends rare
    want = token_logprobs(lm, prompt, answer, 3)

    def check(got):
        assert len(got) == len(want)
        for (lp, best), (wlp, wbest) in zip(got, want):
            assert lp == pytest.approx(wlp, abs=2e-3)
            assert [v for _, v in best] == pytest.approx([v for _, v in wbest], abs=2e-3)
            assert [i for i, _ in best] == [i for i, _ in wbest]

    check(e.token_logprobs(prompt, answer, 3))
    monkeypatch.setattr(llamacpp, "TOP", 1)  # most answer tokens now missing from the first ask: asked again whole
    check(e.token_logprobs(prompt, answer, 3))
    assert e.token_logprobs(prompt, [], 3) == []


@needs_server
def test_a_served_llamacpp_student_returns_its_logprobs_through_the_openai_client(taught_bpe, tmp_path):
    """Engine llamacpp answered a client's logprobs with 400 ('gives no token log-probabilities');
    its token_logprobs now give OpenAI's logprobs.content, as transformers' forward would."""
    from potstill.models.generation import token_logprobs
    from potstill.serve.app import build_app
    from potstill.serve.routing import Routing
    from tests.engines.test_selection import _serve_run

    service = _serve_run(tmp_path, taught_bpe, {"engine": "llamacpp", "quantization": "none"})
    try:
        assert service.engine.engine.name == "llamacpp"
        service.routing = Routing(float("-inf"), float("inf"))  # the student answers
        with LiveServer(build_app(service, None)) as live:
            client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
            c = client.chat.completions.create(model="potstill", messages=MSGS[0], logprobs=True, top_logprobs=2)
        content = c.choices[0].logprobs.content
        assert c.model_extra["potstill"]["answered_by"] == "student" and content
        eng = service.engine
        tok = eng.engine.tokenizer
        prompt = tok(eng.fmt.prefix() + eng.fmt.query(tok, MSGS[0]), add_special_tokens=False)["input_ids"]
        ids = tok(eng.fmt.label_text(c.choices[0].message.content), add_special_tokens=False)["input_ids"]
        want = token_logprobs(load_lm(str(taught_bpe), device="cpu"), prompt, ids, 2)
        assert [t.logprob for t in content] == pytest.approx([w for w, _ in want], abs=2e-3)
        assert all(len(t.top_logprobs) == 2 for t in content)
    finally:
        service.close()


@needs_server
def test_a_context_size_in_the_extra_arguments_sets_each_slots_positions_and_serve_routes_by_it(taught_bpe, tmp_path,
                                                                                                monkeypatch):
    """potstill gave each of its 16 slots the model's context up to 8,192 positions: a KV cache of
    6.5 GB at f32 for the 30-layer extraction student. A user's --ctx-size N (shared by the slots, as
    llama-server shares it) replaced potstill's on the command line, but the engine and serve still
    took 8,192 positions a slot, so a prompt past N / 16 failed in llama-server instead of going to
    the teacher. Now the engine's context is N / 16, and serve reads it."""
    from potstill.engines.llamacpp import ARGS_ENV
    from tests.engines.test_selection import _serve_run

    monkeypatch.setenv(ARGS_ENV, "--ctx-size 1024")
    service = _serve_run(tmp_path, taught_bpe, {"engine": "llamacpp", "quantization": "none"})
    try:
        eng = service.engine.engine.fast  # under serve's near-tie re-check
        argv = list(eng.server.proc.args)
        assert argv.count("--ctx-size") == 1 and argv[argv.index("--ctx-size") + 1] == "1024"
        assert eng.context == 64 and service.engine.context == 64
        assert service.engine.over_context(MSGS[0]) is None
        long = [{"role": "user", "content": " ".join(["the team won a match"] * 30)}]
        assert service.engine.over_context(long).endswith("> the student's 64 positions")
        with pytest.raises(PotstillError, match="does not fit engine llamacpp's 64-token context per slot"):
            eng.generate(service.engine.fmt, [long], 4)
    finally:
        service.close()


def test_a_flag_in_the_extra_arguments_replaces_potstills_own():
    from potstill.engines.llamacpp import SERVER_ARGS, server_args

    plain = server_args([])
    assert plain[plain.index("--cache-type-k") + 1] == "f32" and len(plain) == 2 * len(SERVER_ARGS)
    mine = server_args(["--cache-type-k", "f16", "--n-gpu-layers", "99"])
    assert mine.count("--cache-type-k") == 1 and mine[mine.index("--cache-type-k") + 1] == "f16"
    assert mine[-2:] == ["--n-gpu-layers", "99"] and "--cache-type-v" in mine


def test_each_guide_becomes_the_request_field_llama_server_takes():
    """A JSON Schema goes as json_schema; a pattern and a grammar (GBNF or Lark) as a grammar in
    llama.cpp's GBNF, which reads back as the same language with no rule that starts with itself
    (llama.cpp refuses left recursion; repetitions here are written left-recursive); a pattern no
    grammar can say is none (answered unguided, and judged by its format)."""
    import itertools
    import random

    from potstill.engines.llamacpp import llama_guide
    from potstill.models.grammar_constraint import GrammarPrefix, compile_grammar, grammar_guide
    from potstill.models.regex_constraint import regex_guide
    from tests.test_grammar_constraint import JSON_GBNF, _random_grammar
    from tests.test_grammar_lark import SQL_LARK

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert llama_guide(schema) == {"json_schema": schema} and llama_guide(None) == {}
    assert llama_guide(regex_guide("(?=a)b")) == {}
    pattern = llama_guide(regex_guide(r"[A-Z]{2}-[0-9]{2,4}"))["grammar"]
    assert compile_grammar(pattern) and all(GrammarPrefix(pattern).feed(t) == ok for t, ok in
                                            (("AB-12", True), ("AB-12345", False), ("ab", False)))
    rng = random.Random(11)
    words = [""] + ["".join(w) for n in range(1, 5) for w in itertools.product("abc", repeat=n)]
    grammars = [JSON_GBNF, SQL_LARK] + [_random_grammar(rng, rng.randint(1, 3)) for _ in range(60)]
    checked = 0
    for text in grammars:
        try:
            mine = compile_grammar(text)
        except ValueError:
            continue
        theirs = compile_grammar(llama_guide(grammar_guide(text))["grammar"])
        assert all(rhs[:1] != (lhs,) for lhs, rhs in theirs.prods), text
        for w in words:
            a, b = GrammarPrefix(mine), GrammarPrefix(theirs)
            assert (a.feed(w) and a.can_end()) == (b.feed(w) and b.can_end()), (text, w)
        checked += 1
    assert checked > 30


def test_rows_of_one_guide_are_asked_together_with_the_guide_as_given():
    """Grouped by sorted JSON, sent as written: llama.cpp orders an object's properties as its
    schema lists them, and a tools task's student learnt {"name": ..., "arguments": ...}."""
    from potstill.engines.llamacpp import same_guides

    call = {"json_schema": {"type": "object", "properties": {"name": {"const": "f"}, "arguments": {"type": "object"}},
                            "required": ["name", "arguments"]}}
    again = {"json_schema": {"required": ["name", "arguments"], "type": "object",
                             "properties": {"arguments": {"type": "object"}, "name": {"const": "f"}}}}
    groups = same_guides([call, {}, again, {}])
    assert [rows for _, rows in groups] == [[0, 2], [1, 3]]
    assert list(groups[0][0]["json_schema"]["properties"]) == ["name", "arguments"] and groups[1][0] == {}


def test_a_student_taught_sorted_keys_is_guided_in_sorted_order():
    """llama.cpp holds the schema's property order; with task.json_key_order sorted the student
    learnt sorted keys, so its guide lists them sorted (nested objects too)."""
    from potstill.config import ServeConfig, TaskConfig
    from potstill.engines import _guided_schema

    schema = {"type": "object", "properties": {"vendor": {"type": "string"}, "date": {"type": "object", "properties": {
        "y": {"type": "integer"}, "m": {"type": "integer"}}}}, "required": ["vendor", "date"]}
    section = ServeConfig(engine="llamacpp", guided_json=True)
    as_given = _guided_schema(section, TaskConfig(type="extraction", json_schema=schema))
    assert list(as_given["properties"]) == ["vendor", "date"]
    taught = _guided_schema(section, TaskConfig(type="extraction", json_schema=schema, json_key_order="sorted"))
    assert list(taught["properties"]) == ["date", "vendor"] and list(taught["properties"]["date"]["properties"]) == ["m", "y"]
    assert taught == schema and taught["required"] == ["vendor", "date"]


@needs_server
def test_a_local_teacher_on_llamacpp_writes_the_schemas_key_order(taught_bpe, tmp_path):
    """teacher.structured_outputs with a local teacher on engine llamacpp: the teacher grouped its
    requests by the schema's sorted JSON and decoded under that JSON read back, so llama.cpp wrote
    the keys alphabetically ("n" before "topic") and a student learning the teacher's order learnt
    that. Now the schema goes as the request gave it."""
    import json
    import re

    from potstill.config import GenerateConfig, TaskConfig, TeacherConfig
    from potstill.generate import label_records
    from potstill.ledger import Ledger
    from potstill.records import Record
    from potstill.tasks import get_task
    from potstill.teachers import get_teacher

    schema = {"type": "object", "properties": {"topic": {"enum": LABELS}, "n": {"type": "integer", "minimum": 0,
                                                                                "maximum": 9}},
              "required": ["topic", "n"], "additionalProperties": False}
    task = get_task(TaskConfig(type="extraction", instruction="classify the text", json_schema=schema))
    teacher = get_teacher(TeacherConfig(type="local", model=str(taught_bpe), engine="llamacpp", quantization="none",
                                        max_tokens=120, structured_outputs="on"), task)
    try:
        with Ledger(tmp_path / "calls.sqlite") as ledger:
            records, _ = label_records([Record(id=str(i), messages=m) for i, m in enumerate(MSGS[1:4])], task,
                                       teacher, ledger, "generate", GenerateConfig())
    finally:
        teacher.close()
    # The random-ish taught model pads with white space and may reach the budget: its first key tells.
    assert all(re.match(r'\{\s*"topic"', r.output) for r in records), [r.output for r in records]
    whole = [json.loads(r.output) for r in records if r.valid]
    assert whole and all(list(w) == ["topic", "n"] for w in whole), [r.output for r in records]


@needs_server
def test_llamacpp_decodes_under_a_schema_a_pattern_and_a_grammar(taught_bpe, engines):
    """llama.cpp's own grammar sampler holds each row to its guide, in one batch with an unguided
    row; without guides none of the answers fits them. (Inputs whose free answers are valid UTF-8:
    this llama-server refuses an answer holding a stray byte, see ``LlamaServer.post``.)"""
    import json

    import jsonschema
    import regex

    from potstill.models.grammar_constraint import derives, grammar_guide
    from potstill.models.regex_constraint import regex_guide

    schema = {"type": "object", "properties": {"topic": {"enum": LABELS}, "n": {"type": "integer", "minimum": 0,
                                                                                "maximum": 9}},
              "required": ["topic", "n"], "additionalProperties": False}
    code = r"[A-Z]{2}-[0-9]{2,4}"
    sql = 'start: "SELECT " NAME (", " NAME)~0..2 " FROM " NAME\nNAME: /(id|name|price)/'
    msgs = MSGS[1:5]
    engine = engines["none"]
    free = engine.generate(CHAT, msgs, 80, batch_size=4)
    got = engine.generate(CHAT, msgs, 80, batch_size=4,
                          json_schemas=[schema, regex_guide(code), grammar_guide(sql), None])
    jsonschema.validate(json.loads(got.texts[0]), schema)
    # The keys in the schema's order, not sorted ("n" first), which the student never learnt.
    assert list(json.loads(got.texts[0])) == ["topic", "n"], got.texts[0]
    assert regex.fullmatch(code, got.texts[1]) and derives(sql, got.texts[2]), got.texts
    assert got.texts[3] == free.texts[3]
    assert not any(regex.fullmatch(code, t) or derives(sql, t) for t in free.texts)


@needs_server
def test_an_answer_llama_server_cannot_return_is_lost_alone_not_its_batch(taught_bpe, engines):
    """This llama-server answers a 500 for a generation that is not valid UTF-8 (its output parser);
    that answer comes back empty, which every task's validation refuses, and the rest of its batch
    as they are alone. Which answers hold a stray byte is read from transformers' own."""
    ref = load_engine("transformers", str(taught_bpe), device="cpu")
    want = ref.generate(CHAT, MSGS, 20, batch_size=1)
    stray = ["\ufffd" in t for t in want.texts]
    assert any(stray) and not all(stray), want.texts  # the taught model writes one here (MSGS[0])
    got = engines["none"].generate(CHAT, MSGS, 20, batch_size=4)
    for text, own, bad in zip(got.texts, want.texts, stray):
        assert text == ("" if bad else own), (text, own)
