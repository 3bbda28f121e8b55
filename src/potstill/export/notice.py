"""NOTICE for an exported student: its base model with that model's licence, and the models whose
outputs it was trained on with their terms of use.

A distilled student is a derivative of its base and, under some teachers' terms, of its teacher:
Gemma's terms (``quickstart.GEMMA_TERMS``) ask a Model Derivative to be distributed with a copy of
the terms and a Notice file, Llama's licence asks for "Built with Llama" and its notice text, and
Apache-2.0 asks that the base's own NOTICE be carried. The export knows only what the run and the
base's files say: the licence its ``README.md`` front matter names (``license:``, the hub's), the
licence files shipped beside its weights (copied into the export), and the teachers' terms as the
model card gathers them (``model_card.writers``, ``teacher_terms``). No licence text is written
that the export does not have; one it cannot find is said to be missing, with where to look.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import yaml

from potstill.config import Config
from potstill.export import published_name

# Files a model ships its licence in: LICENSE, LICENSE.txt, LICENCE.md, NOTICE, USE_POLICY.md,
# GEMMA_TERMS.html (the bundled Gemma package's), COPYING.
LICENCE_FILE = re.compile(r"^(LICEN[CS]E|NOTICE|USE_POLICY|COPYING)([._-].*)?$|TERMS", re.I)
# Licences named by the hub's ``license:`` ids, with where the terms are published. Gemma's link and
# Notice line are the ones its terms give (quickstart.GEMMA_TERMS).
LICENCES = {"apache-2.0": ("Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0"),
            "gemma": ("Gemma Terms of Use", "https://ai.google.dev/gemma/terms")}
GEMMA_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"


def base_folder(spec: str) -> Path | None:
    """Where the base model's files are on this machine: its folder, a bundled model's package, or a
    hub model's cached snapshot (never downloaded here); None where none is found."""
    from potstill.models.loading import BUNDLED

    if spec.startswith("bundled:"):
        found = importlib.util.find_spec(BUNDLED[spec[8:]][0]) if spec[8:] in BUNDLED else None
        return Path(list(found.submodule_search_locations)[0]) if found and found.submodule_search_locations else None
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf" or "/" not in spec:
        return None
    try:
        from huggingface_hub import snapshot_download

        repo, _, rev = spec.partition("@")
        return Path(snapshot_download(repo, revision=rev or None, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or no hub id: the licence is then said to be unknown
        return None


def base_licence(spec: str, folder: Path | None) -> tuple[str | None, list[Path]]:
    """The base's licence as its files name it (README.md's ``license:``, a bundled model's own), and
    its licence files."""
    from potstill.models.loading import BUNDLED

    licence = BUNDLED[spec[8:]][2] if spec.startswith("bundled:") and spec[8:] in BUNDLED else None
    files = sorted(p for p in folder.iterdir() if p.is_file() and LICENCE_FILE.search(p.name)) if folder else []
    readme = folder / "README.md" if folder else None
    if readme and readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            try:
                head = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                head = {}
            if isinstance(head, dict) and head.get("license"):
                licence = str(head["license"])
                if licence == "other" and head.get("license_name"):  # the hub's id for a licence of its own
                    licence = str(head["license_name"])
                if head.get("license_link"):
                    licence += f" ({head['license_link']})"
    return licence, files


def _named(licence: str) -> str:
    name, link = LICENCES.get(licence.lower(), (None, None))
    return f"{licence} ({name}, {link})" if name else licence


def notice(cfg: Config, run: Path, folder: Path) -> list[Path]:
    """Write ``folder/NOTICE`` and copy the base's licence files beside it; the paths written."""
    from potstill.export.model_card import promoted_round, teacher_terms, writers

    spec = cfg.student.model
    base = published_name(spec)
    src = base_folder(spec)
    licence, files = base_licence(spec, src)
    theirs = next((f for f in files if f.name.upper() == "NOTICE"), None)
    copied = [f for f in files if f is not theirs and not (folder / f.name).exists()]
    lines = [f"This model is `{base}` fine-tuned by potstill on the outputs of the models named below "
             "(distillation): a derivative of each, under its licence or terms.", "",
             f"Base model: `{base}`"]
    if licence:
        lines.append(f"Its licence: {_named(licence)}")
    else:
        where = f"https://huggingface.co/{spec.split('@')[0]}" if "/" in spec and not Path(spec).expanduser().exists() \
            else "where the base model came from"
        lines.append("Its licence: not found among its files on this machine (README.md's license:, a LICENSE file); "
                     f"check it at {where} and add what it asks for")
    if copied:
        lines.append("Its licence files, copied beside this NOTICE as shipped with it: " + ", ".join(f.name for f in copied))
    _, card, records, left_out = promoted_round(run)
    terms = teacher_terms(cfg, card)
    _, answers, _, inputs = writers(None if left_out else records)
    models = list(dict.fromkeys([*(m for m, _ in answers), *inputs])) or [cfg.teacher.model or cfg.teacher.type]
    lines += ["", "Models whose outputs it was trained on, with their terms of use as the run recorded them:",
              *[f"- `{published_name(m)}`: {terms(m)}" for m in models]]
    said = [licence or "", *(terms(m) for m in models)]
    extra = []
    if any(s.lower().startswith("gemma") or "ai.google.dev/gemma/terms" in s for s in said):
        extra.append(GEMMA_NOTICE)
    if any(s.lower().startswith("llama") for s in said):
        extra.append("Built with Llama")
    if extra:
        lines += ["", *extra]
    if theirs is not None:  # Apache-2.0, section 4(d): a derivative carries the attribution notices of the base's NOTICE
        lines += ["", "The base model's NOTICE, as shipped with it:", "",
                  theirs.read_text(encoding="utf-8", errors="replace").rstrip()]
    (folder / "NOTICE").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for f in copied:
        shutil.copyfile(f, folder / f.name)
    return [folder / "NOTICE", *(folder / f.name for f in copied)]


__all__ = ["notice", "base_licence", "base_folder"]
