"""potstill.yaml: loading a run's config with clear errors, dotted overrides, paths, the CLI's
flags and the starter YAML. The section models live in ``potstill.config_models`` and are
re-exported here, so ``from potstill.config import Config, TrainConfig, load_config`` works.

Unknown fields are refused with a suggestion.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from potstill.config_models import (  # noqa: F401  (the sections, re-exported: import them from here)
    Config, CurateConfig, DataConfig, DtypeName, EvaluateConfig, ExportConfig, FewShotConfig, GenerateConfig,
    INPUT_FILE, JudgeConfig, MODEL_REF, PathRole, PilotConfig, PriceConfig, QualityBar, RUN_PATH,
    RedistillConfig, ReportConfig, Section, ServeConfig, StudentConfig, SynthesizeConfig, TaskConfig,
    TeacherConfig, TrainConfig, WatchConfig, _default_prices,
)
from potstill.errors import PotstillError


def _section_model(ann: Any) -> type[BaseModel] | None:
    """The section model a field holds, also where it may be null (``evaluate.judge.teacher``)."""
    for t in (ann, *typing.get_args(ann)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at a location (for 'did you mean' suggestions)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        inner = None if field is None else _section_model(field.annotation)
        if inner is None:
            return list(model.model_fields)
        model = inner
    return list(model.model_fields)


# Names a TRL / transformers / OpenAI user reaches for first, and what potstill calls them.
ALIASES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size", "lora_rank": "lora_r", "r": "lora_r", "max_seq_length": "max_length",
    "model_name_or_path": "model", "model_name": "model", "api_key": "api_key_env", "top_logprobs": "logprobs",
    "warmup": "warmup_steps", "temperature": "kd_temperature", "alpha": "kd_weight",
}


def _explain(e: ValidationError, source: str, flags: list[str] = (), names: dict[str, str] | None = None) -> str:
    """One line for the first error; ``names``: the flag each override key was typed as (``--port``
    for ``serve.port``), else ``--key``."""
    err = e.errors()[0]
    loc = tuple(err["loc"])
    where = ".".join(str(x) for x in loc)
    # A value a flag set over a file is named by its flag, not by the file (which may hold a valid one).
    flag = next((k for k in flags if where == k or where.startswith(k + ".")), None)
    typed = (names or {}).get(flag, f"--{flag}")
    at = typed + (f": {where[len(flag) + 1:]}" if where != flag else "") if flag else \
        f"{source}: {where or 'config'}"
    if flag:
        source = typed
    # pydantic's prefix for a check of ours that raised ValueError: the message is the whole story.
    msg = err["msg"].removeprefix("Value error, ")
    if not flag and err["type"] == "value_error":
        # A check across fields (the config's or a section's own validator) is located at the config
        # or the section, not at the field: `--task.labels '[a]'` was blamed on the file, which held
        # a valid list. The flags whose keys the message names, under that location, are the culprits.
        mentioned = sorted((m.start(), k) for k in flags if not where or k.startswith(where + ".")
                           for m in [re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", msg)] if m)
        if mentioned:
            keys = [k for _, k in mentioned]
            said = " and ".join((names or {}).get(k, f"--{k}") for k in keys)
            # "task.labels needs ..." after "--task.labels: " says the key twice.
            return f"{said}: {msg.removeprefix(keys[0] + ' ') if len(keys) == 1 else msg}"
    if err["type"] == "extra_forbidden":
        valid = _fields_at(Config, loc[:-1])
        alias = ALIASES.get(str(loc[-1]))
        close = [alias] if alias in valid else difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"{source}: unknown config field '{where}'{hint}"
    if err["type"] == "string_type" and isinstance(err.get("input"), bool):
        # Its text is gone (yes, on and true all load as True): only the user can say which it was.
        return (f"{at}: {msg} (YAML reads yes/no, on/off and true/false as booleans: "
                f"quote the value, as in 'yes')")
    return f"{at}: {msg}"


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise PotstillError(f"cannot set '{key}': '{p}' is not a section")
    node[parts[-1]] = value


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: plain YAML keeps the last,
    so a second `train:` block would drop every field of the first without a word. Keys brought in
    by a merge (``<<: *base``) may still be overridden, as YAML means them to be."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key}' (first on line {first[key] + 1})", key_node.start_mark)
                first[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base loader names it
                pass
        return super().construct_mapping(node, deep)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (``UniqueKeyLoader``)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: the problem and where, without its multi-line excerpt."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                flag_names: dict[str, str] | None = None) -> Config:
    """Load potstill.yaml (or defaults), apply dotted overrides, validate with clear errors.
    ``flag_names``: the flag each override was typed as, for its error (default ``--key``)."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise PotstillError(f"{path}: config file not found (write one with `potstill init`)")
        if path.is_dir():
            raise PotstillError(f"{path} is a directory, not a config file")
        try:
            data = safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise PotstillError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except yaml.YAMLError as e:
            raise PotstillError(f"{path}: invalid YAML: {yaml_problem(e)}") from None
        if not isinstance(data, dict):
            raise PotstillError(f"{path}: expected a mapping at the top level")
        _empty_sections(data, Config)
        # Relative paths in a config file are relative to the file, not to the shell's cwd.
        data = _resolve_paths(data, path.parent)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    _resolve_paths(data, None)  # a flag's ~/x too (a quoted one the shell left alone); relative: to the cwd
    generate = data.get("generate")
    if isinstance(generate, dict) and isinstance(generate.get("prices"), dict):
        # A config's price table extends the built-in one (its entries win): a config that priced
        # only its own model left every built-in one unpriced, its calls at $0.
        generate["prices"] = {**_default_prices(), **generate["prices"]}
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        # A flag's bad value is named by the flag, with a config file or without one (the CLI names
        # its flags in flag_names); overrides a program passes without a file stay "config".
        flags = list(overrides or {}) if path is not None or flag_names else []
        raise PotstillError(_explain(e, source, flags, flag_names)) from None


def _empty_sections(data: dict, model: type[BaseModel]) -> None:
    """A section left with no value (``export:`` after all its fields were commented out: YAML
    null) is that section's defaults, as if the line were gone."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name in data:
            if data[name] is None:
                data[name] = {}
            if isinstance(data[name], dict):
                _empty_sections(data[name], ann)


def path_roles(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, PathRole]:
    """Dotted name -> PathRole of every field marked as a path, also inside a section that may be
    null (``evaluate.judge.teacher.replay_path``)."""
    out: dict[str, PathRole] = {}
    for name, field in model.model_fields.items():
        inner = _section_model(field.annotation)
        if inner is not None:
            out.update(path_roles(inner, f"{prefix}{name}."))
        for role in field.metadata:
            if isinstance(role, PathRole):
                out[f"{prefix}{name}"] = role
    return out


def _resolve_paths(data: dict, base: Path | None) -> dict:
    """Path fields as the stages read them: a leading ``~`` is the home directory (in every path
    field: ``student.model: ~/models/base`` counts by its weights only once it names the folder),
    and, given ``base``, a relative path is relative to it (the config file's folder): a model's
    only when written ./x or ../x."""
    for key, role in path_roles().items():
        *parents, leaf = key.split(".")
        node: Any = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(leaf), str):
            continue
        if node[leaf].startswith("hf://"):  # a file on the Hugging Face Hub (hub_files), not a path
            continue
        if not node[leaf].strip():  # no path: left for the field's check, not read as the config's folder
            continue
        if node[leaf].startswith("~"):
            node[leaf] = os.path.expanduser(node[leaf])
        # A model reference is a hub id (org/name) unless it is plainly a path: ./x and ../x are.
        path_like = role.resolve or node[leaf] in (".", "..") or node[leaf].startswith(("./", "../"))
        if path_like and base is not None and not Path(node[leaf]).is_absolute():
            node[leaf] = _join(base, node[leaf])
    return data


def _join(base: Path, rel: str) -> str:
    """``base/rel`` as the file system reads it, written short: RUN/../inputs.jsonl reads as
    inputs.jsonl, unless RUN is (or lies under) a symlink, where '..' climbs out of the link's target
    and not back to the folder that holds the link: a run directory reached as proj/runs/exp1, with
    proj/runs a link to another disk, saves its paths relative to its real place (``relative_paths``),
    and ../../proj/data/in.jsonl collapsed by hand named a file that is not there (or another one)."""
    joined = base / rel
    short = os.path.normpath(joined)
    return short if os.path.realpath(short) == os.path.realpath(joined) else os.path.realpath(joined)


def relative_paths(cfg: Config, base: Path) -> dict[str, Any]:
    """``cfg`` as plain data with its resolvable paths relative to ``base``: the inverse of loading
    a config file that lives in ``base``, so a directory moved whole still loads."""
    data = cfg.model_dump(mode="json")
    base = base.resolve()
    for key, role in path_roles().items():
        *parents, leaf = key.split(".")
        node: Any = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(leaf), str) or node[leaf].startswith("hf://"):
            continue
        if role.resolve:
            node[leaf] = os.path.relpath(Path(node[leaf]).resolve(), base)
        elif (node[leaf] and not os.path.isabs(node[leaf]) and Path(node[leaf]).exists()
              and node.get("type", "local") == "local"):
            # A local model named by a relative path (relative to the shell's folder once loaded; a
            # hub id, or an absolute path, is left as written) is read back as a path only when
            # written ./x or ../x (``_resolve_paths``). An API teacher's model is a served name,
            # whatever folder happens to share it.
            rel = os.path.relpath(Path(node[leaf]).resolve(), base)
            node[leaf] = rel if rel.startswith("..") else os.path.join(".", rel)
    return data


def flat_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, annotation, description) for every leaf field: the CLI's flags."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(flat_fields(ann, key + "."))
        else:
            out.append((key, ann, field.description or ""))
    return out


def starter_yaml() -> str:
    """A commented potstill.yaml with every field at its default, for `potstill init`."""
    lines = ["# potstill.yaml: one distillation run. Every field can be overridden as --section.field on the CLI."]

    def walk(model: type[BaseModel], obj: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in model.model_fields.items():
            value = getattr(obj, name)
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{name}:")
                walk(type(value), value, indent + 1)
                continue
            if field.description:
                lines.append(f"{pad}# {field.description}")
            if field.default is None:  # left unset, as the description says (train.lr: resolved by method at load)
                value = None
            plain = to_jsonable_python(value)  # dicts of sections (e.g. a price table) become plain mappings
            dumped = yaml.safe_dump({name: plain}, default_flow_style=True, width=1000).strip()
            lines.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")

    cfg = Config(task=TaskConfig(labels=["positive", "negative"]))
    walk(Config, cfg, 0)
    return "\n".join(lines) + "\n"
