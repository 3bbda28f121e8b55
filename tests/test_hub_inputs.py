"""``data.inputs: hf://datasets/OWNER/NAME[@REV]/PATH`` read through huggingface_hub from a small hub
on 127.0.0.1 (the resolve endpoint ``hf_hub_download`` asks), and ``data.columns``."""

from __future__ import annotations

import hashlib
import json

import pytest
from fastapi import FastAPI, Request, Response

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.records import read_numbered
from potstill.stage import by_content, load_inputs
from tests.helpers.cli import run_main
from tests.helpers.hub import use_hub
from tests.helpers.live_server import LiveServer

CSV_A = "text,label_text,label\nthe team won the match,sport,3\nnew phone software,tech,4\n"
CSV_B = "text,label_text,label\na late goal,sport,3\n"
TOKEN = "hf_secretsecretsecretsecret"


def _hub(state: dict) -> FastAPI:
    """Repos of commits of files; ``main`` names a commit. Errors as the hub sends them (X-Error-Code)."""
    app = FastAPI()

    @app.api_route("/datasets/{owner}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve(owner: str, name: str, revision: str, path: str, request: Request) -> Response:
        state["requests"].append((request.method, request.url.path, request.headers.get("authorization")))
        repo = state["repos"].get(f"{owner}/{name}")
        if repo is None:
            return Response(status_code=404, headers={"X-Error-Code": "RepoNotFound"})
        if repo.get("gated") and request.headers.get("authorization") != f"Bearer {TOKEN}-accepted":
            return Response(status_code=403, headers={"X-Error-Code": "GatedRepo"})
        commit = repo["refs"].get(revision, revision)
        if commit not in repo["commits"]:
            return Response(status_code=404, headers={"X-Error-Code": "RevisionNotFound"})
        body = repo["commits"][commit].get(path)
        if body is None:
            return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound"})
        body = body.encode()
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                   "Content-Length": str(len(body))}
        return Response(b"" if request.method == "HEAD" else body, headers=headers, media_type="text/csv")

    return app


@pytest.fixture
def hub(monkeypatch, tmp_path):
    a, b = "a" * 40, "b" * 40
    state = {"requests": [], "repos": {
        "org/news": {"refs": {"main": a}, "commits": {a: {"data/train.csv": CSV_A}, b: {"data/train.csv": CSV_B}}},
        "org/gated": {"gated": True, "refs": {"main": a}, "commits": {a: {"train.csv": CSV_A}}}}}
    with LiveServer(_hub(state)) as live:
        use_hub(monkeypatch, live.url, tmp_path / "hf")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield state


def _cfg(inputs: str, **data) -> Config:
    return Config.model_validate({"task": {"labels": ["sport", "tech"]}, "data": {"inputs": inputs, **data},
                                  "teacher": {"type": "replay", "model": "x"}})


def test_a_hub_csv_is_fetched_once_then_read_from_the_cache(hub, monkeypatch):
    from huggingface_hub import constants

    cfg = _cfg("hf://datasets/org/news/data/train.csv", columns={"input": "text", "label": "label_text"})
    records = load_inputs(cfg)
    assert [(r.text, r.label) for r in records] == [("the team won the match", "sport"), ("new phone software", "tech")]
    assert [m for m, _, _ in hub["requests"]] == ["HEAD", "GET"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: the cache alone, not a request
    assert [r.text for r in load_inputs(cfg)] == ["the team won the match", "new phone software"]
    assert len(hub["requests"]) == 2


def test_a_pinned_revision_is_read_at_that_commit(hub):
    records = read_numbered(f"hf://datasets/org/news@{'b' * 40}/data/train.csv", {"input": "text"})
    assert [r.text for _, r in records] == ["a late goal"]
    assert all(path.endswith(f"/resolve/{'b' * 40}/data/train.csv") for _, path, _ in hub["requests"])


def test_a_new_commit_on_main_changes_the_fingerprint(hub):
    """By the content fetched: a stage that read main before reruns once main moves."""
    before = by_content("data.inputs", "hf://datasets/org/news/data/train.csv")
    assert before == {"file_sha256": hashlib.sha256(CSV_A.encode()).hexdigest()}
    hub["repos"]["org/news"]["refs"]["main"] = "b" * 40
    after = by_content("data.inputs", "hf://datasets/org/news/data/train.csv")
    assert after == {"file_sha256": hashlib.sha256(CSV_B.encode()).hexdigest()}


def test_the_card_names_the_commit_read(hub):
    from potstill.hub_files import provenance

    assert provenance("hf://datasets/org/news/data/train.csv") == {"hub_commit": "a" * 40}
    assert provenance("inputs.jsonl") == {}


@pytest.mark.parametrize("url, why", [
    ("hf://datasets/org/nothing/train.csv", "hf://datasets/org/nothing/train.csv: no dataset org/nothing on the hub "
                                            "(or it is private: set HF_TOKEN)"),
    ("hf://datasets/org/news/test.csv", "hf://datasets/org/news/test.csv: the dataset org/news has no file test.csv"),
    (f"hf://datasets/org/news@{'c' * 40}/data/train.csv",
     f"hf://datasets/org/news@{'c' * 40}/data/train.csv: the dataset org/news has no revision {'c' * 40}"),
    ("hf://datasets/org/gated/train.csv", "hf://datasets/org/gated/train.csv: the dataset is gated: accept its terms "
                                          "on the hub and set HF_TOKEN (or run `huggingface-cli login`)"),
    ("hf://datasets/news/train.csv", "hf://datasets/news/train.csv: a Hugging Face file is written "
                                     "hf://datasets/OWNER/NAME/PATH (or hf://datasets/OWNER/NAME@REVISION/PATH), e.g. "
                                     "hf://datasets/SetFit/bbc-news/train.jsonl"),
])
def test_what_the_hub_refuses_is_one_line_with_no_token(hub, monkeypatch, url, why):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(PotstillError) as e:
        read_numbered(url)
    assert str(e.value) == why and TOKEN not in str(e.value)
    if hub["requests"]:  # the user's token went to the hub (and nowhere else)
        assert hub["requests"][0][2] == f"Bearer {TOKEN}"


def test_offline_with_nothing_cached_is_one_line_from_the_cli(hub, monkeypatch, capsys, tmp_path, tiny_model):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("task:\n  labels: [sport, tech]\ndata:\n  inputs: hf://datasets/org/news/data/"
                                     "train.csv\n  columns: {input: text, label: label_text}\nteacher:\n  type: replay\n"
                                     "  model: x\n  replay_path: r.jsonl\nrun_dir: run\n"
                                     f"student:\n  model: {tiny_model}\n")
    (tmp_path / "r.jsonl").write_text("")
    code, err = run_main(monkeypatch, capsys, "generate", "-c", "c.yaml")
    assert code == 2 and err == ["error: hf://datasets/org/news/data/train.csv: not in the Hugging Face cache, and the "
                                 "hub cannot be reached (offline, or HF_HUB_OFFLINE is set); fetch it once online, or "
                                 "point to a local copy"], err
    assert hub["requests"] == []


def test_a_config_keeps_a_hub_file_as_written(tmp_path):
    from potstill.config import load_config, relative_paths

    (tmp_path / "c.yaml").write_text("task:\n  labels: [sport, tech]\ndata:\n  inputs: hf://datasets/org/news/x.csv\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.data.inputs == "hf://datasets/org/news/x.csv"
    assert relative_paths(cfg, tmp_path / "run")["data"]["inputs"] == "hf://datasets/org/news/x.csv"


def test_columns_read_only_the_named_columns(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("text,category,notes\nthe match,sport,seen twice\n")
    [(line, r)] = read_numbered(path, {"input": "text", "label": "category"})
    assert (line, r.text, r.label, r.meta) == (2, "the match", "sport", {})  # notes: not a field, not read


def test_a_column_no_row_has_is_one_line(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("text,category\nthe match,sport\n")
    with pytest.raises(PotstillError, match=r"in.csv: no row has a column 'label_text' \(data.columns.label\); its "
                                            r"columns: category, text$"):
        read_numbered(path, {"input": "text", "label": "label_text"})
    path.write_text("text,category\nthe match,sport\n,tech\n")  # a row with no text
    with pytest.raises(PotstillError, match=r"in.csv:3: no 'text' \(data.columns.input\) in this row; it has: category$"):
        read_numbered(path, {"input": "text", "label": "category"})


def test_columns_name_one_text_field():
    with pytest.raises(ValueError, match="name a column for input .* or for messages .*, not both"):
        _cfg("in.jsonl", columns={"input": "text", "messages": "chat"})
    with pytest.raises(ValueError, match="Input should be 'input', 'messages'"):
        _cfg("in.jsonl", columns={"text": "input"})


def test_a_mapped_csv_column_of_json_text_is_read_as_its_field(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('chat,gold\n"[{""role"": ""user"", ""content"": ""hi""}]",5.0\n')
    [(_, r)] = read_numbered(path, {"messages": "chat", "label": "gold"})
    assert (r.messages, r.label) == ([{"role": "user", "content": "hi"}], "5")


def test_columns_map_a_jsonl_chat_too(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"conversation": [{"role": "user", "content": "hi"}], "gold": "tech"}) + "\n")
    [(_, r)] = read_numbered(path, {"messages": "conversation", "label": "gold"})
    assert (r.text, r.label) == ("hi", "tech")


def test_class_indices_are_named_by_label_names(hub):
    """A hub dataset's ClassLabel column holds indices; data.label_names names them."""
    cfg = _cfg("hf://datasets/org/news/data/train.csv", columns={"input": "text", "label": "label"},
               label_names=["world", "business", "science", "sport", "tech"])
    assert [r.label for r in load_inputs(cfg)] == ["sport", "tech"]
    bad = _cfg("hf://datasets/org/news/data/train.csv", columns={"input": "text", "label": "label"},
               label_names=["sport", "tech"])
    with pytest.raises(PotstillError, match=r"^hf://datasets/org/news/data/train.csv:2: label '3' is not a class index "
                                            r"into data.label_names \(0 to 1\)$"):
        load_inputs(bad)
