"""Format hf writes a model card from the run's own records, and ``--push-to-hub`` uploads the
export through huggingface_hub to a hub served on 127.0.0.1 (create, preupload, commit)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from potstill.export import MARK
from tests.helpers.cli import run_main
from tests.test_pipeline import LABELS, write_inputs

TOKEN = "hf_writewritewritewrite"


@pytest.fixture(scope="module")
def evaluated(tiny_model, tiny_model_b, tmp_path_factory):
    """A project whose run went through every stage (`potstill run`), on tiny models."""
    root = tmp_path_factory.mktemp("card")
    write_inputs(root / "inputs.jsonl")
    (root / "potstill.yaml").write_text(yaml.safe_dump({
        "run_dir": "run", "task": {"type": "classification", "labels": LABELS, "instruction": "classify the text"},
        "data": {"inputs": "inputs.jsonl", "source": "made up for a test", "license": "CC0-1.0"},
        "teacher": {"type": "local", "model": str(tiny_model_b), "prompt_format": "chat", "batch_size": 4,
                    "price": {"usd_per_hour": 1.0}, "terms": "the teacher's test terms"},
        "student": {"model": str(tiny_model), "max_length": 64}, "pilot": {"n": 6}, "curate": {"val": 4, "test": 8},
        "train": {"lr": 0.01, "epochs": 1, "batch_size": 4},
        "evaluate": {"latency_samples": 3, "batch_size": 4}, "report": {"bootstrap_samples": 100}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        import sys

        mp.setattr(sys, "argv", ["potstill", "run", "-c", "potstill.yaml"])
        from potstill.cli import main

        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == 0
    return root


def _export(monkeypatch, capsys, root: Path, *extra: str) -> tuple[int, list[str], str]:
    monkeypatch.chdir(root)
    code, err = run_main(monkeypatch, capsys, "export", "-c", "potstill.yaml", "--format", "hf", *extra)
    return code, err, (root / "run" / "export" / "hf" / "README.md").read_text() if code == 0 else ""


def _front_matter(card: str) -> dict:
    _, head, _ = card.split("---\n", 2)
    return yaml.safe_load(head)


def test_the_card_reports_the_run_s_own_records(evaluated, monkeypatch, capsys):
    code, _, card = _export(monkeypatch, capsys, evaluated)
    assert code == 0
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers" and "distillation" in meta["tags"] and "base_model" not in meta
    run = evaluated / "run"
    ev, tr = json.loads((run / "eval.json").read_text()), json.loads((run / "train.json").read_text())
    s = ev["models"]["student"]
    assert f"| student | {s['gold_metric']:.1%} | {s['agreement_with_teacher']:.1%} | " in card
    assert f"Verdict: **{ev['verdict']['decision']}**: {ev['verdict']['reason']}." in card
    assert f"{tr['steps']} steps over {tr['examples']} examples" in card and f"Val loss {tr['val_loss']:.4f}" in card
    assert "its terms of use: the teacher's test terms" in card and "licence: CC0-1.0" in card
    assert "- Labels: `" + "`, `".join(LABELS) + "`" in card


def test_a_student_trained_after_the_evaluation_is_not_carded_with_its_numbers(evaluated, monkeypatch, capsys,
                                                                                  tmp_path):
    """After `potstill train` made a new student, the card showed the earlier student's evaluation and
    verdict (eval.json still there) beside the new train.json, and a push published them as this
    student's. The card says it is not evaluated since, and export says so."""
    root = tmp_path / "project"
    shutil.copytree(evaluated, root)
    monkeypatch.chdir(root)
    assert run_main(monkeypatch, capsys, "train", "-c", "potstill.yaml", "--train.epochs", "2")[0] == 0
    code, err, card = _export(monkeypatch, capsys, root)
    assert code == 0
    assert "Not evaluated since the last training: eval.json is of another student than the one in run/student" in card
    assert "Verdict:" not in card and "| student |" not in card
    assert any("the model card leaves out the evaluation" in line for line in err), err
    monkeypatch.chdir(root)
    assert run_main(monkeypatch, capsys, "evaluate", "-c", "potstill.yaml")[0] == 0
    code, err, card = _export(monkeypatch, capsys, root)
    assert code == 0 and "Verdict: **" in card and "Not evaluated since" not in card


def test_a_challenger_promoted_by_redistill_is_carded_with_its_own_training(evaluated, monkeypatch, capsys,
                                                                            tmp_path):
    """After `potstill redistill` promoted a challenger (RUN/student -> students/<id>), the card showed
    the old champion's RUN/train.json and no served traffic beside the challenger's weights. It reads
    the round's RUN/redistill/<id>/, names the served traffic, and leaves training out where the round
    is gone."""
    from potstill.records import Record, read_records, write_jsonl
    from potstill.redistill.promote import switch

    root = tmp_path / "project"
    shutil.copytree(evaluated, root)
    run, cid = root / "run", "c0ffee123456"
    shutil.copytree(run / "student", run / "students" / cid)
    work = run / "redistill" / cid
    work.mkdir(parents=True)
    old = read_records(run / "train.jsonl")
    served = [Record(messages=[{"role": "user", "content": f"served request {i}"}], output="sport",
                     meta={"source": "serve", "answered_by": "teacher", "teacher": "served-teacher-model"})
              for i in range(3)]
    write_jsonl(work / "challenger_train.jsonl", old + served)
    (work / "train.json").write_text(json.dumps({"method": "full", "objective": "sft", "steps": 987,
                                                 "examples": len(old) + 3, "tokens": 4321, "val_loss": 1.2345}))
    switch(run, run / "students" / cid)
    code, err, card = _export(monkeypatch, capsys, root)
    assert code == 0, err
    assert f"987 steps over {len(old) + 3} examples, 4321 tokens" in card and "Val loss 1.2345" in card
    assert (f"Source `served traffic`: 3 of the {len(old) + 3} records it was trained on are requests sent to "
            "`potstill serve`") in card and "`served-teacher-model` (3)" in card
    (work / "train.json").unlink()
    code, err, card = _export(monkeypatch, capsys, root)
    assert code == 0, err
    assert "steps over" not in card and "Source `" not in card
    assert card.count(f"- Left out: the student in run/student was promoted by `potstill redistill` (students/{cid})") == 2
    assert any("the model card leaves out the training and its data" in line for line in err), err


def test_the_card_names_who_wrote_the_answers_and_inputs_with_their_own_terms(evaluated, monkeypatch, capsys,
                                                                              tmp_path):
    """The card named the configured teacher (changed since, with its own terms, or card.json's
    terms of the old one) as the data's writer; imported gpt-4o traffic was "labelled by people" and
    synthetic inputs the user's own. It names each record's writer with the terms known for it."""
    from potstill.records import read_records, write_jsonl

    root = tmp_path / "project"
    shutil.copytree(evaluated, root)
    run = root / "run"
    rs = read_records(run / "train.jsonl")
    teacher = rs[0].meta["teacher"]
    for r in rs[:4]:
        r.meta.update(source="real", teacher="gpt-4o-2024-08-06", format="openai-log")
    for r in rs[4:7]:
        r.meta["synthesis"] = {"teacher": "gpt-4o-mini"}
    write_jsonl(run / "train.jsonl", rs)
    cfg = yaml.safe_load((root / "potstill.yaml").read_text())
    cfg["teacher"].update(model=str(tmp_path / "teacherB"), terms="TERMS-OF-B")
    (root / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    code, err, card = _export(monkeypatch, capsys, root)
    assert code == 0, err
    written = next(line for line in card.splitlines() if line.startswith("- Answers of the"))
    assert f"({len(rs) - 4}, generated; its terms of use: the teacher's test terms)" in written
    assert "`gpt-4o-2024-08-06` (4, imported traffic; its terms of use: not given)" in written
    assert "TERMS-OF-B" not in written
    assert "- The configured teacher `teacherB` wrote none of them" in card
    assert "written by `potstill synthesize`: `gpt-4o-mini` (3; its terms of use: not given)" in card
    assert "TERMS-OF-B" not in card.replace("its terms of use: TERMS-OF-B. Check", "")
    assert published_name_ok(card, teacher)


def published_name_ok(card: str, teacher: str) -> bool:
    return teacher not in card  # a local path is published by its folder name only


def test_the_card_s_example_prompts_the_student_as_training_did(evaluated, monkeypatch, capsys):
    from transformers import AutoTokenizer

    from potstill.models.prompting import PromptFormat
    from potstill.train.batching import prompt_ids

    code, _, card = _export(monkeypatch, capsys, evaluated)
    code_block = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    text = "the team won the match in the last minute"
    code_block = code_block.replace('text = "..."', f"text = {text!r}")
    scope: dict = {}
    exec(code_block, scope)  # the card's own example, run as a reader would (it prints the answer)
    tok = AutoTokenizer.from_pretrained(evaluated / "run" / "export" / "hf")
    want = prompt_ids(tok, PromptFormat(kind="chat", instruction="classify the text"),
                      [{"role": "user", "content": text}])
    ids = scope["ids"]
    assert (ids if isinstance(ids, list) else ids[0].tolist()) == want
    assert capsys.readouterr().out.strip()  # it answered something


def _hub(state: dict) -> FastAPI:
    app = FastAPI()

    @app.post("/api/repos/create")
    async def create(request: Request):
        state["auth"].append(request.headers.get("authorization"))
        if state.get("refuse"):
            return Response(status_code=state["refuse"])
        body = await request.json()
        state["created"] = body
        return JSONResponse({"url": f"{str(request.base_url).rstrip('/')}/{body['organization']}/{body['name']}"})

    @app.post("/api/models/{owner}/{name}/preupload/{rev}")
    async def preupload(owner: str, name: str, rev: str, request: Request):
        files = (await request.json())["files"]
        return JSONResponse({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in files]})

    @app.post("/api/models/{owner}/{name}/commit/{rev}")
    async def commit(owner: str, name: str, rev: str, request: Request):
        state["auth"].append(request.headers.get("authorization"))
        lines = [json.loads(x) for x in (await request.body()).decode().splitlines() if x.strip()]
        state["commits"].append({"repo": f"{owner}/{name}", "rev": rev, "summary": lines[0]["value"]["summary"],
                                 "files": {x["value"]["path"]: base64.b64decode(x["value"]["content"])
                                           for x in lines[1:] if x["key"] == "file"}})
        return JSONResponse({"commitUrl": f"{str(request.base_url).rstrip('/')}/{owner}/{name}/commit/{'c' * 40}",
                             "commitOid": "c" * 40})

    @app.post("/api/validate-yaml")
    async def validate(request: Request):
        """The hub checks a README's metadata before the commit: here, that it is a YAML mapping."""
        body = await request.json()
        state["validated"] = body["repoType"]
        try:
            ok = isinstance(_front_matter(body["content"]), dict)
        except (ValueError, yaml.YAMLError):
            ok = False
        return JSONResponse({"errors": [] if ok else [{"message": "not YAML"}], "warnings": []},
                            status_code=200 if ok else 400)

    @app.api_route("/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE"])
    async def other(rest: str, request: Request):
        state["unexpected"].append((request.method, "/" + rest))
        return Response(status_code=404)

    return app


def test_push_to_hub_uploads_the_export_as_one_commit(evaluated, hub, monkeypatch, capsys):
    code, err, card = _export(monkeypatch, capsys, evaluated, "--push-to-hub", "org/news-student", "--private")
    assert code == 0, err
    assert hub["created"] == {"name": "news-student", "organization": "org", "visibility": "private"}
    assert hub["validated"] == "model"
    assert hub["auth"] and set(hub["auth"]) == {f"Bearer {TOKEN}"}
    [commit] = hub["commits"]
    out = evaluated / "run" / "export" / "hf"
    assert commit["repo"] == "org/news-student" and commit["rev"] == "main"
    assert commit["files"] == {p.name: p.read_bytes() for p in out.iterdir() if p.name != MARK}
    assert "model.safetensors" in commit["files"] and "README.md" in commit["files"]
    assert card.startswith("---") and "# org/news-student" in card
    assert "AutoModelForCausalLM.from_pretrained('org/news-student')" in card
    assert any(line.startswith("export: pushed ") and line.endswith(f"/org/news-student/commit/{'c' * 40}")
               for line in err), err
    assert TOKEN not in "\n".join(err) + card


def test_a_push_s_public_commit_message_names_no_local_path(evaluated, hub, monkeypatch, capsys, tmp_path):
    """With the config named by an absolute path, the commit message (public on the hub) read
    "potstill export of /home/<user>/.../run"; it names the run folder only."""
    root = tmp_path / "alice-home" / "project"
    shutil.copytree(evaluated, root)
    monkeypatch.chdir(tmp_path)
    code, err = run_main(monkeypatch, capsys, "export", "-c", str(root / "potstill.yaml"), "--format", "hf",
                         "--push-to-hub", "org/news-student")
    assert code == 0, err
    [commit] = hub["commits"]
    assert commit["summary"] == "potstill export of run"
    assert str(tmp_path) not in json.dumps(commit, default=repr)


@pytest.mark.parametrize("args, why", [
    (["--format", "openai-jsonl", "--push-to-hub", "org/x"], "error: --push-to-hub uploads a model (format hf, "
     "gguf, lora or gguf-lora), not the openai-jsonl export; run `potstill export --format hf --push-to-hub org/x`"),
    (["--format", "hf", "--push-to-hub", "news-student"], "error: --push-to-hub 'news-student': name a model "
     "repository as OWNER/NAME (letters, digits, '-', '_', '.')"),
])
def test_a_push_that_cannot_work_is_refused_before_exporting(evaluated, hub, monkeypatch, capsys, tmp_path, args, why):
    monkeypatch.chdir(evaluated)
    out = tmp_path / "out"
    code, err = run_main(monkeypatch, capsys, "export", "-c", "potstill.yaml", "--out", str(out), *args)
    assert (code, err) == (2, [why]) and not out.exists() and hub["auth"] == []


def test_a_hub_refusal_is_one_line_and_keeps_the_export(evaluated, hub, monkeypatch, capsys, tmp_path):
    hub["refuse"] = 401
    monkeypatch.chdir(evaluated)
    out = tmp_path / "out"
    code, err = run_main(monkeypatch, capsys, "export", "-c", "potstill.yaml", "--format", "hf", "--out", str(out),
                         "--push-to-hub", "org/x")
    assert code == 2 and [x for x in err if x.startswith("error")] == [err[-1]]
    assert err[-1] == (f"error: --push-to-hub org/x: the hub refused the token, or there is none: set HF_TOKEN (a write "
                       f"token) or run `huggingface-cli login` (the export is in {out})")
    assert (out / "model.safetensors").exists() and hub["commits"] == []


def test_offline_a_push_is_one_line(evaluated, hub, monkeypatch, capsys, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(evaluated)
    out = tmp_path / "out"
    code, err = run_main(monkeypatch, capsys, "export", "-c", "potstill.yaml", "--format", "hf", "--out", str(out),
                         "--push-to-hub", "org/x")
    assert code == 2 and [x for x in err if x.startswith("error")] == [err[-1]] and hub["auth"] == []
    assert err[-1] == f"error: --push-to-hub org/x: HF_HUB_OFFLINE is set; pushing needs the hub (the export is in {out})"
    shutil.rmtree(out)


def test_a_student_without_a_chat_template_gets_its_plain_text_prompt(evaluated, monkeypatch, capsys, tmp_path):
    from transformers import AutoTokenizer

    from potstill.config import load_config
    from potstill.export.model_card import model_card
    from potstill.models.prompting import PromptFormat
    from potstill.train.batching import prompt_ids

    code, _, _ = _export(monkeypatch, capsys, evaluated)
    plain = tmp_path / "plain"
    shutil.copytree(evaluated / "run" / "export" / "hf", plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    conf = json.loads((plain / "tokenizer_config.json").read_text())
    conf.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(conf))
    tok = AutoTokenizer.from_pretrained(plain)
    assert not getattr(tok, "chat_template", None)
    card = model_card(load_config(evaluated / "potstill.yaml"), evaluated / "run", "x", str(plain), chat=False)
    text = "a vote in the election"
    scope: dict = {}
    exec(re.search(r"```python\n(.*?)```", card, re.S).group(1).replace('text = "..."', f"text = {text!r}"), scope)
    fmt = PromptFormat(kind="completion", instruction="classify the text")
    assert scope["ids"][0].tolist() == prompt_ids(tok, fmt, [{"role": "user", "content": text}])


def test_a_gguf_export_is_pushed_with_a_card_naming_its_files(bpe_model, hub, monkeypatch, capsys, tmp_path):
    from potstill.config import Config, TaskConfig
    from potstill.export import export

    shutil.copytree(bpe_model, tmp_path / "run" / "student")
    cfg = Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS, instruction="classify the text"))
    export(cfg, "gguf", push_to="org/news-gguf")
    out = tmp_path / "run" / "export" / "gguf"
    [commit] = hub["commits"]
    assert commit["files"] == {p.name: p.read_bytes() for p in out.iterdir() if p.name != MARK}
    card = commit["files"]["README.md"].decode()
    meta = _front_matter(card)
    assert "gguf" in meta["tags"] and "library_name" not in meta
    assert "huggingface-cli download org/news-gguf --local-dir student" in card
    assert "ollama create student -f student/Modelfile.q8_0" in card and "llama-server -m student/student-q8_0.gguf" in card
    assert {"Modelfile.q8_0", "student-q8_0.gguf", "student-f16.gguf"} <= set(commit["files"])
    assert "No train.json in the run." in card and "Not evaluated: no eval.json in the run" in card


def test_export_help_names_every_format_push_to_hub_uploads(monkeypatch, capsys):
    """Found by a review: `export --help` said --push-to-hub was for formats hf and gguf, though
    lora and gguf-lora are pushed too (README; ``CARDS``)."""
    import sys

    from potstill.cli import main
    from potstill.export import CARDS

    monkeypatch.setattr(sys, "argv", ["potstill", "export", "--help"])
    monkeypatch.setenv("COLUMNS", "400")  # one option a line
    with pytest.raises(SystemExit):
        main()
    [push] = [line for line in capsys.readouterr().out.splitlines() if line.strip("│ ").startswith("--push-to-hub")]
    assert f"Formats {', '.join(CARDS[:-1])} and {CARDS[-1]}: upload" in push, push


def test_private_without_push_to_hub_is_refused(tmp_path, monkeypatch, capsys):
    """Found by a review: `export --private` without --push-to-hub exported and exited 0, the flag
    ignored without a word; it is refused before anything is written, as redistill --force without
    --rollback is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("run_dir: run\ntask:\n  labels: [a, b]\n")
    assert run_main(monkeypatch, capsys, "export", "-c", "c.yaml", "--private") == (
        2, ["error: --private makes the repository --push-to-hub creates private: give --push-to-hub OWNER/NAME "
            "with it, or leave --private out"])
    assert not (tmp_path / "run").exists()
