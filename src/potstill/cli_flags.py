"""How a config field becomes a command-line flag: ``--section.field VALUE`` (and a run command's
short ``--field``), its help from the field's description, type and default, and its value read as
a YAML scalar (a text field's taken as written). ``potstill.cli.config_command`` puts them on each
command."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any, Literal, Optional

import typer
import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich.markup import escape

from potstill.config import Config, safe_load, yaml_problem
from potstill.errors import PotstillError


YAML_NULLS = ("null", "Null", "NULL", "~")


def flag_value(key: str, text: str, ann: Any) -> Any:
    """A flag's value: a YAML scalar, except in a text field, which takes the text as written.

    YAML would read ``--teacher.answer_prefix 'Answer:'`` as a mapping, ``--curate.output_regex
    '[ab]+'`` as a list, ``'# ...'`` and ``''`` as null (so ``--api-key-env ''`` could not turn auth
    off); a text field gets none of those, nor does one value of a list of text (``--teacher.stop
    'Q:'``). A quoted value still loses its quotes, and a field that may be unset takes null (or ~).
    """
    args = set(typing.get_args(ann))
    if ann is str or args == {str, type(None)}:
        if args and text.strip() in YAML_NULLS:
            return None
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            try:
                quoted = safe_load(text)
            except yaml.YAMLError:
                return text
            return quoted if isinstance(quoted, str) else text
        return text
    if _text_items(ann) and text.strip() and text.strip() not in YAML_NULLS and not text.lstrip().startswith("["):
        # One value of a list of text is that text, as a text field's is: YAML would read a stop
        # sequence 'Q:' as a mapping and '###' as a comment (null).
        return [flag_value(key, text, str)]
    value = _yaml_value(key, text)
    if _is_list(ann) and value is not None and not isinstance(value, (list, dict)):
        return [value]  # `--tracking mlflow`: one value is a one-item list, as `--report_to wandb` is in TRL
    return value


def _is_list(ann: Any) -> bool:
    """A list field, also where it may be null (``list[str] | None``)."""
    return any(typing.get_origin(t) is list or t is list for t in (ann, *typing.get_args(ann)))


def _text_items(ann: Any) -> bool:
    """A list of text (``list[str]``, a list of string choices), also where it may be null."""
    for t in (ann, *typing.get_args(ann)):
        if typing.get_origin(t) is list and typing.get_args(t):
            item = typing.get_args(t)[0]
            choices = typing.get_args(item) if typing.get_origin(item) is Literal else ()
            return item is str or (bool(choices) and all(isinstance(c, str) for c in choices))
    return False


def _yaml_value(key: str, text: str) -> Any:
    """A flag's value read as YAML (the value itself is not repeated in the error: it may be a secret)."""
    try:
        return safe_load(text)
    except yaml.YAMLError as e:
        raise PotstillError(f"--{key}: the value is not valid YAML: {yaml_problem(e)}") from None


MISSING = object()


def builtin_defaults(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf field -> its built-in default (what ``flat_fields`` lists)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(builtin_defaults(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field.get_default(call_default_factory=True)
    return out


def _type_text(ann: Any) -> str:
    """A field's type as a user types it: int, float, text, bool, the choices of a Literal, null."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        return _type_text(args[0])
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        shown = " | ".join(_type_text(a) for a in args if a is not type(None))
        return f"{shown} or null" if type(None) in args else shown
    if origin is list:
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict or (isinstance(ann, type) and issubclass(ann, BaseModel)):
        return "mapping"
    return {str: "text", int: "int", float: "float", bool: "bool"}.get(ann, getattr(ann, "__name__", str(ann)))


def _default_text(value: Any) -> str | None:
    """A default as YAML would write it; None for one too long to help (the price table)."""
    if isinstance(value, str):
        return value or "''"
    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("...").strip()
    return text if len(text) <= 40 else None


def short_flag(key: str) -> str:
    """A field's short flag, without its dashes: ``redistill.new_test`` -> ``new-test``."""
    return key.split(".")[-1].replace("_", "-")


def field_flags(key: str, ann: Any, desc: str, default: Any, short: bool) -> list[inspect.Parameter]:
    """``--section.field VALUE`` (a YAML scalar the config model validates), and its short form.
    Its help is the field's description, its type and (``default`` not ``MISSING``) its default,
    escaped: rich would read ``'potstill[ctranslate2]'`` or ``[int]`` as markup and drop it.

    The short form is a parameter of its own (``short___``; ``flag___`` for a yes/no field), so an
    error names the flag the user typed; click tells no option's names apart. Help lists it beside
    the long one."""
    shown = None if default is MISSING else _default_text(default)
    panel = key.split(".")[0] if "." in key else "run"
    dashed = short_flag(key)
    also = f" (short: --{dashed})" if short and ann is not bool else ""
    help = escape(f"{desc}{also} [{_type_text(ann)}" + (f"; default {shown}]" if shown is not None else "]"))
    name = key.replace(".", "__")
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option(f"--{key}", help=help, rich_help_panel=panel)])]
    if short and ann is not bool:
        params.append(inspect.Parameter("short___" + name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[str], typer.Option(
                                            f"--{dashed}", help=f"--{key}.", hidden=True, rich_help_panel=panel)]))
    if short and ann is bool:
        params.append(inspect.Parameter("flag___" + name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[bool], typer.Option(
                                            f"--{dashed}/--no-{dashed}", help=f"--{key} true / false.",
                                            rich_help_panel=panel)]))
    return params
