"""Training examples, the teacher signals attached to them, and padded or packed batches.

An :class:`Example` is one token sequence: a prompt, then a completion. Three teacher signals can
ride on it (see ``TrainConfig.kd_signal``):

* ``label_logprobs``: the teacher's distribution over the task's labels (classification). It is
  read at the position that predicts the first completion token, so it works across tokenizers.
* ``topk``: per completion token, the teacher's top-k (student id, log-probability) pairs, from
  a record's ``logprobs`` (what an OpenAI-compatible API returns). See :func:`topk_for_completion`
  for how API tokens are mapped to student ids and where that stops working.
* full logits of a local teacher: nothing is stored; the trainer runs the teacher on the batch.

Packing (``pack=True``) concatenates examples into rows of ``max_length`` tokens. Each example's
``position_ids`` restart at 0 and no 2D attention mask is passed, which is how transformers marks
packed sequences: with sdpa/eager it builds a block-diagonal causal mask from the position
resets, with flash-attention it runs varlen kernels. Either way no token attends to another
example (``tests/train/test_batching.py`` checks packed losses equal unpacked ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from potstill.errors import PotstillError
from potstill.models.prompting import PromptFormat, RefusedChat, encode_prompt, refused_record
from potstill.records import Record
from potstill.tasks import Task
from potstill.teachers.base import token_bytes

IGNORE = -100


@dataclass
class Example:
    ids: list[int]
    n_prompt: int
    teacher_logprobs: list[float] | None = None  # over task labels, for label-level KD
    # One entry per completion token: (student ids, teacher log-probs) or None (no KD there).
    topk: list[tuple[list[int], list[float]] | None] | None = None
    kd_only: bool = False  # on-policy samples: divergence to the teacher, no cross-entropy
    cut: int = 0  # tokens dropped to fit max_length (the prompt's start first)
    # Of those, the answer's: its end, end-of-turn included, with all the prompt but its last token.
    answer_cut: int = 0


def _single_id(tok: Any, text: str, cache: dict[str, Any]) -> int | None:
    if text not in cache:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        cache[text] = ids[0] if len(ids) == 1 else None
    return cache[text]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet read back: the printable character that stands for each byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    cs = list(bs)  # these 188 bytes stand for themselves; the other 68 for U+0100 onwards, in byte order
    for b in range(256):
        if b not in bs:
            cs.append(256 + len(bs) - 188)
            bs.append(b)
    return {chr(c): b for b, c in zip(bs, cs)}


def _piece_layout(tok: Any) -> str | None:
    """How the student's vocabulary spells a token's bytes: ``bytelevel`` (GPT-2, Llama 3, Qwen,
    SmolLM: one printable character per byte), ``sentencepiece`` (Llama 2, Mistral, Gemma: ``▁`` for
    a space, ``<0xE6>`` for a lone byte), or None (another layout: word-level, WordPiece)."""
    backend = getattr(tok, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None:
        state = decoder.__getstate__()
        state = state.decode("utf-8") if isinstance(state, bytes) else str(state)
        if '"ByteLevel"' in state:
            return "bytelevel"
        return "sentencepiece" if "\u2581" in state or "\\u2581" in state else None
    if getattr(tok, "byte_decoder", None):  # a slow GPT-2 tokenizer
        return "bytelevel"
    return "sentencepiece" if getattr(tok, "sp_model", None) is not None else None


def _vocab_bytes(tok: Any, cache: dict[str, Any]) -> tuple[list[bytes | None], dict[bytes, int]] | None:
    """Each student id's bytes, and the id that spells each byte string, built once per ``cache``
    (measured: 0.1 s for SmolLM2's 49,152 ids, 0.3 s for Gemma 3's 262,144). Where two ids spell the
    same bytes, an ordinary piece wins over a byte-fallback one and both over an added (special)
    token, as the tokenizer itself would pick."""
    if "__vocab_bytes__" not in cache:
        layout = _piece_layout(tok)
        table = None
        if layout is not None:
            added = set(getattr(tok, "added_tokens_decoder", {}) or {})
            pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
            dec = _byte_decoder()
            spelled: list[bytes | None] = []
            rank: list[int] = []
            for i, p in enumerate(pieces):
                if p is None:
                    spelled.append(None)
                    rank.append(3)
                elif layout == "sentencepiece" and len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
                    spelled.append(bytes([int(p[3:5], 16)]))  # byte fallback, whether or not listed as added
                    rank.append(1)
                elif i in added:
                    spelled.append(p.encode("utf-8"))
                    rank.append(2)
                elif layout == "bytelevel":
                    spelled.append(bytes(dec[c] for c in p) if all(c in dec for c in p) else p.encode("utf-8"))
                    rank.append(0)
                else:
                    spelled.append(p.replace("\u2581", " ").encode("utf-8"))
                    rank.append(0)
            ids: dict[bytes, int] = {}
            for r in (0, 1, 2):
                for i, b in enumerate(spelled):
                    if b and rank[i] == r:
                        ids.setdefault(b, i)
            table = (spelled, ids)
        cache["__vocab_bytes__"] = table
    return cache["__vocab_bytes__"]


def _alternatives(e: dict[str, Any], chosen: int, chosen_bytes: bytes, lead: bytes,
                  to_id: Any) -> tuple[list[int], list[float]]:
    """One position's target: each ``top`` alternative as a student id (``to_id`` of its bytes with
    ``lead`` before them), the chosen token added when not among them. An alternative that is no one
    id, or repeats one, is dropped: its mass falls into the tail bucket of
    :func:`potstill.train.losses.teacher_bucket_logprobs` rather than being lost."""
    ids: list[int] = []
    lps: list[float] = []
    for alt in e.get("top") or []:
        b = lead + token_bytes(alt)
        j = chosen if b == chosen_bytes else to_id(b)
        lp = alt.get("logprob")
        if j is None or j in ids or lp is None or not math.isfinite(float(lp)):
            continue
        ids.append(j)
        lps.append(float(lp))
    if chosen not in ids and e.get("logprob") is not None:
        ids.append(chosen)
        lps.append(float(e["logprob"]))
    return ids, lps


def topk_for_completion(tok: Any, completion_ids: list[int], entries: list[dict[str, Any]],
                        cache: dict[str, Any] | None = None) -> list[tuple[list[int], list[float]] | None]:
    """Map an API's per-token ``logprobs`` onto the student's completion token ids.

    ``entries`` is ``[{"token", "logprob", "top": [{"token", "logprob"}]}]``, one per teacher
    output token, each with ``bytes`` where its text does not spell them
    (:func:`potstill.teachers.base.token_bytes`). Teacher tokens are laid along the student's
    completion by their bytes: a teacher token gets KD at the student token that covers exactly
    the same bytes at the same place in the text, and its alternatives become the student ids that
    spell their bytes (a table read from the student's vocabulary, for byte-level BPE and
    SentencePiece layouts). Where the student's completion starts with a space the teacher's answer
    lacks (a plain-text completion target is ``" " + answer``; SentencePiece adds a ``▁``), the
    space is skipped, or, where it is part of the student's first token (``" The"`` for ``"The"``),
    the first position's alternatives get it too. So with the same tokenizer on both sides every
    answer token gets KD. At the first teacher token the student does not have at that place (the
    tokenizers differ there, or the completion was cut), KD stops for the rest of the example
    (those positions keep their cross-entropy). For another vocabulary layout each token is
    re-encoded on its own and matched position by position, which is exact only for tokens that
    encode alone as they do in context.
    """
    cache = {} if cache is None else cache
    out: list[tuple[list[int], list[float]] | None] = [None] * len(completion_ids)
    table = _vocab_bytes(tok, cache)
    if table is None:
        for i, e in enumerate(entries[: len(completion_ids)]):
            chosen = _single_id(tok, str(e.get("token", "")), cache)
            if chosen is None or chosen != completion_ids[i]:
                break
            out[i] = _alternatives(e, chosen, b"", b"", lambda b: _single_id(tok, b.decode("utf-8", "replace"), cache))
        return out
    spelled, by_bytes = table
    student = [spelled[i] if 0 <= i < len(spelled) and spelled[i] else None for i in completion_ids]
    if not entries or not student or student[0] is None:
        return out
    text = b"".join(student[: student.index(None)] if None in student else student)
    # pos: where the teacher's next token starts in the student's completion text, in bytes. The
    # spaces the student's text starts with and the teacher's first token lacks come first.
    first = token_bytes(entries[0])
    pos = max(0, (len(text) - len(text.lstrip(b" "))) - (len(first) - len(first.lstrip(b" "))))
    j, start = 0, 0
    while j < len(student) and student[j] is not None and start + len(student[j]) <= pos:  # a lone leading space
        start += len(student[j])
        j += 1
    for i, e in enumerate(entries):
        if j >= len(student) or student[j] is None:
            break
        t = token_bytes(e)
        if start == pos and student[j] == t:
            lead = b""
        elif i == 0 and start < pos and student[j] == text[start:pos] + t:
            lead = text[start:pos]  # the student writes the answer's first token with the spaces before it
        else:
            break
        out[j] = _alternatives(e, completion_ids[j], student[j], lead, by_bytes.get)
        pos += len(t)
        start += len(student[j])
        j += 1
    return out


def prompt_ids(tok: Any, fmt: PromptFormat, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt as the served student reads it (serve/engine.py): a plain-text prompt's instruction
    and shots live in its prefix, which training once left out (``potstill preflight`` compares)."""
    return encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, messages), first=True)


def build_examples(lm: Any, fmt: PromptFormat, task: Task, records: list[Record], max_length: int,
                   with_topk: bool = False) -> list[Example]:
    tok = lm.tokenizer
    out = []
    cache: dict[str, Any] = {}
    if task.labels:
        _check_label_probs(records, task.labels)
    for r in records:
        try:
            prompt = prompt_ids(tok, fmt, r.messages)
        except RefusedChat as e:  # one line naming the record, not Jinja's traceback
            raise PotstillError(f"train: {refused_record(r.id, e)}") from None
        completion = tok(fmt.completion(tok, task.target(r)), add_special_tokens=False)["input_ids"]
        # At most max_length tokens: the prompt loses its start first; a completion longer than
        # max_length - 1 also loses its end (the prompt keeps its last token, which predicts the first),
        # marked in answer_cut: such an example teaches an answer with no input and no stop (train drops it).
        whole = len(prompt) + len(completion)
        answer_cut = max(0, len(completion) - max(1, max_length - 1))
        completion = completion[: max(1, max_length - 1)]
        keep = max(1, max_length - len(completion))
        prompt = prompt[-keep:]
        tlp = None
        if task.labels and r.label_probs:
            tlp = [math.log(max(r.label_probs.get(lab, 0.0), 1e-12)) for lab in task.labels]
        topk = topk_for_completion(tok, completion, r.logprobs, cache) if with_topk and r.logprobs else None
        out.append(Example(ids=prompt + completion, n_prompt=len(prompt), teacher_logprobs=tlp, topk=topk,
                           cut=whole - len(prompt) - len(completion), answer_cut=answer_cut))
    return out


def _check_label_probs(records: list[Record], labels: list[str]) -> None:
    """Refuse soft labels that are not over ``labels``: a label they name outside them ("Sports" for
    "sports", a renamed class) would lose its mass, and one with no mass on any of them would be a
    uniform teacher. A label they leave out is probability 0 (a sparse soft label)."""
    known = set(labels)
    bad = []
    for r in records:
        if not r.label_probs:
            continue
        other = [k for k, v in r.label_probs.items() if k not in known and v]  # a 0 loses nothing
        if other:
            bad.append((r.id, f"names {', '.join(other)}"))
        elif not sum(max(float(r.label_probs.get(k, 0.0)), 0.0) for k in labels) > 0:
            bad.append((r.id, "gives no probability to any of them"))
    if bad:
        rid, what = bad[0]
        raise PotstillError(
            f"train: {len(bad)} of {len(records)} records have label_probs that are not over task.labels "
            f"({', '.join(labels)}): record {rid} {what}; fix task.labels (they are case-sensitive) or the "
            f"records' label_probs")


@dataclass
class Batch:
    """Tensors of one (per-process) batch. Target positions follow the causal shift: hidden state
    ``[b, t]`` predicts token ``[b, t + 1]``, so every ``(B, T - 1)`` tensor is indexed by ``t``."""

    ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor | None  # (B, T); None when packed (position resets mark examples)
    position_ids: torch.Tensor  # (B, T)
    ce_targets: torch.Tensor  # (B, T-1) next token, IGNORE where no cross-entropy
    kd_targets: torch.Tensor  # (B, T-1) next token, IGNORE where no token-level KD (logits/on-policy)
    topk_mask: torch.Tensor | None  # (B, T-1) next token where top-k data exists, else IGNORE
    topk_ids: torch.Tensor | None  # (B, T-1, K) student ids, distinct per position
    topk_lp: torch.Tensor | None  # (B, T-1, K) teacher log-probs, -inf padding
    # Target positions per term ("ce", "kd", "topk", "labels"), counted by ``collate`` on the host
    # before the copy to the device, so that a step never waits for the GPU to learn them (every such
    # wait idles the GPU while the host launches what follows; on an H200 the compiled step's host
    # time is most of the step).
    n_targets: dict[str, int]
    label_pos: list[tuple[int, int]] = field(default_factory=list)  # (row, t) predicting the label token
    label_lp: torch.Tensor | None = None  # (len(label_pos), K labels)

    def counts(self) -> dict[str, int]:
        """Positions per term ("ce", "kd", "topk", "labels") in this process's batch."""
        return dict(self.n_targets)


def rows_of(batch: list[Example], pack: bool, max_length: int) -> list[list[Example]]:
    """Unpacked: one example per row. Packed: first-fit into rows of ``max_length`` tokens, in order."""
    if not pack:
        return [[e] for e in batch]
    rows: list[list[Example]] = []
    fill: list[int] = []
    for e in batch:
        for i, used in enumerate(fill):
            if used + len(e.ids) <= max_length:
                rows[i].append(e)
                fill[i] += len(e.ids)
                break
        else:
            rows.append([e])
            fill.append(len(e.ids))
    return rows


def collate(batch: list[Example], pad: int, device: torch.device, *, pack: bool = False, max_length: int = 0,
            kd_tokens: bool = False, with_topk: bool = False) -> Batch:
    """Right-padded (or packed) tensors for ``batch``; ``kd_tokens`` marks every completion token
    for token-level KD against a local teacher (always on for ``kd_only`` on-policy examples)."""
    rows = rows_of(batch, pack, max_length)
    T = max(sum(len(e.ids) for e in row) for row in rows)
    B = len(rows)
    dev = torch.device(device)
    # ids, mask, positions and the two target rows in one host buffer, pinned for a CUDA device:
    # one copy that does not wait for the GPU (a pageable copy waits for the stream to drain, so the
    # GPU then idles while the host launches what follows).
    host = torch.empty((5, B, T), dtype=torch.long, pin_memory=dev.type == "cuda" and torch.cuda.is_available())
    ids, mask, pos, ce, kd = host.unbind(0)
    ids.fill_(pad)
    mask.zero_()
    pos.zero_()
    ce.fill_(IGNORE)
    kd.fill_(IGNORE)
    K = 0
    if with_topk:
        K = max((len(t[0]) for e in batch if e.topk for t in e.topk if t), default=0)
    tmask = torch.full((B, T), IGNORE, dtype=torch.long) if K else None
    tids = torch.zeros((B, T, K), dtype=torch.long) if K else None
    tlp = torch.full((B, T, K), float("-inf")) if K else None
    label_pos, label_lp = [], []
    for b, row in enumerate(rows):
        o = 0
        for e in row:
            n = len(e.ids)
            # list -> tensor dominated collate's time; numpy converts a list of ints several times
            # faster than torch.tensor (B=16 x 1,024 tokens: collate 3.0 -> 0.9 ms on an H200 host,
            # benchmarks/collate_probe.json)
            row_ids = torch.from_numpy(np.fromiter(e.ids, np.int64, n))
            ids[b, o : o + n] = row_ids
            mask[b, o : o + n] = 1
            pos[b, o : o + n] = torch.arange(n)
            comp = row_ids[e.n_prompt :]
            # Labels sit on the token being predicted; shifted below so index t predicts t + 1.
            if not e.kd_only:
                ce[b, o + e.n_prompt : o + n] = comp
            if e.kd_only or kd_tokens:
                kd[b, o + e.n_prompt : o + n] = comp
            if K and e.topk:
                for j, t in enumerate(e.topk):
                    if t is None:
                        continue
                    at = o + e.n_prompt + j - 1  # the position whose hidden state predicts token j
                    k_ids, k_lp = t
                    # Padding ids must be distinct from the real ones (the head scatters on them).
                    spare = (x for x in range(K + len(k_ids)) if x not in k_ids)
                    tids[b, at] = torch.tensor(k_ids + [next(spare) for _ in range(K - len(k_ids))])
                    tlp[b, at, : len(k_lp)] = torch.tensor(k_lp)
                    tmask[b, at] = e.ids[e.n_prompt + j]
            if e.teacher_logprobs is not None:
                label_pos.append((b, o + e.n_prompt - 1))
                label_lp.append(e.teacher_logprobs)
            o += n
        if pack and o < T:
            pos[b, o:] = torch.arange(T - o)  # padding is its own segment: it attends to no example
    n_targets = {"ce": int((ce[:, 1:] != IGNORE).sum()), "kd": int((kd[:, 1:] != IGNORE).sum()),
                 "topk": 0 if tmask is None else int((tmask[:, :-1] != IGNORE).sum()), "labels": len(label_pos)}
    on = host.to(dev, non_blocking=host.is_pinned())
    return Batch(
        ids=on[0], attention_mask=None if pack else on[1], position_ids=on[2],
        ce_targets=on[3, :, 1:].contiguous(), kd_targets=on[4, :, 1:].contiguous(),
        topk_mask=None if tmask is None else tmask[:, :-1].to(dev),
        topk_ids=None if tids is None else tids[:, :-1].to(dev),
        topk_lp=None if tlp is None else tlp[:, :-1].to(dev),
        label_pos=label_pos, label_lp=torch.tensor(label_lp, device=dev) if label_lp else None,
        n_targets=n_targets,
    )
