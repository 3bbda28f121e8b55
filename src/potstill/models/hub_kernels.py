"""Keeps the ``kernels`` package's layer routing out of potstill's models.

transformers (5.x) wraps some layers' forward (Llama's attention among them) so that
``kernels.kernelize`` can route a function such as ``apply_rotary_pos_emb`` to a hub kernel. The
routing lives in one process-wide variable (``kernels._internals.layer.layer._ACTIVE_KERNEL_FUNCS``)
that, while any thread is tracing under ``torch.compile`` (``torch.compiler.is_compiling()`` is a
process-wide flag), every thread writes as a plain global. So a model compiling in one thread while
another runs eagerly in a second (serve: the compiled student's batcher and a local teacher's
escalation, or a hot-swapped student warming beside the live one) reads the other thread's dict in
the middle of its trace, and dynamo fails building its guards ("Unexpected type <class 'dict'>",
"Expected dict, got NoneType"): the request that met the new shape got a 500.

potstill never kernelizes a model (no hub kernel is fetched), so the routing has nothing to route:
``stop_routing`` puts a stateless stand-in in its place, under which each wrapped layer calls its
own function, as it does unkernelized. A process that kernelizes models of its own beside potstill's
would see them run their plain functions.
"""

from __future__ import annotations

from typing import Any


class NoRouting:
    """``_ACTIVE_KERNEL_FUNCS`` with nothing active: ``get`` None (each layer calls its own function),
    ``set`` and ``reset`` keep nothing, so no thread sees another's state."""

    def get(self) -> None:
        return None

    def set(self, value: Any) -> None:
        return None

    def reset(self, token: Any) -> None:
        return None


def stop_routing() -> bool:
    """Put ``NoRouting`` in place of the kernels package's routing variable; False where the package
    (or that variable, in another version) is not there, and nothing was changed."""
    try:
        from kernels._internals.layer import layer
    except ImportError:
        return False
    if isinstance(getattr(layer, "_ACTIVE_KERNEL_FUNCS", None), NoRouting):
        return True
    if not hasattr(getattr(layer, "_ACTIVE_KERNEL_FUNCS", None), "global_var"):
        return False
    layer._ACTIVE_KERNEL_FUNCS = NoRouting()
    return True
