"""Formats ``lora`` and ``gguf-lora``: a LoRA student as its adapter, not merged into its base.

Many narrow students on one base is how distilled tasks are served at volume: vLLM applies any
number of adapters to one base (``--enable-lora``), llama.cpp takes ``--lora`` files and Ollama an
``ADAPTER`` line. ``hf`` and ``gguf`` merge the adapter, which serves one student fastest; these two
keep it apart.

- ``lora``: the PEFT adapter as trained (``adapter_config.json``, ``adapter_model.safetensors``)
  with the student's tokenizer and chat template, which vLLM, PEFT and TGI read. Its base is named
  as published (hub id and the commit it was trained on) when it is one; a base that exists only on
  this machine (a local folder, a GGUF file, ``bundled:``) or that ``student.num_layers`` cut is
  written beside it as ``base/``, the model the adapter was trained on, and named by that path.
- ``gguf-lora``: ``adapter-f16.gguf``, written by llama.cpp's own ``convert_lora_to_gguf.py``, and
  the base it applies to in every ``export.gguf_types`` (``base-<type>.gguf``, the mixes included,
  made as the ``gguf`` format makes them), with a Modelfile each (``FROM`` the base, ``ADAPTER``
  the adapter). The base is always written: an adapter only fits the very weights it was trained
  on, and a base GGUF pulled elsewhere (Ollama's library) may be another revision or conversion.

llama.cpp scales an adapter by ``alpha / rank``, as PEFT's LoRA does; PEFT's rank-stabilised
(``use_rslora``) and DoRA adapters, which potstill does not train, are refused for ``gguf-lora``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from potstill import child, leftovers
from potstill.config import Config
from potstill.errors import PotstillError
from potstill.export import published_name, register
from potstill.progress import bar, say, size_text
from potstill.records import atomic_dir, write_json

ADAPTER_GGUF = "adapter-f16.gguf"


def adapter_config(run: Path) -> dict[str, Any]:
    """RUN/student's ``adapter_config.json``; one line where the student is not a LoRA adapter."""
    student = run / "student"
    path = student / "adapter_config.json"
    if not path.is_file():
        if (student / "config.json").is_file():
            raise PotstillError(f"{student} is a full fine-tune (train.method full): it has no adapter to export; "
                                "export it whole with --format hf or --format gguf")
        raise PotstillError(f"{student} has no trained student: run `potstill train` first")
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise PotstillError(f"{path} is not valid JSON ({e})") from None
    if conf.get("peft_type") != "LORA":
        raise PotstillError(f"{path}: a {conf.get('peft_type')} adapter; the lora formats export LoRA adapters")
    if not conf.get("base_model_name_or_path"):
        raise PotstillError(f"{path} names no base model (base_model_name_or_path)")
    return conf


def base_spec(conf: dict[str, Any]) -> str:
    """The base as ``load_lm`` reads it: a path, or a hub id pinned to the revision trained on."""
    name, rev = conf["base_model_name_or_path"], conf.get("revision")
    return f"{name}@{rev}" if rev and not Path(name).exists() else name


def published_base(cfg: Config, conf: dict[str, Any]) -> str | None:
    """The hub id (``org/name@commit``) anyone can load the base by, or None where only this run has it."""
    from potstill.stage import _hub_id

    spec = base_spec(conf)
    return spec if _hub_id(spec) and cfg.student.num_layers is None else None


def _write_base(cfg: Config, run: Path, conf: dict[str, Any], out: Path, dtype: str) -> Any:
    """The base the adapter was trained on (cut to ``student.num_layers``) as a Hugging Face folder; its
    tokenizer (the student's) back."""
    import torch
    from transformers import AutoTokenizer

    from potstill.export.merged import save_merged
    from potstill.models.loading import load_lm

    lm = load_lm(base_spec(conf), device="cpu", dtype=torch.float32, num_layers=cfg.student.num_layers)
    tokenizer = AutoTokenizer.from_pretrained(run / "student")
    save_merged(lm.model, tokenizer, out, dtype)
    return tokenizer


def _copy_adapter(run: Path, tmp: Path, base_name: str, revision: str | None) -> list[str]:
    """RUN/student's adapter and tokenizer files into ``tmp`` (not the sidecars of the merged student,
    which describe other weights, nor potstill's note of the base's cut: the base named is the cut one),
    its config naming ``base_name``."""
    from potstill.models.loading import ADAPTER_LAYERS, SIDECARS

    copied = []
    for f in sorted((run / "student").iterdir()):
        if f.is_file() and f.name not in (*SIDECARS, ADAPTER_LAYERS):
            shutil.copy2(f, tmp / f.name)
            copied.append(f.name)
    conf = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
    conf["base_model_name_or_path"], conf["revision"] = base_name, revision
    (tmp / "adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return copied


@register("lora")
def export_lora(cfg: Config, run: Path, out_dir: Path) -> list[Path]:
    from potstill.models.loading import hub_split

    conf = adapter_config(run)
    published = published_base(cfg, conf)
    with atomic_dir(out_dir) as tmp:
        if published:
            repo, rev = hub_split(published)
            _copy_adapter(run, tmp, repo, rev)
            where = f"base {published}"
        else:
            _write_base(cfg, run, conf, tmp / "base", cfg.export.dtype)
            # Named by the path it will have: PEFT's AutoPeftModel loads the base from here.
            _copy_adapter(run, tmp, str((out_dir / "base").resolve()), None)
            where = f"its base in {out_dir / 'base'} ({cfg.export.dtype}" + (
                f", cut to {cfg.student.num_layers} layers)" if cfg.student.num_layers else ")")
        rank = conf.get("r")
        write_json(tmp / "export.json", {"source": published_name(str(run / "student")), "base": published or "base/",
                                         "trained_on": published_name(base_spec(conf)), "rank": rank,
                                         "alpha": conf.get("lora_alpha"),
                                         "target_modules": conf.get("target_modules")})
    size = sum(f.stat().st_size for f in out_dir.glob("adapter_model.*"))
    say(f"export: LoRA adapter (rank {rank}, {size_text(size)}) in {out_dir}, {where}")
    return sorted(out_dir.iterdir())


def _lora_converter(adapter: Path, base: Path, path: Path) -> None:
    """llama.cpp's ``convert_lora_to_gguf.py`` in a child process: ``adapter`` (a PEFT folder) to ``path``
    in f16, the architecture read from the Hugging Face folder ``base`` (no hub download).

    The converter writes the adapter config's ``base_model_name_or_path`` (and PEFT's README's
    ``base_model``) into the file's metadata (``general.base_model.0.repo_url``, ``general.tags``) and
    has no ``--metadata``: it reads a copy of the adapter whose base is named as an export names it
    (``published_name``) and without that README, or a local base's absolute path went into every
    published file."""
    from potstill.export import llama_convert
    from potstill.export.gguf_file import _failure

    with leftovers.temp_dir("potstill-lora-src") as tmp:
        src = Path(tmp) / adapter.name
        shutil.copytree(adapter, src)
        conf = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
        conf["base_model_name_or_path"] = published_name(str(conf.get("base_model_name_or_path") or ""))
        (src / "adapter_config.json").write_text(json.dumps(conf, indent=2), encoding="utf-8")
        (src / "README.md").unlink(missing_ok=True)  # PEFT's card: its base_model is the same path
        cmd = [sys.executable, str(Path(llama_convert.__file__)), str(llama_convert.llama_cpp_dir()), "--lora",
               str(src), "--base", str(base), "--outfile", str(path), "--outtype", "f16"]
        r = child.run(cmd)
    if r.returncode != 0 or not path.is_file():
        path.unlink(missing_ok=True)
        raise PotstillError(f"GGUF LoRA export: {_failure(r.stderr)}")


def _adapter_summary(path: Path) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = reader.fields
    kind = fields["general.type"].contents() if "general.type" in fields else None
    if kind != "adapter":  # a base model file here would be applied as a full model, silently
        raise PotstillError(f"GGUF LoRA export: {path.name} is of type {kind!r}, not an adapter")
    pairs = sum(1 for t in reader.tensors if t.name.endswith(".lora_a"))
    return {"file": path.name, "type": "f16", "bytes": path.stat().st_size, "lora_pairs": pairs,
            "alpha": float(fields["adapter.lora.alpha"].contents())}


@register("gguf-lora")
def export_gguf_lora(cfg: Config, run: Path, out_dir: Path) -> list[Path]:
    import gguf

    from potstill.export.gguf_file import _importance, _meta, convert, output_tokens
    from potstill.export.gguf_quant import MIXES
    from potstill.export.llama_convert import llama_cpp_dir
    from potstill.export.modelfile import render_modelfile
    from potstill.tasks import get_task

    conf = adapter_config(run)
    for key, what in (("use_rslora", "rank-stabilised (use_rslora)"), ("use_dora", "DoRA (use_dora)")):
        if conf.get(key):
            raise PotstillError(f"GGUF LoRA export: a {what} adapter; llama.cpp applies plain LoRA (alpha / rank): "
                                "export the merged student with --format gguf")
    task = get_task(cfg.task)
    llama_cpp_dir()  # a missing converter is one line before any loading
    summaries = []
    with leftovers.temp_dir("potstill-gguf-lora") as src:
        base_dir = Path(src) / "base"
        tokenizer = _write_base(cfg, run, conf, base_dir, "f32")  # f32: the file types' rounding is the only one
        importance, measured = _importance(cfg, run, base_dir, task)
        meta = {**_meta(cfg, run), "general.name": f"base of the potstill student {Path(run).resolve().name!r}"}
        f32, tensors = Path(src) / "f32.gguf", 0
        if any(q in MIXES for q in cfg.export.gguf_types):
            from potstill.export.gguf_file import _converter

            _converter(base_dir, f32, "f32", meta)
            tensors = len(gguf.GGUFReader(f32).tensors)
        total = 1 + sum(tensors if q in MIXES else 1 for q in cfg.export.gguf_types)
        with atomic_dir(out_dir) as tmp, bar("export gguf-lora", total) as advance:
            t0 = time.perf_counter()
            _lora_converter(run / "student", base_dir, tmp / ADAPTER_GGUF)
            adapter = {**_adapter_summary(tmp / ADAPTER_GGUF), "seconds": round(time.perf_counter() - t0, 2)}
            advance(1)
            for qtype in cfg.export.gguf_types:
                t0 = time.perf_counter()
                mix = qtype in MIXES
                s = convert(base_dir, tmp / f"base-{qtype}.gguf", qtype, meta, f32=f32, importance=importance,
                            advance=advance if mix else None)
                s["seconds"] = round(time.perf_counter() - t0, 2)
                (tmp / f"Modelfile.{qtype}").write_text(render_modelfile(
                    f"./base-{qtype}.gguf", tokenizer, cfg.task.instruction, output_tokens(task, tokenizer),
                    one_line=task.name in ("classification", "extraction", "tools"), warn=not summaries,
                    adapter=f"./{ADAPTER_GGUF}", parallel=cfg.task.parallel_tool_calls), encoding="utf-8")
                summaries.append(s)
                if not mix:
                    advance(1)
            write_json(tmp / "export.json", {"source": published_name(str(run / "student")),
                                             "trained_on": published_name(base_spec(conf)),
                                             "converter": "llama.cpp convert_lora_to_gguf.py + convert_hf_to_gguf.py",
                                             "adapter": adapter, "base_files": summaries, "imatrix": measured})
    q = cfg.export.gguf_types[-1]
    say(f"export: {ADAPTER_GGUF} ({adapter['lora_pairs']} LoRA pairs, {size_text(adapter['bytes'])}) and its base "
        + ", ".join(f"{s['file']} ({size_text(s['bytes'])})" for s in summaries)
        + f"; ollama create NAME -f {out_dir}/Modelfile.{q}, or llama-server -m {out_dir}/base-{q}.gguf "
          f"--lora {out_dir}/{ADAPTER_GGUF}")
    return sorted(out_dir.iterdir())
