"""`potstill export`: the curated dataset and the student in formats other tools read.

Formats register by name in ``FORMATS``; each is ``fn(cfg, run_dir, out_dir) -> written paths``:

- ``openai-jsonl``: train/val as OpenAI fine-tuning JSONL, checked by ``check.check_openai_jsonl``.
- ``hf``: the student as plain Hugging Face weights (a LoRA adapter merged into its base).
- ``gguf``: the student as GGUF files (f16, q8_0) for llama.cpp / Ollama, with a Modelfile each.
- ``lora`` / ``gguf-lora``: a LoRA student's adapter, unmerged (PEFT for vLLM; GGUF for llama.cpp
  and Ollama, with its base), see ``lora``.

A new format registers itself the same way, without touching the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.progress import say
from potstill.records import finishing

Exporter = Callable[[Config, Path, Path], list[Path]]
FORMATS: dict[str, Exporter] = {}


def register(name: str) -> Callable[[Exporter], Exporter]:
    def deco(fn: Exporter) -> Exporter:
        FORMATS[name] = fn
        return fn

    return deco


def published_name(spec: str) -> str:
    """A model or file as an export names it: a local folder or file by its name only (an export is
    meant to be published, and the exporter's absolute path names their home directory); a hub id
    (``org/name``) or ``bundled:`` as it is."""
    if Path(spec).is_absolute() or Path(spec).exists() or spec.startswith(("./", "../", "~")):
        return Path(spec).name
    return spec


def _load_builtins() -> None:
    import potstill.export.gguf_file  # noqa: F401  (each registers itself)
    import potstill.export.lora  # noqa: F401
    import potstill.export.merged  # noqa: F401
    import potstill.export.openai_jsonl  # noqa: F401


CARDS = ("hf", "gguf", "lora", "gguf-lora")  # the formats of a model, which get a model card (README.md)
MARK = ".potstill-export"  # in every folder export wrote: its format, so a later export may replace it


def export(cfg: Config, fmt: str, out_dir: str | Path | None = None, push_to: str | None = None,
           private: bool = False) -> list[Path]:
    """Write ``fmt`` for the run in ``cfg.run_dir`` under ``out_dir`` (default: ``RUN/export/FMT``).

    The weights formats replace their folder whole, so a given ``out_dir`` must be new, empty, or
    one this format wrote before (``MARK``): ``--out .`` must never delete a project. A symlink is
    written through: the folder it names gets the export, held to the same rule, and the link stays.
    The model formats (``CARDS``) also write README.md, the model card (``model_card``), and NOTICE,
    the base model's licence and the teachers' terms, with the base's licence files (``notice``); ``push_to``
    (OWNER/NAME) then uploads the folder to that Hugging Face model repository (``push``)."""
    _load_builtins()
    if fmt not in FORMATS:
        raise PotstillError(f"unknown export format {fmt!r}; available: {', '.join(sorted(FORMATS))}")
    if private and push_to is None:
        # As redistill refuses --force without --rollback: a flag that would do nothing is a mistake to
        # say, not to ignore (the user may believe a repository was made private).
        raise PotstillError("--private makes the repository --push-to-hub creates private: give --push-to-hub "
                            "OWNER/NAME with it, or leave --private out")
    run = Path(cfg.run_dir)
    if push_to is not None:
        if fmt not in CARDS:
            raise PotstillError(f"--push-to-hub uploads a model (format {', '.join(CARDS[:-1])} or {CARDS[-1]}), not "
                                f"the {fmt} export; run `potstill export --format hf --push-to-hub {push_to}`")
        from potstill.export.push import check_repo_id

        check_repo_id(push_to)
        if fmt == "lora":
            from potstill.export.lora import adapter_config, published_base

            if published_base(cfg, adapter_config(run)) is None:
                raise PotstillError(f"--push-to-hub {push_to}: the adapter's base exists only in this run (a local "
                                    "model, a GGUF file, bundled:, or cut by student.num_layers), which no one who "
                                    "pulls the adapter has; push --format gguf-lora (it carries the base) or hf")
    out = Path(out_dir) if out_dir is not None else run / "export" / fmt
    if out.is_symlink():
        # Written through, as any write to a link is: the weights formats replace their folder whole,
        # which replaced the link itself with a new folder beside it and left the one it names as it was.
        try:
            out = out.resolve()
        except (OSError, RuntimeError) as e:  # a loop of links
            raise PotstillError(f"{out} is a symlink that does not resolve ({e}); name a folder for the {fmt} export") from None
    if out_dir is not None:
        _check_out(out, fmt)

    notices: list[str] = []  # NOTICE and the base's licence files, by name

    def finish(folder: Path) -> None:
        """The model card and the mark into ``folder``: the format's temp folder, before it is renamed
        to ``out``. Written after the rename, an export stopped between the two left weights with no
        mark, which the same command then refused as "files potstill did not write"."""
        if fmt in CARDS:
            from potstill.export.model_card import model_card, promoted_round, stale_evaluation

            left_out = promoted_round(run)[3]
            if left_out:
                say(f"[yellow]export: the model card leaves out the training and its data: {left_out}[/yellow]")

            stale = stale_evaluation(run) if (run / "eval.json").exists() else None
            if stale:
                say(f"[yellow]export: the model card leaves out the evaluation: {stale}[/yellow]")
            chat = fmt in ("hf", "lora") and (
                (folder / "chat_template.jinja").is_file()
                or "chat_template" in (folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            card = model_card(cfg, run, push_to or f"The student of {run.resolve().name}",
                              push_to or str(out.resolve()), chat, fmt, pushed=bool(push_to))
            (folder / "README.md").write_text(card, encoding="utf-8")
            from potstill.export.notice import notice

            notices[:] = [p.name for p in notice(cfg, run, folder)]
        (folder / MARK).write_text(fmt + "\n", encoding="utf-8")

    with finishing(out, finish) as finished:
        written = FORMATS[fmt](cfg, run, out)
    if not finished:  # a format that writes its files into the folder rather than replacing it (openai-jsonl)
        finish(out)
    # What the user asked for, and the card; the mark is export's own.
    written = sorted({*(p for p in written if p.name != MARK), *([out / "README.md"] if fmt in CARDS else []),
                      *(out / n for n in notices)})
    if push_to is not None:
        from potstill.export.push import push

        # The commit message is public on the hub: the run folder's name, not its path, which names
        # the exporter's home directory whenever the config was named by an absolute path.
        url = push(out, push_to, private, f"potstill export of {run.resolve().name}", [MARK])
        say(f"export: pushed {out} to {push_to}: {url}")
    return written


def _check_out(out: Path, fmt: str) -> None:
    if out.exists() and not out.is_dir():
        raise PotstillError(f"--out {out} is a file; name a folder for the {fmt} export")
    if not out.is_dir() or not any(out.iterdir()):
        return
    mark = out / MARK
    made = mark.read_text(encoding="utf-8").strip() if mark.is_file() else None
    if made != fmt:
        what = f"a potstill {made} export" if made else "files potstill did not write"
        raise PotstillError(f"--out {out} holds {what}; the {fmt} export writes a folder of its own: "
                            f"name a new or empty folder")


__all__ = ["FORMATS", "export", "register"]
