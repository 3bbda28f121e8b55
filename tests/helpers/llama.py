"""Whether llama.cpp's ``llama-server`` is here (on PATH, or ``POTSTILL_LLAMA_SERVER``): the tests that
start one skip without it (CI has none: building it takes about 15 minutes on 2 cores)."""

from __future__ import annotations

import pytest

from potstill.engines.llamacpp import SERVER_ENV, server_binary
from potstill.errors import PotstillError


def has_llama_server() -> bool:
    try:
        server_binary()
        return True
    except PotstillError:
        return False


needs_llama_server = pytest.mark.skipif(not has_llama_server(), reason=f"llama-server not on PATH ({SERVER_ENV} unset)")
