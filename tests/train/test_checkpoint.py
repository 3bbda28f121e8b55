"""A run killed with SIGKILL and resumed from its checkpoint has the same loss curve as one never killed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from potstill.config import TaskConfig, TrainConfig
from potstill.models.loading import load_lm
from potstill.records import Record
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.train.trainer import train

TEXTS = ["the team won the match", "new phone software", "the minister and the party", "a goal in the game",
         "the internet and computer", "a vote in the election", "the bank profit", "a film star"]
LABELS = ["sports", "tech", "politics", "business", "entertainment"]


def run(model_dir: str, out: str, on_row=None, **overrides) -> dict:
    """Nine steps of SFT + label KD with a checkpoint every 3 steps and dropout on (so the RNG matters)."""
    task = get_task(TaskConfig(type="classification", labels=LABELS))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 5], valid=True,
                      label_probs={lab: (0.6 if j == i % 5 else 0.1) for j, lab in enumerate(LABELS)})
               for i, t in enumerate(TEXTS)]
    lm = load_lm(model_dir)
    lm.model.config.attention_dropout = 0.2
    for layer in lm.model.model.layers:
        layer.self_attn.attention_dropout = 0.2
    cfg = TrainConfig(**{"objective": "kd", "lr": 0.01, "batch_size": 3, "epochs": 3, "warmup_steps": 2, "seed": 3,
                         "checkpoint_every": 3, **overrides})
    out = Path(out)
    return train(lm, student_format(lm, task), task, records, records[:2], cfg, 64, out / "student",
                 out / "metrics.jsonl", on_row=on_row)


def _curve(out: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("overrides", [{}, {"batch_size": 12, "epochs": 9}])
def test_resume_after_kill_reproduces_the_loss_curve(tiny_model, tmp_path, overrides):
    """``batch_size 12`` over the 8 examples: every batch is filled from further passes, whose order
    the checkpoint keeps with the sampler's RNG state."""
    whole = run(str(tiny_model), str(tmp_path / "a"), **overrides)
    assert whole["steps"] == 9 and whole["resumed_from_step"] is None
    worker = Path(__file__).with_name("kill_worker.py")
    proc = subprocess.run([sys.executable, str(worker), str(tiny_model), str(tmp_path / "b"), "5",
                           json.dumps(overrides)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed by SIGKILL during step 5
    assert len(_curve(tmp_path / "b")) == 4 and not (tmp_path / "b" / "student").exists()
    assert [p.name for p in (tmp_path / "b" / "student.ckpt").iterdir()] == ["step-00000003"]
    resumed = run(str(tiny_model), str(tmp_path / "b"), **overrides)
    assert resumed["resumed_from_step"] == 3
    assert _curve(tmp_path / "b") == _curve(tmp_path / "a")  # exact: same floats at every step
    # A finished run keeps only the record of it, until its caller's outputs are whole (checkpoint.drop).
    assert [p.name for p in (tmp_path / "b" / "student.ckpt").iterdir()] == ["final.json"]
    a = load_lm(str(tmp_path / "a" / "student")).model.state_dict()
    b = load_lm(str(tmp_path / "b" / "student")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_hands_on_row_the_whole_curve(tiny_model, tmp_path):
    """``on_row`` (what a live tracker follows) gets every row of metrics.jsonl as it is written; a
    resumed run first hands it the rows kept from its checkpoint, so a tracker run opened by the
    resume holds the whole curve, not only the steps after the checkpoint."""
    worker = Path(__file__).with_name("kill_worker.py")
    proc = subprocess.run([sys.executable, str(worker), str(tiny_model), str(tmp_path), "5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    seen = []
    assert run(str(tiny_model), str(tmp_path), on_row=seen.append)["resumed_from_step"] == 3
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in seen] == list(range(1, 10)) and seen == rows


def test_checkpoint_from_other_settings_is_not_resumed(tiny_model, tmp_path):
    import random

    from potstill.train import checkpoint

    task = get_task(TaskConfig(type="classification", labels=LABELS))
    records = [Record(messages=[{"role": "user", "content": t}], output="tech", valid=True) for t in TEXTS]
    lm = load_lm(str(tiny_model))
    opt = torch.optim.AdamW(lm.model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    checkpoint.save(tmp_path / "student.ckpt", 6, "other settings", lm.model, opt, sched, random.Random(0), [],
                    {"tokens": 0, "elapsed_s": 0.0})
    cfg = TrainConfig(lr=0.02, batch_size=3, epochs=3, seed=3, checkpoint_every=3)
    summary = train(lm, student_format(lm, task), task, records, [], cfg, 64, tmp_path / "student",
                    tmp_path / "metrics.jsonl")
    assert summary["resumed_from_step"] is None and summary["steps"] == 9


def test_ctrl_c_says_what_a_rerun_does(tiny_model, tmp_path, monkeypatch, capsys):
    """Ctrl-C during step 5 (a KeyboardInterrupt out of the optimiser) still stops the run, after one
    line naming the checkpoint the same command resumes from (typer exits 130 without a word)."""
    _interrupted(tiny_model, tmp_path, monkeypatch)
    err = capsys.readouterr()
    said = (err.out + err.err).replace("\n", " ")
    assert "train: interrupted after 4 of 9 steps; the same command resumes from its checkpoint at step 3" in said
    assert not (tmp_path / "student").exists()
    assert run(str(tiny_model), str(tmp_path))["resumed_from_step"] == 3


def _interrupted(tiny_model, out: Path, monkeypatch) -> None:
    """A run stopped by Ctrl-C during step 5: its checkpoint at step 3 stays."""
    import pytest

    real_step, calls = torch.optim.AdamW.step, []

    def step(self, *a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(self, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", step)
        with pytest.raises(KeyboardInterrupt):
            run(str(tiny_model), str(out))


def test_a_checkpoint_from_before_a_new_setting_resumes(tiny_model, tmp_path, monkeypatch):
    """Every train field added since 12-03 went into the checkpoint's fingerprint at its default, so
    each upgrade that added one trained again from step 0 and dropped the checkpoint in progress. A
    field added with the value that trains as before (checkpoint.AS_BEFORE; neftune_noise_alpha
    here, as if it were new) leaves the fingerprint at that value."""
    from potstill.train import checkpoint

    real = checkpoint.settings
    with monkeypatch.context() as m:  # the code before the field: not among the settings at all
        m.setattr(checkpoint, "settings", lambda cfg: {k: v for k, v in real(cfg).items() if k != "neftune_noise_alpha"})
        _interrupted(tiny_model, tmp_path, monkeypatch)
    monkeypatch.setattr(checkpoint, "AS_BEFORE", {"neftune_noise_alpha": None})
    assert run(str(tiny_model), str(tmp_path))["resumed_from_step"] == 3
    # At another value (set, or a default changed since) it trains otherwise, and is in.
    assert checkpoint.settings(TrainConfig(neftune_noise_alpha=5.0))["neftune_noise_alpha"] == 5.0


def test_a_checkpoint_not_resumed_is_named_with_why(tiny_model, tmp_path, monkeypatch, capsys):
    """Other settings than the checkpoint's trained again from step 0 without a word (and dropped
    the checkpoint at the first save): one line now names it and the settings that differ."""
    _interrupted(tiny_model, tmp_path, monkeypatch)
    capsys.readouterr()
    assert run(str(tiny_model), str(tmp_path), lr=0.02)["resumed_from_step"] is None
    said = " ".join(capsys.readouterr().err.split())
    assert "step-00000003 (step 3) is not resumed: it was written with other settings (train.lr); training " \
           "starts from step 0" in said


def test_a_kill_during_the_first_resumed_step_keeps_the_curve_before_the_checkpoint(tiny_model, tmp_path):
    """The resumed run truncated metrics.jsonl and rewrote the rows up to its checkpoint into a write
    buffer flushed only after its first step: killed during that step (a long step, a preempted
    machine), it left metrics.jsonl empty, and the next resume, finding no rows, lost steps 1-3 of the
    curve for good."""
    worker = Path(__file__).with_name("kill_worker.py")
    for kill_at in (5, 1):  # step 5 of a fresh run, then the first step (4) of the resumed one
        proc = subprocess.run([sys.executable, str(worker), str(tiny_model), str(tmp_path / "b"), str(kill_at)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr[-2000:]
    assert [s for s, _, _ in _curve(tmp_path / "b")] == [1, 2, 3]
    assert run(str(tiny_model), str(tmp_path / "b"))["resumed_from_step"] == 3
    run(str(tiny_model), str(tmp_path / "a"))
    assert _curve(tmp_path / "b") == _curve(tmp_path / "a")


def test_a_resume_keeps_its_own_curve_after_another_run_rewrote_metrics(tiny_model, tmp_path):
    """Killed at step 5 (checkpoint at 3), then a run with other settings that stopped before saving
    a checkpoint (here a NaN at lr 1e9, which says to lower train.lr), then the first settings again:
    the resume took steps 1-3 of its curve from metrics.jsonl, which now held the other run's rows, so
    the curve joined two runs (and lacked the steps that other run never reached)."""
    import pytest

    from potstill.errors import PotstillError

    worker = Path(__file__).with_name("kill_worker.py")
    proc = subprocess.run([sys.executable, str(worker), str(tiny_model), str(tmp_path / "b"), "5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    task = get_task(TaskConfig(type="classification", labels=LABELS))
    records = [Record(messages=[{"role": "user", "content": t}], output=LABELS[i % 5], valid=True)
               for i, t in enumerate(TEXTS)]
    lm = load_lm(str(tiny_model))
    with pytest.raises(PotstillError, match="the loss is nan"):
        train(lm, student_format(lm, task), task, records, [], TrainConfig(lr=1e9, batch_size=3, epochs=3), 64,
              tmp_path / "b" / "student", tmp_path / "b" / "metrics.jsonl")
    assert run(str(tiny_model), str(tmp_path / "b"))["resumed_from_step"] == 3
    run(str(tiny_model), str(tmp_path / "a"))
    assert _curve(tmp_path / "b") == _curve(tmp_path / "a")


def test_a_setting_read_after_training_does_not_discard_the_checkpoint(tiny_model, tmp_path):
    """train.int8_calibration is read after the last step (it calibrates the saved student), yet it
    was part of the checkpoint's fingerprint: rerun with calibration off (to finish sooner), a killed
    run silently started again from step 1 and dropped its checkpoint at the next save."""
    worker = Path(__file__).with_name("kill_worker.py")
    proc = subprocess.run([sys.executable, str(worker), str(tiny_model), str(tmp_path / "b"), "5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert run(str(tiny_model), str(tmp_path / "b"), int8_calibration=0)["resumed_from_step"] == 3
    run(str(tiny_model), str(tmp_path / "a"))
    assert _curve(tmp_path / "b") == _curve(tmp_path / "a")


def test_checkpoints_under_fsdp_are_refused_before_any_loading(tiny_model, tmp_path, monkeypatch):
    """Under FSDP the main process alone gathered the state dicts for a checkpoint (collectives every
    rank must join), so ``checkpoint_every`` would hang the run at its first checkpoint; it is now
    one line at the start. (FSDP needs CUDA in accelerate: the launcher's accelerator is stood in
    for by one that reports FSDP.)"""
    from types import SimpleNamespace

    from potstill.errors import PotstillError
    from potstill.train import trainer

    fsdp = SimpleNamespace(distributed_type=SimpleNamespace(value="FSDP"), num_processes=2, is_main_process=True,
                           device=torch.device("cpu"))
    monkeypatch.setattr(trainer, "accelerator", lambda cuda, mixed: fsdp)
    monkeypatch.setattr(trainer, "_student_model", lambda *a: pytest.fail("loaded the student before refusing"))
    task = get_task(TaskConfig(type="classification", labels=LABELS))
    records = [Record(messages=[{"role": "user", "content": t}], output="tech", valid=True) for t in TEXTS]
    lm = load_lm(str(tiny_model))
    cfg = TrainConfig(lr=0.02, batch_size=4, epochs=1, seed=3, checkpoint_every=2)
    with pytest.raises(PotstillError, match=r"train.checkpoint_every is not supported under FSDP"):
        train(lm, student_format(lm, task), task, records, [], cfg, 64, tmp_path / "student", tmp_path / "m.jsonl")
    assert not (tmp_path / "student").exists()


def test_another_teacher_in_the_same_folder_trains_anew(tiny_model, tiny_model_b, tmp_path):
    """train.teacher_model names a folder; the checkpoints' fingerprint held that path, not the
    weights, so another model saved there resumed the first teacher's run (a student distilled from
    two) or, with the first run finished, handed back its student untrained."""
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_b, teacher)
    first = run(str(tiny_model), str(tmp_path / "run"), teacher_model=str(teacher))
    assert first["resumed_from_step"] is None and first["steps"] == 9
    shutil.rmtree(teacher)
    shutil.copytree(tiny_model, teacher)  # another model (the same vocabulary) under the same path
    again = run(str(tiny_model), str(tmp_path / "run"), teacher_model=str(teacher))
    assert again["resumed_from_step"] is None and again["steps"] == 9


class _Runs:
    """A pickle that creates the file ``path`` when loaded, as a planted one could run anything."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("every", [0, 3])
def test_a_pickle_planted_among_the_checkpoints_is_never_opened(tiny_model, tmp_path, capsys, every):
    """The state was a pickle (state.pkl) that every train unpickled, checkpointing on or off: one
    planted in a shared run folder ran its code as whoever trained next, then a state that was not a
    dict stopped train in a traceback. The state is JSON now; a state.pkl is named, never opened, and
    a state.json that is not a checkpoint's is passed over."""
    import pickle

    ckpt, ran = tmp_path / "student.ckpt", tmp_path / "ran"
    (ckpt / "step-00000009").mkdir(parents=True)
    (ckpt / "step-00000009" / "state.pkl").write_bytes(pickle.dumps(_Runs(ran)))
    (ckpt / "step-00000012").mkdir()
    (ckpt / "step-00000012" / "state.json").write_text('{"step": 12, "fingerprint": 7}')
    summary = run(str(tiny_model), str(tmp_path), checkpoint_every=every)
    assert summary["resumed_from_step"] is None and summary["steps"] == 9 and not ran.exists()
    said = " ".join(capsys.readouterr().err.split())
    why = ("train.checkpoint_every is 0" if not every else
           "an earlier potstill wrote its state as a pickle (state.pkl), which potstill no longer opens")
    assert f"step-00000009 (step 9) is not resumed: {why}" in said


def test_a_checkpoint_holding_more_than_tensors_is_one_line_and_never_run(tmp_path):
    """optim.pt was read with torch.load(weights_only=False): a pickle there, under a checkpoint of the
    run's own settings, ran its code on resume. Now it is refused in one line naming the file, as is a
    state.json edited into one that does not restore."""
    import json
    import random

    from potstill.errors import PotstillError
    from potstill.train import checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt, ran = tmp_path / "student.ckpt", tmp_path / "ran"
    saved = checkpoint.save(ckpt, 6, "fp", model, opt, sched, random.Random(0), [3, 1], {"tokens": 5, "elapsed_s": 1.0})
    assert checkpoint.latest(ckpt, "fp") == saved
    assert checkpoint.load(saved, model, opt, sched, random.Random(1))["order"] == [3, 1]
    good = (saved / "optim.pt").read_bytes()
    torch.save({"opt": _Runs(ran)}, saved / "optim.pt")
    with pytest.raises(PotstillError, match=r"^train: the checkpoint .*optim.pt does not read \(it names objects "
                                            r"other than tensors.*remove it \(or set train.resume false\)"):
        checkpoint.load(saved, model, opt, sched, random.Random(1))
    assert not ran.exists()
    (saved / "optim.pt").write_bytes(good)
    state = json.loads((saved / "state.json").read_text())
    (saved / "state.json").write_text(json.dumps({**state, "py_rng": [3, [1, 2], None]}))
    with pytest.raises(PotstillError, match=r"^train: the checkpoint .*step-00000006 does not restore \(.*\): remove"):
        checkpoint.load(saved, model, opt, sched, random.Random(1))
