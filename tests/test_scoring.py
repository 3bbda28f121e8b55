import pytest
import torch

from potstill.errors import PotstillError
from potstill.models.loading import load_lm
from potstill.models.prompting import PromptFormat, encode_prompt, label_token_ids
from potstill.models.scoring import apply_head, build_prefix, decoder, score_labels

# A prefix's KV cache goes in by the name the model's forward takes (``scoring.cache_kw``): the
# old one (past_key_values) warned on every call under transformers 5.2x.
pytestmark = pytest.mark.filterwarnings("error:`past_key_values` is deprecated:FutureWarning")

MSGS = [[{"role": "user", "content": t}] for t in ["the team won", "new phone software for the computer", "a vote"]]


def reference(lm, fmt, m, ids):
    full = encode_prompt(lm.tokenizer, fmt, fmt.prefix() + fmt.query(lm.tokenizer, m), first=True)
    with torch.inference_mode():
        h = decoder(lm.model)(input_ids=torch.tensor([full], device=lm.device)).last_hidden_state[:, -1]
        return apply_head(lm.model, h, ids)[0].cpu()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_prefix_cache_and_batching_match_a_plain_forward(tiny_model, batch_size):
    lm = load_lm(str(tiny_model))
    fmt = PromptFormat(kind="completion", instruction="classify the text", answer_prefix="topic:",
                       shots=[("the match", "sports"), ("the phone", "tech")])
    ids = label_token_ids(lm.tokenizer, fmt, ["sports", "tech", "politics"])
    prefix = build_prefix(lm, fmt)
    s = score_labels(lm, fmt, MSGS, ids, batch_size=batch_size, prefix=prefix)
    for i, m in enumerate(MSGS):
        torch.testing.assert_close(s.logits[i], reference(lm, fmt, m, ids), rtol=1e-4, atol=1e-5)
    assert s.cached_tokens[0] == prefix.length and s.prompt_tokens[0] > prefix.length
    # and without a prefix cache (chat format, left padding)
    chat = PromptFormat(kind="chat", instruction="classify the text")
    ids = label_token_ids(lm.tokenizer, chat, ["sports", "tech", "politics"])
    s = score_labels(lm, chat, MSGS, ids, batch_size=batch_size)
    for i, m in enumerate(MSGS):
        torch.testing.assert_close(s.logits[i], reference(lm, chat, m, ids), rtol=1e-4, atol=1e-5)


def test_labels_sharing_a_first_token_are_refused(tiny_model):
    lm = load_lm(str(tiny_model))
    with pytest.raises(PotstillError, match="share their first token"):
        label_token_ids(lm.tokenizer, PromptFormat(kind="chat"), ["the team", "the party"])


def test_label_ids_are_remembered_per_tokenizer_and_follow_its_vocabulary(tiny_model, monkeypatch):
    from potstill.models import prompting

    lm = load_lm(str(tiny_model))
    tok, chat = lm.tokenizer, PromptFormat(kind="chat")
    labels = ["sports", "tech", "politics"]
    tokenised = []
    uncached = prompting._label_token_ids
    monkeypatch.setattr(prompting, "_label_token_ids", lambda *a: tokenised.append(a) or uncached(*a))
    first = label_token_ids(tok, chat, labels)
    assert first == uncached(tok, chat, labels)
    assert label_token_ids(tok, chat, labels) == first
    assert len(tokenised) == 1  # remembered: the second call did not tokenise again
    # A completion's labels start with a space: other texts, tokenised, not the chat's remembered ids.
    completion = label_token_ids(tok, PromptFormat(kind="completion"), labels)
    assert completion == uncached(tok, PromptFormat(kind="completion"), labels) and len(tokenised) == 2
    # A token added to the vocabulary can change a label's first token: not answered from memory.
    tok.add_tokens(["politi"])
    after = label_token_ids(tok, chat, labels)
    assert after[2] == tok.convert_tokens_to_ids("politi") != first[2]
    assert after[:2] == first[:2]
    # A refusal is not remembered as an answer.
    for _ in range(2):
        with pytest.raises(PotstillError, match="share their first token"):
            label_token_ids(tok, chat, ["the team", "the party"])
