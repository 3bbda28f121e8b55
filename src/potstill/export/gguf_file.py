"""Format ``gguf``: the student as GGUF files for llama.cpp and Ollama, plus a Modelfile for each.

Written by llama.cpp's own converter (``convert_hf_to_gguf.py``, see ``llama_convert``), so every
architecture it supports exports: Llama (SmolLM2), Qwen2/3, Mistral, Gemma 3, and Phi-3 or
Gemma 1/2 students that ship the SentencePiece ``tokenizer.model`` their converters read. The
student goes in as plain Hugging Face weights (a LoRA adapter merged into its base first) and
comes out as ``student-f16.gguf`` (2-D weights f16, norms f32) and ``student-q8_0.gguf`` (blocks
of 32 weights sharing one f16 scale: 34 bytes per 32 weights = 8.5 bits), as the converter writes
them, and, on request, as the 4-6 bit mixes Ollama users pull (``q4_k_m``, ``q5_k_m``, ``q6_k``,
``q4_0``), which llama.cpp makes with its C++ ``llama-quantize``: potstill quantizes the converter's
f32 file itself (``gguf_quant``), one f32 conversion shared by every mix. potstill adds the
``general.*`` metadata (name, licence, description, base model) and the Modelfile.

This replaced potstill's own GGUFWriter code, which covered llama-architecture students only.
On SmolLM2-135M both gave the same logits through transformers (largest difference from the f32
model: f16 0.031, q8_0 0.969, for each writer) and files within 64 bytes of each other; the old
writer was faster (f16 21 s against 102 s, q8_0 7 s against 23 s, much of it the child process's
imports, on a loaded 2-core machine), which does not pay for keeping a second writer.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from potstill import child, leftovers
from potstill.config import Config
from potstill.errors import PotstillError
from potstill.export import published_name, register
from potstill.export import imatrix, llama_convert
from potstill.export.gguf_quant import MIXES, requantize
from potstill.export.llama_convert import llama_cpp_dir
from potstill.progress import bar, say, size_text
from potstill.records import atomic_dir, write_json

QTYPES = ("f16", "q8_0", *MIXES)  # what `potstill export gguf` writes
ENGINE_QTYPES = (*QTYPES, "f32")  # and engine llamacpp (f32: fp32's arithmetic, for exact generations)


def _failure(stderr: str) -> str:
    """The converter's traceback as one line a user can act on."""
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "no output")
    if "tokenizer.model" in last:
        return ("this architecture's converter reads a SentencePiece tokenizer.model, which the student does not "
                f"have ({last[:200]})")
    if "pre-tokenizer was not recognized" in last:
        return ("llama.cpp's converter does not know the student's tokenizer: its pre-tokenizer is not in llama.cpp's "
                "list, nor a byte-level one potstill names from tokenizer.json (gpt-2, smollm); GGUF needs a tokenizer "
                "llama.cpp supports (a word-level one never is)")
    if "not supported" in last:
        return f"llama.cpp's converter does not support this student ({last[:200]})"
    return last[:300]


def convert(hf_dir: Path, path: Path, qtype: str, meta: dict[str, Any] | None = None,
            f32: Path | None = None, importance: dict[str, Any] | None = None,
            advance: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Write the Hugging Face model in ``hf_dir`` to the GGUF file ``path`` as ``qtype``; a summary back.

    ``meta``: general.* keys (name, license, description, base_models) written over the converter's own.
    A quantized mix (``MIXES``) is made from an f32 conversion: ``f32``, where given, is where that
    file is kept (and read if it is already there) so that several mixes convert once; ``importance``
    (``imatrix.measure``, by Hugging Face module name) weights its k-quant blocks' rounding;
    ``advance(1)`` is told of each tensor a mix writes."""
    import gguf

    if qtype not in ENGINE_QTYPES:
        raise PotstillError(f"unknown GGUF type {qtype!r}; available: {', '.join(QTYPES)}")
    if qtype in MIXES:
        with leftovers.temp_dir("potstill-gguf") as tmp:
            src = f32 or Path(tmp) / "f32.gguf"
            if not src.exists():
                _converter(hf_dir, src, "f32", meta)
            by_name = imatrix.for_file(importance, src) if importance else None
            requantize(src, path, qtype, advance=advance, importance=by_name)
    else:
        _converter(hf_dir, path, qtype, meta)
    reader = gguf.GGUFReader(path)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    pre = reader.fields.get("tokenizer.ggml.pre")
    return {"file": path.name, "type": qtype, "bytes": path.stat().st_size, "tensor_types": counts,
            "architecture": reader.fields["general.architecture"].contents(),
            "pre_tokenizer": pre.contents() if pre is not None else None}


def _converter(hf_dir: Path, path: Path, qtype: str, meta: dict[str, Any] | None) -> None:
    """llama.cpp's converter, in a child process, writing ``path`` as ``qtype`` (one it knows)."""
    with leftovers.temp_dir("potstill-gguf") as tmp:
        # By file path, so the child runs this very runner whatever potstill its sys.path finds.
        cmd = [sys.executable, str(Path(llama_convert.__file__)), str(llama_cpp_dir()), str(hf_dir),
               "--outfile", str(path), "--outtype", qtype]
        if meta:
            (Path(tmp) / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            cmd += ["--metadata", str(Path(tmp) / "meta.json")]
        r = child.run(cmd)
    if r.returncode != 0:
        path.unlink(missing_ok=True)
        raise PotstillError(f"GGUF export ({qtype}): {_failure(r.stderr)}")


def output_tokens(task: Any, tokenizer: Any) -> int:
    """num_predict for the Modelfile: the longest label's completion as the student learned it (with
    its end-of-turn token, or " label" and EOS without a chat template), or the task's limit."""
    from potstill.models.prompting import PromptFormat

    if task.labels:
        fmt = PromptFormat(kind="chat" if getattr(tokenizer, "chat_template", None) else "completion")
        return max(len(tokenizer(fmt.completion(tokenizer, label), add_special_tokens=False)["input_ids"])
                   for label in task.labels)
    return int(task.cfg.max_output_tokens)


def _meta(cfg: Config, run: Path) -> dict[str, Any]:
    from potstill.models.loading import BUNDLED

    base = cfg.student.model
    licence = BUNDLED[base.split(":", 1)[1]][2] if base.startswith("bundled:") and base.split(":", 1)[1] in BUNDLED else ""
    base = published_name(base)
    meta = {
        "general.name": f"potstill student ({Path(run).resolve().name}, {cfg.task.type})",
        "general.base_models": [{"name": base}],
        "general.description": f"Distilled by potstill from the run directory {Path(run).resolve().name!r}: task "
                               f"{cfg.task.type}, teacher {cfg.teacher.model or cfg.teacher.type}, base {base}.",
    }
    if licence:
        meta["general.license"] = licence
    return meta


def _hf_source(cfg: Config, run: Path, tmp: Path) -> tuple[Path, Any]:
    """A Hugging Face directory the converter can read, and the student's tokenizer.

    A full fine-tune is read where it is; an adapter is merged (and a depth-pruned student cut)
    into ``tmp`` first, in f32 so the converter's f16/q8_0 rounding is the only one."""
    from potstill.export.merged import load_student, save_merged

    lm = load_student(cfg, run)
    student = run / "student"
    # An adapter wins, as in load_lm: a full student's config.json beside it is an older run's.
    full = (student / "config.json").exists() and not (student / "adapter_config.json").exists()
    if full and cfg.student.num_layers is None:
        return student, lm.tokenizer
    save_merged(lm.model, lm.tokenizer, tmp / "hf", "f32")
    return tmp / "hf", lm.tokenizer


def _importance(cfg: Config, run: Path, hf_dir: Path, task: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The mixes' importance matrix (``imatrix``), measured on the run's first ``export.imatrix_inputs``
    training inputs, by module name; what was measured, for export.json."""
    from potstill.records import read_records

    n = cfg.export.imatrix_inputs
    mixes = [q for q in cfg.export.gguf_types if q in MIXES and q != "q4_0"]
    train = run / "train.jsonl"
    records = read_records(train)[:n] if n and mixes and train.exists() else []
    # `potstill train` measured it on the same inputs, unless export.imatrix_inputs changed since
    kept = imatrix.load(run / "student", len(records) if records else None) if n and mixes else None
    if kept and imatrix.layers_of(kept) == num_hidden_layers(hf_dir):
        say(f"export: the student's importance matrix ({run / 'student' / imatrix.FILE})")
        return kept, {"source": str(run / "student" / imatrix.FILE), "layers": len(kept)}
    if not records:
        why = ("export.imatrix_inputs is 0" if not n else "no k-quant mix asked" if not mixes
               else "no training inputs in train.jsonl" if train.exists() else "no train.jsonl")
        return None, {"inputs": 0, "why_none": why}
    t0 = time.perf_counter()
    per_module = imatrix.measure(hf_dir, task, [r.messages for r in records])
    seconds = round(time.perf_counter() - t0, 1)
    say(f"export: importance matrix of {len(per_module)} layers from {len(records)} training inputs ({seconds} s)")
    return per_module, {"inputs": len(records), "source": "train.jsonl", "layers": len(per_module), "seconds": seconds}


def num_hidden_layers(hf_dir: Path) -> int:
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    return int((cfg.get("text_config") or cfg)["num_hidden_layers"])


@register("gguf")
def export_gguf(cfg: Config, run: Path, out_dir: Path) -> list[Path]:
    from potstill.export.modelfile import render_modelfile
    from potstill.tasks import get_task

    task = get_task(cfg.task)
    llama_cpp_dir()  # a missing converter is one line before any loading
    summaries = []
    with leftovers.temp_dir("potstill-gguf-src") as src:
        hf_dir, tokenizer = _hf_source(cfg, run, Path(src))  # before atomic_dir: no student, no export folder
        importance, measured = _importance(cfg, run, hf_dir, task)
        f32, tensors = Path(src) / "f32.gguf", 0
        if any(q in MIXES for q in cfg.export.gguf_types):  # converted once, first: the bar counts its tensors
            import gguf

            _converter(hf_dir, f32, "f32", _meta(cfg, run))
            tensors = len(gguf.GGUFReader(f32).tensors)
        total = sum(tensors if q in MIXES else 1 for q in cfg.export.gguf_types)
        with atomic_dir(out_dir) as tmp, bar("export gguf", total) as advance:
            for qtype in cfg.export.gguf_types:
                t0 = time.perf_counter()
                mix = qtype in MIXES
                s = convert(hf_dir, tmp / f"student-{qtype}.gguf", qtype, _meta(cfg, run), f32=f32,
                            importance=importance, advance=advance if mix else None)
                s["seconds"] = round(time.perf_counter() - t0, 2)
                (tmp / f"Modelfile.{qtype}").write_text(render_modelfile(
                    f"./student-{qtype}.gguf", tokenizer, cfg.task.instruction, output_tokens(task, tokenizer),
                    one_line=task.name in ("classification", "extraction", "tools"), warn=not summaries,
                    parallel=cfg.task.parallel_tool_calls),
                    encoding="utf-8")  # as Ollama reads it
                summaries.append(s)
                if not mix:
                    advance(1)
            write_json(tmp / "export.json", {"source": published_name(str(run / "student")),
                                             "converter": "llama.cpp convert_hf_to_gguf.py", "files": summaries,
                                             "imatrix": measured})
    say("export: " + ", ".join(f"{s['file']} ({s['architecture']}, {size_text(s['bytes'])}, {s['seconds']:.1f} s)"
                               for s in summaries)
        + f"; Modelfile.<type> beside each (ollama create NAME -f {out_dir}/Modelfile.{cfg.export.gguf_types[-1]})")
    return sorted(out_dir.iterdir())
