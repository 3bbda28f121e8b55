"""README.md for an exported student: the Hugging Face model card, from what the run recorded.

Every number comes from a file of the run (``train.json``, ``eval.json``, ``card.json``); a stage
that has not run is said to be missing, never filled in. The YAML header is the hub's metadata
(``base_model``, ``datasets``, ``library_name``, ``pipeline_tag``, ``tags``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from potstill.config import Config
from potstill.export import published_name
from potstill.hub_files import is_hub_file, parse
from potstill.models.prompting import PromptFormat
from potstill.tool_calls import tool_names


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _hub_model(spec: str) -> str | None:
    """A student model named by a namespaced hub id (``org/name``, ``org/name@rev``): the id, for base_model."""
    from potstill.stage import _hub_id

    return spec.split("@")[0] if _hub_id(spec) and "/" in spec else None


def stale_evaluation(run: Path) -> str | None:
    """Why ``RUN/eval.json`` is not this student's, or None: the card must not show an earlier
    student's numbers and verdict as this one's. The run's manifest keeps the digest of the student
    evaluate read (``input_digests``); a manifest from before it, the times evaluate and train finished
    (to the second: a train within the second of the evaluate is not seen there)."""
    from potstill.hashing import hash_path
    from potstill.rundir import RunDir

    stages = RunDir(run).manifest()["stages"]
    evaluate = stages.get("evaluate", {})
    evaluated, trained = evaluate.get("finished_at"), stages.get("train", {}).get("finished_at")
    read = (evaluate.get("input_digests") or {}).get("student")
    if read and (run / "student").exists():
        changed = hash_path(run / "student") != read
    else:
        changed = bool(trained and evaluated and trained > evaluated)
    if changed:
        return (f"eval.json is of another student than the one in {Path(run).name}/student (evaluated "
                f"{evaluated}; trained or promoted since); run `potstill evaluate` and export again")
    return None


def promoted_round(run: Path) -> tuple[dict | None, dict | None, Path | None, str | None]:
    """The train.json, dataset card and training records of the student in ``RUN/student``, and why
    they are left out of the card (or None). ``potstill redistill`` promotes a challenger by pointing
    RUN/student at RUN/students/<id>; its summary and records are in RUN/redistill/<id>/, while
    RUN/train.json stays the old champion's: read there, the card described the old training beside
    the new weights. A student in students/ without a round folder is a kept champion (``students/original``
    after a rollback): RUN/train.json is its own."""
    from potstill.rundir import CHALLENGER_TRAIN

    student = (run / "student").resolve()
    work = run / "redistill" / student.name
    if student.parent != (run / "students").resolve() or not work.is_dir():
        return _read(run / "train.json"), _read(run / "card.json"), run / "train.jsonl", None
    train, data = _read(work / "train.json"), work / CHALLENGER_TRAIN
    if train is None or not data.is_file():
        return None, None, None, (f"the student in {Path(run).name}/student was promoted by `potstill redistill` "
                                  f"(students/{student.name}) and {Path(run).name}/redistill/{student.name} holds no "
                                  f"train.json or {CHALLENGER_TRAIN} of its training")
    # Every challenger trains on the champion's set (the first one's: RUN/card.json) and served traffic.
    return train, _read(run / "card.json"), data, None


def _served_lines(records: Path | None) -> list[str]:
    """The served traffic among the records a promoted student trained on (``meta.source: serve``)."""
    from potstill.records import read_records

    if records is None or not records.is_file() or records.name == "train.jsonl":
        return []
    rs = read_records(records)
    served = [r for r in rs if r.meta.get("source") == "serve"]
    if not served:
        return []
    by = {}
    for r in served:
        who = r.meta.get("teacher") or "not recorded"
        by[who] = by.get(who, 0) + 1
    return [f"- Source `served traffic`: {len(served)} of the {len(rs)} records it was trained on are requests sent to "
            "`potstill serve` and learnt by `potstill redistill`, answered by "
            + ", ".join(f"`{published_name(m)}` ({n})" for m, n in by.items())
            + "; who sent them and under what licence is not recorded: check that the service's users and its "
            "privacy terms allow training and sharing a model on them"]


def teacher_terms(cfg: Config, card: dict | None) -> Callable[[str], str]:
    """The terms of use known to be a model's: the config's for its teacher, card.json's for the
    teacher curate ran with, "not given" for any other."""
    from potstill.curate.card import same_teacher

    t = (card or {}).get("teacher") or {}
    known = [(cfg.teacher.model or cfg.teacher.type, cfg.teacher.terms)]
    if t.get("model") and t.get("terms_of_use") not in (None, "not given"):
        known.append((t["model"], t["terms_of_use"]))

    def terms(model: str) -> str:
        return next((x for m, x in known if x and same_teacher(m, model)), None) or "not given"

    return terms


def writers(records: Path | None) -> tuple[list[Any], dict[tuple[str, str], int], dict[str, int], dict[str, int]]:
    """The training records, and who wrote them, from each record's meta (generate's and import's
    ``teacher``, synthesize's ``synthesis.teacher``): answers by (model, how), the rest by who,
    inputs by model."""
    from potstill.records import read_records

    answers: dict[tuple[str, str], int] = {}
    rest: dict[str, int] = {}
    inputs: dict[str, int] = {}
    if records is None or not records.is_file():
        return [], answers, rest, inputs
    rs = read_records(records)
    for r in rs:
        if r.meta.get("teacher"):
            how = {"real": "imported traffic", "serve": "served escalations"}.get(
                r.meta.get("source"), "imported traffic, replayed" if r.meta.get("teacher_type") == "replay" else "generated")
            answers[(r.meta["teacher"], how)] = answers.get((r.meta["teacher"], how), 0) + 1
        else:
            who = "people (real labels)" if r.meta.get("source") == "real" else "a writer not recorded"
            rest[who] = rest.get(who, 0) + 1
        syn = (r.meta.get("synthesis") or {}).get("teacher")
        if syn:
            inputs[syn] = inputs.get(syn, 0) + 1
    return rs, answers, rest, inputs


def _writers_lines(cfg: Config, card: dict | None, records: Path | None) -> list[str]:
    """Who wrote the answers and the inputs the student was trained on (``writers``), each with the
    terms of use that are known to be that model's (``teacher_terms``). Named from the config alone,
    the card gave a teacher that wrote none of the data, with another teacher's terms."""
    from potstill.curate.card import same_teacher

    rs, answers, rest, inputs = writers(records)
    terms = teacher_terms(cfg, card)
    out = []
    if answers:
        out.append(f"- Answers of the {len(rs)} training records written by: " + "; ".join(
            f"`{published_name(m)}` ({n}, {how}; its terms of use: {terms(m)})" for (m, how), n in answers.items())
            + "".join(f"; {n} by {who}" for who, n in rest.items()) + ".")
        named = cfg.teacher.model or cfg.teacher.type
        # A replay teacher named by no model writes nothing: the logged models named above did.
        if named != "replay" and not any(same_teacher(named, m) for m, _ in answers):
            out.append(f"- The configured teacher `{published_name(named)}` wrote none of them: its terms above "
                       "are not the ones that apply to this data.")
    if inputs:
        out.append(f"- Inputs of the {len(rs)} training records written by `potstill synthesize`: " + "; ".join(
            f"`{published_name(m)}` ({n}; its terms of use: {terms(m)})" for m, n in inputs.items())
            + "; the data's licence below is that of the rest (the seeds and inputs given).")
    return out


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "-"


def _yaml_list(items: list[str]) -> list[str]:
    return [f"- {json.dumps(i)}" for i in items]


def model_card(cfg: Config, run: Path, name: str, ref: str, chat: bool, fmt: str = "hf", pushed: bool = False) -> str:
    """The card of the student in ``run``, exported as ``fmt`` (hf, gguf, lora or gguf-lora). ``name``: its title (the
    repo id when pushed); ``ref``: the folder or repo id the usage example reads (``pushed``: a repo
    id); ``chat``: whether it is prompted through its chat template (else potstill's plain text)."""
    train, card, records, left_out = promoted_round(run)
    ev = _read(run / "eval.json")
    base = _hub_model(cfg.student.model)
    datasets = [parse(p)[0] for p in (cfg.data.inputs, cfg.curate.real_data) if is_hub_file(p)]
    library = {"hf": "transformers", "lora": "peft"}.get(fmt)
    head = ["---", *([f"library_name: {library}"] if library else []), "pipeline_tag: text-generation",
            "tags:", *_yaml_list([*(["gguf"] if "gguf" in fmt else []), *(["lora"] if "lora" in fmt else []),
                                  "potstill", "distillation", cfg.task.type])]
    if base:
        head += [f"base_model: {json.dumps(base)}"]
    if datasets:
        head += ["datasets:", *_yaml_list(sorted(set(datasets)))]
    head += ["---", ""]

    t = cfg.task
    teacher = f"`{published_name(cfg.teacher.model or cfg.teacher.type)}` ({cfg.teacher.type})"
    if not cfg.teacher.model and cfg.teacher.type == "replay":  # the logged models whose answers it replays
        logged = dict.fromkeys(m for m, how in writers(records)[1] if how == "imported traffic, replayed")
        teacher = ", ".join(f"`{published_name(m)}`" for m in logged) + " (its logs, replayed)" if logged else teacher
    lines = [f"# {name}", "",
             f"A student distilled with potstill from `{published_name(cfg.student.model)}` "
             f"to do one task as its teacher {teacher} does it.", "",
             "## Task", "", f"- Type: {t.type}", f"- Instruction (the system message it was trained with): {t.instruction!r}"]
    if t.labels:
        lines.append("- Labels: " + ", ".join(f"`{x}`" for x in t.labels))
    lines += ["", "## Teacher and data", ""]
    # The name and the terms from one source, the config: card.json's terms are those of the teacher
    # curate ran with, which may not be this one (who wrote the data is the next line's).
    terms = cfg.teacher.terms or "not given"
    lines.append(f"- Teacher: {teacher}; its terms of use: {terms}. "
                 "Check that they "
                 "allow training and sharing a model on its outputs.")
    if not left_out:
        lines += _writers_lines(cfg, card, records)
    if left_out:
        lines.append(f"- Left out: {left_out}.")
    elif card:
        for s in card.get("sources") or [{"name": "inputs", **card.get("inputs", {})}]:
            commit = f" at commit `{s['hub_commit']}`" if s.get("hub_commit") else ""
            lines.append(f"- Source `{s.get('name')}`: {s.get('records', '?')} records from "
                         f"`{published_name(str(s.get('path')))}`{commit}, "
                         f"labelled by {s.get('labelled_by', 'teacher')}; {s.get('source')}; licence: {s.get('license')}"
                         + (f"; {s['added_to_train']} added to train" if s.get("added_to_train") is not None else ""))
        counts = card.get("counts") or {}
        if counts:
            lines.append("- Kept after curation: " + ", ".join(f"{k} {v}" for k, v in counts.items()
                                                               if k in ("train", "val", "test")))
        lines += _served_lines(records)
    else:
        lines.append("- No dataset card in the run (`potstill curate` writes card.json).")
    lines += ["", "## Training", ""]
    if left_out:
        lines.append(f"- Left out: {left_out}.")
    elif train:
        lines.append(f"- {train.get('method')} fine-tuning, objective {train.get('objective')}"
                     + (f" (KD signal: {train['kd_signal']})" if train.get("kd_signal") else "")
                     + f", {train.get('steps')} steps over {train.get('examples')} examples, "
                     f"{train.get('tokens')} tokens")
        if train.get("val_loss") is not None:
            lines.append(f"- Val loss {train['val_loss']:.4f}"
                         + (f" (the student of step {train['best_step']}, the lowest)" if train.get("best_step") else ""))
    else:
        lines.append("- No train.json in the run.")
    lines += ["", "## Evaluation", ""]
    stale = stale_evaluation(run) if ev else None
    if stale:
        lines.append(f"Not evaluated since the last training: {stale}.")
    elif ev:
        lines += [f"On {ev.get('n_test')} held-out test inputs (`potstill evaluate`, {ev.get('created_at')}):", "",
                  "| model | gold metric | agreement with the teacher | p50 latency | $ per 1k calls |",
                  "|---|---:|---:|---:|---:|"]
        for label, m in (ev.get("models") or {}).items():
            p50 = (m.get("latency_batch1") or {}).get("p50_s")
            cost = m.get("cost_per_1k_calls_usd")
            lines.append(f"| {label} | {_pct(m.get('gold_metric'))} | {_pct(m.get('agreement_with_teacher'))} | "
                         + (f"{p50 * 1000:.1f} ms" if isinstance(p50, (int, float)) else "-") + " | "
                         + (f"{cost:.4g}" if isinstance(cost, (int, float)) else "-") + " |")
        v = ev.get("verdict") or {}
        if v:
            lines += ["", f"Verdict: **{v.get('decision')}**: {v.get('reason')}."]
        lines += ["", "Latency and cost were measured on the machine that ran the evaluation; they are "
                  "that machine's, not a promise for another."]
        if "gguf" in fmt:
            lines += ["", "These numbers are the student's as potstill ran it (transformers); the GGUF files are "
                      "llama.cpp's conversions of it. f16 keeps its weights to 16 bits; q8_0 rounds them to 8 and may "
                      "change an answer where two were close (on potstill's quickstart it moved 2.4-4% of the test "
                      "labels), and the 4-6 bit mixes round further (there q6_k moved 2-4%, q4_k_m 9-10%): prefer "
                      "f16 where agreement with these numbers matters."]
    else:
        lines.append("Not evaluated: no eval.json in the run (`potstill evaluate` writes it).")
    lines += _tools_section(t)
    if fmt == "gguf":
        return "\n".join(head + lines + _gguf_use(cfg, ref, pushed)) + "\n"
    if fmt == "gguf-lora":
        return "\n".join(head + lines + _gguf_lora_use(cfg, ref, pushed)) + "\n"
    budget = t.max_output_tokens if not t.labels else 8
    lines += ["", "## Use", ""]
    load = [f"model = AutoModelForCausalLM.from_pretrained({ref!r})"]
    if fmt == "lora":
        base, rank = _lora_base(cfg, run, ref)
        repo, _, rev = base.partition("@")
        lines += ["A LoRA adapter, to apply on the base it was trained on. With vLLM, beside any other adapters "
                  "on that base:", "", "```sh",
                  f"vllm serve {repo}" + (f" --revision {rev}" if rev else "") + f" --enable-lora --lora-modules student={ref}"
                  + (f" --max-lora-rank {rank}" if rank and rank > 16 else ""), "```", "",
                  "then `model=\"student\"` in the OpenAI client, with the system message below and temperature 0. "
                  "With PEFT, prompted as it was trained and evaluated:", ""]
        load = [f"base = AutoModelForCausalLM.from_pretrained({repo!r}" + (f", revision={rev!r})" if rev else ")"),
                f"model = PeftModel.from_pretrained(base, {ref!r})"]
    else:
        lines += ["The prompt it was trained and evaluated on:", ""]
    lines += ["```python", *(["from peft import PeftModel"] if fmt == "lora" else []),
              "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"tok = AutoTokenizer.from_pretrained({ref!r})", *load, "text = \"...\"  # the input"]
    if chat:
        system = f"{{\"role\": \"system\", \"content\": {t.instruction!r}}}, " if t.instruction else ""
        lines += [f"messages = [{system}{{\"role\": \"user\", \"content\": text}}]",
                  "ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
                  "return_dict=True)[\"input_ids\"]"]
    else:
        plain = PromptFormat(kind="completion", instruction=t.instruction)
        lines += [f"prompt = {plain.prefix()!r} + text + {chr(10) + plain.answer_prefix!r}",
                  "ids = tok(prompt, return_tensors=\"pt\").input_ids"]
    # A base's own generation config may sample; the merged export's is greedy, as evaluation decoded.
    lines += [f"out = model.generate(ids, max_new_tokens={budget}" + (", do_sample=False)" if fmt == "lora" else ")"),
              "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())", "```"]
    if fmt == "hf":
        lines += ["", "Its generation config is greedy, as it was evaluated."]
    return "\n".join(head + lines) + "\n"


def _tools_section(t: Any) -> list[str]:
    """What a tools task's student writes and reads, for whoever runs it without ``potstill serve``
    (which turns its answers into OpenAI ``tool_calls``)."""
    if t.type != "tools":
        return []
    call = '`[{"name": ..., "arguments": {...}}, ...]` (one or more calls)' if t.parallel_tool_calls else \
        '`{"name": ..., "arguments": {...}}` (one call)'
    out = ["", "## Tools", "", f"It answers with the JSON {call} of these functions, asked without them in its "
           "prompt: " + ", ".join(f"`{n}`" for n in tool_names(t.tools)) + "."]
    if t.tool_choice == "auto":
        out += ["", 'Or it replies in words, written `{"content": "..."}`. It reads a chat\'s earlier calls and the '
                "tools' results as text: an assistant turn holding the calls' JSON as it writes them, then one user "
                "turn of lines `Result of NAME: RESULT`, one per result (`potstill.tool_calls.as_text_turns`)."]
    return out


def _gguf_use(cfg: Config, ref: str, pushed: bool) -> list[str]:
    qtypes = cfg.export.gguf_types
    q = qtypes[-1]
    folder = "student" if pushed else ref
    get = [f"huggingface-cli download {ref} --local-dir student"] if pushed else []
    return ["", "## Use", "",
            "One GGUF file per type (" + ", ".join(f"`student-{x}.gguf`" for x in qtypes) + "), each with an Ollama "
            "Modelfile (`Modelfile.<type>`) that carries the system message it was trained with, its stop tokens "
            "and greedy decoding:", "", "```sh", *get,
            f"ollama create student -f {folder}/Modelfile.{q}",
            "ollama run student \"...\"", "```", "",
            "With llama.cpp's server (OpenAI-compatible), send the same system message, "
            f"{cfg.task.instruction!r}, and temperature 0:", "", "```sh",
            f"llama-server -m {folder}/student-{q}.gguf", "```"]


def _lora_base(cfg: Config, run: Path, ref: str) -> tuple[str, int | None]:
    """The base a ``lora`` export's adapter applies to (a hub id with its commit, or its ``base/`` folder)
    and the adapter's rank."""
    from potstill.export.lora import adapter_config, published_base

    conf = adapter_config(run)
    return published_base(cfg, conf) or f"{ref}/base", conf.get("r")


def _gguf_lora_use(cfg: Config, ref: str, pushed: bool = False) -> list[str]:
    qtypes = cfg.export.gguf_types
    q = qtypes[-1]
    get = [f"huggingface-cli download {ref} --local-dir student"] if pushed else []
    ref = "student" if pushed else ref
    return ["", "## Use", "",
            "A LoRA adapter (`adapter-f16.gguf`) and the base it was trained on, one GGUF file per type ("
            + ", ".join(f"`base-{x}.gguf`" for x in qtypes) + "), each with an Ollama Modelfile (`Modelfile.<type>`: "
            "`FROM` the base, `ADAPTER` the adapter, the system message it was trained with, its stop tokens and "
            "greedy decoding):", "", "```sh", *get,
            f"ollama create student -f {ref}/Modelfile.{q}", "ollama run student \"...\"", "```", "",
            "With llama.cpp's server (OpenAI-compatible), send the same system message, "
            f"{cfg.task.instruction!r}, and temperature 0:", "", "```sh",
            f"llama-server -m {ref}/base-{q}.gguf --lora {ref}/adapter-f16.gguf", "```"]
