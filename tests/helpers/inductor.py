"""Inductor without a working C++ compiler, for tests of how compile failures are reported."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def no_cxx_compiler(tmp_path, monkeypatch):
    """Inductor pointed at a missing C++ compiler, with no code compiled earlier in this process or
    on disk to fall back on. inductor's own patch: monkeypatch's undo deletes a config entry it did
    not find in the module's __dict__, which hides it, and every later compile in the session fails."""
    from torch._inductor import codecache

    torch._dynamo.reset()
    for cache in (codecache.PyCodeCache, codecache.CppCodeCache, codecache.CppPythonBindingsCodeCache):
        cache.cache_clear()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        yield
