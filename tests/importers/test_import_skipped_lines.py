"""`potstill import` on the lines of a real log a text student cannot learn from, skipped and
counted rather than refusing the whole file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from potstill.errors import PotstillError
from potstill.importers import import_traffic
from potstill.records import read_records

USER = {"role": "user", "content": "Describe it."}
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "A cat."}, "finish_reason": "stop"}]}
RESPONSE = {"id": "resp_1", "object": "response", "model": "gpt-4.1", "status": "completed",
            "output": [{"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": "A cat.", "annotations": []}]}]}


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _asked(*parts: dict) -> dict:
    return {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                                         *parts]}]}


def test_requests_with_image_or_audio_parts_are_skipped_and_counted(tmp_path, capsys):
    """A multimodal app's log holds image and audio requests on any day; one of them refused the whole
    file ('a part of type 'image_url'; potstill distils text'), and the Responses one in the server's
    words ('this server answers text'). A text student never sees the image, so the line is skipped
    and counted; a part of a type nobody sends is still one line naming it."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    src = jsonl(tmp_path / "log.jsonl", [
        {"request": {"model": "gpt-4o", "messages": [USER]}, "response": COMPLETION},
        {"request": _asked(image), "response": COMPLETION},
        {"request": _asked(audio), "response": COMPLETION},
        {"request": {"model": "gpt-4.1", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "https://example.com/cat.png"}]}]}, "response": RESPONSE},
        {"request": {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "text", "text": "What is this?"}]}]},
         "response": {"type": "message", "model": "claude-sonnet-4", "stop_reason": "end_turn",
                      "content": [{"type": "text", "text": "A cat."}]}},
    ])
    assert import_traffic(src, tmp_path / "o.jsonl") == 1
    assert [r.messages for r in read_records(tmp_path / "o.jsonl")] == [[USER]]
    assert (f"import: 4 line(s) skipped, its request holds image, audio or file parts, which a text student "
            f"cannot read (first at {src}:2)") in capsys.readouterr().err
    odd = jsonl(tmp_path / "odd.jsonl", [{"request": _asked({"type": "sticker", "id": 1}), "response": COMPLETION}])
    with pytest.raises(PotstillError, match=r"odd.jsonl:1: messages.1.content.1: a part of type 'sticker'"):
        import_traffic(odd, tmp_path / "o.jsonl")


def test_an_audio_answer_is_its_transcript_and_an_empty_answer_is_skipped(tmp_path, capsys):
    """gpt-4o-audio-preview answers with content null and its words in audio.transcript; an answer of
    content "" says nothing. Both were imported as the answer "" and counted as written (curate set them
    aside later as empty, a replay teacher replayed ""): the audio answer is now its transcript, the
    empty one skipped and counted."""
    def said(message: dict) -> dict:
        return {"request": {"model": "gpt-4o", "messages": [USER]},
                "response": {**COMPLETION, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}}

    audio = {"role": "assistant", "content": None,
             "audio": {"id": "audio_1", "data": "UklGRg==", "expires_at": 1750000000, "transcript": "A cat, asleep."}}
    src = jsonl(tmp_path / "log.jsonl", [said(audio), said({"role": "assistant", "content": ""}),
                                         said({"role": "assistant", "content": "A cat."}),
                                         {"prompt": "Describe it.", "completion": "  "}])
    assert import_traffic(src, tmp_path / "o.jsonl") == 2
    assert [r.output for r in read_records(tmp_path / "o.jsonl")] == ["A cat, asleep.", "A cat."]
    assert f"import: 2 line(s) skipped, its answer is empty (first at {src}:2)" in capsys.readouterr().err
