"""Format hf: a LoRA-trained tiny student exports to plain weights with the adapter's logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from potstill.config import Config, TaskConfig, TrainConfig
from potstill.errors import PotstillError
from potstill.export import export
from potstill.models.loading import load_lm
from potstill.records import Record
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.train.trainer import train

LABELS = ["sports", "tech", "politics"]
TEXTS = ["the team won the match", "new phone software", "the minister and the party", "a goal in the game",
         "the internet and computer", "a vote in the election"]


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory) -> Config:
    """A run whose student/ is a LoRA adapter saved by potstill's own trainer."""
    run = tmp_path_factory.mktemp("lora") / "run"
    task_cfg = TaskConfig(type="classification", labels=LABELS, instruction="classify the text")
    task = get_task(task_cfg)
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 3], valid=True)
               for i, t in enumerate(TEXTS)]
    lm = load_lm(str(tiny_model), device="cpu")
    # lr 0.05 over 10 steps moves the LoRA B matrices (zero at init) well away from zero.
    cfg = TrainConfig(method="lora", lora_r=4, lora_alpha=8, lr=0.05, epochs=10, batch_size=6, seed=0)
    train(lm, student_format(lm, task), task, records, records[:2], cfg, 64, run / "student", run / "metrics.jsonl")
    assert (run / "student" / "adapter_config.json").exists()
    return Config(run_dir=str(run), task=task_cfg)


def ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer("classify the text : the team won the match", add_special_tokens=False)["input_ids"]])


def test_lora_student_merges_to_plain_weights(lora_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(lora_run.run_dir) / "export" / "hf"
    names = sorted(p.name for p in export(lora_run, "hf"))
    assert "model.safetensors" in names and "config.json" in names and "generation_config.json" in names
    assert "chat_template.jinja" in names and "tokenizer.json" in names
    assert not any(n.startswith("adapter") for n in names)

    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # no peft involved
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and not hasattr(merged, "peft_config")
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                        Path(lora_run.run_dir) / "student").eval()
    with torch.no_grad():
        x = ids(tok)
        got, want, before = merged(x).logits, adapter(x).logits, base(x).logits
    assert (want - before).abs().max() > 1e-2  # the adapter changed the model, so the test can fail
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


def test_dtype_option(lora_run):
    out = Path(lora_run.run_dir) / "bf16"
    export(lora_run.model_copy(update={"export": lora_run.export.model_copy(update={"dtype": "bf16"})}), "hf", out)
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_full_student_is_copied_and_missing_student_is_a_clear_error(tiny_model, tmp_path):
    cfg = Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS))
    with pytest.raises(PotstillError, match="run `potstill train` first"):
        export(cfg, "hf")
    shutil.copytree(tiny_model, tmp_path / "run" / "student")
    export(cfg, "hf")
    from safetensors.torch import load_file

    a, b = load_file(tiny_model / "model.safetensors"), load_file(tmp_path / "run" / "export" / "hf" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_out_never_replaces_a_folder_export_did_not_write(tiny_model, tmp_path):
    """``--out`` naming a folder with someone's files in it (or a file) is refused with one line and
    nothing in it is touched; a new folder, and one the same format wrote before, are written."""
    cfg = Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS))
    shutil.copytree(tiny_model, tmp_path / "run" / "student")
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(PotstillError, match=r"holds files potstill did not write.*name a new or empty folder"):
        export(cfg, "hf", mine)
    assert [p.name for p in mine.iterdir()] == ["precious.txt"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(PotstillError, match="is a file"):
        export(cfg, "hf", tmp_path / "a_file")
    out = tmp_path / "exported"
    export(cfg, "hf", out)
    export(cfg, "hf", out)  # its own earlier export: replaced
    assert (out / "model.safetensors").exists()
    with pytest.raises(PotstillError, match="holds a potstill hf export"):
        export(cfg, "openai-jsonl", out)


def test_gguf_source_is_the_adapter_when_stale_full_weights_sit_beside_it(lora_run, tmp_path):
    """A run trained in full and then with LoRA (before train replaced RUN/student whole) has an adapter
    beside the old full weights. Every loader takes the adapter (load_lm); the GGUF converter must get
    the same model, merged, and not the stale config.json/model.safetensors."""
    from safetensors.torch import load_file

    from potstill.export.gguf_file import _hf_source
    from tests.helpers.tiny import make_model_dir

    run = tmp_path / "run"
    shutil.copytree(Path(lora_run.run_dir) / "student", run / "student")
    stale = make_model_dir(tmp_path / "stale", seed=7)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(stale / name, run / "student" / name)
    cfg = lora_run.model_copy(update={"run_dir": str(run)})
    src, _ = _hf_source(cfg, run, tmp_path / "work")
    got = load_file(src / "model.safetensors")
    want = load_lm(str(run / "student"), device="cpu").model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in got)


GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
                  "m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                  "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_hf_export_stops_at_the_chat_templates_turn_end_when_it_is_not_eos(tmp_path):
    """A Gemma-style student ends its answers with <end_of_turn>, not its EOS <eos>; potstill's own
    generation stops there (stop_token_ids). The hf export's generation_config.json listed only <eos>,
    so transformers' generate (and vLLM, which reads the same file) ran on past the answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from potstill.models.prompting import end_of_turn
    from tests.helpers.tiny import make_tokenizer

    tok = make_tokenizer()
    tok.add_special_tokens({"eos_token": "<eos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = GEMMA_TEMPLATE
    turn = tok.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn(tok) == "<end_of_turn>" and turn != tok.eos_token_id
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # the student answers one token, then its turn end, as it was trained to
        model.lm_head.bias = None
        model.lm_head.weight.zero_()
        model.lm_head.weight[turn] = 1.0
    student = tmp_path / "run" / "student"
    model.save_pretrained(student)
    tok.save_pretrained(student)
    export(Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS)), "hf")

    out = tmp_path / "run" / "export" / "hf"
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    assert turn in eos and tok.eos_token_id in eos, eos
    merged, tok2 = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    x = tok2.apply_chat_template([{"role": "user", "content": "the team won"}], add_generation_prompt=True,
                                 return_tensors="pt", return_dict=True)
    got = merged.generate(**x, max_new_tokens=8, do_sample=False)[0, x["input_ids"].shape[1]:].tolist()
    assert got == [turn], got  # stopped at the turn end, not 8 tokens on


def test_hf_export_generation_config_is_greedy_as_the_student_was_evaluated(tmp_path):
    """A base model ships sampling defaults (Qwen2.5-Instruct: do_sample, temperature 0.7, top_p 0.8,
    top_k 20, repetition_penalty 1.05); potstill evaluated and serves the student greedily under the rest
    of that config. The export kept do_sample, so a plain ``model.generate`` (and vLLM) sampled: the
    exported generation config must be greedy, with the penalty evaluation applied kept."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from potstill.models.generation import generate
    from potstill.models.prompting import PromptFormat
    from tests.helpers.tiny import make_lively_model_dir

    student = make_lively_model_dir(tmp_path / "run" / "student")
    base = GenerationConfig.from_pretrained(student)
    base.update(do_sample=True, temperature=1.5, top_p=0.8, top_k=20, repetition_penalty=1.05)
    base.save_pretrained(student)
    export(Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS)), "hf")

    out = tmp_path / "run" / "export" / "hf"
    gen = GenerationConfig.from_pretrained(out)
    assert gen.do_sample is False, gen
    assert gen.repetition_penalty == 1.05  # evaluation's greedy decoding ran under it: kept
    written = json.loads((out / "generation_config.json").read_text())
    assert written["temperature"] == 0.0 and "top_p" not in written  # vLLM reads temperature, not do_sample
    chats = [[{"role": "user", "content": "the team won the match"}], [{"role": "user", "content": "new phone software"}]]
    want = generate(load_lm(str(student), device="cpu"), PromptFormat(kind="chat"), chats, 8).tokens
    model, tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    for chat, tokens in zip(chats, want):
        x = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        torch.manual_seed(0)
        got = model.generate(**x, max_new_tokens=8)[0, x["input_ids"].shape[1]:].tolist()  # the file's settings only
        assert got[:len(tokens)] == tokens, (got, tokens)


def test_out_naming_a_symlink_writes_where_it_points(tiny_model, tmp_path):
    """``--out LINK`` (a symlink to a folder on another disk, say) replaced the link itself with a new
    folder beside it and left the folder it names as it was; the export goes where the link points and
    the link stays. A link to someone's files is refused like the folder itself, a dangling one creates
    its target."""
    cfg = Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS))
    shutil.copytree(tiny_model, tmp_path / "run" / "student")
    real = tmp_path / "disk" / "models"
    real.mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(real, target_is_directory=True)
    for _ in range(2):  # the second replaces the first export, through the link again
        export(cfg, "hf", link)
        assert link.is_symlink() and link.resolve() == real.resolve()
        assert (real / "model.safetensors").is_file() and (real / ".potstill-export").read_text() == "hf\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "out", "run"]  # nothing left beside the link

    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    to_mine = tmp_path / "to_project"
    to_mine.symlink_to(mine)
    with pytest.raises(PotstillError, match="holds files potstill did not write"):
        export(cfg, "hf", to_mine)
    assert to_mine.is_symlink() and [p.name for p in mine.iterdir()] == ["precious.txt"]

    dangling = tmp_path / "later"
    dangling.symlink_to(tmp_path / "disk" / "new")
    export(cfg, "hf", dangling)
    assert dangling.is_symlink() and (tmp_path / "disk" / "new" / "model.safetensors").is_file()

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(PotstillError, match="symlink that does not resolve"):
        export(cfg, "hf", loop)


def test_an_export_killed_once_its_folder_is_in_place_is_whole_and_replaced_by_the_same_command(
        tiny_model, tmp_path, monkeypatch, capsys):
    """Killed right after ``--out`` was renamed into place: the model card and the mark were written
    after that rename, so the folder held weights without them, and the same command refused it as
    "files potstill did not write"."""
    import subprocess
    import sys

    from tests.helpers.cli import run_main

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model, tmp_path / "run" / "student")
    (tmp_path / "c.yaml").write_text("run_dir: run\ntask:\n  labels: [sports, tech, politics]\n")
    args = ["export", "-c", "c.yaml", "--format", "hf", "--out", "out"]
    worker = Path(__file__).with_name("export_kill_worker.py")
    p = subprocess.run([sys.executable, str(worker), "out", *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-3000:]
    out = tmp_path / "out"
    assert {"model.safetensors", "README.md", ".potstill-export"} <= {f.name for f in out.iterdir()}
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    assert (out / ".potstill-export").read_text() == "hf\n" and (out / "README.md").is_file()
    cfg = Config(run_dir="run", task=TaskConfig(labels=LABELS))
    assert ".potstill-export" not in {p.name for p in export(cfg, "hf", out)}  # it names the export's files
