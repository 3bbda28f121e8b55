"""`potstill env`: what a bug report needs to know about this machine, as ``trl env`` prints it.

Versions come from the installed packages' metadata (nothing optional is imported to ask); torch
is imported for what only it can say: the CUDA build, the GPUs it sees, and the CPU features that
choose the student's engine (int8 layers with AVX-512 VNNI, bf16 with AMX or fast AVX-512 BF16).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

# The packages whose versions change potstill's behaviour: required first, then optional engines,
# kernels and providers ("not installed" for those absent).
PACKAGES = ("potstill", "torch", "transformers", "accelerate", "peft", "tokenizers", "safetensors", "pydantic",
            "openai", "anthropic", "fastapi", "uvicorn", "triton", "liger-kernel", "bitsandbytes", "torchao",
            "ctranslate2", "vllm", "ray", "gguf", "mlflow-skinny", "wandb")


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def env_info() -> dict[str, str]:
    """Name -> value lines, in the order printed."""
    import torch

    info = {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": str(os.cpu_count())}
    info.update({name: version(name) for name in PACKAGES})
    info["torch CUDA build"] = torch.version.cuda or "none (CPU-only build)"
    if torch.cuda.is_available():
        info["GPUs"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        info["GPUs"] = "none visible"
    cpu = torch.cpu
    probes = (("AVX-512", "_is_avx512_supported"), ("VNNI", "_is_vnni_supported"),
              ("AVX-512 BF16", "_is_avx512_bf16_supported"), ("AMX tiles", "_is_amx_tile_supported"))
    feats = [name for name, probe in probes if getattr(cpu, probe, lambda: False)()]
    info["CPU features"] = ", ".join(feats) or "none of AVX-512, VNNI, AVX-512 BF16, AMX"
    info["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "unset")
    return info


def env_text() -> str:
    info = env_info()
    width = max(map(len, info))
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in info.items())
