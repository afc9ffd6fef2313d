"""A run directory holds one run: two processes never write one directory, a crash frees it, the
default name never collides, and what a resume drops from the logs is said. Also the start-up's
messages: --threads beyond the machine, --help, the config line. Real `python sqlm.py` processes
on the tiny model where the property is about processes (one started while the other runs)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import harness
import prompts
import rewards
from conftest import ENV, FAST, SQLM, command, jsonl


def sqlm_process(tiny_dir, cwd, args):
    """`python sqlm.py` on the tiny model with the FAST shape, started and left running."""
    return subprocess.Popen([sys.executable, SQLM, "--model", tiny_dir, *FAST, *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(proc, done, limit=300):
    deadline = time.time() + limit
    while not done() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and done(), "the run ended or never got there"


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def steps(run):
    return [m["step"] for m in jsonl(os.path.join(run, "metrics.jsonl"))]


# --- one run per directory ------------------------------------------------------------------

@pytest.mark.slow
def test_two_runs_started_into_one_out_at_once_one_runs_and_the_other_is_refused(tiny_dir,
                                                                                  tmp_path):
    """Two `sqlm.py --out RUN` started together both passed the directory check (neither had
    written yet) and wrote one directory: metrics steps 0 0 1 1 2 2, a config.json naming one run's
    seed next to the other's checkpoint, one run's clean-up deleting the other's checkpoint in
    progress. Now the first to claim RUN runs; the other exits 2 in one line naming it."""
    run = tmp_path / "run"
    procs = [sqlm_process(tiny_dir, tmp_path, ["--out", str(run), "--steps", "6", "--save-every",
                                               "1", "--seed", str(seed)]) for seed in (0, 1)]
    outs = [proc.communicate(timeout=600) for proc in procs]
    codes = [proc.returncode for proc in procs]
    assert sorted(codes) == [0, 2], outs
    winner, loser = codes.index(0), codes.index(2)
    assert one_line(outs[loser][1]) == (
        f"sqlm.py: error: --out {run} is in use by a run still running (pid {procs[winner].pid}): "
        f"choose another --out")
    assert outs[loser][0] == ""
    assert steps(run) == [0, 1, 2, 3, 4, 5]
    with open(run / "config.json") as f:
        assert json.load(f)["seed"] == winner
    assert sorted(os.listdir(run)) == ["config.json", "metrics.jsonl", "samples.jsonl",
                                       "step-000005", "step-000006"]


@pytest.mark.slow
def test_a_resume_while_the_run_is_alive_is_refused_and_a_kill_9_frees_the_directory(tiny_dir,
                                                                                      tmp_path):
    """A second `--resume` of a run still running exited 0 after writing into it (steps 0 1 2 2 3
    3). Now it is one line naming the running process, exit 2, nothing written; once that process
    is killed with SIGKILL (no handler runs) the directory is free and a resume continues it."""
    run = tmp_path / "run"
    alive = sqlm_process(tiny_dir, tmp_path, ["--out", str(run), "--steps", "500",
                                              "--save-every", "1"])
    try:
        wait_for(alive, lambda: (run / "step-000001").exists())
        refused = subprocess.run([sys.executable, SQLM, "--resume", str(run), "--steps", "1000"],
                                 cwd=tmp_path, capture_output=True, text=True, env=ENV,
                                 timeout=120)
        assert refused.returncode == 2
        assert one_line(refused.stderr) == (
            f"sqlm.py: error: --resume {run}: the run is still running (pid {alive.pid}); stop it "
            f"before resuming it")
        assert refused.stdout == ""
    finally:
        alive.kill()
        alive.communicate(timeout=120)
    last = harness.read_trainer_state(harness.last_checkpoint(str(run)))["step"]
    done = subprocess.run([sys.executable, SQLM, "--resume", str(run), "--steps", str(last + 1)],
                          cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps(run) == list(range(last + 1))


@pytest.mark.slow
def test_under_torchrun_rank_0_meets_a_held_directory_and_no_process_waits(tiny_dir, tmp_path):
    """Under torchrun only rank 0 takes the directory's lock and every process learns its verdict:
    a 2-process start into the directory of a run still running is rank 0's one line, and no
    process waits for ever at the next collective. torchrun itself then exits 1 and prints its own
    traceback after the line (docs/parallel.md: what torchrun adds)."""
    run = tmp_path / "run"
    alive = sqlm_process(tiny_dir, tmp_path, ["--out", str(run), "--steps", "500"])
    try:
        wait_for(alive, lambda: (run / "metrics.jsonl").exists())
        done = subprocess.run(command(["--model", tiny_dir, *FAST, "--out", str(run), "--steps", "1"], 2),
                              cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    finally:
        alive.send_signal(signal.SIGINT)
        alive.communicate(timeout=120)
    assert alive.returncode == 130
    ours = [line for line in done.stderr.splitlines() if line.startswith("sqlm.py")]
    assert ours == [f"sqlm.py: error: --out {run} is in use by a run still running "
                    f"(pid {alive.pid}): choose another --out"], done.stderr[-3000:]
    assert done.returncode == 1  # torchrun's code for a failed process
    assert "Traceback" not in done.stderr.split(ours[0])[0]  # nothing from sqlm.py before it
    assert steps(run) == list(range(len(steps(run))))  # the running run's records alone


@pytest.mark.slow
def test_default_run_directories_started_in_one_second_are_distinct(tiny_dir, tmp_path,
                                                                    monkeypatch):
    """The default --out, runs/<task>-<second>, put every arm of an ablation loop started within
    one second into one directory. A name already taken now gets a suffix (-2, -3, ...)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *t: "20261207-101500")
    for seed in (0, 1):
        assert harness.main(["--model", tiny_dir, "--steps", "1", "--seed", str(seed)] + FAST) == 0
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert runs == ["arith-20261207-101500", "arith-20261207-101500-2"]
    for seed, name in enumerate(runs):
        with open(tmp_path / "runs" / name / "config.json") as f:
            assert json.load(f)["seed"] == seed


# --- what a resume drops --------------------------------------------------------------------

def test_a_resume_keeps_the_logs_of_the_steps_its_checkpoint_holds(tmp_path):
    """Resuming from step-000002 (steps 0 and 1 done) keeps both logs' records of steps 0 and 1 and
    drops step 2's, which a kill after its logs but before its checkpoint left whole: step 2 runs
    again and writes them anew. Guards: a kept record of the step that runs again (twice in the
    logs), a dropped record of a step that does not."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        with open(tmp_path / name, "w") as f:
            f.writelines(json.dumps({"step": step, "row": row}) + "\n"
                         for step in (0, 1, 2) for row in range(2))
    assert harness.truncate_logs(str(tmp_path), 2) == []  # every line whole: none reported
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert [(r["step"], r["row"]) for r in jsonl(tmp_path / name)] == \
            [(0, 0), (0, 1), (1, 0), (1, 1)], name


@pytest.mark.slow
def test_a_resume_names_each_log_line_it_drops_as_cut_short(trained_run, tmp_path, capsys):
    """A line cut mid-write (a crash, a full disk) was dropped on resume without a word. Now the
    resume's line names the file, the line and its step, and whether that step runs again."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "t_propose": 0.1')  # step 2's record, cut by a crash
    with open(run / "samples.jsonl") as f:
        samples = f.readlines()
    samples[0] = samples[0][:40] + "\n"  # a record of step 0 damaged: that step is not run again
    with open(run / "samples.jsonl", "w") as f:
        f.writelines(samples)
    assert harness.main(["--resume", str(run), "--steps", "3"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("resumed from"))
    assert line == (f"resumed from {run}/step-000002 at step 2; dropped lines cut short: "
                    f"metrics.jsonl line 3 (step 2: run again), samples.jsonl line 1 (step 0: "
                    f"lost)")
    assert steps(run) == [0, 1, 2]


# --- start-up messages ----------------------------------------------------------------------

def test_threads_beyond_the_cores_are_refused_in_one_line(tiny_dir, tmp_path, capsys):
    """`--threads 100000` went on to load the model, said the model directory "holds no loadable
    model: can't start new thread", and segfaulted. More threads than cores is refused first."""
    cores = len(os.sched_getaffinity(0))
    run = tmp_path / "run"
    argv = ["--model", tiny_dir, "--steps", "1", "--out", str(run), "--threads", str(cores + 1)]
    assert harness.main(argv + FAST) == 2
    assert one_line(capsys.readouterr().err) == (
        f"sqlm.py: error: --threads {cores + 1} is more than the {cores} CPU cores this process "
        f"may use: give at most {cores} (0: torch's default)")
    assert not run.exists()


def test_help_shows_the_per_task_default_readably(capsys):
    """`--help` listed the per-task default '' as an empty choice: {,majority,tests,format}."""
    with pytest.raises(SystemExit):
        harness.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "{,majority" not in text and "--solver-reward {majority,tests,format}" in text


@pytest.mark.slow
def test_the_start_up_config_line_names_only_what_differs_from_the_defaults(tiny_dir, tmp_path,
                                                                            capsys):
    """The start-up line printed the whole config as JSON (~900 characters on one line). Now it
    is the flags that differ from the task's defaults; config.json keeps every field."""
    run = tmp_path / "run"
    assert harness.main(["--model", tiny_dir, "--steps", "1", "--out", str(run)] + FAST) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("config"))
    assert line == (f"config: --task arith --model {tiny_dir} --device cpu --steps 1 --batch 2 "
                    f"--n 2 --minibatch 1 --microbatch 4 --proposer-every 1 --max-response 8 "
                    f"--eval-every 0 --out {run} (the rest as default; every field: "
                    f"{run}/config.json)")


# --- adding a task --------------------------------------------------------------------------

def test_parse_proposal_refuses_a_task_it_has_no_parser_for(monkeypatch):
    """A task added to prompts.TASKS without a parser was parsed as code (its proposals all
    "no 'Test Cases:'"). Now it is a ValueError naming the task."""
    monkeypatch.setattr(prompts, "TASKS", prompts.TASKS + ("poetry",))
    with pytest.raises(ValueError, match="no proposal parser for task 'poetry'"):
        rewards.parse_proposal("poetry", "A problem.\nTest Cases:\n1 ||| 1")
