"""The loss of one batch, as the trainer, its val passes and the benchmarks compute it.

``LossModule.forward`` returns per-term loss *sums* (CE on completion tokens; KD against a local
teacher's logits, an API's top-k, or the teacher's label distribution); ``combine`` divides each by
its global count and weights the KD terms. Every trainable weight is used inside that one forward,
which is what DDP and FSDP need to see; the CE and token-level KD heads are the chunked ones of
``fused_head.py`` (never batch x sequence x vocabulary logits).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from potstill.config import TrainConfig
from potstill.models.logit_scale import logit_scale
from potstill.models.scoring import apply_head, decoder
from potstill.train.attention import causal_attention, decoder_inputs
from potstill.train.batching import IGNORE, Batch, Example, collate
from potstill.train.fused_head import fused_linear_cross_entropy, fused_linear_kd, fused_linear_sparse_kd
from potstill.train.losses import label_distribution_kd
from potstill.train.neftune import neftune_noise

if TYPE_CHECKING:
    from potstill.train.teacher import KDTeacher

TERMS = ("ce", "kd", "topk", "labels")
METRIC = {"kd": "logits", "topk": "topk", "labels": "labels"}


def hidden_states(model: Any, body: Any, b: Batch, neftune_alpha: float | None = None) -> torch.Tensor:
    """The last hidden states of ``model`` on batch ``b``, through ``body`` (its decoder, maybe compiled),
    with no materialised attention mask where the batch needs none (see ``attention.py``);
    ``neftune_alpha``: NEFTune's noise on the input embeddings (``neftune_noise``)."""
    with causal_attention(model):
        inputs = decoder_inputs(model, b.attention_mask, b.position_ids, packed=b.attention_mask is None)
        if neftune_alpha:
            # The embedding module's own output (Gemma's scaled embedding included), as the ids path computes it.
            embeds = model.get_input_embeddings()(b.ids)
            embeds = embeds + neftune_noise(embeds, b, neftune_alpha)
            return body(inputs_embeds=embeds, use_cache=False, **inputs).last_hidden_state
        return body(input_ids=b.ids, use_cache=False, **inputs).last_hidden_state


def fused_head_ok(model: Any) -> bool:
    """The chunked heads compute ``hidden @ W.T`` (the hidden states scaled first by the model's
    ``logit_scale``): no bias, no final logit soft-cap, no head that is no such product."""
    head = model.get_output_embeddings()
    return (getattr(head, "bias", None) is None and not getattr(model.config, "final_logit_softcapping", None)
            and logit_scale(model) is not None)


@dataclass(frozen=True)
class LossSpec:
    kind: str
    beta: float
    alpha: float
    temperature: float
    label_ids: tuple[int, ...] | None
    fused: bool
    # The student's logit scale (``logit_scale``): Granite divides its logits by 8 or 16, Cohere
    # multiplies them by 1/16; the fused heads see the hidden states times it.
    scale: float = 1.0


class LossModule(torch.nn.Module):
    """Per-term loss *sums* of one batch; every trainable weight is used inside ``forward``."""

    def __init__(self, model: Any, base: Any, compile: bool = False, neftune_alpha: float | None = None) -> None:
        super().__init__()
        self.neftune_alpha = neftune_alpha  # train.neftune_noise_alpha: in training forwards only, not val
        self.model = model  # the trained module (a peft wrapper for LoRA), so its parameters are ours
        self.base = base  # the causal LM inside it (same parameters)
        # Fuses the norms, rotary and activation kernels. The first shape compiles static (the fastest
        # code while shapes stay constant); a second shape recompiles once with dynamic sizes.
        self._body = torch.compile(decoder(base)) if compile else None

    def forward(self, b: Batch, spec: LossSpec, teacher_h: torch.Tensor | None = None,
                teacher_w: torch.Tensor | None = None, label_choices: bool = False) -> dict[str, torch.Tensor]:
        """``label_choices`` (classification, val passes): also ``label_logits`` (N, K labels) at each
        completion's first position and ``label_targets`` (N,), the token each is trained to give there."""
        hidden = hidden_states(self.base, self._body if self._body is not None else decoder(self.base), b,
                               self.neftune_alpha if self.training else None)
        h = hidden[:, :-1]
        w = self.base.get_output_embeddings().weight
        # bf16 GEMMs on GPU (the fused heads do their softmax maths in fp32), fp32 on CPU.
        cdt = torch.bfloat16 if h.is_cuda else w.dtype
        zero = hidden.sum() * 0.0
        out = {k: zero for k in TERMS}
        n = b.counts()  # counted on the host by collate: no wait for the GPU here
        with torch.autocast(device_type=h.device.type, enabled=False):
            hc, wc = (h * spec.scale if spec.scale != 1.0 else h).to(cdt), w.to(cdt)
            if n["ce"]:
                if spec.fused:
                    out["ce"] = fused_linear_cross_entropy(hc, wc, b.ce_targets, reduction="sum", valid_rows=n["ce"])
                else:  # completion positions only: a few rows, never B x T x V
                    sel = b.ce_targets != IGNORE
                    logits = apply_head(self.base, h[sel]).float()
                    out["ce"] = torch.nn.functional.cross_entropy(logits, b.ce_targets[sel], reduction="sum")
            kd_args = dict(kind=spec.kind, beta=spec.beta, alpha=spec.alpha, temperature=spec.temperature,
                           reduction="sum")
            if teacher_h is not None and n["kd"]:
                # The rows both heads have (every token; padding rows past the tokenizer may differ).
                v = min(wc.shape[0], teacher_w.shape[0])
                out["kd"] = fused_linear_kd(hc, wc[:v], teacher_h.to(cdt), teacher_w[:v].to(cdt), b.kd_targets,
                                            valid_rows=n["kd"], **kd_args)
            if b.topk_ids is not None and n["topk"]:
                out["topk"] = fused_linear_sparse_kd(hc, wc, b.topk_ids, b.topk_lp, b.topk_mask, valid_rows=n["topk"],
                                                     **kd_args)
            if b.label_lp is not None and spec.label_ids:
                rows = torch.tensor([r for r, _ in b.label_pos], device=hidden.device)
                cols = torch.tensor([c for _, c in b.label_pos], device=hidden.device)
                student = apply_head(self.base, hidden[rows, cols], list(spec.label_ids)).float()
                out["labels"] = label_distribution_kd(
                    student, torch.arange(len(spec.label_ids), device=hidden.device), b.label_lp,
                    kind=spec.kind, beta=spec.beta, alpha=spec.alpha, temperature=spec.temperature, reduction="sum")
            if label_choices and spec.label_ids:
                # A completion starts where a CE target follows none (padded rows start at one; packed
                # rows hold several); h[:, t] predicts ce_targets[:, t]. Inside forward: under FSDP
                # the head's rows exist only here.
                ce = b.ce_targets
                start = ce != IGNORE
                start[:, 1:] &= ce[:, :-1] == IGNORE
                rows, cols = start.nonzero(as_tuple=True)
                out["label_logits"] = apply_head(self.base, h[rows, cols], list(spec.label_ids))
                out["label_targets"] = ce[rows, cols]
        return out


def combine(sums: dict[str, torch.Tensor], counts: dict[str, float], cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """``CE + kd_weight * T^2 * KD`` with each term a mean over its global count of positions."""
    t2 = cfg.kd_temperature**2
    loss = sums["ce"] * 0.0
    parts: dict[str, torch.Tensor] = {}
    for k in TERMS:
        if counts[k] > 0:
            term = sums[k] / counts[k]
            if k == "ce":
                parts["ce"] = term
                loss = loss + term
            else:  # metrics: "kd" is the KD total, "kd_<signal>" each signal's share
                parts[f"kd_{METRIC[k]}"] = term
                parts["kd"] = parts.get("kd", 0.0) + term
                loss = loss + cfg.kd_weight * t2 * term
    return loss, parts


def evaluate_val(module: LossModule, examples: list[Example], cfg: TrainConfig, spec: LossSpec,
                 teacher: KDTeacher | None, pad: int, device: torch.device, max_length: int,
                 signal: str | None) -> dict[str, float]:
    """``val_loss``: the training loss on ``examples``, a mean over batches of ``batch_size``
    weighted by their examples; for classification also ``val_label_agreement``: the share of
    examples whose most likely label (first tokens, as evaluate and serve score them) is the one
    they are trained to give, the teacher's. Empty for no examples."""
    if not examples:
        return {}
    total, n, agree, scored = 0.0, 0, 0, 0
    was_training = module.training
    module.eval()  # the saved student's loss: no LoRA or attention dropout
    ids = torch.tensor(spec.label_ids, device=device) if spec.label_ids else None
    with torch.no_grad():
        for i in range(0, len(examples), cfg.batch_size):
            batch = examples[i : i + cfg.batch_size]
            b = collate(batch, pad, device, pack=cfg.pack, max_length=max_length, kd_tokens=signal == "logits",
                        with_topk=signal == "topk")
            counts = {k: float(v) for k, v in b.counts().items()}
            th = teacher.hidden(b) if teacher is not None and counts["kd"] else None
            sums = module(b, spec, th, teacher.w if teacher else None, label_choices=ids is not None)
            loss, _ = combine(sums, counts, cfg)
            total += float(loss) * len(batch)
            n += len(batch)
            if ids is not None:
                want = sums["label_targets"][:, None] == ids[None]  # (N, K): which label each is trained to give
                known = want.any(1)
                agree += int((want.float().argmax(1) == sums["label_logits"].argmax(1))[known].sum())
                scored += int(known.sum())
    module.train(was_training)
    return {"val_loss": total / n, **({"val_label_agreement": agree / scored} if scored else {})}
