"""The factor some architectures put on their logits after the LM head.

Most causal LMs return ``hidden @ W.T`` as their logits, and potstill's heads compute exactly that
from the last hidden states (the label rows in scoring, the chunked heads in training). Some scale
it: Granite (3.x and 4.0, dense, MoE and hybrid) divides by ``config.logits_scaling`` (8 or 16),
Cohere's Command models multiply by ``config.logit_scale`` (1/16 or 1/8), Falcon-H1 by its decoder's
``lm_head_multiplier``, HyperCLOVA X multiplies by its ``logits_scaling``. The config names do not
say which way (Granite divides by the field HyperCLOVA X multiplies by), so the factor is read off
the model itself: its forward on 4 positions with the decoder stood in for by given hidden states
(the head and what follows it run, no layer), compared with the bare head on the same hidden
states, then matched to the config value it comes from so that it is exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# Set on the model (a plain attribute: save_pretrained never writes it), so the probe runs once.
_ATTR = "_potstill_logit_scale"


def logit_scale(model: Any) -> float | None:
    """What ``model``'s forward multiplies ``hidden @ W.T`` (+ bias) by to give its logits, before
    any final soft-cap (``final_logit_softcapping``, which ``scoring.apply_head`` applies itself): 1.0
    for most architectures; None where the logits are no such product (an unknown head: potstill's
    heads cannot reproduce them)."""
    known = getattr(model, _ATTR, False)
    if known is not False:
        return known
    try:
        scale = _measure(model)
    except Exception:  # noqa: BLE001 - a forward this probe cannot make: the bare head, as before the probe
        scale = 1.0
    object.__setattr__(model, _ATTR, scale)
    return scale


class _Given(torch.nn.Module):
    """Stands in for a model's decoder for one call: returns the given hidden states, so the model's
    forward runs only its head and what follows it (no layer: a probe at load must cost nothing and
    run no layer a caller may be watching). Other attributes are the decoder's: Falcon-H1's head
    reads its multiplier off it (``self.model.lm_head_multiplier``)."""

    def __init__(self, hidden: torch.Tensor, body: Any):
        super().__init__()
        self.hidden = hidden
        object.__setattr__(self, "_body", body)  # not a submodule: its parameters stay the model's

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_body"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPast

        return BaseModelOutputWithPast(last_hidden_state=self.hidden)


def _measure(model: Any) -> float | None:
    head = model.get_output_embeddings()
    weight = head.weight
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 4, weight.shape[1], generator=gen).to(device=weight.device, dtype=weight.dtype)
    ids = torch.zeros(1, 4, dtype=torch.long, device=weight.device)
    prefix = model.base_model_prefix
    body = getattr(model, prefix)
    was_training = model.training
    model.eval()
    try:
        setattr(model, prefix, _Given(hidden, body))
        with torch.no_grad():
            full = model(input_ids=ids, use_cache=False).logits.float()
            plain = head(hidden).float()
    finally:
        setattr(model, prefix, body)
        model.train(was_training)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # undo the soft-cap where it is invertible (it saturates near +-cap)
        full = torch.atanh((full / cap).clamp(-0.999, 0.999)) * cap
    denom = float((plain * plain).sum())
    if not math.isfinite(denom) or denom == 0.0:
        return 1.0
    measured = float((full * plain).sum()) / denom
    scale = _config_value(model.config, measured)
    # bf16 rounds each logit to 3 significant digits; a head that is no product misses by far more.
    tol = 1e-4 if weight.dtype == torch.float32 else 3e-2
    err = float((full - scale * plain).abs().max())
    return scale if err <= tol * max(1.0, float(full.abs().max())) else None


def _config_value(config: Any, measured: float) -> float:
    """The value (or its inverse) of a number in ``config`` (or its ``text_config``) within 1% of
    ``measured``, so that a factor of 1/8 is 0.125 exactly; else ``measured`` itself (1.0 first)."""
    candidates = [1.0]
    for cfg in (config, getattr(config, "text_config", None)):
        for v in vars(cfg).values() if cfg is not None else ():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                candidates += [float(v), 1.0 / float(v)]
    best = min(candidates, key=lambda c: abs(c - measured))
    return best if abs(best - measured) <= 0.01 * abs(measured) else measured
