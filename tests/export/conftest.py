"""Tiny real students for export tests: byte-level BPE tokenizers trained here, Llama from a config.

The shared tiny model (tests/helpers/tiny.py) has a word-level tokenizer, which GGUF cannot
carry; GGUF's ``gpt2`` vocabulary is a byte-level BPE, so these tests train one (~300 tokens).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.tiny import CHATML

CORPUS = [
    "The bank said profits rose 12% to $3.5bn in 2004, beating the market's forecast.",
    "The film won an award; the star thanked the director and the music team.",
    "The minister told the party that the election vote would be held in May.",
    "The team scored a late goal to win the match 2-1 at home on Saturday.",
    "New phone software lets users browse the internet and play a game.",
    "Shares in the firm fell after the chief executive quit, the company said.",
] * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_bpe_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok


def make_bpe_model(path: Path, tied: bool = True, seed: int = 0, model_type: str = "llama", hidden: int = 64,
                   intermediate: int = 128, layers: int = 2, init: float = 0.2) -> Path:
    """A 2-layer model with GQA (4 query heads, 2 KV heads) saved with its BPE tokenizer.

    initializer_range 0.2 (not 0.02) makes attention scores large enough that a wrong Q/K row
    order changes the logits visibly, so the GGUF tests can tell a right export from a wrong one.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = make_bpe_tokenizer()
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                               num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, tie_word_embeddings=tied, initializer_range=init,
                               rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # norms at 1 would hide a norm written to the wrong tensor
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def bpe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bpe_model(tmp_path_factory.mktemp("bpe") / "model")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A Hugging Face hub on 127.0.0.1 (``test_model_card._hub``), the process pointed at it with a write
    token: its state, what was created and committed."""
    from tests.export.test_model_card import TOKEN, _hub
    from tests.helpers.hub import use_hub
    from tests.helpers.live_server import LiveServer

    state: dict = {"auth": [], "commits": [], "unexpected": []}
    with LiveServer(_hub(state)) as live:
        use_hub(monkeypatch, live.url, tmp_path / "hf")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield state
