from pathlib import Path

import pytest
import yaml

from potstill.config import Config, flat_fields, load_config, starter_yaml
from potstill.errors import PotstillError

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def test_unknown_field_gets_a_suggestion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"task": {"labels": ["a", "b"]}, "train": {"learning_rate": 1e-3}}))
    with pytest.raises(PotstillError, match=r"unknown config field 'train.learning_rate'"):
        load_config(p)
    p.write_text(yaml.safe_dump({"task": {"labels": ["a", "b"]}, "teacher": {"modle": "x"}}))
    with pytest.raises(PotstillError, match=r"did you mean 'teacher.model'"):
        load_config(p)


def test_overrides_set_one_field_each_and_are_validated(tmp_path):
    cfg = load_config(None, {"task.labels": ["x", "y"], "train.lr": 0.5, "teacher.few_shot.k": 3})
    assert cfg.train.lr == 0.5 and cfg.teacher.few_shot.k == 3
    with pytest.raises(PotstillError, match="train.lr"):
        load_config(None, {"task.labels": ["x", "y"], "train.lr": -1})


def test_an_unset_learning_rate_follows_the_method(tmp_path):
    """train.lr unset is 1e-4 for a full fine-tune and 1e-3 for adapters (README, Train), resolved at load
    so that the trainer and the stage fingerprint see the number; a rate given, in a file or a flag, stands.
    `potstill init` writes it unset, so a starter config switched to lora gets the adapters' rate."""
    from potstill.config import starter_yaml
    from potstill.pipeline import STAGES
    from potstill.rundir import RunDir

    labels = {"task.labels": ["x", "y"]}
    assert load_config(None, labels).train.lr == 1e-4
    assert load_config(None, {**labels, "train.method": "lora"}).train.lr == 1e-3
    assert load_config(None, {**labels, "train.method": "qlora"}).train.lr == 1e-3
    assert load_config(None, {**labels, "train.method": "lora", "train.lr": 2e-4}).train.lr == 2e-4
    starter = yaml.safe_load(starter_yaml())
    assert starter["train"]["lr"] is None
    starter["train"]["method"] = "lora"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(starter))
    assert load_config(tmp_path / "p.yaml").train.lr == 1e-3
    # A full fine-tune left unset hashes as one that says 1e-4, the default it had before: no rerun.
    run = RunDir(tmp_path / "run")
    unset, said = (load_config(None, {**labels, "run_dir": str(run.path), **o}) for o in ({}, {"train.lr": 1e-4}))
    assert STAGES["train"].fingerprint(unset, run) == STAGES["train"].fingerprint(said, run)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump({"run_dir": "run", "data": {"inputs": "in.jsonl"}, "task": {"labels": ["a", "b"]}}))
    cfg = load_config(p)
    assert Path(cfg.run_dir) == tmp_path / "sub" / "run"
    assert Path(cfg.data.inputs) == tmp_path / "sub" / "in.jsonl"


def test_a_path_starting_with_a_tilde_is_in_the_home_directory(tmp_path, monkeypatch):
    """`data.inputs: ~/data/in.jsonl` was joined to the config's folder (sub/~/data/in.jsonl: 'file not
    found' naming a file that exists), and `student.model: ~/models/base` counted in the fingerprint by
    its name, not its weights (Path('~/...').is_dir() is False), so a base model retrained in place left
    train up to date. A leading ~ is the home directory, in a config file and in a flag."""
    from potstill.stage import by_content
    from tests.helpers.tiny import make_model_dir

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    (home / "data").mkdir(parents=True)
    (home / "data" / "in.jsonl").write_text('{"input": "hello", "label": "a"}\n')
    make_model_dir(home / "models" / "base")
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump({"run_dir": "~/runs/r", "data": {"inputs": "~/data/in.jsonl"}, "task": {"labels": ["a", "b"]},
                                 "student": {"model": "~/models/base"}, "teacher": {"few_shot": {"path": "shots.jsonl"}}}))
    cfg = load_config(p, {"curate.real_data": "~/data/in.jsonl"})
    assert Path(cfg.data.inputs) == home / "data" / "in.jsonl" and Path(cfg.run_dir) == home / "runs" / "r"
    assert Path(cfg.curate.real_data) == home / "data" / "in.jsonl"
    assert Path(cfg.teacher.few_shot.path) == tmp_path / "sub" / "shots.jsonl"  # relative: still the config's folder
    assert "dir_sha256" in by_content("student.model", cfg.student.model)


def test_a_model_path_starting_with_a_dot_is_relative_to_the_config_file(tmp_path, monkeypatch):
    """`student.model: ./base` in sub/c.yaml was left as written, so it named ./base in the shell's
    folder ('model path not found', or another model of that name there) where every other relative
    path in the file is the file's; a value starting with ./ or ../ is a path (never a hub id,
    models.loading.resolve) and now resolves as they do. Hub ids and bundled: names stay as written."""
    from potstill.stage import by_content
    from tests.helpers.tiny import make_model_dir

    make_model_dir(tmp_path / "sub" / "base")
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump({"task": {"labels": ["a", "b"]}, "student": {"model": "./base"},
                                 "train": {"teacher_model": "../models/teacher"}, "teacher": {"model": "org/name"}}))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(p)
    assert Path(cfg.student.model) == tmp_path / "sub" / "base"
    assert Path(cfg.train.teacher_model) == tmp_path / "models" / "teacher"
    assert cfg.teacher.model == "org/name" and load_config(None, {"task.labels": ["a", "b"]}).student.model.startswith("bundled:")
    assert "dir_sha256" in by_content("student.model", cfg.student.model)
    # A flag's ./path is the shell's, as any path given on the command line.
    assert load_config(p, {"student.model": "./here"}).student.model == "./here"


def test_starter_config_round_trips(tmp_path):
    p = tmp_path / "potstill.yaml"
    p.write_text(starter_yaml())
    cfg = load_config(p)
    assert cfg.task.labels == ["positive", "negative"]
    # every leaf field appears in the starter file with its doc comment
    text = p.read_text()
    for key, _, desc in flat_fields(Config):
        assert key.split(".")[-1] + ":" in text
        assert desc in text


def test_classification_needs_labels():
    with pytest.raises(PotstillError, match="at least two labels"):
        load_config(None, {})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_file_a_preset_names_ships_beside_it_or_is_the_users_to_provide(path):
    """Presets named ../data/*.jsonl, which the repository does not hold, while their comments said to
    run them as is. Each input file a preset names now exists, or a comment line says `you provide:`
    that path as it is written in the preset."""
    from potstill.config import path_roles
    from potstill.stage import get_dotted_plain

    raw = yaml.safe_load(path.read_text())
    provided = [line for line in path.read_text().splitlines() if line.lstrip().startswith("#") and "you provide:" in line]
    for key, role in path_roles().items():
        if not role.content or not role.resolve:
            continue
        try:
            written = get_dotted_plain(raw, key)
        except (KeyError, TypeError):
            continue
        if written is None or (path.parent / written).is_file():
            continue
        assert any(written in line for line in provided), f"{path.name}: {key} {written} neither ships nor is documented"


def test_the_replay_preset_runs_as_is(tmp_path, monkeypatch):
    """The replay preset ships its inputs and the logged chats they are answered from: generate answers
    every input from the log, with no network and no key."""
    from potstill.pipeline import STAGES
    from potstill.records import read_records

    cfg = load_config(Path(__file__).parent.parent / "examples" / "replay-logs.yaml", {"run_dir": str(tmp_path / "run")})
    STAGES["generate"].run(cfg)
    recs = read_records(tmp_path / "run" / "teacher.jsonl")
    assert len(recs) == len(read_records(cfg.data.inputs)) >= 5 and all(r.valid and r.output for r in recs)


def test_path_fields_are_declared_and_saved_relative_to_a_directory(tmp_path):
    from potstill.config import INPUT_FILE, MODEL_REF, RUN_PATH, path_roles, relative_paths

    roles = path_roles()
    assert roles == {"run_dir": RUN_PATH, "data.inputs": INPUT_FILE, "teacher.model": MODEL_REF,
                     "teacher.few_shot.path": INPUT_FILE, "teacher.replay_path": INPUT_FILE,
                     "student.model": MODEL_REF, "curate.real_data": INPUT_FILE, "train.teacher_model": MODEL_REF,
                     "synthesize.seeds": INPUT_FILE, "synthesize.test_inputs": INPUT_FILE,
                     "evaluate.judge.teacher.model": MODEL_REF, "evaluate.judge.teacher.few_shot.path": INPUT_FILE,
                     "evaluate.judge.teacher.replay_path": INPUT_FILE}
    cfg = load_config(None, {"task.labels": ["a", "b"], "run_dir": str(tmp_path / "run"),
                             "data.inputs": str(tmp_path / "in.jsonl"), "teacher.model": "org/name"})
    data = relative_paths(cfg, tmp_path / "run")
    assert (data["run_dir"], data["data"]["inputs"], data["teacher"]["model"]) == (".", "../in.jsonl", "org/name")
    # Written into another directory, the same file loads with paths relative to it.
    (tmp_path / "moved" / "run").mkdir(parents=True)
    (tmp_path / "moved" / "run" / "c.yaml").write_text(yaml.safe_dump(data))
    moved = load_config(tmp_path / "moved" / "run" / "c.yaml")
    assert Path(moved.data.inputs) == tmp_path / "moved" / "in.jsonl" and moved.teacher.model == "org/name"


def test_a_run_directory_reached_through_a_symlink_loads_its_saved_paths(tmp_path):
    """proj/runs a link to another disk: the run's saved potstill.yaml held data.inputs relative to the
    run's real place (../../../../proj/data/in.jsonl), and loading it through the link collapsed '..'
    by hand from proj/runs/exp1, so `potstill run -c proj/runs/exp1/potstill.yaml` said 'file not found'
    (or read another file of that name). Saved and loaded paths now agree however the folder is reached,
    also through a link at another depth than its target (latest -> disk/scratch/alice/runs/exp1)."""
    from potstill.config import relative_paths

    real = tmp_path / "disk" / "scratch" / "alice" / "runs"
    (real / "exp1").mkdir(parents=True)
    (tmp_path / "proj" / "data").mkdir(parents=True)
    (tmp_path / "proj" / "data" / "in.jsonl").write_text('{"input": "x", "label": "a"}\n')
    (tmp_path / "proj" / "runs").symlink_to(real)
    (tmp_path / "latest").symlink_to(real / "exp1")
    p = tmp_path / "proj" / "potstill.yaml"
    p.write_text(yaml.safe_dump({"run_dir": "runs/exp1", "data": {"inputs": "data/in.jsonl"}, "task": {"labels": ["a", "b"]}}))
    cfg = load_config(p)
    saved = tmp_path / "proj" / "runs" / "exp1" / "potstill.yaml"
    saved.write_text(yaml.safe_dump(relative_paths(cfg, Path(cfg.run_dir))))
    for way in (saved, tmp_path / "latest" / "potstill.yaml"):
        again = load_config(way)
        assert Path(again.data.inputs).samefile(tmp_path / "proj" / "data" / "in.jsonl"), (way, again.data.inputs)
        assert Path(again.run_dir).samefile(real / "exp1")
    # Without a link in the way, paths stay short (RUN/../in.jsonl is in.jsonl, relative where given so).
    (tmp_path / "plain" / "run").mkdir(parents=True)
    (tmp_path / "plain" / "run" / "c.yaml").write_text(yaml.safe_dump({"data": {"inputs": "../in.jsonl"}, "task": {"labels": ["a", "b"]}}))
    assert Path(load_config(tmp_path / "plain" / "run" / "c.yaml").data.inputs) == tmp_path / "plain" / "in.jsonl"


def test_paths_in_the_judges_teacher_resolve_against_the_config_file(tmp_path):
    """evaluate.judge.teacher is a whole teacher section (may be null): its replay_path and
    few_shot.path were left relative to the shell's cwd, unlike the same fields of `teacher`, so
    `potstill evaluate -c sub/c.yaml` run from elsewhere did not find them. They now resolve against
    the config file's folder and are saved relative to the run directory, as the run teacher's are."""
    from potstill.config import relative_paths

    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump({"run_dir": "run", "task": {"type": "freetext"}, "teacher": {"replay_path": "t.jsonl"},
                                 "evaluate": {"judge": {"enabled": True, "teacher": {
                                     "type": "replay", "replay_path": "judged.jsonl", "few_shot": {"path": "shots.jsonl"}}}}}))
    cfg = load_config(p)
    assert Path(cfg.teacher.replay_path) == tmp_path / "sub" / "t.jsonl"
    assert Path(cfg.evaluate.judge.teacher.replay_path) == tmp_path / "sub" / "judged.jsonl"
    assert Path(cfg.evaluate.judge.teacher.few_shot.path) == tmp_path / "sub" / "shots.jsonl"
    data = relative_paths(cfg, tmp_path / "sub" / "run")
    assert data["evaluate"]["judge"]["teacher"]["replay_path"] == "../judged.jsonl"
    # A judge with no teacher of its own (null) loads and saves as before.
    p.write_text(yaml.safe_dump({"task": {"type": "freetext"}, "evaluate": {"judge": {"teacher": None}}}))
    assert relative_paths(load_config(p), tmp_path)["evaluate"]["judge"]["teacher"] is None


def test_a_key_pasted_where_its_variables_name_belongs_is_refused_without_being_shown(tmp_path):
    """``teacher.api_key_env`` / ``serve.api_key_env`` take a variable's name; a key given there is
    refused and never repeated (nor where it is given as ``api_key:``, an OpenAI-style spelling)."""
    key = "sk-proj-REALKEY1234567890abcdef"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"type": "openai", "api_key": key}}))
    with pytest.raises(PotstillError, match=r"unknown config field 'teacher.api_key'; did you mean") as e:
        load_config(cfg)
    assert key not in str(e.value)
    cfg.write_text(yaml.safe_dump({"teacher": {"type": "openai", "api_key_env": key}}))
    for attempt in (lambda: load_config(cfg), lambda: load_config(None, {"teacher.api_key_env": key}),
                    lambda: load_config(None, {"serve.api_key_env": key})):
        with pytest.raises(PotstillError, match=r"api_key_env: .*must be the NAME of an environment variable") as e:
            attempt()
        assert key not in str(e.value) and "sk-" not in str(e.value)
    ok = load_config(None, {"teacher.api_key_env": "MY_KEY_2", "serve.api_key_env": "", "task.labels": ["a", "b"]})
    assert (ok.teacher.api_key_env, ok.serve.api_key_env) == ("MY_KEY_2", "")


@pytest.mark.parametrize("key", [
    "sk_live_9fQ2mZ7xLw4Rt8Yp3Kd6Vb1N",  # sk_... style (Stripe-like, some OpenAI-compatible gateways)
    "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",  # a Hugging Face token
    "AKIAQ3EGRTXW7ZP4LK2M",  # an AWS access key id
    "gsk_7pQ2Lw9ZxR4tY8mK3dV6bN1cF5hJ0sA",  # Groq
    "a3f9c07be21d4e6f8a9b0c1d2e3f4a5b",  # a hex --api-key given to `vllm serve`
    "Zt7Qp2mXw9LrK4vB8nJd3HsF6yGc1aE",  # letters and digits, as `openssl rand -base64` without + / =
])
def test_a_key_made_of_letters_digits_and_underscores_is_refused_without_being_shown(key):
    """A key with no '-' passed the old check (letters, digits and _), so it was taken as a variable's
    NAME and printed in 'environment variable <key> is not set' (serve, teachers). Values that look
    like a key (a known key prefix, or a long run of mixed letters and digits) are refused, unshown."""
    for field in ("teacher.api_key_env", "serve.api_key_env"):
        with pytest.raises(PotstillError, match=r"api_key_env: .*looks like a key") as e:
            load_config(None, {field: key, "task.labels": ["a", "b"]})
        assert key not in str(e.value)


def test_ordinary_variable_names_are_still_accepted():
    for name in ("OPENAI_API_KEY", "MY_KEY_2", "VLLM_API_KEY", "AZURE_OPENAI_API_KEY", "HF_TOKEN", "hf_token",
                 "GROQ_API_KEY", "openai_api_key_2024", "SK_PROD_KEY", "TEAM7_LLM_GATEWAY_TOKEN", "AKIA_KEY"):
        cfg = load_config(None, {"teacher.api_key_env": name, "serve.api_key_env": name, "task.labels": ["a", "b"]})
        assert cfg.teacher.api_key_env == name


def test_yaml_numbers_in_a_text_field_are_their_text_and_booleans_are_explained(tmp_path):
    """YAML types bare scalars: star ratings `labels: [1, 2, 3, 4, 5]` arrive as ints and
    `--data.source 2026` as an int; both are text to potstill. `[yes, no]` arrive as booleans,
    whose text is lost: the error says why and how to quote."""
    path = tmp_path / "potstill.yaml"
    path.write_text("task:\n  labels: [1, 2, 3, 4, 5]\ndata:\n  source: 2026\n  license: 2.0\n")
    cfg = load_config(path, {"teacher.model": yaml.safe_load("4")})
    assert cfg.task.labels == ["1", "2", "3", "4", "5"]
    assert (cfg.data.source, cfg.data.license, cfg.teacher.model) == ("2026", "2.0", "4")
    with pytest.raises(PotstillError) as e:
        load_config(None, {"task.labels": yaml.safe_load("[yes, no]")})
    assert str(e.value).startswith("config: task.labels.0: Input should be a valid string")
    assert "yes/no" in str(e.value) and "quote" in str(e.value)


def test_a_section_whose_fields_are_all_commented_out_is_its_defaults(tmp_path):
    """`potstill init` writes every field; commenting out all of a section's leaves `export:` with
    no value (YAML null), which was refused as 'not a valid dictionary', and an override into it
    as 'not a section'. A nullable field that is not a section (evaluate.judge.teacher) stays null."""
    path = tmp_path / "potstill.yaml"
    path.write_text("task:\n  labels: [a, b]\nexport:\n  # dtype: f32\nwatch:\nevaluate:\n  judge:\n    teacher:\n")
    cfg = load_config(path, {"watch.window": 50})
    assert cfg.export.dtype == "f32" and cfg.export.gguf_types == ["f16", "q8_0"]
    assert cfg.watch.window == 50 and cfg.evaluate.judge.teacher is None
    # a GGUF type named twice is written once (it was converted twice and listed twice in export.json)
    assert load_config(path, {"export.gguf_types": ["q8_0", "f16", "q8_0"]}).export.gguf_types == ["q8_0", "f16"]


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """YAML keeps the last of two equal keys: a second `train:` block (added at the end of a long
    file) silently dropped every field of the first, and a run trained at the default lr. A merge
    key (`<<: *base`) may still be overridden."""
    path = tmp_path / "potstill.yaml"
    path.write_text("task:\n  labels: [a, b]\ntrain:\n  lr: 0.5\nteacher:\n  type: openai\ntrain:\n  epochs: 3\n")
    with pytest.raises(PotstillError, match=r"potstill.yaml: invalid YAML: duplicate key 'train' \(first on line 3\) "
                                            r"\(line 7, column 1\)"):
        load_config(path)
    path.write_text("task:\n  labels: [a, b]\n  labels: [c, d]\n")
    with pytest.raises(PotstillError, match=r"duplicate key 'labels' \(first on line 2\) \(line 3, column 3\)"):
        load_config(path)
    path.write_text("task: {labels: [a, b]}\nevaluate: {judge: {teacher: {<<: {model: m, type: openai}, model: n}}}\n")
    assert load_config(path).evaluate.judge.teacher.model == "n"


def test_a_typo_in_the_judges_teacher_section_gets_a_teacher_fields_suggestion():
    """evaluate.judge.teacher is an optional teacher section: a typo in it was matched against the
    judge's own fields ('rubrik' -> 'evaluate.judge.teacher.rubric', a field no teacher has) and
    an OpenAI-style api_key got no pointer to api_key_env."""
    for typo, meant in (("temprature", "temperature"), ("api_key", "api_key_env"), ("rubrik", None)):
        with pytest.raises(PotstillError) as e:
            load_config(None, {"task.labels": ["a", "b"], "evaluate.judge.teacher": {"type": "openai", typo: 1}})
        hint = f"; did you mean 'evaluate.judge.teacher.{meant}'?" if meant else ""
        assert str(e.value) == f"config: unknown config field 'evaluate.judge.teacher.{typo}'{hint}"


def test_a_price_added_in_the_config_extends_the_built_in_table(tmp_path):
    """generate.prices 'edit or extend in potstill.yaml': a config adding its own model's price
    replaced the whole table, so a gpt-4o-mini teacher beside it was unpriced: its calls cost $0 in
    the ledger, `potstill cost` and evaluate's break-even, without a word. An entry the config gives
    wins over the built-in one; other models keep theirs (from the file and from a flag)."""
    from potstill.teachers.api.prices import price_for

    path = tmp_path / "potstill.yaml"
    path.write_text("task: {labels: [a, b]}\ngenerate:\n  prices:\n    my-judge: {input_per_mtok: 1, output_per_mtok: 2}\n"
                    "    gpt-4o: {input_per_mtok: 2.0, output_per_mtok: 8.0}\n")
    for cfg in (load_config(path), load_config(None, {"task.labels": ["a", "b"], "generate.prices": yaml.safe_load(
            "{my-judge: {input_per_mtok: 1, output_per_mtok: 2}, gpt-4o: {input_per_mtok: 2.0, output_per_mtok: 8.0}}")})):
        zero = cfg.teacher.price
        assert price_for("gpt-4o-mini-2024-07-18", zero, cfg.generate.prices) is not None
        assert cfg.generate.prices["gpt-4o-mini"]["input_per_mtok"] == 0.15
        assert cfg.generate.prices["gpt-4o"] == {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
        assert cfg.generate.prices["my-judge"]["output_per_mtok"] == 2


def test_trainable_layers_with_lora_is_refused_not_ignored(tmp_path):
    """LoRA puts adapters on every layer; train.trainable_layers beside it was ignored without a word."""
    path = tmp_path / "potstill.yaml"
    path.write_text("task:\n  labels: [a, b]\ntrain:\n  method: lora\n  trainable_layers: 4\n")
    with pytest.raises(PotstillError, match=r"train.trainable_layers applies to train.method full; lora trains"):
        load_config(path)
    path.write_text("task:\n  labels: [a, b]\ntrain:\n  trainable_layers: 4\n")
    with pytest.raises(PotstillError, match=r"trainable_layers applies to train.method full; qlora"):
        load_config(path, {"train.method": "qlora"})
    assert load_config(path).train.trainable_layers == 4


def test_infinity_and_nan_are_refused_at_load_except_where_inf_means_no_limit(tmp_path, monkeypatch, capsys):
    """Found by a review: `--train.epochs 1e400` (a float reads it as inf), `--curate.test .inf` or
    `--curate.real_ratio .inf` passed their gt/ge bounds and ended in an OverflowError traceback in
    the stage; `--teacher.temperature .inf` failed every teacher call. Every float field now refuses
    inf, -inf and NaN at load, but for the limits where inf means none, which read it as null."""
    import typing

    from potstill.stage import get_dotted
    from tests.helpers.cli import run_main

    no_limit = {"generate.budget_usd", "train.max_grad_norm", "evaluate.quality_bar.max_break_even_months",
                "evaluate.quality_bar.max_p95_latency_s"}
    floats = [k for k, ann, _ in flat_fields(Config) if float in (ann, *typing.get_args(ann)) or k in no_limit]
    assert len(floats) > 50
    for key in floats:
        for value in (float("inf"), float("-inf"), float("nan"), "1e400"):
            if key in no_limit and value in (float("inf"), "1e400"):
                cfg = load_config(None, {"task.labels": ["a", "b"], key: value})
                assert get_dotted(cfg, key) is None, key  # null: no limit, and no Infinity in a JSON artifact
                continue
            with pytest.raises(PotstillError, match=key.replace(".", r"\.")):
                load_config(None, {"task.labels": ["a", "b"], key: value})
    with pytest.raises(PotstillError, match=r"generate\.prices\.m\.input_per_mtok: Input should be a finite number"):
        load_config(None, {"task.labels": ["a", "b"], "generate.prices": {"m": {"input_per_mtok": float("inf")}}})

    # Through the CLI: one line naming the flag, exit 2, before the stage starts.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("task:\n  labels: [a, b]\n")
    for flag, value in (("--train.epochs", "1e400"), ("--curate.test", ".inf"), ("--curate.real_ratio", ".nan")):
        stage = flag[2:].split(".")[0]
        assert run_main(monkeypatch, capsys, stage, "-c", "c.yaml", flag, value) == (
            2, [f"error: {flag}: Input should be a finite number"])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_a_preset_that_says_potstill_serve_sets_the_key_serve_asks_for(path):
    """openai-tools said `potstill serve -c ...`, which stops at once when POTSTILL_SERVE_KEY is unset."""
    from potstill.config import ServeConfig

    said = [line for line in path.read_text().splitlines() if line.lstrip().startswith("#") and "potstill serve" in line]
    assert all(ServeConfig().api_key_env in line for line in said), said


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_a_preset_that_prices_a_table_model_keeps_its_cached_price(path):
    """openai-classification restated gpt-4.1-mini's $0.40 / $1.60 without its $0.10 cached price: a
    teacher.price replaces the table's entry whole, so cached input was billed at $0.40."""
    from potstill.teachers.api.prices import price_for

    cfg = load_config(path)
    own, table = cfg.teacher.price, cfg.generate.prices
    listed = price_for(cfg.teacher.model, type(own)(), table)
    if listed is None or not (own.input_per_mtok or own.output_per_mtok):
        return
    assert own.cached_input_per_mtok == listed.cached_input_per_mtok, (cfg.teacher.model, own, listed)
