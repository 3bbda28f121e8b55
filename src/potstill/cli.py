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
    "pilot": ["task", "data", "teacher", "student", "pilot", "evaluate"],
    "generate": ["task", "data", "teacher"],
    "curate": ["task", "data", "teacher", "curate"],
    "train": ["task", "student", "train"],
    "evaluate": ["task", "student", "evaluate"],
    "run": ["task", "data", "teacher", "student", "pilot", "curate", "train", "evaluate"],
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


def _generate(cfg: Config, force: bool) -> None:
    """Run the teacher over every input (cached in the ledger; a rerun sends nothing twice)."""
    from potstill.generate.stage import generate_stage

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


for _name, _fn in (("pilot", _pilot), ("generate", _generate), ("curate", _curate), ("train", _train),
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
    inputs: Annotated[int, typer.Option(help="BBC articles to distil on.")] = 900,
    test: Annotated[int, typer.Option(help="Held-out test articles.")] = 250,
    shots: Annotated[int, typer.Option(help="Few-shot examples in the teacher's prompt.")] = 50,
    objective: Annotated[str, typer.Option(help="sft or kd (label-level distillation).")] = "sft",
) -> None:
    """The embedded default, end to end, offline: BBC News topics, gemma-3-270m teacher, SmolLM2 student."""
    from potstill.pipeline import run_all
    from potstill.quickstart import quickstart_config

    cfg = quickstart_config(run_dir, {"train.objective": objective}, n_inputs=inputs, n_test=test, n_shots=shots)
    out = run_all(cfg)
    typer.echo(f"artifacts in {run_dir}: eval.json, pilot.json, card.md, student/; timings: "
               + json.dumps({k: v["seconds"] for k, v in out["timings"].items()}))


@app.command()
def cost(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Print spend, tokens and calls from the run's ledger."""
    from potstill.ledger import Ledger

    path = run_dir / "calls.sqlite"
    if not path.exists():
        raise PotstillError(f"{path} not found")
    with Ledger(path) as ledger:
        for role in ("teacher", "student"):
            s = ledger.summary(role)
            typer.echo(f"{role}: {s['calls']} calls, {s['input_tokens']} input + {s['output_tokens']} output tokens, "
                       f"${s['cost_usd']:.4f}")
        typer.echo(f"errors: {ledger.count(status='error')}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except PotstillError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors raised because standalone_mode is off
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
