"""Whether a kept student can be loaded at all, told cheaply before redistill pays or moves anything.

A server refuses a student it cannot load (409 on a hot swap, one line at start) and keeps the old
one; a rollback that pointed RUN/student at such a student left RUN/student naming a model no server
runs, and the next redistill paid the teacher and trained a challenger before it failed loading the
champion. Loading a student to find out takes its whole weights into memory (seconds to minutes);
this reads what loading reads first: the config, and each safetensors file's header, which
safetensors checks against the file's size (a file cut short fails it), and a sharded model's
index against its shards. Weights that pass and still fail to load (a tensor of another shape than
the config's, an encoder's folder) fail where they are loaded, in one line as well.
"""

from __future__ import annotations

import json
from pathlib import Path

from potstill.models.loading import weight_files

INDEX = "model.safetensors.index.json"  # transformers' name for a sharded checkpoint's map


def why_unloadable(path: Path) -> str | None:
    """Why the student folder ``path`` cannot load (one clause), or None where nothing shows it."""
    path = Path(path)
    cfg_name = "adapter_config.json" if (path / "adapter_config.json").exists() else "config.json"
    try:
        config = json.loads((path / cfg_name).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{cfg_name} cannot be read ({type(e).__name__}: {_first_line(e)})"
    if not isinstance(config, dict):
        return f"{cfg_name} is not a JSON object"
    weights = weight_files(path)
    if not weights:
        return "no weights in it (no *.safetensors or *.bin file)"
    keys: dict[str, set[str]] = {}
    for f in (w for w in weights if w.suffix == ".safetensors"):
        try:
            keys[f.name] = _header_keys(f)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types, which name no file
            return f"{f.name}: {type(e).__name__}: {_first_line(e)}"
    if (path / INDEX).exists():
        try:
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
            wanted = {(str(name), str(shard)) for name, shard in weight_map.items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{INDEX} cannot be read ({type(e).__name__}: {_first_line(e)})"
        for name, shard in sorted(wanted):
            if shard not in keys:
                return f"{INDEX} names the shard {shard}, which is not there"
            if name not in keys[shard]:
                return f"{INDEX} puts {name} in {shard}, which does not hold it"
    return None


def _header_keys(f: Path) -> set[str]:
    from safetensors import safe_open

    # Reads the 8-byte length and the JSON header only (the tensors are mapped, not read), and
    # fails where the offsets in it do not cover the file exactly.
    with safe_open(str(f), framework="pt") as st:
        return set(st.keys())


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""
