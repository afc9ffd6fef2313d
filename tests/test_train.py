"""harness.main (`python sqlm.py`) end to end on the tiny model: outputs, checkpoints, resume, CLI errors."""
import json
import os

import pytest
from transformers import AutoModelForCausalLM

import harness
import parallel
import rewards
import sqlm

FAST = ["--batch", "2", "--n", "2", "--minibatch", "1", "--microbatch", "4", "--max-response", "12",
        "--eval-every", "1", "--eval-limit", "4", "--proposer-every", "1", "--device", "cpu"]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("task", ["arith", "code"])
def test_main_writes_metrics_samples_and_loadable_checkpoint(task, tiny_dir, tmp_path):
    """Two steps must leave metrics, every proposal's record, the config and a from_pretrained checkpoint."""
    run = tmp_path / task
    assert harness.main(["--task", task, "--model", tiny_dir, "--steps", "2", "--out", str(run)] + FAST) == 0
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert all("eval_accuracy" in m for m in metrics) and "t_update" in metrics[0]
    samples = read_jsonl(run / "samples.jsonl")
    assert len(samples) == 2 * 2 * 2 and all("reason" in s and "proposal" in s for s in samples)
    solved = [s for s in samples if s["valid"]]
    assert solved or task == "code"  # random weights never write a code proposal's `Test Cases:`
    assert all(len(s["responses"]) == len(s["answers"]) == len(s["solver_rewards"]) == 2 for s in solved)
    assert json.load(open(run / "config.json"))["task"] == task
    model = AutoModelForCausalLM.from_pretrained(run / "step-000002")
    assert model.config.num_hidden_layers == 2
    assert not any(name.endswith(".tmp") for name in os.listdir(run))


def fake_rewards(answers, vote=None):
    """A reward the random tiny model can earn (position in the group), so updates are non-trivial."""
    return [float(i % 2) for i in range(len(answers))]


def test_resume_reproduces_next_step(tiny_dir, tmp_path, monkeypatch):
    """Stop after step 1, resume, and step 1 must equal the uninterrupted run's step 1, stat for stat."""
    monkeypatch.setattr(rewards, "majority_solver_rewards", fake_rewards)
    args = ["--task", "arith", "--model", tiny_dir, "--lr", "1e-2", "--eval-every", "0", "--save-every", "1"]
    fast = FAST[:FAST.index("--eval-every")] + FAST[FAST.index("--eval-limit"):]  # eval off
    assert harness.main(args + fast + ["--steps", "2", "--out", str(tmp_path / "a")]) == 0
    assert harness.main(args + fast + ["--steps", "1", "--out", str(tmp_path / "b")]) == 0
    with open(tmp_path / "b" / "samples.jsonl", "a") as f:
        f.write('{"step": 1, "proposal": "cut off by a ki')  # a kill mid-write must not block the resume
    assert harness.main(["--steps", "2", "--resume", str(tmp_path / "b")]) == 0  # the rest from the run's config
    straight = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    resumed = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [0, 1]
    assert all(r["step"] in (0, 1) for r in read_jsonl(tmp_path / "b" / "samples.jsonl"))
    a, b = straight[1], resumed[1]
    assert a["solver_pg_loss"] != 0 and a["solver_kl"] > 0
    for key in a:
        if not key.startswith("t_"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("argv, message", [
    (["--task", "poetry"], "invalid choice: 'poetry'"),
    (["--batch", "many"], "invalid int value"),
    (["--adv-norm", "max"], "argument --adv-norm: invalid choice: 'max'"),
    (["--model", "/no/such/model", "--task", "arith"], "model directory not found: /no/such/model"),
    (["--resume", "/no/such/run"], "--resume /no/such/run: no such run directory"),
    (["--kl", "nan"], "must be finite"),
    (["--clip-low", "1.5"], "--clip-low must be in [0, 1)"),
    (["--seed", "-1"], "seed must be >= 0"),
    (["--max-response", "-5"], "--max-response must be positive"),
    (["--device", "foo"], "unknown or unavailable --device 'foo'"),
])
def test_bad_cli_input_exits_2_with_one_line(argv, message, capsys):
    """Bad input: one line on stderr naming the problem, exit code 2, no traceback."""
    try:
        code = harness.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_training_eval_batches_follow_rollout_rows(monkeypatch):
    """In-training eval used a fixed 64 sequences per generate call, ignoring the --rollout-rows memory knob."""
    import eval as heldout
    seen = {}
    monkeypatch.setattr(heldout, "evaluate", lambda *a, **kw: seen.update(kw) or {"accuracy": 0.5})
    cfg = sqlm.Config(task="arith", rollout_rows=96, eval_limit=3).resolve()
    assert harness.run_eval(None, None, cfg, parallel.ONE) == {"eval_accuracy": 0.5}
    assert seen["batch_size"] == 96 and seen["limit"] == 3 and seen["max_new_tokens"] == 1024
