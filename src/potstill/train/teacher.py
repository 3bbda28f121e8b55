"""The teacher's side of KD in training: which signal ``kd_signal`` means, and ``KDTeacher``, a local
same-tokenizer teacher whose hidden states and LM head give the logits KD term."""
from __future__ import annotations

import torch

from potstill.config import TrainConfig
from potstill.errors import PotstillError
from potstill.models.loading import LM, load_lm
from potstill.models.logit_scale import logit_scale
from potstill.models.scoring import decoder
from potstill.records import Record
from potstill.tasks import Task
from potstill.train.batching import Batch
from potstill.train.distributed import load_on_every_rank
from potstill.train.loss_module import fused_head_ok, hidden_states

class KDTeacher:
    """A local teacher with the student's tokenizer: its last hidden states and LM head weight."""

    def __init__(self, spec: str, student: LM, device: torch.device, compile: bool = False) -> None:
        with load_on_every_rank():  # loaded after Accelerator(): see distributed.py
            self.lm = load_lm(spec, device=str(device))
        # With train.compile its forward is compiled too: in a KD step the teacher's forward is the
        # largest share of the work (a 1.7B teacher against a 135M student).
        body = decoder(self.lm.model)
        self._body = torch.compile(body) if compile else body
        if self.lm.tokenizer.get_vocab() != student.tokenizer.get_vocab():
            raise PotstillError(f"train.teacher_model '{spec}' has another tokenizer than the student; token-level "
                                "KD and on-policy batches need the same vocabulary (use kd_signal labels instead)")
        self.w = self.lm.model.get_output_embeddings().weight.detach()
        self.scale = logit_scale(self.lm.model) or 1.0  # None: fused_head_ok refuses it below
        # One family's sizes pad the LM head differently past the tokenizer (Qwen2.5-7B 152,064 rows,
        # 0.5B 151,936, both over the tokenizer's 151,665 tokens): rows past the tokenizer name no token,
        # so KD compares the rows both heads have (``rows``), which hold every token.
        student_rows, tokens = student.model.get_output_embeddings().weight.shape[0], len(student.tokenizer)
        self.rows = min(self.w.shape[0], student_rows)
        if self.rows < tokens or not fused_head_ok(self.lm.model):
            raise PotstillError(f"train.teacher_model '{spec}': its LM head ({self.w.shape[0]} rows) does not match the "
                                f"student's ({student_rows} rows) over the tokenizer's {tokens} tokens")

    @torch.no_grad()
    def hidden(self, b: Batch) -> torch.Tensor:
        """Its last hidden states times its logit scale (``logit_scale``), so that ``h @ self.w.T`` are
        the logits its own forward gives."""
        h = hidden_states(self.lm.model, self._body, b)[:, :-1]
        return h * self.scale if self.scale != 1.0 else h


def auto_signal(cfg: TrainConfig, task: Task, records: list[Record]) -> str:
    """What ``kd_signal: auto`` means for this task and these records (preflight asks it too).

    A local teacher_model is checked to share the student's vocabulary (KDTeacher), so its logits
    are exact. API top-k tokens are strings re-encoded with the student's tokenizer: exact only for
    the same tokenizer, which nothing here can prove; for classification the label distribution
    says the same thing without any mapping, so it wins there."""
    if cfg.teacher_model:
        return "logits"
    return "topk" if not task.labels and any(r.logprobs for r in records) else "labels"


def resolve_signal(cfg: TrainConfig, task: Task, records: list[Record]) -> str | None:
    """Which KD signal the ``kd`` objective uses (None for ``sft``)."""
    if cfg.objective != "kd":
        return None
    sig = auto_signal(cfg, task, records) if cfg.kd_signal == "auto" else cfg.kd_signal
    if cfg.kd_signal == "auto" and sig == "labels" and not task.labels:
        # Else the refusal below named kd_signal labels, a setting the user never made.
        raise PotstillError("train.objective kd: kd_signal auto found no teacher signal for this task: set "
                            "train.teacher_model (a local same-tokenizer teacher's logits), generate with "
                            "teacher.logprobs (top-k logprobs), or set train.objective sft")
    if sig == "logits" and not cfg.teacher_model:
        raise PotstillError("train.kd_signal logits needs train.teacher_model (a local same-tokenizer teacher)")
    if sig == "labels" and not task.labels:
        raise PotstillError("train.kd_signal labels needs a classification task (label_probs)")
    if sig == "labels" and not any(r.label_probs for r in records):
        # Else every example's KD term is empty and the run is plain SFT while train.json says kd.
        raise PotstillError("train.objective kd (labels signal): no training record carries label_probs, the "
                            "teacher's distribution over labels (a local teacher writes them; an API teacher "
                            "that returns logprobs needs teacher.logprobs 5 or so; OpenAI's reasoning models, "
                            "Anthropic and replay return none); regenerate so, or use kd_signal logits with "
                            "train.teacher_model, or set train.objective sft")
    if sig == "topk" and not any(r.logprobs for r in records):
        raise PotstillError("train.kd_signal topk: no training record carries logprobs "
                            "(generate with a teacher that returns top-k logprobs)")
    if sig == "topk" and cfg.kd_temperature != 1.0:
        # Only the student's side would be tempered (the top-k's tail is unknown, losses.sparse_topk_kd):
        # its optimum is softmax(z / T) = p, so at T = 2 a 0.6 teacher token became 0.83 at inference.
        raise PotstillError(f"train.kd_temperature {cfg.kd_temperature:g} with the topk signal: an API's top-k "
                            "cannot be re-tempered (its tail is unknown), so the student would learn the teacher's "
                            f"probabilities raised to the power {cfg.kd_temperature:g}; use kd_temperature 1")
    return sig
