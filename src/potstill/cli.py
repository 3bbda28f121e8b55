"""The command line: one small function per verb over the library.

Every leaf field of potstill.yaml is a flag (``--teacher.model``, ``--train.lr``), generated from
the pydantic models so its help is the field's one docstring. Values are parsed as YAML scalars
(``--curate.dedup false``, ``--task.labels '[a, b]'``) and validated by the config model.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
import yaml

from potstill.config import Config, flat_fields, load_config, starter_yaml
from potstill.errors import PotstillError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="potstill: distil a large teacher LLM into a small student, and prove the trade on your data.")

_SECTIONS = {
    "synthesize": ["task", "teacher", "generate", "synthesize"],
    "pilot": ["task", "data", "teacher", "student", "pilot", "evaluate", "generate"],
    "generate": ["task", "data", "teacher", "generate"],
    "curate": ["task", "data", "teacher", "curate"],
    "train": ["task", "student", "train"],
    "evaluate": ["task", "student", "evaluate", "report"],
    "run": ["task", "data", "teacher", "student", "pilot", "generate", "curate", "train", "evaluate", "report"],
}


def _config_command(name: str, fn: Callable[..., Any], extra: list[inspect.Parameter] | None = None) -> None:
    """Register ``fn(cfg, **extra)`` as a command whose flags are the config fields of its sections."""
    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                annotation=Annotated[Optional[Path], typer.Option("--config", "-c", help="potstill.yaml to load.")])]
    params += extra or []
    fields = [(k, a, d) for k, a, d in flat_fields(Config) if "." not in k or k.split(".")[0] in _SECTIONS[name]]
    for key, ann, desc in fields:
        type_name = getattr(ann, "__name__", str(ann)).replace("typing.", "")
        params.append(inspect.Parameter(
            key.replace(".", "__"), inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[Optional[str], typer.Option(f"--{key}", help=f"{desc} [{type_name}]",
                                                             rich_help_panel=key.split(".")[0] if "." in key else "run")],
        ))

    def command(**kwargs: Any) -> None:
        cfg_path = kwargs.pop("config")
        extras = {p.name: kwargs.pop(p.name) for p in extra or []}
        overrides = {k.replace("__", "."): yaml.safe_load(v) for k, v in kwargs.items() if v is not None}
        cfg = load_config(cfg_path, overrides)
        fn(cfg, **extras)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = fn.__doc__
    app.command(name)(command)


_FORCE = inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, default=False,
                           annotation=Annotated[bool, typer.Option("--force", help="Rerun even if up to date.")])


def _pilot(cfg: Config, force: bool) -> None:
    """Compare the untrained student with the teacher on ~100 inputs, before any training."""
    from potstill.pilot.stage import pilot_stage

    pilot_stage(cfg, force)


def _synthesize(cfg: Config, force: bool) -> None:
    """Have the teacher write new inputs from the task, the labels and a few seeds (before generate)."""
    from potstill.synthesize.stage import synthesize_stage

    synthesize_stage(cfg, force)


def _generate(cfg: Config, force: bool) -> None:
    """Run the teacher over every input (cached in the ledger; a rerun sends nothing twice)."""
    from potstill.generate.stage import generate_stage
    from potstill.preflight import require

    require(cfg, "generate")
    generate_stage(cfg, force)


def _curate(cfg: Config, force: bool) -> None:
    """Validate and deduplicate teacher outputs, split train/val/test, write the dataset card."""
    from potstill.curate.stage import curate_stage

    curate_stage(cfg, force)


def _train(cfg: Config, force: bool) -> None:
    """Fine-tune the student on the teacher's outputs (full or LoRA; SFT or label-level KD)."""
    from potstill.train.stage import train_stage

    train_stage(cfg, force)


def _evaluate(cfg: Config, force: bool) -> None:
    """Untrained student vs teacher vs trained student on the test split, with a go/no-go verdict."""
    from potstill.evaluate.stage import evaluate_stage

    evaluate_stage(cfg, force)


def _run(cfg: Config, force: bool) -> None:
    """Run pilot, generate, curate, train and evaluate in order, skipping stages already done."""
    from potstill.pipeline import run_all

    run_all(cfg, force=force)


def _preflight(cfg: Config) -> None:
    """Refuse a run that would train the wrong objective silently: tokenizers, prompts, labels, ranks, budget."""
    from potstill.preflight import run_checks

    checks = run_checks(cfg)
    for c in checks:
        typer.echo(f"{c.status:>4}  {c.name:<10} {c.detail}")
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise PotstillError(f"preflight: {len(failed)} check(s) failed: {', '.join(c.name for c in failed)}")


_SECTIONS["preflight"] = ["task", "data", "teacher", "student", "train", "generate"]
_config_command("preflight", _preflight)

for _name, _fn in (("synthesize", _synthesize), ("pilot", _pilot), ("generate", _generate), ("curate", _curate), ("train", _train),
                   ("evaluate", _evaluate), ("run", _run)):
    _config_command(_name, _fn, [_FORCE])


@app.command()
def init(path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("potstill.yaml"),
         overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False) -> None:
    """Write a commented starter potstill.yaml with every field at its default."""
    if path.exists() and not overwrite:
        raise PotstillError(f"{path} exists (use --overwrite to replace it)")
    path.write_text(starter_yaml())
    typer.echo(f"wrote {path}")


@app.command()
def quickstart(
    run_dir: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/quickstart"),
    inputs: Annotated[int, typer.Option(help="BBC articles to distil on.")] = 700,
    test: Annotated[int, typer.Option(help="Held-out test articles.")] = 250,
    shots: Annotated[int, typer.Option(help="Few-shot examples in the teacher's prompt.")] = 50,
    orders: Annotated[int, typer.Option(help="Shot orders the teacher averages over (self-consistency).")] = 3,
    objective: Annotated[str, typer.Option(help="kd (label-level distillation) or sft.")] = "kd",
) -> None:
    """The embedded default, end to end, offline: BBC News topics, gemma-3-270m teacher, SmolLM2 student."""
    from potstill.pipeline import run_all
    from potstill.quickstart import quickstart_config

    if objective not in ("kd", "sft"):
        raise PotstillError(f"--objective must be kd or sft, not {objective!r}")
    cfg = quickstart_config(run_dir, {"train.objective": objective}, n_inputs=inputs, n_test=test, n_shots=shots,
                            orders=orders)
    out = run_all(cfg)
    typer.echo(f"artifacts in {run_dir}: eval.json, pilot.json, card.md, student/; timings: "
               + json.dumps({k: v["seconds"] for k, v in out["timings"].items()}))


@app.command()
def cost(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Print spend and tokens per model, cache hits, and the projected cost of the inputs not yet answered."""
    from potstill.ledger import Ledger

    path = run_dir / "calls.sqlite"
    if not path.exists():
        raise PotstillError(f"{path} not found")
    with Ledger(path) as ledger:
        rep = ledger.cost_report()
        for m in rep["models"]:
            typer.echo(f"teacher {m['model']}: {m['calls']} calls ({m['calls'] - m['ok']} errors), "
                       f"{m['input_tokens']} input ({m['cached_input_tokens']} cached) + {m['output_tokens']} output tokens, "
                       f"${m['cost_usd']:.4f}")
        s = ledger.summary("student")
        typer.echo(f"student: {s['calls']} calls, {s['input_tokens']} input + {s['output_tokens']} output tokens, "
                   f"${s['cost_usd']:.4f}")
        r = rep["latest_run"]
        if r:
            proj = "unknown (no answer yet to price)" if r["projected_remaining_usd"] is None else f"${r['projected_remaining_usd']:.4f}"
            typer.echo(f"last generate ({r['status']}): {r['inputs']} inputs, {r['cache_hits']} cache hits, "
                       f"{r['retries']} retries, {r['remaining']} of {r['unique_requests']} requests unanswered, "
                       f"projected cost of the rest {proj}")


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="Traffic: JSONL, or a calls.sqlite for served traffic.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Records JSONL to write.")] = Path("imported.jsonl"),
    format: Annotated[str, typer.Option(help="auto, finetune, openai-log, pairs or served.")] = "auto",
    requests: Annotated[Optional[Path], typer.Option(help="Batch API input JSONL, to join a batch output by custom_id.")] = None,
) -> None:
    """Turn existing teacher traffic (chat-completion logs, fine-tuning JSONL, request/response pairs, served calls) into records."""
    from potstill.importers import import_traffic

    n = import_traffic(source, out, format, requests)
    typer.echo(f"wrote {n} records to {out}")


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with student/, val.jsonl and train.jsonl.")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Config (default: RUN/potstill.yaml).")] = None,
    host: Annotated[Optional[str], typer.Option(help="serve.host: address to bind.")] = None,
    port: Annotated[Optional[int], typer.Option(help="serve.port: port to listen on.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="serve.api_key_env: variable holding the clients' Bearer key ('' = no auth).")] = None,
    target_escalation: Annotated[Optional[float], typer.Option(help="serve.target_escalation: most val share sent to the teacher.")] = None,
    target_agreement: Annotated[Optional[float], typer.Option(help="serve.target_agreement: val agreement to reach instead.")] = None,
    recalibrate: Annotated[bool, typer.Option(help="Recalibrate routing even if RUN/serve/routing.json is current.")] = False,
) -> None:
    """Serve the student behind an OpenAI-compatible API, escalating to the teacher by calibrated routing."""
    from potstill.serve import run_config
    from potstill.serve import serve as run_server

    flags = {"host": host, "port": port, "api_key_env": api_key_env, "target_escalation": target_escalation,
             "target_agreement": target_agreement}
    cfg = run_config(run_dir, config, {f"serve.{k}": v for k, v in flags.items() if v is not None})
    run_server(run_dir, cfg, recalibrate=recalibrate)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory whose eval.json is the champion.")],
    compare: Annotated[Optional[list[Path]], typer.Option(
        "--compare", help="Another run directory (or its eval.json) shown as a challenger; repeatable.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the page (default: RUN_DIR/report.html).")] = None,
) -> None:
    """Rebuild report.html from eval.json, with other runs' students side by side (champion vs challenger)."""
    from potstill.evaluate.html import compare_report

    typer.echo(f"wrote {compare_report(run_dir, compare or [], out)}")


@app.command()
def review(
    run_dir: Annotated[Path, typer.Argument(help="Curated run directory (teacher.jsonl and card.json).")],
    host: Annotated[str, typer.Option(help="Address to bind (keep 127.0.0.1 unless you mean to share it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the review page.")] = 8765,
    sample: Annotated[int, typer.Option(min=1, help="Records in the stratified sample.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of the sample order.")] = 0,
) -> None:
    """Review a stratified sample of teacher outputs in the browser (a accept, r reject, 1-9 relabel); the next curate applies it."""
    from potstill.review.app import serve as serve_review

    serve_review(run_dir, host, port, sample, seed)


def _export(cfg: Config, fmt: str, out: Optional[Path]) -> None:
    """Export the run: openai-jsonl (train/val as OpenAI fine-tuning JSONL), hf (merged student weights), gguf (f16/q8_0 + Ollama Modelfiles)."""
    from potstill.export import export

    for path in export(cfg, fmt, out):
        typer.echo(f"wrote {path}")


_SECTIONS["export"] = ["task", "student", "export"]
_config_command("export", _export, [
    inspect.Parameter("fmt", inspect.Parameter.KEYWORD_ONLY, default="openai-jsonl",
                      annotation=Annotated[str, typer.Option("--format", help="Export format: openai-jsonl, hf or gguf.")]),
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: RUN/export/FORMAT).")]),
])


def _watch(run_dir: Path, config: Optional[Path], since: Optional[str], until: Optional[str], **flags: Optional[str]) -> None:
    """Compare the latest served traffic (RUN/calls.sqlite) with the training inputs: input drift (MMD on the
    student's embeddings), label-mix drift and escalation share; writes RUN/watch/report.{json,md}.
    Exit code: 0 within thresholds, 3 drift flagged, 2 error."""
    from potstill.serve import run_config
    from potstill.watch import EXIT_DRIFT, parse_time, watch_run

    overrides = {k.replace("__", "."): yaml.safe_load(v) for k, v in flags.items() if v is not None}
    cfg = run_config(run_dir, config, overrides)
    report = watch_run(run_dir, cfg, parse_time(since) if since else None, parse_time(until) if until else None)
    raise typer.Exit(EXIT_DRIFT if report["drift"] else 0)


# `watch RUN`: a positional run directory, RUN/potstill.yaml by default, and a --watch.FIELD flag per WatchConfig field.
_watch.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("run_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[Path, typer.Argument(metavar="RUN", help="Served run directory.")]),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[Path], typer.Option("--config", "-c", help="Config (default: RUN/potstill.yaml).")]),
    inspect.Parameter("since", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
        help="Watch the requests from this time instead of the latest window: unix seconds, ISO 8601, or 24h/7d ago.")]),
    inspect.Parameter("until", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
        help="Watch the requests up to this time (same formats as --since).")]),
    *(inspect.Parameter(k.replace(".", "__"), inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option(f"--{k}", help=f"{d} [{getattr(a, '__name__', str(a))}]", rich_help_panel="watch")])
      for k, a, d in flat_fields(Config) if k.startswith("watch.")),
])
app.command("watch")(_watch)


@app.command("export-check")
def export_check(file: Annotated[Path, typer.Argument(help="JSONL file in OpenAI's chat fine-tuning format.")]) -> None:
    """Check an OpenAI fine-tuning JSONL file: prints one file:line problem per line, exit 1 if any."""
    from potstill.export.check import check_openai_jsonl

    problems = check_openai_jsonl(file)
    for problem in problems:
        typer.echo(problem)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{file}: ok")


@app.command()
def redistill(
    run_dir: Annotated[Path, typer.Argument(help="Served run directory (student/, splits, calls.sqlite).")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Config (default: RUN/potstill.yaml).")] = None,
    student_sample: Annotated[Optional[float], typer.Option(help="redistill.student_sample: student-answered requests re-asked from the teacher (fraction 0-1, 1 = all, or a count > 1).")] = None,
    new_test: Annotated[Optional[float], typer.Option(help="redistill.new_test: share of new traffic held out as the new-traffic test.")] = None,
    min_gain: Annotated[Optional[float], typer.Option(help="redistill.min_gain: agreement gain on new traffic the challenger must exceed.")] = None,
    max_frozen_drop: Annotated[Optional[float], typer.Option(help="redistill.max_frozen_drop: most agreement the challenger may lose on RUN/test.jsonl.")] = None,
    require_significant: Annotated[Optional[bool], typer.Option("--require-significant/--no-require-significant", help="redistill.require_significant: the gain's 95% interval must lie above 0.")] = None,
    promote: Annotated[Optional[bool], typer.Option("--promote/--no-promote", help="redistill.promote: promote a winning challenger.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="redistill.seed: seed of the sample and of the new-traffic split.")] = None,
    rollback: Annotated[Optional[str], typer.Option(help="Instead: point RUN/student back at a kept student (students/<id>).")] = None,
) -> None:
    """Train a challenger on served traffic and promote it only if it beats the champion on new traffic and holds on the frozen test."""
    from potstill import redistill as rd
    from potstill.serve import run_config

    if rollback is not None:
        info = rd.rollback(run_dir, rollback)
        typer.echo(f"RUN/student -> {info['current']} (was {info['previous']})")
        return
    flags = {"student_sample": student_sample, "new_test": new_test, "min_gain": min_gain,
             "max_frozen_drop": max_frozen_drop, "require_significant": require_significant, "promote": promote,
             "seed": seed}
    cfg = run_config(run_dir, config, {f"redistill.{k}": v for k, v in flags.items() if v is not None})
    rd.redistill(run_dir, cfg)


def main() -> None:
    """Entry point: usage errors are click's (message + exit 2); PotstillError is one red line, exit 2."""
    try:
        app()
    except PotstillError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
