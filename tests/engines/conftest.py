"""A tiny model built from a config and taught a fixed input set's labels, for the engine tests.

A randomly initialised tiny model's label logits differ by less than int8 rounding moves them, so
the model is first taught the labels (80 steps, seconds): then an engine that disagrees with
transformers is wrong, not unlucky.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from potstill.models.loading import load_lm, save_lm
from potstill.models.prompting import PromptFormat, encode_prompt, label_token_ids

LABELS = ["business", "entertainment", "politics", "sports", "tech"]
DATA = [
    ("the bank profit market shares", "business"), ("film music star award", "entertainment"),
    ("a vote in the election", "politics"), ("the team won a match", "sports"),
    ("new phone software for the computer", "tech"), ("the minister said the party will win", "politics"),
    ("a goal by the team this year", "sports"), ("game on the internet", "tech"),
    ("the star of the film", "entertainment"), ("shares in the bank", "business"),
]
MSGS = [[{"role": "user", "content": t}] for t, _ in DATA]
CHAT = PromptFormat(kind="chat", instruction="classify the text")
SHOTS = PromptFormat(kind="completion", instruction="classify the text", answer_prefix="topic:",
                     shots=[("the match", "sports"), ("the phone", "tech"), ("a vote", "politics")])


def _batch(lm, fmt: PromptFormat) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, target label token) of DATA's prompts, left-padded so the answer position is -1."""
    tok = lm.tokenizer
    prompts = [encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, m), first=True) for m in MSGS]
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = torch.tensor(p), 1
    label_ids = label_token_ids(tok, fmt, LABELS)
    return ids, mask, torch.tensor([label_ids[LABELS.index(lab)] for _, lab in DATA])


def _teach(lm, steps: int = 80) -> None:
    """Fit the label token at the answer position for DATA, in both prompt formats at once."""
    batches = [_batch(lm, f) for f in (CHAT, SHOTS)]
    opt = torch.optim.Adam(lm.model.parameters(), lr=1e-2)
    lm.model.train()
    for _ in range(steps):
        loss = sum(torch.nn.functional.cross_entropy(lm.model(input_ids=i, attention_mask=m).logits[:, -1], t)
                   for i, m, t in batches)
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.model.eval()


@pytest.fixture(scope="session")
def taught(tmp_path_factory, tiny_model) -> Path:
    lm = load_lm(str(tiny_model), device="cpu")
    _teach(lm)
    out = tmp_path_factory.mktemp("taught") / "student"
    save_lm(lm.model, lm.tokenizer, out)
    return out


