"""Measurements potstill keeps beside a student's weights as safetensors files with a JSON header
(the int8 calibration, ``engines.calibration``; the GGUF mixes' importance matrix,
``export.imatrix``): written whole or not at all, read back with one line naming the file when it
cannot be used. ``models.loading.SIDECARS`` keeps them out of the weights' identity."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from potstill import leftovers
from potstill.atomic import ordinary_modes
from potstill.errors import PotstillError


def write(target: Path, tensors: dict[str, Any], info: dict[str, Any], framework: str) -> Path:
    """``tensors`` (``framework`` "pt" or "numpy" arrays) and ``info`` to ``target`` through a temporary
    file in its folder, renamed into place."""
    if framework == "pt":
        from safetensors.torch import save_file
    else:
        from safetensors.numpy import save_file
    # Named with its maker (``leftovers``): a writer killed outright left its temp beside the weights for
    # good; the next write of the same sidecar removes it.
    leftovers.remove(target.parent, lambda name: name == target.stem)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.{leftovers.owner()}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"potstill": json.dumps(info)})
        ordinary_modes(Path(tmp))  # mkstemp's 0600: a teammate serving the student could not read it
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read(path: Path, what: str, version: int, framework: str, delete: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, info) of the file at ``path``. An unreadable file, or one of another ``version``, is
    an error naming it and ``what`` it should hold; ``delete`` says what deleting it does."""
    from safetensors import safe_open

    try:
        open(path, "rb").close()
    except OSError as e:  # safe_open says 'No such file or directory' for a file it may not read
        raise PotstillError(f"{path}: cannot read the {what}: {e.strerror}") from None
    try:
        with safe_open(str(path), framework=framework) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), not iteration
        info = json.loads(meta["potstill"])
    except Exception as e:  # noqa: BLE001 - safetensors' errors name no file
        raise PotstillError(f"{path}: not a readable {what} ({type(e).__name__}: {e}); {delete}, or run "
                            "`potstill train` again") from None
    if info.get("version") != version:
        raise PotstillError(f"{path}: {what} version {info.get('version')}, this potstill reads {version}; "
                            "delete it or run `potstill train` again")
    return tensors, info
