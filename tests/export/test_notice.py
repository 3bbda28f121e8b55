"""The model exports carry a NOTICE: the base model and its licence as its own files name it (with
its licence files copied, its NOTICE carried), and the teachers whose outputs trained it with their
terms, as the model card gives them."""

from __future__ import annotations

import shutil
from pathlib import Path

from potstill.config import Config, TaskConfig
from potstill.export import export
from potstill.quickstart import GEMMA_TERMS
from potstill.records import Record, write_jsonl

LABELS = ["sports", "tech"]


def _run(tmp_path: Path, tiny_model: Path, name: str, readme: str, files: dict[str, str], teacher: dict) -> Config:
    """A run whose student (a full fine-tune, the base's weights here) came from a local base folder
    holding ``readme`` and licence ``files``, trained on records written by ``teacher``."""
    base = tmp_path / name
    shutil.copytree(tiny_model, base)
    (base / "README.md").write_text(readme)
    for fname, text in files.items():
        (base / fname).write_text(text)
    run = tmp_path / f"run-{name}"
    shutil.copytree(tiny_model, run / "student")
    write_jsonl(run / "train.jsonl", [Record(id=f"r{i}", messages=[{"role": "user", "content": f"text {i}"}],
                                             output=LABELS[i % 2], valid=True, meta={"teacher": teacher["model"]})
                                      for i in range(4)])
    return Config(run_dir=str(run), task=TaskConfig(labels=LABELS), student={"model": str(base)}, teacher=teacher)


def test_an_export_carries_the_base_s_licence_and_the_teacher_s_terms(tiny_model, tmp_path):
    """An export wrote weights and a card but no NOTICE: Gemma's terms ask a Model Derivative for a
    Notice file and a copy of the terms, Apache-2.0 that the base's NOTICE be carried."""
    gemma = _run(tmp_path, tiny_model, "gemma-like", "---\nlicense: gemma\n---\n# A Gemma-like base\n", {},
                 {"type": "local", "model": "gemma-teacher", "terms": GEMMA_TERMS})
    out = Path(gemma.run_dir) / "export" / "hf"
    assert out / "NOTICE" in export(gemma, "hf")
    text = (out / "NOTICE").read_text()
    assert "Base model: `gemma-like`" in text and str(tmp_path) not in text  # a local folder by its name only
    assert "Its licence: gemma (Gemma Terms of Use, https://ai.google.dev/gemma/terms)" in text
    assert f"- `gemma-teacher`: {GEMMA_TERMS}" in text
    assert "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms" in text

    apache = _run(tmp_path, tiny_model, "apache-like", "---\nlicense: apache-2.0\n---\n",
                  {"LICENSE": "Apache License\nVersion 2.0, January 2004\n", "NOTICE": "Tiny base\nCopyright 2024 Tiny Org\n"},
                  {"type": "openai", "model": "gpt-4o-mini", "terms": "OpenAI's business terms"})
    out = Path(apache.run_dir) / "export" / "hf"
    written = export(apache, "hf")
    assert {out / "NOTICE", out / "LICENSE"} <= set(written)
    text = (out / "NOTICE").read_text()
    assert "Its licence: apache-2.0 (Apache License 2.0, https://www.apache.org/licenses/LICENSE-2.0)" in text
    assert "Its licence files, copied beside this NOTICE as shipped with it: LICENSE" in text
    assert text.rstrip().endswith("Tiny base\nCopyright 2024 Tiny Org")  # the base's NOTICE, carried
    assert "- `gpt-4o-mini`: OpenAI's business terms" in text and "Gemma is provided" not in text
    assert (out / "LICENSE").read_text() == "Apache License\nVersion 2.0, January 2004\n"


def test_a_base_whose_licence_is_not_on_this_machine_is_said_to_be_unknown(tiny_model, tmp_path):
    cfg = _run(tmp_path, tiny_model, "plain", "# no front matter\n", {}, {"type": "local", "model": "t"})
    export(cfg, "hf")
    text = (Path(cfg.run_dir) / "export" / "hf" / "NOTICE").read_text()
    assert "Its licence: not found among its files on this machine" in text and "- `t`: not given" in text
