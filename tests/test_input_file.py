"""``data.inputs`` read in passes (``potstill.inputs.InputFile``): `potstill generate` reads the file
again at each of its passes rather than holding every parsed input (1.5 KB each at 40 words).
Each pass makes the records the whole read made, the checks refuse what it refused in the order it
did, and a file changed between passes stops the run rather than pairing one input's answer with
another's record."""

from __future__ import annotations

import json
import os

import pytest

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.inputs import InputFile, load_inputs


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _cfg(path, **data):
    return Config(data={"inputs": str(path), **data},
                  task={"type": "classification", "labels": ["sports", "tech"], "instruction": "Topic?"})


ROWS = [
    {"id": "a", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the match"}],
     "label": "0"},
    {"input": "new phone", "label": "1"},
    {"input": "the vote", "label": "2"},
    "",  # a blank line: no record
    {"input": "the final", "label": "0"},
    {"input": "past the limit", "label": "0"},
]


def test_each_pass_makes_the_records_of_a_whole_read(tmp_path, capsys):
    """Class indices named, gold respelled ("Sports" -> "sports") or set aside (not a label), a system
    message moved to meta.system, data.limit applied; the records past it as a whole read made them."""
    cfg = _cfg(_write(tmp_path / "in.jsonl", ROWS), label_names=["Sports", "tech", "politics"], limit=4,
               max_unknown_gold=0.5)
    f = InputFile(cfg)
    out = " ".join(capsys.readouterr().err.split())  # say() writes to stderr, wrapped
    assert "1 of 5 records have a system or developer message" in out and "1 of 4 gold labels" in out
    held = load_inputs(cfg)
    want = [r.model_dump() for r in held]
    assert [(r.id, r.label, r.meta) for r in held] == [
        ("a", "sports", {"system": "be brief"}), (held[1].id, "tech", {}),
        (held[2].id, None, {"unknown_label": "politics"}), (held[3].id, "sports", {})]
    assert len(f) == 4 and [r.model_dump() for r in f] == want
    assert [r.model_dump() for r in f] == want  # a second pass: the file read again
    # Read on from where the last read left off, backwards from the start again.
    assert [f[i].model_dump() for i in (1, 3, 0, -1)] == [want[1], want[3], want[0], want[3]]
    assert [r.model_dump() for r in f[1:3]] == want[1:3]
    with pytest.raises(IndexError):
        f[4]
    # Past the limit: named, but its gold is not the run's (load_inputs never checked it).
    assert [(r.text, r.label) for r in f.beyond()] == [("past the limit", "Sports")]
    assert list(InputFile(_cfg(tmp_path / "in.jsonl", label_names=["Sports", "tech", "politics"],
                               max_unknown_gold=0.5)).beyond()) == []


@pytest.mark.parametrize("rows,data,error", [
    # Every line is read before an id is refused: the malformed line is the first error, as before.
    ([{"id": "x", "input": "one"}, {"id": "x", "input": "two"}, "{oops"], {}, r"in.jsonl:3: malformed JSON"),
    # An id clash comes before a class index that names no label, whichever line comes first.
    ([{"input": "one", "label": "7"}, {"id": "x", "input": "two"}, {"id": "x", "input": "three"}],
     {"label_names": ["sports", "tech"]}, r"in.jsonl:3: id 'x' is also line 2's"),
    ([{"input": "one", "label": "7"}, {"input": "two", "label": "cooking"}], {"label_names": ["sports", "tech"]},
     r"in.jsonl:1: label '7' is not a class index"),
    ([{"input": "one", "label": "cooking"}, {"input": "two", "label": "sports"}], {},
     r"1 of 2 gold labels \(50%\) are not in task.labels .*first at .*in.jsonl:1: 'cooking'"),
    # The gold checked is that of the inputs within data.limit only.
    ([{"input": "one", "label": "sports"}, {"input": "two", "label": "cooking"}], {"limit": 1}, None),
    (["", "  "], {}, r"in.jsonl: no records"),
])
def test_the_first_pass_refuses_what_a_whole_read_refused_in_its_order(tmp_path, rows, data, error):
    cfg = _cfg(_write(tmp_path / "in.jsonl", rows), **data)
    if error is None:
        assert len(InputFile(cfg)) == 1
        return
    with pytest.raises(PotstillError, match=error):
        InputFile(cfg)
    with pytest.raises(PotstillError, match=error):
        load_inputs(cfg)


def test_a_file_changed_between_passes_stops_the_next_one(tmp_path):
    path = _write(tmp_path / "in.jsonl", [{"input": f"item {i}"} for i in range(5)])
    f = InputFile(_cfg(path))
    assert [r.text for r in f] == [f"item {i}" for i in range(5)] and f[2].text == "item 2"
    with open(path, "a") as g:  # a line appended: the records the first pass counted are all there
        g.write(json.dumps({"input": "item 5"}) + "\n")
    for read in (lambda: list(f), lambda: f[0]):  # a new pass; f[3] may go on with lines read before
        with pytest.raises(PotstillError, match=r"in.jsonl: changed while this run read it"):
            read()
    # A line blanked in place, the file given back its size and time: its ctime still tells.
    path = _write(tmp_path / "in2.jsonl", [{"input": f"item {i}"} for i in range(5)])
    f = InputFile(_cfg(path))
    st = os.stat(path)
    path.write_text(path.read_text().replace('{"input": "item 3"}', " " * 19))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    with pytest.raises(PotstillError, match=r"in2.jsonl: changed while this run read it"):
        list(f)
