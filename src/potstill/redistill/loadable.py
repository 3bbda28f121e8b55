"""Whether a kept student can be loaded at all, told cheaply before redistill pays or moves anything.

A server refuses a student it cannot load (409 on a hot swap, one line at start) and keeps the old
one; a rollback that pointed RUN/student at such a student left RUN/student naming a model no server
runs, and the next redistill paid the teacher and trained a challenger before it failed loading the
champion. Loading a student to find out takes its whole weights into memory (seconds to minutes);
this reads what loading reads first: the config, and each safetensors file's header, which
safetensors checks against the file's size (a file cut short fails it), and a sharded model's
index against its shards. A student saved as PyTorch ``.bin`` files (``safe_serialization=False``),
which loading reads only where no safetensors file is there: each is a zip archive (PyTorch's format
since 1.6), whose directory at the file's end a file cut short has lost, read without a tensor or
the pickle; and its index's shards are there. Weights that pass and still fail to load (a tensor
of another shape than the config's, an encoder's folder) fail where they are loaded, in one line
as well.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from potstill.models.loading import weight_files

INDEX = "model.safetensors.index.json"  # transformers' name for a sharded checkpoint's map
BIN_INDEX = "pytorch_model.bin.index.json"  # the same for .bin shards (transformers' WEIGHTS_INDEX_NAME)
ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first local header: torch.save's format since PyTorch 1.6


def why_unloadable(path: Path) -> str | None:
    """Why the student folder ``path`` cannot load (one clause), or None where nothing shows it."""
    path = Path(path)
    cfg_name = "adapter_config.json" if (path / "adapter_config.json").exists() else "config.json"
    try:
        config = json.loads((path / cfg_name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{cfg_name} cannot be read ({type(e).__name__}: {_first_line(e)})"
    if not isinstance(config, dict):
        return f"{cfg_name} is not a JSON object"
    weights = weight_files(path)
    if not weights:
        return "no weights in it (no *.safetensors or *.bin file)"
    if not any(w.suffix == ".safetensors" for w in weights):
        return _why_bin_unloadable(path, weights)
    keys: dict[str, set[str]] = {}
    for f in (w for w in weights if w.suffix == ".safetensors"):
        try:
            keys[f.name] = _header_keys(f)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types, which name no file
            return f"{f.name}: {type(e).__name__}: {_first_line(e)}"
    if (path / INDEX).exists():
        try:
            weight_map = json.loads((path / INDEX).read_text(encoding="utf-8"))["weight_map"]
            wanted = {(str(name), str(shard)) for name, shard in weight_map.items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{INDEX} cannot be read ({type(e).__name__}: {_first_line(e)})"
        for name, shard in sorted(wanted):
            if shard not in keys:
                return f"{INDEX} names the shard {shard}, which is not there"
            if name not in keys[shard]:
                return f"{INDEX} puts {name} in {shard}, which does not hold it"
    return None


def _why_bin_unloadable(path: Path, weights: list[Path]) -> str | None:
    """Why PyTorch ``.bin`` weights cannot load: a file that begins as a zip archive and whose zip
    directory cannot be read (cut short), one whose archive holds no pickle, or a shard the index
    names that is not there. A file that is no zip at all (PyTorch's format before 1.6) is left to
    loading to judge."""
    for f in weights:
        try:
            with open(f, "rb") as fh:
                if fh.read(4) != ZIP_MAGIC:
                    continue
            with zipfile.ZipFile(f) as z:  # reads the end-of-directory record and the directory only
                names = z.namelist()
        except zipfile.BadZipFile as e:
            return (f"{f.name}: BadZipFile: {_first_line(e)} (a PyTorch checkpoint is a zip archive, whose "
                    "directory at its end this one lacks: cut short or damaged)")
        except OSError as e:
            return f"{f.name}: {type(e).__name__}: {_first_line(e)}"
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return f"{f.name}: a zip archive with no data.pkl in it, so no PyTorch checkpoint"
    if (path / BIN_INDEX).exists():
        try:
            index = json.loads((path / BIN_INDEX).read_text(encoding="utf-8"))
            shards = {str(shard) for shard in index["weight_map"].values()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{BIN_INDEX} cannot be read ({type(e).__name__}: {_first_line(e)})"
        for shard in sorted(shards):
            if not (path / shard).is_file():
                return f"{BIN_INDEX} names the shard {shard}, which is not there"
    return None


def _header_keys(f: Path) -> set[str]:
    from safetensors import safe_open

    # Reads the 8-byte length and the JSON header only (the tensors are mapped, not read), and
    # fails where the offsets in it do not cover the file exactly.
    with safe_open(str(f), framework="pt") as st:
        return set(st.keys())


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""
