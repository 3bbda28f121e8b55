"""Tiny real models for tests: a word-level tokenizer and a 2-layer Llama built from a config."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "business entertainment politics sports tech the a of to in and on for with by is was were has have "
    "market shares bank profit film music star award election minister party vote match team goal win "
    "phone software internet computer game said new year says it its at from as be will not but this "
    "name city person answer topic article classify text label json summary yes no"
).split()
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "\n", ":", ".", "{", "}", '"', ","]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(SPECIALS + WORDS))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"<\|im_(start|end)\|>|\n"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[.:{},\"]"), behavior="isolated"),
        pre_tokenizers.WhitespaceSplit(),
    ])
    tk.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    return tok


def make_model_dir(path: Path, seed: int = 0, layers: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_lively_model_dir(path: Path) -> Path:
    """A tiny Llama whose rows end at different steps and whose answers vary: untied embeddings and
    wider random weights (the tied 0.02 default repeats the prompt's last token)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def smollm2_tokenizer():
    """SmolLM2's tokenizer as the bundled student ships it (byte-level BPE, read from its GGUF, ~4 s)."""
    from transformers import AutoTokenizer

    from potstill.models.loading import _fast_gguf_reader, resolve_bundled

    path = resolve_bundled("smollm2-135m-instruct")
    with _fast_gguf_reader():
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def sentencepiece_tokenizer():
    """A tokenizer in the Llama 2 / Mistral v0.1 ``tokenizer.json`` layout: normalizer Prepend('▁') and
    Replace(' ', '▁'), no pre-tokenizer, byte fallback. There " team" encodes alone as ['▁', '▁team']."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.export.conftest import CORPUS

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")  # train words apart
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=700, show_progress=False, special_tokens=[
        "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", *byte_pieces]))
    tk.pre_tokenizer = None
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>",
                                  pad_token="<unk>")
    tok.chat_template = CHATML
    return tok
