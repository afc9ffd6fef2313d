"""Shared fixtures and helpers: one tiny random Qwen2 model written once per test session (no
downloads), the records and stand-in scores a step's tests build, the exit-code, one-line and
file-tree checks of the command-line tests, a base model that knows one fact, small tmpfs disks.
Test modules import what they share from here, never from each other."""
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
# One CPU thread per process, here and in every process a test starts, unless the environment says
# otherwise: on a shared or busy 2-core machine torch's second thread makes the tiny model's steps
# many times slower, not faster.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import prompts  # noqa: E402
import rewards  # noqa: E402
import rollout  # noqa: E402
import sqlm  # noqa: E402
import tiny  # noqa: E402

CPU = torch.device("cpu")
SQLM = os.path.join(REPO, "sqlm.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # of the processes tests start


def command(args, processes=1):
    """sqlm.py as a user runs it: `python sqlm.py ARGS`, or under torchrun with `--` before its
    flags."""
    return ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
             SQLM, "--"] if processes > 1 else [sys.executable, SQLM]) + args


def launch(args, processes=1, timeout=900):
    """`command(args, processes)` run to its end: the CompletedProcess, output captured as text."""
    return subprocess.run(command(args, processes), capture_output=True, text=True, timeout=timeout, env=ENV)


def pytest_configure(config):
    """On a machine that lacks a sandbox layer (not root: no uid or cgroup layer), the sandbox
    refuses code runs unless SQLM_SANDBOX_ALLOW_MISSING accepts it. The suite accepts what this
    machine lacks, says so in the warnings summary, and the tests of those layers' properties skip
    with that reason (tests/test_sandbox.py); the refusal itself is tested with the variable
    unset."""
    import sandbox
    if sandbox.ALLOW_MISSING in os.environ:
        return
    try:
        sandbox.isolation()
    except sandbox.Unavailable as e:
        if not e.missing:
            raise
        os.environ[sandbox.ALLOW_MISSING] = ",".join(e.missing)
        config.issue_config_time_warning(pytest.PytestWarning(
            f"this machine lacks the sandbox layers {', '.join(e.missing)}: the tests accept "
            f"running without them ({sandbox.ALLOW_MISSING}); {e}"), stacklevel=2)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped, with their reason, where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: `python bench.py gpu` runs it on one "
                                   "(docs/gpu.md)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tiny.make(str(tmp_path_factory.mktemp("tiny")), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """(model, tokenizer) on CPU in fp32; tests must not modify the model's weights."""
    return rollout.load(tiny_dir, device="cpu")


# The smallest real run: 2 prompts x 2 proposals, one group a mini-batch, 8 new tokens, no eval.
FAST = ["--batch", "2", "--n", "2", "--minibatch", "1", "--microbatch", "4", "--max-response", "8",
        "--eval-every", "0", "--proposer-every", "1", "--device", "cpu", "--task", "arith"]


def grads(model):
    """Every parameter's gradient, flattened into one vector (zeros where a parameter has none)."""
    return torch.cat([p.grad.flatten() if p.grad is not None
                      else torch.zeros(p.numel(), device=p.device) for p in model.parameters()])


def weights(run, step):
    """A run's checkpoint at `step`, as saved: {name: tensor}."""
    from safetensors.torch import load_file
    return load_file(os.path.join(run, f"step-{step:06d}", "model.safetensors"))


def jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def trained_run(tiny_dir, tmp_path_factory):
    """A finished 2-step arith run with checkpoints at steps 1 and 2 (copy it before changing
    it)."""
    import harness
    run = tmp_path_factory.mktemp("trained") / "run"
    argv = ["--model", tiny_dir, "--steps", "2", "--save-every", "1", "--out", str(run)] + FAST
    assert harness.main(argv) == 0
    return run


def interrupted_pretraining_keeps_out(main, argv, tmp_path, monkeypatch):
    """`main([*argv, "--out", OUT])` interrupted in its pre-training (`tiny.pretrain` raising
    KeyboardInterrupt) leaves no OUT and no half-built directory beside it, and with --overwrite
    over an existing model leaves that model as it was."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    out = tmp_path / "model"
    monkeypatch.setattr(tiny, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--out", str(out)])
    assert os.listdir(tmp_path) == []  # neither --out nor the directory it was being built in
    monkeypatch.undo()
    tiny.main(["--out", str(out)])
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(tiny, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--out", str(out), "--overwrite", "--seed", "1"])
    assert os.listdir(tmp_path) == ["model"] and (out / "model.safetensors").read_bytes() == before


# --- the command line: exit codes, one-line errors, what a failure leaves -------------------------

def exit_code(main, argv):
    """main(argv)'s return value, or the code of the SystemExit it raised (argparse's errors)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def one_line(err, progress=""):
    """The one line on stderr (besides progress lines that start with `progress`), no traceback."""
    lines = [line for line in err.strip().splitlines()
             if not (progress and line.startswith(progress))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tree(root):
    """Every path under root (not .git or caches) with its bytes (files) or None (directories)."""
    found = {}
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", "__pycache__", ".pytest_cache")]
        for name in dirs:
            found[os.path.relpath(os.path.join(here, name), root)] = None
        for name in files:
            with open(os.path.join(here, name), "rb") as f:
                found[os.path.relpath(os.path.join(here, name), root)] = f.read()
    return found


# --- the records one step leaves (tests/test_step.py, tests/test_update.py) ----------------------

def sample(text, prompt=(1, 2), completion=(3, 4)):
    return rollout.Sample(list(prompt), list(completion), text, True)


def proposal(index, problem="What is 2 * 3?", answers=(), reason="ok"):
    """A record as propose + solve leave it: a problem (or None with a reason) and its answers'
    texts."""
    p = sqlm.Proposal(index, sample(problem, completion=(5, 6, index + 7)),
                      rewards.Problem(problem) if reason == "ok" else None, reason)
    p.answers = [sample(text, completion=(8, k + 9)) for k, text in enumerate(answers)]
    return p


def answered(*values):
    """Solver replies answering each value (None: a reply without an answer)."""
    return [f"<think>.</think><answer>{v}</answer>" if v is not None else "no answer"
            for v in values]


def step_config(**kw):
    """An arith config of 2 prompts x n=4, one group a mini-batch, with `kw` on top, resolved."""
    return sqlm.Config(**{"task": "arith", "batch": 2, "n": 4, "minibatch": 1, **kw}).resolve()


# --- steps on the tiny model with a stand-in score ---------------------------------------------

def alternating_rewards(cfg, batch, world):
    """sqlm.score replaced: answer k of each problem earns k % 2, so every solver group carries
    signal; every solved proposal earns the proposer 1."""
    for p in (p for p in batch if p.solved):
        p.solver_rewards = p.task_rewards = [float(k % 2) for k in range(len(p.answers))]
        p.proposer_reward, p.extracted = 1.0, [None] * len(p.answers)
    return batch


LIKED = set("aeiou ")  # text_rewards' solver reward: the share of the answer's characters in LIKED


def text_rewards(solver=True, proposer=True):
    """sqlm.score replaced by rewards read off the text, which steps can raise: the solver's is the
    share of its answer's characters in LIKED, the proposer's whether its problem's first character
    is one of about a third of all characters (a single decision: the proposer samples every
    problem from one and the same prompt). solver/proposer False: that role gets 0.5 everywhere."""
    def score(cfg, batch, world):
        for p in (p for p in batch if p.answers):
            p.solver_rewards = [sum(c in LIKED for c in s.text) / max(1, len(s.text)) if solver
                                else 0.5 for s in p.answers]
            p.proposer_reward = float(ord(p.problem.text[0]) % 3 == 0) if proposer else 0.5
            p.extracted, p.task_rewards = [None] * cfg.n, p.solver_rewards
        return batch
    return score


def run_steps(tiny_dir, monkeypatch, steps, score, **overrides):
    """`steps` calls of sqlm.train_step on the tiny model with sqlm.score replaced by `score`;
    returns each step's metrics."""
    import parallel
    monkeypatch.setattr(sqlm, "score", score)
    settings = dict(task="arith", batch=4, n=4, minibatch=2, microbatch=8, max_response=8, lr=1e-2,
                    kl=0.0, weight_decay=0.0)
    cfg = sqlm.Config(**{**settings, **overrides}).resolve()
    model, tok = rollout.load(tiny_dir, device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    models = sqlm.Models(model, model, model, None, optimizer)
    return [sqlm.train_step(step, models, tok, cfg, CPU, parallel.ONE)[0] for step in range(steps)]


# --- a base model that knows one fact (tests/test_learning.py, tests/test_parallel.py) ---------

FACT = (7, 8)


def one_fact(rng):
    """Pre-training transcripts for a base that knows FACT: proposer turns (30%) write its problem;
    solver turns answer it, 30% with a slip in the working (as the tiny world's base knows many)."""
    import experiments
    a, b = FACT
    if rng.random() < 0.3:
        return prompts.proposer_prompt("arith"), f"What is {a} * {b}?"
    return (prompts.solver_prompt("arith", f"What is {a} * {b}?"),
            experiments.arith_reply(a, b, rng, corrupt=0.3))


# --- small real disks (tests/test_failures.py, tests/test_parallel.py) ----------------------------

@contextlib.contextmanager
def tmpfs(size, readonly=False):
    """A tmpfs of `size` mounted on a fresh directory (root only); skips the test where mount is
    refused."""
    where = tempfile.mkdtemp(prefix="sqlm-tmpfs-")
    options = f"size={size}" + (",ro" if readonly else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", where],
                            capture_output=True, text=True)
    if result.returncode:
        os.rmdir(where)
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}): needs "
                    f"root with CAP_SYS_ADMIN; the simulated ENOSPC test still runs")
    try:
        yield where
    finally:
        subprocess.run(["umount", where], check=False)
        os.rmdir(where)


def fill(where):
    """Fill a file system until a write fails with ENOSPC."""
    # unbuffered: close has nothing left to flush
    with open(os.path.join(where, "filler"), "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
