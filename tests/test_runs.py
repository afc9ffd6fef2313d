"""A run as a careful user meets it through the command line: what a run writes (metrics, every
proposal's record, checkpoints that from_pretrained loads) and when, what the harness passes on
to the step (optimizer, KL reference, memory plan, in-training eval), one line and exit 2 for
every bad input, no silent data loss (refusals to overwrite or rewind a run), resume, Ctrl-C,
progress, the end of a run, plots, and nothing left behind (no run directory or result file after
a failure, nothing written into the checkout by the test suite). What a failing set-up, disk or
signal does is in tests/test_failures.py."""
import dataclasses
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

import cli
import eval as ev
import harness
import memory
import parallel
import plot
import prompts
import rewards
import rollout
import sqlm
from conftest import CPU, FAST, REPO, exit_code, jsonl, tree


# --- nothing written into the checkout ---------------------------------------------------

CHECKOUT_AT_COLLECTION = tree(REPO)  # taken when pytest imports this file, before any test runs


@pytest.fixture(scope="session", autouse=True)
def checkout_unchanged_by_the_suite():
    """After the whole session, the checkout holds no new or changed file (a test that writes runs/
    into the checkout, or any file there): a failure here is reported as an error at the session's
    teardown."""
    yield
    after = tree(REPO)
    changed = sorted(p for p in set(after) | set(CHECKOUT_AT_COLLECTION)
                     if after.get(p, "gone") != CHECKOUT_AT_COLLECTION.get(p, "gone"))
    assert not changed, f"the test suite wrote into the checkout: {changed[:10]}"


def test_the_checkout_check_sees_a_new_file(tmp_path):
    """The teardown check compares trees: a file written under the root must show up as a change."""
    before = tree(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "metrics.jsonl").write_text("{}\n")
    after = tree(tmp_path)
    assert set(after) - set(before) == {"runs", os.path.join("runs", "metrics.jsonl")}


# --- shared set-up -----------------------------------------------------------------------

@pytest.fixture
def places(tiny_dir, trained_run, tmp_path):
    """Named inputs for the bad-input tables, each built under tmp_path."""
    def write(name, text):
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    def run_copy(name, damage=None):
        run = tmp_path / name
        shutil.copytree(trained_run, run)
        if damage:
            damage(run)
        return str(run)

    notok = tmp_path / "notok"  # a model directory without its tokenizer files
    notok.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(os.path.join(tiny_dir, name), notok / name)
    return {
        "TINY": tiny_dir, "NOTOK": str(notok), "FILE": write("file.txt", "x"),
        "FILE/SUB": str(tmp_path / "file.txt" / "sub"),
        "NESTED": write("nested.jsonl", "[" * 100_000 + "]" * 100_000 + "\n"),
        "EMPTYPROBLEM": write("empty.jsonl", '{"problem": "  ", "answer": 1}\n'),
        "RESULT": write("result.json", '{"earlier": "result"}'),
        "RUN": run_copy("run"),
        "NOCONFIG": run_copy("noconfig", lambda r: os.remove(r / "config.json")),
        "BADCONFIG": run_copy("badconfig", lambda r: (r / "config.json").write_text("{oops")),
        "TYPECONFIG": run_copy("typeconfig", lambda r: (r / "config.json").write_text('{"batch": "many"}')),
        "BADSTATE": run_copy("badstate", lambda r: (r / "step-000002" / "trainer_state.pt").write_bytes(b"junk")),
        "NEW": str(tmp_path / "new-run"),
    }


# --- one line and exit 2 -------------------------------------------------------------------

SQLM_BAD = [  # (argv, what the line must say); every case starts a new run into NEW unless it says otherwise
    (["--lr", "-1e-6"], "--lr must be positive, not -1e-06"),  # argparse alone: "expected one argument"
    (["--lr", "0"], "--lr must be positive"),
    (["--temperature", "-inf"], "--temperature must be finite"),
    (["--kl", "nan"], "--kl must be finite"),
    (["--grad-clip", "-1"], "--grad-clip must be positive"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--clip-low", "1.5"], "--clip-low must be in [0, 1)"),
    (["--clip-high", "-0.1"], "--clip-high must be >= 0"),
    (["--clip-c", "0.5"], "--clip-c must be > 1 (or 0 to disable)"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--seed", str(2**32)], "--seed must be at most 2**32-1"),
    (["--batch", "-2"], "--batch must be positive"),
    (["--steps", "-3"], "--steps must be positive"),
    (["--max-response", "-5"], "--max-response must be positive"),
    (["--eval-every", "-5"], "--eval-every must be >= 0"),
    (["--keep-last", "-1"], "--keep-last must be >= 0"),
    (["--n", "1"], "--n must be at least 2"),
    (["--batch", "4", "--minibatch", "8"], "--minibatch 8 is more groups than the proposer's --batch 4"),
    (["--batch", "16", "--minibatch", "0"], "--minibatch 32 is more groups than the proposer's --batch 16"),  # the default
    (["--task", "code", "--as-released", "--batch", "128", "--minibatch", "0"],  # the released code shape's 256
     "--minibatch 256 is more groups than the proposer's --batch 128"),
    (["--cat"], "--cat applies to --task code only"),
    (["--solver-reward", "tests"], "--solver-reward tests does not fit --task arith"),
    (["--task", "poetry"], "invalid choice: 'poetry'"),
    (["--adv-norm", "max"], "argument --adv-norm: invalid choice: 'max'"),
    (["--batch", "many"], "invalid int value"),
    (["--no-cat", "-1"], "ignored explicit argument '-1'"),
    (["--device", "foo"], "unknown or unavailable --device 'foo'"),
    (["--model", "/no/such/model"], "model directory not found: /no/such/model"),
    (["--model", "NOTOK"], "cannot build a chat prompt"),
    (["--max-prompt", "8"], "--max-prompt 8 leaves no room for a problem"),
    (["--eval-data", "NESTED"], "nested.jsonl:1: JSON nested too deeply"),
    (["--eval-data", "EMPTYPROBLEM"], 'empty.jsonl:1: expected an object with a non-empty string "problem"'),
    (["--eval-data", "/no/such.jsonl"], "cannot read data file /no/such.jsonl"),
    (["--out", "FILE"], "file.txt is a file, not a directory"),
    (["--out", "FILE/SUB"], "file.txt is a file, not a directory"),
    (["--out", "RUN"], "already holds a run: continue it with --resume"),
    (["--resume", "/no/such/run"], "--resume /no/such/run: no such run directory"),
    (["--resume", "NOCONFIG"], "config.json (No such file or directory)"),
    (["--resume", "BADCONFIG"], "config.json is damaged (not valid JSON)"),
    (["--resume", "TYPECONFIG"], "has batch = 'many', not a valid value"),
    (["--resume", "BADSTATE"], "cannot read"),
    (["--resume", "RUN", "--steps", "1"], "--steps 1 is not beyond the last checkpoint"),
    (["--resume", "RUN", "--steps", "2"], "--steps 2 is not beyond the last checkpoint"),
]
if not torch.cuda.is_available():
    SQLM_BAD.append((["--device", "cuda"], "unknown or unavailable --device 'cuda'"))


@pytest.mark.parametrize("argv, message", SQLM_BAD)
def test_sqlm_bad_input_is_one_line_exit_2_and_leaves_nothing(argv, message, places, capsys):
    """Every bad flag, file, model or run directory: exit 2 with one line on stderr that names the
    flag and what is wrong, no traceback, no run directory, and a refused resume leaves its run as
    it was. Guards: a check missing (a traceback, or bad input accepted silently), a message that
    does not name the flag, a run directory created before the checks."""
    argv = [places.get(a, a) for a in argv]
    if "--resume" not in argv:
        argv = ["--model", places["TINY"], "--steps", "2", "--out", places["NEW"]] + FAST + argv
    run = argv[argv.index("--resume") + 1] if "--resume" in argv else None
    before = tree(run) if run and os.path.isdir(run) else None
    assert exit_code(harness.main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not os.path.exists(places["NEW"])  # no run directory after a failed start
    if before is not None:
        assert tree(run) == before  # a refused resume changes nothing in the run


EVAL_BAD = [  # every case writes to --out NEW unless it says otherwise
    (["--temperature", "inf"], "--temperature must be finite and >= 0"),
    (["--temperature", "-1e-3"], "--temperature must be finite and >= 0"),
    (["--temperature", "nan"], "--temperature must be finite and >= 0"),
    (["--samples", "0"], "--samples must be at least 1"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--batch-size", "-1"], "--batch-size must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--device", "tpu"], "unknown or unavailable --device 'tpu'"),
    (["--data", "NESTED"], "nested.jsonl:1: JSON nested too deeply"),
    (["--data", "EMPTYPROBLEM"], 'expected an object with a non-empty string "problem"'),
    (["--model", "NOTOK"], "cannot build a chat prompt"),
    (["--model", "/no/such/model"], "model directory not found"),
    (["--out", "RESULT"], "result.json already exists: give --overwrite"),
    (["--out", "FILE/SUB"], "file.txt is a file, not a directory"),
    (["--task", "poetry"], "unknown task 'poetry'"),
]
if not torch.cuda.is_available():
    EVAL_BAD.append((["--device", "cuda"], "unknown or unavailable --device 'cuda'"))


@pytest.mark.parametrize("argv, message", EVAL_BAD)
def test_eval_bad_input_is_one_line_exit_2_and_leaves_no_file(argv, message, places, capsys):
    """eval.py: every bad flag, data file, model or --out is exit 2 with one line naming it, no
    traceback, no result file, and an earlier result left as it was. Guards: a check missing, an
    empty result file written before the checks."""
    argv = ["--task", "arith", "--model", places["TINY"], "--limit", "2", "--max-new-tokens", "4",
            "--out", places["NEW"]] + [places.get(a, a) for a in argv]
    assert exit_code(ev.main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not os.path.exists(places["NEW"])  # no empty result file after a failed eval
    assert json.loads(open(places["RESULT"]).read()) == {"earlier": "result"}


def test_negative_values_reach_the_flag():
    """argparse reads `-1e-6` as a flag ("expected one argument"); joined to its flag it is a
    value."""
    assert cli.negative_values_joined(["--lr", "-1e-6", "--seed", "-1", "--out", "-x", "--", "-2"]) == \
        ["--lr=-1e-6", "--seed=-1", "--out", "-x", "--", "-2"]
    assert harness.parse_args(["--lr", "-1e-6", "--temperature", "-inf"]).lr == -1e-6


def test_help_shows_each_fields_flag_comment_choices_and_default(capsys):
    """--help is the config block: every Config field as its flag, with its comment, its choices
    ({std,none}), a --no- form for a switch (--no-cat) and its default (--save-every's 10,
    --keep-last's 2). Guards: a field without a flag, a comment, choice list or default not shown,
    a switch that cannot be turned off."""
    with pytest.raises(SystemExit):
        harness.parse_args(["--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(sqlm.Config):
        assert "--" + f.name.replace("_", "-") in out
    assert "Code-as-Task filter" in out and "{std,none}" in out and "--no-cat" in out
    text = " ".join(out.split())
    assert "--keep-last" in text and "(default: 2)" in text and "(default: 10)" in text


def test_empty_prompt_file_is_refused(tiny_dir, tmp_path, monkeypatch, capsys):
    """An empty prompt file stops the run before its first step (exit 2, one line), rather than
    training on an empty topic prompt; no run directory is left."""
    for name in os.listdir(os.path.dirname(prompts.__file__)):
        if name.endswith(".txt"):
            shutil.copy(os.path.join(os.path.dirname(prompts.__file__), name), tmp_path / name)
    (tmp_path / "arith_proposer.txt").write_text("\n")
    monkeypatch.setattr(prompts, "_DIR", str(tmp_path))
    prompts.load.cache_clear()
    try:
        code = harness.main(["--model", tiny_dir, "--steps", "1", "--out", str(tmp_path / "run")] + FAST)
    finally:
        prompts.load.cache_clear()
    assert code == 2 and "a prompt file is empty" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- a run: what it writes and when, what the harness passes on to the step -------------

@pytest.mark.slow
@pytest.mark.parametrize("task", ["arith", "code"])
def test_main_writes_metrics_samples_and_loadable_checkpoint(task, tiny_dir, tmp_path):
    """Two steps must leave metrics, every proposal's record, the config and a from_pretrained
    checkpoint."""
    run = tmp_path / task
    argv = FAST + ["--task", task, "--model", tiny_dir, "--steps", "2", "--out", str(run),
                   "--max-response", "12", "--eval-every", "1", "--eval-limit", "4"]
    assert harness.main(argv) == 0
    metrics = jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert all("eval_accuracy" in m for m in metrics) and "t_update" in metrics[0]
    samples = jsonl(run / "samples.jsonl")
    assert len(samples) == 2 * 2 * 2 and all("reason" in s and "proposal" in s for s in samples)
    solved = [s for s in samples if s["valid"]]
    assert solved or task == "code"  # random weights never write a code proposal's `Test Cases:`
    assert all(len(s["responses"]) == len(s["answers"]) == len(s["solver_rewards"]) == 2 for s in solved)
    assert json.load(open(run / "config.json"))["task"] == task
    model = AutoModelForCausalLM.from_pretrained(run / "step-000002")
    assert model.config.num_hidden_layers == 2
    assert not any(name.endswith(".tmp") for name in os.listdir(run))


@pytest.mark.slow
def test_loop_evaluates_and_saves_on_schedule(tiny_dir, tmp_path):
    """--eval-every 2 --save-every 2 over 5 steps: eval at steps 0, 2, 4 (not 5: not a multiple),
    checkpoints after steps 2, 4 and the last, 5. Guards: either period off by one, the last
    checkpoint skipped or written twice."""
    run = tmp_path / "run"
    assert harness.main(["--task", "arith", "--model", tiny_dir, "--batch", "2", "--n", "2", "--minibatch", "1",
                      "--max-response", "4", "--eval-every", "2", "--eval-limit", "2", "--save-every", "2",
                      "--keep-last", "0", "--steps", "5", "--device", "cpu", "--out", str(run)]) == 0
    metrics = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]
    assert [m["step"] for m in metrics if "eval_accuracy" in m] == [0, 2, 4]
    assert sorted(os.listdir(run)) == ["config.json", "metrics.jsonl", "samples.jsonl",
                                       "step-000002", "step-000004", "step-000005"]


def test_checkpoint_defaults_save_periodically_and_keep_the_last_two():
    """A run saves every 10 steps (a kill loses at most 10) and keeps the last 2 checkpoints (all of
    them would fill a disk: 37 GB each at 3B)."""
    cfg = sqlm.Config()
    assert (cfg.save_every, cfg.keep_last) == (10, 2)


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    """prune_checkpoints keeps the newest `keep_last` complete checkpoints (0: all), removes a save
    a kill cut short (step-NNNNNN.tmp) and never counts or removes an incomplete one. Guards: the
    oldest kept instead of the newest, an incomplete checkpoint counted as one."""
    for step in range(1, 5):
        (tmp_path / f"step-{step:06d}").mkdir()
        (tmp_path / f"step-{step:06d}" / "trainer_state.pt").write_bytes(b"x")
    (tmp_path / "step-000005.tmp").mkdir()  # a save a kill cut short
    (tmp_path / "step-000006").mkdir()      # incomplete: no trainer_state.pt
    harness.prune_checkpoints(str(tmp_path), 2)
    assert sorted(os.listdir(tmp_path)) == ["step-000003", "step-000004", "step-000006"]
    harness.prune_checkpoints(str(tmp_path), 1)
    assert sorted(os.listdir(tmp_path)) == ["step-000004", "step-000006"]
    harness.prune_checkpoints(str(tmp_path), 0)  # 0 keeps all
    assert sorted(os.listdir(tmp_path)) == ["step-000004", "step-000006"]


def test_optimizer_takes_the_runs_lr_and_weight_decay(tiny_dir, tmp_path):
    """--lr and --weight-decay reach the run's AdamW (betas 0.9, 0.999), as its checkpoint records.
    Guards: the harness building AdamW with fixed settings."""
    run = tmp_path / "run"
    assert harness.main(["--task", "arith", "--model", tiny_dir, "--batch", "2", "--n", "2", "--minibatch", "1",
                      "--max-response", "4", "--eval-every", "0", "--steps", "1", "--lr", "3e-4",
                      "--weight-decay", "0.05", "--device", "cpu", "--out", str(run)]) == 0
    group = torch.load(run / "step-000001" / "trainer_state.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"], tuple(group["betas"])) == (3e-4, 0.05, (0.9, 0.999))


def test_kl_reference_takes_the_dtype_the_memory_plan_chose(tiny_dir, tmp_path, monkeypatch):
    """Where only a bf16 reference fits (harness.fit_to_memory says so on a GPU), the loop gets the
    reference's weights in bf16, its RoPE buffers fp32, and the policy stays fp32; where fp32 fits,
    fp32. Guards: the plan's choice ignored (an fp32 reference that does not fit the card)."""
    class Stop(Exception):
        pass

    def train(cfg, models, *rest):
        seen.update(model=models.policy, ref=models.reference)
        raise Stop
    monkeypatch.setattr(sqlm, "train", train)
    for dtype in (torch.bfloat16, torch.float32):
        seen = {}
        monkeypatch.setattr(harness, "fit_to_memory", lambda cfg, config, device, world=1: dtype)
        cfg = sqlm.Config(task="arith", model=tiny_dir, device="cpu", kl=0.001, out=str(tmp_path / str(dtype)))
        with pytest.raises(Stop):
            harness.train(cfg)
        assert {p.dtype for p in seen["ref"].parameters()} == {dtype}
        assert {b.dtype for b in seen["ref"].buffers()} == {torch.float32}
        assert {p.dtype for p in seen["model"].parameters()} == {torch.float32}


def test_memory_plan_sets_the_memory_knobs_on_a_gpu(monkeypatch):
    """On a GPU with --fit-memory the plan's choice replaces both knobs; --no-fit-memory keeps
    them."""
    monkeypatch.setattr(memory, "fit_memory", lambda config, total, **kw: (kw["max_rows"] // 8, 3))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"total_memory": 80 * 2**30}))
    for fit, expected in ((True, (16 * 4 * 4 // 8, 3)), (False, (256, 8))):
        cfg = sqlm.Config(batch=16, fit_memory=fit)
        harness.fit_to_memory(cfg, None, torch.device("cuda"))
        assert (cfg.rollout_rows, cfg.microbatch) == expected
    cpu = sqlm.Config()
    harness.fit_to_memory(cpu, None, CPU)
    assert (cpu.rollout_rows, cpu.microbatch) == (256, 8)


def test_in_training_eval_takes_the_runs_settings(monkeypatch, tmp_path):
    """harness.run_eval: greedy (temperature 0, one sample), then with --eval-samples k, k samples
    at --temperature; both over the --eval-data problems (in place of the built-in set), at most
    --eval-limit of them, --max-response tokens each, in generate calls of --rollout-rows; their
    figures logged as eval_* and eval_sampled_*. Guards: a temperature, the data, the limit, the
    response limit or the rows not passed on."""
    data = tmp_path / "dev.jsonl"
    data.write_text('{"problem": "What is 2 * 3?", "answer": 6}\n')
    calls = []

    def evaluate(model, tok, task, problems=None, **kw):
        calls.append(([p["problem"] for p in problems], kw["samples"], kw["temperature"],
                      kw["limit"], kw["max_new_tokens"], kw["batch_size"]))
        return {"accuracy": 0.25 * kw["samples"]}
    monkeypatch.setattr(ev, "evaluate", evaluate)
    cfg = sqlm.Config(task="arith", eval_data=str(data), eval_samples=4, temperature=0.7,
                      eval_limit=7, max_response=77, rollout_rows=96).resolve()
    figures = harness.run_eval(None, None, cfg, parallel.ONE)
    assert figures == {"eval_accuracy": 0.25, "eval_sampled_accuracy": 1.0}
    assert calls == [(["What is 2 * 3?"], 1, 0.0, 7, 77, 96),
                     (["What is 2 * 3?"], 4, 0.7, 7, 77, 96)]


@pytest.mark.slow
def test_in_training_eval_shows_progress(tiny_dir, tmp_path, capsys):
    """In-training eval (minutes over 4,096 problems) shows its progress: rows, tokens/s and ETA."""
    argv = ["--model", tiny_dir, "--steps", "1", "--out", str(tmp_path / "run"), "--eval-limit", "3"] + FAST
    argv[argv.index("--eval-every") + 1] = "1"
    assert harness.main(argv) == 0
    err = capsys.readouterr().err
    assert "eval step  3/3 rows" in err and "tok/s" in err and "eta 0s" in err


# --- resume ------------------------------------------------------------------------------

def position_rewards(answers, vote=None):
    """rewards.majority_solver_rewards replaced by one the random tiny model earns (answer k of a
    group earns k % 2), so that its updates move the weights."""
    return [float(i % 2) for i in range(len(answers))]


@pytest.mark.slow
def test_resume_reproduces_next_step(tiny_dir, tmp_path, monkeypatch):
    """Stop after step 1, resume, and step 1 must equal the uninterrupted run's step 1, stat for
    stat; a samples.jsonl line cut short by a kill does not block the resume. Guards: a resume that
    skips or repeats a step, or restores the weights, AdamW or the KL reference differently."""
    monkeypatch.setattr(rewards, "majority_solver_rewards", position_rewards)
    args = FAST + ["--model", tiny_dir, "--max-response", "12", "--lr", "1e-2", "--save-every", "1"]
    assert harness.main(args + ["--steps", "2", "--out", str(tmp_path / "a")]) == 0
    assert harness.main(args + ["--steps", "1", "--out", str(tmp_path / "b")]) == 0
    with open(tmp_path / "b" / "samples.jsonl", "a") as f:
        f.write('{"step": 1, "proposal": "cut off by a ki')  # a kill mid-write must not block the resume
    assert harness.main(["--steps", "2", "--resume", str(tmp_path / "b")]) == 0  # the rest from the run's config
    straight = jsonl(tmp_path / "a" / "metrics.jsonl")
    resumed = jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [0, 1]
    assert all(r["step"] in (0, 1) for r in jsonl(tmp_path / "b" / "samples.jsonl"))
    a, b = straight[1], resumed[1]
    assert a["solver_pg_loss"] != 0 and a["solver_kl"] > 0
    for key in a:
        if not key.startswith("t_"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key


def test_kl_reference_is_the_initial_model_also_after_a_resume(tiny_dir, tmp_path, monkeypatch):
    """The KL reference is the frozen initial model: after training and a resume, it is the weights
    the run started from (cfg.model), not the checkpoint's. Guards: the reference loaded from the
    checkpoint."""
    loaded = []
    real = rollout.load

    def load(name, **kw):
        loaded.append(str(name))
        return real(name, **kw)
    args = ["--task", "arith", "--model", tiny_dir, "--batch", "2", "--n", "2", "--minibatch", "1",
            "--max-response", "4", "--eval-every", "0", "--save-every", "1", "--device", "cpu"]
    assert harness.main(args + ["--steps", "1", "--out", str(tmp_path / "run")]) == 0
    monkeypatch.setattr(rollout, "load", load)
    assert harness.main(["--steps", "2", "--resume", str(tmp_path / "run")]) == 0
    assert loaded == [str(tmp_path / "run" / "step-000001"), tiny_dir]


@pytest.mark.slow
def test_resume_works_from_another_directory(tiny_dir, tmp_path, monkeypatch):
    """Relative --model, --eval-data and --out are stored absolute, so `--resume` from elsewhere
    finds them."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    os.symlink(tiny_dir, work / "model")
    (work / "dev.jsonl").write_text('{"problem": "What is 2 * 3?", "answer": 6}\n')
    monkeypatch.chdir(work)
    argv = ["--model", "model", "--eval-data", "dev.jsonl", "--out", "run", "--steps", "1"] + FAST
    argv[argv.index("--eval-every") + 1] = "1"
    assert harness.main(argv) == 0
    saved = json.load(open(work / "run" / "config.json"))
    assert (saved["model"], saved["eval_data"], saved["out"]) == (
        str(work / "model"), str(work / "dev.jsonl"), str(work / "run"))
    monkeypatch.chdir(elsewhere)
    assert harness.main(["--resume", str(work / "run"), "--steps", "2"]) == 0
    assert [m["step"] for m in jsonl(work / "run" / "metrics.jsonl")] == [0, 1, 2]
    assert os.listdir(elsewhere) == []


# What --resume may change, written out: how long the run goes on and on what, how it is watched and
# saved, and the knobs that change memory or speed only. Everything else is what the run is.
MAY_CHANGE_ON_RESUME = {"steps", "device", "threads", "eval_every", "eval_limit", "eval_data", "eval_samples",
                        "save_every", "keep_last", "rollout_rows", "microbatch", "grad_checkpointing", "fit_memory"}


def another(field, value):
    """A valid value of a Config field other than `value`."""
    choices = field.metadata["choices"]
    if choices:
        return next(c for c in choices if c and c != value)
    if isinstance(value, bool):
        return not value
    return value + 1 if isinstance(value, (int, float)) else value + "-other"


def test_resume_may_change_exactly_the_fields_of_the_table(tmp_path):
    """Each Config field changed alone on --resume: accepted for the fields of the table above,
    refused and named for every other (kl, temperature and the other method settings among them).
    Guards: a field of the method made resumable, a knob of the table refused."""
    run = tmp_path / "run"
    run.mkdir()
    saved = sqlm.Config(task="arith", out=str(run)).resolve()
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(saved)))
    accepted = set()
    for f in dataclasses.fields(sqlm.Config):
        if f.name in ("out", "resume"):
            continue
        try:
            harness.check_same_run(dataclasses.replace(saved, **{f.name: another(f, getattr(saved, f.name))}), str(run))
            accepted.add(f.name)
        except harness.RunError as e:
            assert f"--{f.name.replace('_', '-')} " in str(e)
    assert accepted == MAY_CHANGE_ON_RESUME


@pytest.mark.slow
def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tiny_dir, tmp_path):
    """A kill before the first checkpoint left a run that --out refuses: --resume runs it from step
    0, its earlier records replaced, not duplicated."""
    run = tmp_path / "run"
    assert harness.main(["--model", tiny_dir, "--steps", "1", "--out", str(run)] + FAST) == 0
    shutil.rmtree(run / "step-000001")  # as if killed before the save
    assert harness.main(["--resume", str(run), "--steps", "2"]) == 0
    assert [m["step"] for m in jsonl(run / "metrics.jsonl")] == [0, 1]


def test_a_resumed_run_can_switch_a_flag_off(tmp_path):
    """--no-cat on resume overrides the saved config's cat=True. Guards: a switch as a store_true
    flag, which a resume can turn on but never off."""
    run = tmp_path / "run"
    (run / "step-000001").mkdir(parents=True)
    (run / "step-000001" / "trainer_state.pt").write_bytes(b"")
    saved = dataclasses.asdict(sqlm.Config(task="code", cat=True).resolve())
    (run / "config.json").write_text(json.dumps(saved))
    assert harness.parse_args(["--resume", str(run)]).cat is True
    assert harness.parse_args(["--resume", str(run), "--no-cat"]).cat is False


# --- Ctrl-C ------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_says_where_and_how_to_resume_and_the_resume_completes(tiny_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C: one line with the step, the last complete checkpoint and the exact resume command,
    exit 130, no traceback; that command finishes the run with each step logged once, and keeps
    only the last --keep-last checkpoints; the end of the run says where everything is."""
    run = tmp_path / "run"
    real_step = sqlm.train_step

    def interrupted_at_3(step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(step, *args)
    monkeypatch.setattr(sqlm, "train_step", interrupted_at_3)
    argv = ["--model", tiny_dir, "--steps", "4", "--save-every", "1", "--keep-last", "2", "--out", str(run)]
    assert harness.main(argv + FAST[:FAST.index("--eval-every")] + ["--eval-every", "2", "--eval-limit", "2"]
                     + FAST[FAST.index("--proposer-every"):]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sqlm.py: interrupted at step 3; last complete checkpoint: ")
    assert err.split("checkpoint: ")[1].split(";")[0] == str(run / "step-000003")
    assert sorted(os.listdir(run)) == ["config.json", "metrics.jsonl", "samples.jsonl", "step-000002", "step-000003"]
    monkeypatch.setattr(sqlm, "train_step", real_step)
    command = shlex.split(err.split("resume with: ")[1])
    assert command[:2] == ["python", os.path.relpath(sqlm.__file__)] and command[2:] == ["--resume", str(run)]
    assert harness.main(command[2:]) == 0
    out = capsys.readouterr().out
    assert [m["step"] for m in jsonl(run / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert sorted(d for d in os.listdir(run) if d.startswith("step-")) == ["step-000003", "step-000004"]
    assert f"run directory     {run}\n" in out and f"final checkpoint  {run / 'step-000004'}\n" in out
    assert "eval accuracy     0: 0.000, 2: 0.000, 4: 0.000" in out


@pytest.mark.slow
def test_a_real_sigint_gives_one_line_and_exit_130(tiny_dir, tmp_path):
    """A signal, not a monkeypatch: whatever code runs when it lands, no traceback reaches the
    user."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "sqlm.py"), "--model", tiny_dir, "--steps", "500",
                             "--out", str(run)] + FAST, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("sqlm.py: interrupted at step ")
    assert f"--resume {run}" in err


# --- loading a model ---------------------------------------------------------------------

@pytest.mark.parametrize("error, resource", [
    (RuntimeError("can't start new thread"), "threads"),
    (MemoryError(), "memory"),
    (OSError(24, "Too many open files"), "file descriptors"),
])
def test_a_machine_short_of_a_resource_is_not_reported_as_a_broken_model(error, resource, tiny_dir, tmp_path,
                                                                        monkeypatch, capsys):
    """Loading a sound checkpoint on a machine out of threads, memory or file descriptors names what
    ran out, in one line with exit 2, and never says the directory holds no loadable model (which
    sends a user to delete a good checkpoint); the same error wrapped in another says the same."""
    import transformers

    def from_pretrained(*args, **kwargs):
        raise error
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(rollout.LoadError) as caught:
        rollout.load(tiny_dir, device="cpu")
    line = str(caught.value)
    assert f"ran out of {resource}" in line and "no loadable model" not in line and "\n" not in line

    def wrapped(*args, **kwargs):
        try:
            raise error
        except Exception as e:
            raise OSError(f"Unable to load weights from {tiny_dir}") from e
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", wrapped)
    assert harness.main(["--model", tiny_dir, "--steps", "1", "--out", str(tmp_path / "run")] + FAST) == 2
    err = capsys.readouterr().err.strip()
    assert f"ran out of {resource}" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_model_directory_without_weights_is_still_reported_as_such(tmp_path, tiny_dir):
    """The resource check does not swallow the ordinary case: a directory without weights is named
    as one."""
    shutil.copytree(tiny_dir, tmp_path / "model")
    for name in os.listdir(tmp_path / "model"):
        if name.endswith((".safetensors", ".bin")):
            os.remove(tmp_path / "model" / name)
    with pytest.raises(rollout.LoadError, match="directory holds no loadable model"):
        rollout.load(str(tmp_path / "model"), device="cpu")

# --- progress lines ---------------------------------------------------------------------------

class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_refreshes_one_line_on_a_terminal_and_writes_plain_lines_in_a_log():
    """On a terminal a progress line is rewritten in place (\\r) and ends with one newline; in a log
    each update is a plain line (no \\r) with rows, tok/s, ETA and the accuracy so far."""
    for tty in (True, False):
        stream = Stream(tty)
        show = rollout.progress_printer("eval arith", samples=2, stream=stream)
        show(1, 4, {"accuracy": 0.5, "mean_length": 10.0})
        show(4, 4, {"accuracy": 0.25, "mean_length": 10.0})
        text = stream.getvalue()
        if tty:
            assert text.startswith("\reval arith  1/4 rows") and text.count("\n") == 1 and text.endswith("\n")
            assert "\reval arith  4/4 rows" in text
        else:
            lines = text.splitlines()
            assert len(lines) == 2 and "\r" not in text
            assert lines[0].startswith("eval arith  1/4 rows") and lines[1].startswith("eval arith  4/4 rows")
            assert lines[1].endswith("eta 0s  acc 0.250") and " tok/s " in lines[1]


# --- eval: overwrite only when asked ----------------------------------------------------------

def test_eval_overwrites_only_with_overwrite(tiny_dir, tmp_path, capsys):
    """eval.py refuses an existing --out (exit 2, the file unchanged) unless --overwrite, and leaves
    no temporary file when it writes."""
    out = tmp_path / "r.json"
    out.write_text("{}")
    argv = ["--task", "arith", "--model", tiny_dir, "--limit", "1", "--max-new-tokens", "2", "--device", "cpu",
            "--out", str(out)]
    assert exit_code(ev.main, argv) == 2 and out.read_text() == "{}"
    ev.main(argv + ["--overwrite"])
    assert json.loads(out.read_text())["n_problems"] == 1
    assert sorted(os.listdir(tmp_path)) == ["r.json"]  # no temporary file left


# --- plot -------------------------------------------------------------------------------------

METRICS = [{"step": 0, "valid_rate": 1.0, "solver_reward": 0.5, "proposer_reward": 0.0, "response_len": 9.0,
            "solver_entropy": 1.2, "solver_kl": 0.0, "eval_accuracy": 0.1},
           {"step": 1, "valid_rate": 0.5, "solver_reward": 0.75, "proposer_reward": 0.5, "response_len": 7.0,
            "solver_entropy": 1.1, "solver_kl": 0.01},
           {"step": 2, "eval_accuracy": 0.3}]


def write_run(path, records, tail=""):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return str(path)


def test_plot_curves_read_each_figure_against_step(tmp_path):
    """plot.curves reads each figure against the steps that logged it (eval only at some steps),
    skips a last line a kill cut short, and holds every figure its panels draw."""
    run = write_run(tmp_path / "run", METRICS, tail='{"step": 3, "valid_ra')  # a line a kill cut short
    curves = plot.curves(run)
    assert curves["eval_accuracy"] == ([0, 2], [0.1, 0.3])
    assert curves["valid_rate"] == ([0, 1], [1.0, 0.5])
    assert curves["proposer_reward"] == ([0, 1], [0.0, 0.5]) and curves["solver_kl"] == ([0, 1], [0.0, 0.01])
    assert set(curves) == {k for _, keys in plot.PANELS for k, _ in keys} - {"eval_sampled_accuracy"}


def test_plot_without_matplotlib_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Without matplotlib (an optional extra) plot.py exits 2 with one line saying how to install
    it, and writes no file."""
    run = write_run(tmp_path / "run", METRICS)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert exit_code(plot.main, [run]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install matplotlib" in err and not os.path.exists(tmp_path / "run" / "curves.png")


def test_plot_bad_run_is_one_line(tmp_path, capsys):
    """A run directory that does not exist: exit 2, one line, no traceback."""
    assert exit_code(plot.main, [str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_plot_writes_a_png_of_several_runs(tmp_path):
    """Several runs on one figure: a PNG of real size at --out, its path returned."""
    pytest.importorskip("matplotlib", reason="matplotlib is an optional extra (pip install matplotlib)")
    runs = [write_run(tmp_path / "a", METRICS), write_run(tmp_path / "b", METRICS[:2])]
    out = tmp_path / "curves.png"
    assert plot.main(runs + ["--out", str(out)]) == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000

def test_a_relative_out_is_checked_without_looping(tmp_path, monkeypatch):
    """A relative --out is checked by a walk up to its nearest existing parent that ends (a
    relative name's parent is '', not itself): a file on the way is refused."""
    monkeypatch.chdir(tmp_path)
    harness.check_new_run_dir("run")
    (tmp_path / "run").write_text("")
    with pytest.raises(harness.RunError, match="is a file"):
        harness.check_new_run_dir("run/sub")
