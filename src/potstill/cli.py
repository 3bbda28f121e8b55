"""The command line: one small function per verb over the library.

Each command's flags are the config fields it reads (``--teacher.model``, ``--train.lr``; a
stage's come from its declaration in ``potstill.pipeline``), generated from the pydantic models
so their help is the field's one description. Values are parsed as YAML scalars
(``--curate.dedup false``, ``--task.labels '[a, b]'``), a text field's taken as written
(``potstill.cli_flags``), and validated by the config model.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from potstill.cli_flags import MISSING, builtin_defaults, field_flags, flag_value, short_flag
from potstill.config import Config, flat_fields, load_config, starter_yaml
from potstill.errors import PotstillError, no_room, undecoded_name
from potstill.pipeline import STAGES, SYNTHESIZE, run_all
from potstill.progress import closed_streams_to_devnull, echo, quiet_library_bars
from potstill.stage import Stage, leaf_fields
from potstill.terminal import printable

# Help is rendered with rich markup (typer's default, said here since field help is escaped for it).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich",
                  help="potstill: distil a large teacher LLM into a small student, and prove the trade on your data.")


def config_command(name: str, fields: list[str], on_run: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(cfg, **own)`` as ``potstill NAME``: the one way a command that takes a config is declared.

    Its flags are ``fn``'s own typed parameters, then ``-c/--config``, then ``--FIELD`` for each
    config field in ``fields`` (sections or dotted fields) with the field's description as help.
    ``on_run``: the command works on a run directory (its ``run_dir`` argument) whose saved
    RUN/potstill.yaml is the default config, and each field of its own section (``serve.port``)
    also answers to a short flag (``--port``; ``--promote/--no-promote`` for a yes/no field).
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        where = "default: RUN/potstill.yaml" if on_run else "default: built-in defaults"
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[Path], typer.Option("--config", "-c", help=f"potstill.yaml to load ({where}).")]))
        wanted = set(leaf_fields(fields)) | (set() if on_run else {"run_dir"})
        types, defaults = {}, builtin_defaults()
        for key, ann, desc in flat_fields(Config):
            if key in wanted:
                types[key] = ann
                # A run-directory command's defaults are the run's saved config: the built-in one would mislead.
                shown = MISSING if on_run else defaults[key]
                params += field_flags(key, ann, desc, shown, short=on_run and key.split(".")[0] == name)

        def command(**kwargs: Any) -> None:
            mine = {p.name: kwargs.pop(p.name) for p in own}
            cfg_path = kwargs.pop("config")
            overrides, typed = {}, {}
            for k, v in kwargs.items():
                if v is not None:
                    kind, _, rest = k.rpartition("___")  # flag___ (yes/no) or short___: a short flag's
                    key = rest.replace("__", ".")
                    # Errors name the flag as typed: `--new-test`, not `--redistill.new_test`.
                    flag = short_flag(key) if kind else key
                    if key in typed:
                        raise PotstillError(f"--{typed[key]} and --{flag} both set {key}: give one")
                    typed[key] = flag
                    overrides[key] = v if kind == "flag" else flag_value(flag, v, types[key])
            names = {k: f"--{v}" for k, v in typed.items()}
            if on_run and mine["run_dir"] is None:
                # `potstill serve -c potstill.yaml`, as every stage is run: the config's own run_dir.
                if cfg_path is None:
                    raise PotstillError(f"potstill {name}: give RUN (the run directory) or -c potstill.yaml (its run_dir)")
                cfg = load_config(cfg_path, overrides, names)
                mine["run_dir"] = Path(cfg.run_dir)
            elif on_run:
                from potstill.serve import run_config

                cfg = run_config(mine["run_dir"], cfg_path, overrides, names)
            else:
                cfg = load_config(cfg_path, overrides, names)
            fn(cfg, **mine)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__doc__ = fn.__doc__
        app.command(name)(command)
        return fn

    return register


Force = Annotated[bool, typer.Option("--force", help="Rerun even if up to date.")]


def _stage_command(stage: Stage) -> None:
    def command(cfg: Config, force: Force = False) -> None:
        if stage.preflight:
            from potstill.preflight import require

            require(cfg, stage.name)
        stage.run(cfg, force)

    command.__doc__ = stage.doc
    config_command(stage.name, list(stage.reads))(command)


for _stage in (SYNTHESIZE, *STAGES.values()):
    _stage_command(_stage)


@config_command("run", [k for s in STAGES.values() for k in s.reads])
def run(cfg: Config, force: Force = False) -> None:
    """Run pilot, generate, curate, train and evaluate in order, skipping stages already done."""
    run_all(cfg, force=force)


@config_command("preflight", ["task", "data", "teacher", "student", "train", "generate"])
def preflight(cfg: Config) -> None:
    """Refuse a run that would train the wrong objective silently: tokenizers, prompts, labels, ranks, budget."""
    from potstill.preflight import run_checks

    checks = run_checks(cfg)
    for c in checks:
        echo(f"{c.status:>4}  {c.name:<10} {c.detail}")
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise PotstillError(f"preflight: {len(failed)} check(s) failed: {', '.join(c.name for c in failed)}")


@app.command()
def init(path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("potstill.yaml"),
         overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False) -> None:
    """Write a commented starter potstill.yaml with every field at its default."""
    if path.is_dir():
        raise PotstillError(f"{path} is a directory; name the config file to write")
    if path.exists() and not overwrite:
        raise PotstillError(f"{path} exists (use --overwrite to replace it)")
    from potstill.records import write_text

    write_text(path, starter_yaml())  # beside it, then renamed: a full disk leaves the old file, not half a new one
    echo(f"wrote {path}")


@app.command()
def quickstart(
    run_dir: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/quickstart"),
    inputs: Annotated[int, typer.Option(help="BBC articles to distil on.")] = 950,
    test: Annotated[int, typer.Option(help="Held-out test articles.")] = 250,
    shots: Annotated[int, typer.Option(help="Few-shot examples in the teacher's prompt.")] = 50,
    orders: Annotated[int, typer.Option(help="Shot orders the teacher averages over (self-consistency).")] = 3,
    real: Annotated[int, typer.Option(help="Other articles mixed into train with their gold label.")] = 300,
    objective: Annotated[str, typer.Option(help="kd (label-level distillation) or sft.")] = "kd",
    engine: Annotated[str, typer.Option(
        help="The student's engine in pilot, evaluate and serve: auto (int8 on a CPU with AVX-512 VNNI or "
             "AMX and a C++ compiler, else ctranslate2 where installed, else transformers), ctranslate2, "
             "transformers, or int8 (transformers with int8 layers, compiled: the cheapest per call on such "
             "a CPU; on 2 cores the first model of an architecture compiles in about 100 s, "
             "the next ones from torch's cache in about 20 s).")] = "auto",
) -> None:
    """The embedded default, end to end, offline: BBC News topics, gemma-3-270m teacher, SmolLM2 student."""
    from potstill.quickstart import quickstart_config

    if objective not in ("kd", "sft"):
        raise PotstillError(f"--objective must be kd or sft, not {objective!r}")
    cfg = quickstart_config(run_dir, {"train.objective": objective}, n_inputs=inputs, n_test=test, n_shots=shots,
                            orders=orders, n_real=real, engine=engine)
    out = run_all(cfg)
    echo(f"artifacts in {run_dir}: eval.json, pilot.json, card.md, student/; timings: "
               + json.dumps({k: v["seconds"] for k, v in out["timings"].items()}))


@app.command()
def cost(run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
         config: Annotated[Optional[Path], typer.Option(
             "--config", "-c", help="potstill.yaml whose generate.engine prices the rest (default: RUN/potstill.yaml).")]
         = None) -> None:
    """Print spend and tokens per model (teacher, judge, student), cache hits, and the projected cost of the inputs not yet answered."""
    from potstill.ledger import Ledger
    from potstill.ledger_runs import token_words

    path = run_dir / "calls.sqlite"
    if not path.exists():
        raise PotstillError(f"{path} not found")
    share, basis, resend = _rerun_price(run_dir, config)
    hourly = _hourly_teacher(run_dir, config)
    with Ledger.reader(path) as ledger:
        rep = ledger.cost_report(share=share, resend_refused=resend)
        by_stage = ledger.spend_by_stage("teacher")
        for m in rep["models"]:
            echo(f"teacher {m['model']}: {m['calls']} calls ({m['calls'] - m['ok']} errors), {token_words(m)}, "
                 f"${m['cost_usd']:.4f}" + _batch_note(m))
            if hourly and hourly[0] == m["model"]:
                echo(_hourly_line(ledger, m["model"], hourly[1]))
            stages = [g for g in by_stage if g["model"] == m["model"]]
            for g in stages if len(stages) > 1 else []:  # pilot, synthesize, generate, serve escalations
                echo(f"teacher {g['model']} ({g['stage']}): {g['calls']} calls ({g['errors']} errors), "
                           f"{g['input_tokens']} input + {g['output_tokens']} output tokens, ${g['cost_usd']:.4f}")
        # evaluate.judge's calls are paid API calls as well, logged under their own role.
        for role in ("judge", "student"):
            for m in ledger.spend_by_stage(role):
                # A served student's seconds on the requests it escalated are its spend, not the teacher's.
                echo(f"{role} {m['model']} ({m['stage']}): {m['calls']} calls ({m['errors']} errors), "
                           f"{m['input_tokens']} input + {m['output_tokens']} output tokens, ${m['cost_usd']:.4f}"
                           + (f" (${m['escalated_cost_usd']:.4f} of it on {m['escalated']} requests it escalated "
                              "to the teacher)" if m.get("escalated") else ""))
        # A batch at the provider is billed when it completes, but reaches the ledger (and the lines
        # above) only once generate collects it: a run killed with batches open showed part of its bill.
        for b in ledger.batches():
            echo(f"teacher {b['model']}: batch {b['key']} ({b['provider']}, {b['state']}) holds {b['requests']} "
                       "requests not counted above: the provider bills them as they complete; "
                       "generate (generate.engine batch) collects them into the ledger")
        s = ledger.summary("student")
        echo(f"student: {s['calls']} calls, {s['input_tokens']} input + {s['output_tokens']} output tokens, "
                   f"${s['cost_usd']:.4f}" + (f" (${s['escalated_cost_usd']:.4f} of it on requests it escalated)"
                                             if s["escalated_cost_usd"] else ""))
        r = rep["latest_run"]
        if r:
            proj = "unknown (no answer yet to price)" if r["projected_remaining_usd"] is None else f"${r['projected_remaining_usd']:.4f}"
            rounds = f" and {r['tool_rounds']} tool round(s)" if r["tool_rounds"] else ""
            head = (f"last generate ({r['status']}): {r['inputs']} inputs{rounds}, {r['cache_hits']} cache hits, "
                    f"{r['retries']} retries, ")
            if r["earlier_remaining"]:
                proj += (f" ({r['earlier_remaining']} of these requests left unanswered by earlier runs of this teacher, "
                         "outside the last run's inputs)")
            if r["projected_remaining_usd"] is not None:
                proj += f" {basis}"
            if r["refused"]:
                proj += (f"; {r['refused']} refused by the teacher, " + (
                    "sent again (generate.retry_refusals), counted in the rest" if r["resend_refused"] else
                    "not sent again (generate.retry_refusals resends them), not counted"))
            if r["status"] in ("error", "stale"):
                # Not a run with work in flight: it stopped (an exception, or its process died).
                why = "ended by an error" if r["status"] == "error" else "its process died without finishing"
                echo(head + f"{r['unique_requests'] - r['remaining']} of {r['unique_requests']} requests answered "
                           f"before it stopped ({why}); a rerun sends the other {r['remaining']}, projected cost {proj}")
            else:
                echo(head + f"{r['remaining']} of {r['unique_requests']} requests unanswered, "
                           f"projected cost of the rest {proj}")


def _rerun_price(run_dir: Path, config: Path | None) -> tuple[float, str, bool]:
    """(share of the live price, how it was found, whether refused requests are sent again) for a
    rerun of generate's rest.

    A run through a provider's batch API paid half; a plain rerun sends the rest live, at full price.
    Only the config says which engine the rerun takes, and whether it retries refusals."""
    path = config or run_dir / "potstill.yaml"
    if config is None and not path.exists():
        return 1.0, "at the live price (no RUN/potstill.yaml names generate.engine; pass -c for another)", False
    cfg = load_config(path)
    engine, resend = cfg.generate.engine, cfg.generate.retry_refusals
    if engine != "batch":
        return 1.0, f"at the live price (generate.engine {engine})", resend
    share = cfg.generate.batch_price.get(cfg.teacher.type)
    if share is None:
        return 1.0, f"at the live price (generate.engine batch, no generate.batch_price.{cfg.teacher.type})", resend
    return (share, f"at {share:g} of the live price (generate.engine batch, generate.batch_price.{cfg.teacher.type})",
            resend)


def _hourly_teacher(run_dir: Path, config: Path | None) -> tuple[str, float] | None:
    """(model, usd_per_hour) of a teacher served from hardware of the user's own behind an API (vLLM,
    TGI) and priced by the hour: the ledger bills its calls no token price, so `cost` prices them here."""
    from potstill.teachers.api.prices import hourly_rate

    path = config or run_dir / "potstill.yaml"
    if not path.exists():
        return None
    t = load_config(path).teacher
    rate = hourly_rate(t)
    return None if rate is None else (t.model, rate)


def _hourly_line(ledger: Any, model: str, usd_per_hour: float) -> str:
    from potstill.teachers.api.prices import hourly_cost

    h = hourly_cost(ledger.spans("teacher", model), usd_per_hour)
    return (f"teacher {model} by the hour: its server was busy {h['busy_s']:.1f} s with these {h['calls']} answers "
            f"(the union of their in-flight times, so calls batched together count once) = ${h['usd']:.4f} at "
            f"teacher.price.usd_per_hour={usd_per_hour:g}, ${h['usd_per_call'] * 1000:.4f} per 1,000 calls; "
            "the $ above is the ledger's, which prices tokens only")


def _batch_note(m: dict) -> str:
    """The batch discount of one teacher model's calls, read back from the ledger."""
    if not m["batch_calls"]:
        return ""
    return (f"; {m['batch_calls']} through batches, ${m['cost_usd']:.4f} vs ${m['live_cost_usd']:.4f} at the live price "
            f"(saved ${m['live_cost_usd'] - m['cost_usd']:.4f})")


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="Traffic: JSONL, or a calls.sqlite for served traffic.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Records JSONL to write.")] = Path("imported.jsonl"),
    format: Annotated[str, typer.Option(help="auto, finetune, openai-log, pairs, stored or served.")] = "auto",
    requests: Annotated[Optional[Path], typer.Option(help="A batch's requests JSONL (OpenAI Batch input, or Anthropic Message Batches custom_id + params), to join its output by custom_id.")] = None,
    tool_calls: Annotated[bool, typer.Option("--tool-calls", help="Keep answers that are tool calls, as the {name, arguments} text a tools task (task.type tools) learns (a text answer that starts as JSON but is no call becomes the reply {\"content\": ...}); without it they are skipped.")] = False,
) -> None:
    """Turn existing teacher traffic (chat-completion logs, fine-tuning JSONL, request/response pairs, served calls) into records."""
    from potstill.importers import import_traffic

    n = import_traffic(source, out, format, requests, tool_calls)
    echo(f"wrote {n} record{'' if n == 1 else 's'} to {out}")


# Besides its own section, a run-directory command takes the other fields it reads; not the task,
# which is the trained student's own.
@config_command("serve", ["serve", "teacher", "student.usd_per_hour", "redistill.reload_poll_s"], on_run=True)
def serve(cfg: Config, run_dir: Annotated[Optional[Path], typer.Argument(metavar="RUN", help="Run directory with student/, val.jsonl and train.jsonl (default: -c's run_dir).", show_default=False)] = None,
          recalibrate: Annotated[bool, typer.Option(help="Recalibrate routing even if RUN/serve/routing.json is current.")] = False,
          ) -> None:
    """Serve the student behind an OpenAI-compatible API, escalating to the teacher by calibrated routing."""
    from potstill.serve import serve as run_server

    run_server(run_dir, cfg, recalibrate=recalibrate)


@app.command()
def requests(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="Served run directory (its calls.sqlite).")],
    id: Annotated[Optional[str], typer.Option("--id", help="One request in full: its x-request-id (the "
                                              "client's X-Request-ID, else req_...) or its resp_... id "
                                              "(Responses API) or msg_... id (Messages API).")] = None,
    last: Annotated[int, typer.Option(min=1, help="How many of the latest requests to list.")] = 20,
    since: Annotated[Optional[str], typer.Option(help="Only those since: 15m, 2h, 7d, or a date and time.")] = None,
    who: Annotated[Optional[str], typer.Option(help="Only those answered by student or teacher (escalated).")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only refused and failed requests.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, every field, instead of a table.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Then print each new request as it is logged, "
                                         "until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="--follow: seconds between looks.")] = 1.0,
) -> None:
    """List the requests `potstill serve` answered (who answered, why, how sure, latency, cost), or show one by its request id."""
    from potstill.ledger import Ledger
    from potstill.serve.log_view import detail, find, follow as follow_rows, render, since_time

    if who not in (None, "student", "teacher"):
        raise PotstillError(f"--who {who!r}: student or teacher")
    if follow and id is not None:
        raise PotstillError("--follow lists requests as they come; --id shows one: give one of them")
    path = run_dir / "calls.sqlite"
    with Ledger(path, readonly=True) as ledger:  # beside a running server: reads only
        # `is not None`, as watch: an empty --since "$SINCE" is an unreadable time, not every request.
        start = since_time(since) if since is not None else None
        found = find(ledger, request_id=id, since=start, limit=last, who=who, errors=errors)
        if follow:
            follow_rows(ledger, found, echo, who=who, errors=errors, as_json=as_json, interval=interval)
            return
    if id is not None and not as_json:
        echo(detail(found))
    elif found:
        echo(render(found, as_json))
    elif not as_json:
        echo(f"no served request in {path}" + (" matches" if since is not None or who or errors else ""))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or its eval.json) whose eval.json is the champion.")],
    compare: Annotated[Optional[list[Path]], typer.Option(
        "--compare", help="Another run directory (or its eval.json) shown as a challenger; repeatable.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="The page's file (default: report.html in the run directory).")] = None,
) -> None:
    """Rebuild report.html from eval.json, with other runs' students side by side (champion vs challenger)."""
    from potstill.evaluate.html import compare_report
    from potstill.rundir import RunDir, exclusive

    # RUN/eval.json names the run as its folder does (as --compare takes it): the page goes beside it.
    run = run_dir.parent if run_dir.is_file() else run_dir
    target = out or run / "report.html"
    into_run = run.is_dir() and target.resolve() == (run / "report.html").resolve()
    # Into the run: its page and manifest, held as a stage holds them (an evaluate writes both).
    with exclusive(run) if into_run else contextlib.nullcontext():
        if run.is_dir():  # a hand-broken manifest.json: its one line before anything is written
            RunDir(run).manifest()
        target = compare_report(run_dir, compare or [], target)
        if into_run:
            RunDir(run).rebuilt("evaluate", "report.html")  # else the next `potstill run` reruns evaluate
    echo(f"wrote {target}")


@app.command()
def review(
    run_dir: Annotated[Path, typer.Argument(help="Curated run directory (teacher.jsonl and card.json).")],
    host: Annotated[str, typer.Option(help="Address to bind (keep 127.0.0.1 unless you mean to share it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the review page.", min=0, max=65535)] = 8765,
    sample: Annotated[int, typer.Option(min=1, help="Records in the stratified sample.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of the sample order.")] = 0,
) -> None:
    """Review a stratified sample of teacher outputs in the browser (a accept, r reject, 1-9 relabel, l any label, e edit a free-text or JSON answer); the next curate applies it."""
    from potstill.review.app import serve as serve_review

    serve_review(run_dir, host, port, sample, seed)


@config_command("export", ["task", "student", "export"])
def export(cfg: Config,
           fmt: Annotated[str, typer.Option("--format", help="Export format: openai-jsonl, hf, gguf, lora or gguf-lora.")] = "openai-jsonl",
           out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: RUN/export/FORMAT).")] = None,
           push_to_hub: Annotated[Optional[str], typer.Option(
               "--push-to-hub", help="Formats hf, gguf, lora and gguf-lora: upload the export (weights or adapter, "
               "model card) to this Hugging Face model repository, OWNER/NAME (HF_TOKEN or `huggingface-cli login`).")] = None,
           private: Annotated[bool, typer.Option("--private", help="With --push-to-hub: create the repository "
                                                                   "private.")] = False,
           ) -> None:
    """Export the run: openai-jsonl (train/val as OpenAI fine-tuning JSONL), hf (merged student weights and a model card, optionally pushed to the Hugging Face Hub), gguf (f16/q8_0, or the mixes q6_k/q5_k_m/q4_k_m/q4_0 with export.gguf_types, + Ollama Modelfiles), lora (a LoRA student's adapter unmerged, for vLLM --enable-lora or PEFT), gguf-lora (that adapter for llama.cpp --lora / Ollama ADAPTER, with its base)."""
    from potstill.export import export as write_export

    for path in write_export(cfg, fmt, out, push_to_hub, private):
        echo(f"wrote {path}")


@config_command("watch", ["watch"], on_run=True)
def watch(cfg: Config, run_dir: Annotated[Optional[Path], typer.Argument(metavar="RUN", help="Served run directory (default: -c's run_dir).", show_default=False)] = None,
          since: Annotated[Optional[str], typer.Option(help="Watch the requests from this time instead of the latest "
                                                            "window: unix seconds, ISO 8601, or 24h/7d ago.")] = None,
          until: Annotated[Optional[str], typer.Option(help="Watch the requests up to this time (same formats as --since).")] = None,
          ) -> None:
    """Compare the latest served traffic (RUN/calls.sqlite) with the training inputs: input drift (MMD on the
    student's embeddings), label-mix drift and escalation share; writes RUN/watch/report.{json,md}.
    Exit code: 0 within thresholds, 3 drift flagged, 2 error."""
    from potstill.watch import EXIT_DRIFT, parse_time, watch_run

    # `is not None`: an empty --since "$SINCE" is an unreadable time, not the latest window instead.
    report = watch_run(run_dir, cfg, parse_time(since) if since is not None else None,
                       parse_time(until) if until is not None else None)
    raise typer.Exit(EXIT_DRIFT if report["drift"] else 0)


@app.command()
def env() -> None:
    """Print the platform, Python, potstill's and its libraries' versions, GPUs and CPU features (for a bug report)."""
    from potstill.envinfo import env_text

    echo(env_text())


def _version(value: bool) -> None:
    if value:
        from potstill import __version__

        echo(f"potstill {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="Print potstill's version and exit.")] = False) -> None:
    """potstill: distil a large teacher LLM into a small student, and prove the trade on your data."""


@app.command("export-check")
def export_check(file: Annotated[Path, typer.Argument(
        help="JSONL file in OpenAI's chat fine-tuning format, or a folder: each *.jsonl in it.")]) -> None:
    """Check OpenAI fine-tuning JSONL (a file, or each *.jsonl of a folder): one file:line problem per line, exit 1 if any."""
    from potstill.export.check import check_openai_jsonl, files_to_check

    failed = False
    for path in files_to_check(file):
        problems = check_openai_jsonl(path)
        for problem in problems:
            echo(problem)
        if not problems:
            echo(f"{path}: ok")
        failed = failed or bool(problems)
    if failed:
        raise typer.Exit(1)


@config_command("redistill", ["redistill", "teacher", "generate", "curate", "train", "student", "evaluate.batch_size",
                              "report.seed", "report.bootstrap_samples", "tracking"], on_run=True)
def redistill(cfg: Config, run_dir: Annotated[Optional[Path], typer.Argument(metavar="RUN", help="Served run directory: student/, splits, calls.sqlite (default: -c's run_dir).", show_default=False)] = None,
              rollback: Annotated[Optional[str], typer.Option(
                  help="Instead: point RUN/student back at a kept student (students/<id>).")] = None,
              force: Annotated[bool, typer.Option(
                  help="With --rollback: also to a challenger that lost its comparison and was never promoted.")] = False,
              fail_on_keep: Annotated[bool, typer.Option(
                  help="Exit 3 when the champion is kept (not promoted), for cron; 0 only on a promotion.")] = False,
              ) -> None:
    """Train a challenger on served traffic and promote it only if it beats the champion on new traffic and holds on the frozen test.
    Exit code: 0 promoted or kept (with --fail-on-keep: 0 promoted, 3 kept), 2 error."""
    from potstill import redistill as rd

    if rollback is not None:
        if fail_on_keep:
            raise PotstillError("--fail-on-keep judges a comparison; --rollback makes none")
        info = rd.rollback(run_dir, rollback, force=force)
        echo(f"RUN/student -> {info['current']} (was {info['previous']})")
        return
    if force:
        raise PotstillError("--force is for --rollback (to a challenger that lost its comparison)")
    record = rd.redistill(run_dir, cfg)
    if fail_on_keep and record["promotion"] is None:
        raise typer.Exit(rd.EXIT_KEPT)


def _os_problem(e: BaseException) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, sqlite3.DatabaseError):
        where = getattr(e, "filename", None)  # set by the ledger (sqlite3 names no file): others are unknown
        return f"{where}: SQLite: {e}" if where else f"SQLite: {e}"
    where = " -> ".join(str(f) for f in (getattr(e, "filename", None), getattr(e, "filename2", None)) if f)
    line = f"{e.strerror or e}: {where}" if where else str(e)
    # What was being written is not there (written whole or not at all): the same command writes it.
    fix = no_room(e)
    return f"{line}; {fix} and run the same command again" if fix else line


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, systemd) taken as Ctrl-C is: Python's default ends the process
    at once, so no ``finally`` or exit handler ran, and a server's llama-server child (engine llamacpp)
    was left running, orphaned; uvicorn, which handles the signal while serving, raises it again once
    it has shut down."""


_terminated: list[int] = []


def _on_sigterm(signum: int, frame: Any) -> None:
    _terminated.append(signum)
    # Inside an API teacher's requests (an event loop): raised here, Terminated ended whichever task
    # step was running, and asyncio printed "Task exception was never retrieved" with a traceback after
    # the closing line. The loop's main task is cancelled instead, and ``aio.run`` raises
    # KeyboardInterrupt once it has unwound: Ctrl-C's path (``_terminated`` says which).
    from potstill import aio

    if aio.cancel():
        return
    raise Terminated()


def main() -> None:
    """Entry point: usage errors are click's (message + exit 2); PotstillError is one red line, exit 2;
    SIGTERM runs the Ctrl-C path (its cleanup, its line), then exits 143."""
    closed_streams_to_devnull()
    quiet_library_bars()
    _terminated.clear()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _main()
    finally:
        signal.signal(signal.SIGTERM, previous)  # (in-process callers: their own handler back)


def _main() -> None:
    try:
        app()
    except SystemExit as e:
        if not e.code and "torch" in sys.modules:  # a command that ran under a launcher, done: end it cleanly
            from potstill.train.distributed import shutdown

            shutdown()
        if e.code == 130:  # Ctrl-C: Typer turns it into exit 130 without a word, before the handler below sees it
            word = "terminated" if _terminated else "interrupted"
            command = sys.argv[1] if len(sys.argv) > 1 else ""
            if command in {*STAGES, "run", SYNTHESIZE.name, "quickstart", "redistill"}:
                typer.secho(f"{word}: artifacts are written whole or not at all, and the stage is not marked done, "
                            "so the same command runs it again (answers already paid for come from the ledger)",
                            err=True)
            else:  # a server (serve, review) that shut down, or a listing
                typer.secho(f"{word}: potstill {command} stopped", err=True)
            if _terminated:
                sys.exit(128 + signal.SIGTERM)
        raise
    except PotstillError as e:
        typer.secho(printable(f"error: {e}"), fg="red", err=True)
        sys.exit(2)
    except UnicodeEncodeError as e:  # a path Python could not decode, handed to a library that takes text
        why = undecoded_name(e.object) if isinstance(e.object, str) else None
        if why is None or os.environ.get("POTSTILL_DEBUG"):
            raise
        typer.secho(printable(f"error: {why}"), fg="red", err=True)
        sys.exit(2)
    except (OSError, UnicodeDecodeError, sqlite3.DatabaseError) as e:
        # What a file the user named can do past the stages' own checks (a folder where a file belongs,
        # a path under a missing folder, no permission, a file that is not text or not a SQLite
        # database): one line too. POTSTILL_DEBUG=1 shows the traceback.
        if os.environ.get("POTSTILL_DEBUG"):
            raise
        typer.secho(printable(f"error: {_os_problem(e)}"), fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("terminated" if _terminated else "interrupted", err=True)
        sys.exit(128 + signal.SIGTERM if _terminated else 130)


if __name__ == "__main__":
    main()
