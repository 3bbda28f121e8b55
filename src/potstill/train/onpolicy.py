"""On-policy distillation (GKD, Agarwal et al. 2024, "On-Policy Distillation of Language Models").

With probability ``lambda`` (``TrainConfig.onpolicy_fraction``) a batch keeps its prompts but
replaces the teacher's completions with the student's own samples; a local teacher then scores
those samples token by token and the loss is the divergence between the two next-token
distributions at every sampled position (no cross-entropy: there is no reference text). Training
on its own samples removes the train/inference mismatch of plain KD, where the student only ever
sees teacher prefixes. Samples are drawn from the student's softmax at ``onpolicy_temperature``
alone: no setting of its generation config (repetition penalty, banned words, ...) applies.
Sampling uses the global torch RNG, which checkpoints save, so a resumed run draws the same samples.
"""

from __future__ import annotations

from typing import Any

import torch

from potstill.train.batching import Example


@torch.no_grad()
def sample_batch(model: Any, batch: list[Example], pad: int, eos: int | list[int] | None, max_new_tokens: int,
                 temperature: float, device: torch.device, rows: int | None = None,
                 max_length: int | None = None) -> list[Example]:
    """Student samples for the prompts of ``batch`` as ``kd_only`` examples (ending at EOS, or at any
    of a list of end tokens, if drawn). ``rows``: the LM-head rows the teacher shares with the student;
    the student's padding rows past them are never drawn (the teacher has no embedding for them).
    ``max_length`` (``student.max_length``): a sample ends where its prompt and it reach it (at least
    one token), as every other training example does; they ran ``max_new_tokens`` past it."""
    ends = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    prompts = [e.ids[: e.n_prompt] for e in batch]
    room = [max_new_tokens if max_length is None else max(1, min(max_new_tokens, max_length - len(p))) for p in prompts]
    max_new_tokens = max(room)
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, so every row continues from its last column
        ids[i, P - len(p) :] = torch.tensor(p)
        mask[i, P - len(p) :] = 1
    was_training = model.training
    model.eval()
    # A clean generation config for the call: transformers fills every setting a call leaves unset
    # from model.generation_config, so the student's repetition_penalty, no_repeat_ngram_size,
    # min_length, bad_words_ids, ... would bend the samples away from its own distribution.
    from transformers import GenerationConfig

    own = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        vocab = model.get_output_embeddings().weight.shape[0]
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=sorted(ends) if None not in ends else None,
                             **({"suppress_tokens": list(range(rows, vocab))} if rows is not None and rows < vocab else {}))
    finally:
        model.generation_config = own
        model.train(was_training)
    samples = []
    for p, row, n in zip(prompts, out[:, P:].tolist(), room):
        gen = []
        for t in row[:n]:
            gen.append(t)
            if t in ends:
                break
        samples.append(Example(ids=p + gen, n_prompt=len(p), kd_only=True))
    return samples
