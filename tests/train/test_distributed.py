"""Two CPU processes (torchrun, gloo) train exactly like one process at the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from potstill.models.loading import load_lm


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _torchrun(student, teacher, out: Path, mode: str = "", env: dict | None = None, processes: int = 2):
    worker = Path(__file__).with_name("ddp_worker.py")
    # --standalone: the rendezvous store binds a free port itself. A port picked here and bound later
    # could be taken meanwhile by another test's server (a rank then aborted at start, 'terminate called
    # without an active exception', about 1 full run in 3 on a loaded 2-core machine).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(worker), str(student), str(teacher), str(out), mode]
    # CPU processes (gloo) wherever the test runs: on a one-GPU machine two ranks would both take
    # cuda:0, which NCCL refuses ("invalid usage").
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("mode", ["", "rank0-loading", "accum2"])
def test_two_gloo_processes_match_one(tiny_model, tiny_model_b, tmp_path, mode):
    """``rank0-loading``: transformers' rank-0-only loading (accelerate's FSDP default) left rank 1's
    teacher empty; the trainer now reads the files on every rank, so the curve still matches.
    ``accum2``: each process runs its half of every batch as two micro-batches, gradients all-reduced
    once after the second: still the one-process curve without accumulation."""
    env = {"FSDP_CPU_RAM_EFFICIENT_LOADING": "true"} if mode == "rank0-loading" else {}
    proc = _torchrun(tiny_model, tiny_model_b, tmp_path / "ddp", mode, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"processes": 2, "steps": 3}
    # The one-process reference runs the same way, on the CPU in a process of its own (in this one it
    # would fix accelerate's process-wide state for the tests after it, bf16 on a GPU machine).
    single = _torchrun(tiny_model, tiny_model_b, tmp_path / "one", processes=1)
    assert single.returncode == 0, single.stderr[-3000:]
    assert json.loads(single.stdout.strip().splitlines()[-1]) == {"processes": 1, "steps": 3}
    two, one = _rows(tmp_path / "ddp"), _rows(tmp_path / "one")
    assert len(two) == len(one) == 3
    for a, b in zip(two, one):
        assert a["tokens"] == b["tokens"]
        for key in ("loss", "ce", "kd", "grad_norm"):  # grad_norm: of the gradients after the all-reduce
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(b[key])), (a["step"], key, a[key], b[key])
    wa = load_lm(str(tmp_path / "ddp" / "student")).model.state_dict()
    wb = load_lm(str(tmp_path / "one" / "student")).model.state_dict()
    # Adam divides by sqrt(v): where a gradient is ~0, a 1e-7 difference in it moves a weight by up to
    # ~1e-5; 5e-5 is 0.5% of one lr=0.01 step, far below what a missing all-reduce would change.
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=5e-5)
    moved = load_lm(str(tiny_model)).model.state_dict()
    assert max(float((wb[k] - moved[k]).abs().max()) for k in wb) > 0.02  # the weights really trained


def test_early_stopping_stops_every_process_at_the_same_step(tiny_model, tiny_model_b, tmp_path):
    """Each process measures the val split; the main one's count ends the run for all (a rank that
    went on alone would wait in its next all-reduce), at the step one process stops at."""
    proc = _torchrun(tiny_model, tiny_model_b, tmp_path / "ddp", "early-stop")
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = _torchrun(tiny_model, tiny_model_b, tmp_path / "one", "early-stop", processes=1)
    assert single.returncode == 0, single.stderr[-3000:]
    summaries = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    for s in (*summaries, one):
        assert (s["steps"], s["stopped_early"]) == (2, True), s
    assert summaries[0]["best_step"] == one["best_step"]
    two, ref = _rows(tmp_path / "ddp"), _rows(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in ref] == [1, 2]
    for a, b in zip(two, ref):
        for key in ("loss", "val_loss"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(b[key])), (a["step"], key, a[key], b[key])


def test_two_processes_resume_with_each_rank_s_own_random_state(tiny_model, tiny_model_b, tmp_path):
    """A checkpoint held rank 0's torch RNG state only, and every rank restored it: rank 1 then drew
    rank 0's dropout masks (on-policy samples too) where the run never stopped drew its own, so a
    resumed two-process run left the loss curve that checkpoint_every promises to keep bit for bit."""
    whole = _torchrun(tiny_model, tiny_model_b, tmp_path / "whole", "dropout-ckpt")
    assert whole.returncode == 0, whole.stderr[-3000:]
    crashed = _torchrun(tiny_model, tiny_model_b, tmp_path / "b", "dropout-ckpt-crash")
    assert crashed.returncode != 0 and [r["step"] for r in _rows(tmp_path / "b")] == [1, 2], crashed.stderr[-3000:]
    resumed = _torchrun(tiny_model, tiny_model_b, tmp_path / "b", "dropout-ckpt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    curve = [(r["step"], r["loss"], r["grad_norm"]) for r in _rows(tmp_path / "b")]
    assert curve == [(r["step"], r["loss"], r["grad_norm"]) for r in _rows(tmp_path / "whole")]


def test_other_weights_on_one_rank_refuse_to_train(tiny_model, tiny_model_b, tmp_path):
    proc = _torchrun(tiny_model, tiny_model_b, tmp_path / "ddp", "other-teacher")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "refusing to train" in ln]
    assert lines and "teacher (train.teacher_model) has other weights on rank 1 than on rank 0" in lines[0], \
        proc.stderr[-3000:]
    assert not (tmp_path / "ddp" / "metrics.jsonl").exists() or not (tmp_path / "ddp" / "metrics.jsonl").read_text()


def test_weights_checksum_sees_one_changed_element(tiny_model):
    from potstill.train.distributed import weights_checksum

    model = load_lm(str(tiny_model)).model
    before = weights_checksum(model)
    assert weights_checksum(load_lm(str(tiny_model)).model) == before
    with torch.no_grad():
        p = next(model.parameters())
        # One ulp: the lowest bit of one element (bf16 weights on a GPU, fp32 on the CPU).
        bits = p.view(-1).view({2: torch.int16, 4: torch.int32}[p.element_size()])
        bits[7] ^= 1
    assert weights_checksum(model) != before
    for b in model.buffers():  # rotary tables are buffers, not in the state dict
        b.zero_()
        break
    assert len({before, weights_checksum(model)}) == 2


def test_deal_balances_tokens_and_keeps_every_example_once():
    from potstill.train.batching import Example
    from potstill.train.distributed import deal

    lengths = [900, 10, 850, 12, 600, 15, 500, 20, 40, 8, 35, 30]  # every other one long
    batch = [Example(ids=list(range(n)), n_prompt=1) for n in lengths]
    assert deal(batch, 1) == [batch]
    shares = deal(batch, 2)
    assert sorted(id(e) for s in shares for e in s) == sorted(id(e) for e in batch)
    loads = [sum(len(e.ids) for e in s) for s in shares]
    assert sorted(loads) == [1507, 1513]  # round-robin (batch[rank::2]) would give 2,925 and 95
    assert all(shares) and len(deal(batch[:3], 3)) == 3 and all(deal(batch[:3], 3))


def test_deal_gives_every_process_enough_examples_for_its_micro_batches():
    """By tokens alone, a long example and three short ones over 2 processes gave one process the
    long one only: with grad_accum_steps 2 its second micro-batch was empty, and collate crashed."""
    from potstill.train.batching import Example
    from potstill.train.distributed import deal

    batch = [Example(ids=list(range(n)), n_prompt=1) for n in (100, 10, 10, 10)]
    assert sorted(map(len, deal(batch, 2))) == [1, 3]  # least 1: the token balance, as before
    shares = deal(batch, 2, least=2)
    assert sorted(map(len, shares)) == [2, 2] and sorted(id(e) for s in shares for e in s) == sorted(map(id, batch))
    assert all(m for s in shares for m in deal(s, 2))


def test_a_set_smaller_than_one_batch_trains_like_one_process(tiny_model, tiny_model_b, tmp_path):
    """3 training examples, batch_size 4, grad_accum_steps 2, 2 processes: the batch held the 3
    examples only, rank 0's second micro-batch was empty and collate crashed on max() of nothing
    (rank 1 then died on a closed gloo connection). The batch is now filled by repeating examples,
    drawn alike on every rank: the curve is one process's."""
    proc = _torchrun(tiny_model, tiny_model_b, tmp_path / "ddp", "small-accum2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = _torchrun(tiny_model, tiny_model_b, tmp_path / "one", "small-accum2", processes=1)
    assert single.returncode == 0, single.stderr[-3000:]
    two, one = _rows(tmp_path / "ddp"), _rows(tmp_path / "one")
    assert len(two) == len(one) == 2  # epochs 1.5 of a set within one batch
    for a, b in zip(two, one):
        assert a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(b["loss"])), (a["step"], a["loss"], b["loss"])


def test_a_command_that_succeeds_under_a_launcher_ends_its_process_group(tmp_path):
    """Left to the interpreter's exit, a rank of a finished two-process run aborted now and then
    ('terminate called without an active exception', 1 of 12 CPU runs), and the launcher called the
    run failed; the CLI now destroys the process group when a command succeeds."""
    script = (
        "import sys, torch.distributed as dist\n"
        f"dist.init_process_group('gloo', store=dist.FileStore({str(tmp_path / 'store')!r}, 1), rank=0, world_size=1)\n"
        "from potstill.cli import main\n"
        "sys.argv = ['potstill', 'env']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'group', dist.is_initialized())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "exit 0 group False", out.stderr[-2000:]
