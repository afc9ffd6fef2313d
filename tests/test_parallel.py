"""The step on N processes equals the step on one: `torchrun --standalone --nproc-per-node 2
sqlm.py -- ...` on CPU (gloo, FSDP2) against `python sqlm.py ...` on the same config. A torchrun
launch costs seconds to a minute of start-up on a busy 2-core machine, so the module makes six
launches, and the tests that start processes are marked slow; the dealing, sharing and gathering
checked without processes (the end of the module) are in the fast loop.

The config has a signal to learn (a base that knows 7 * 8 and slips 30% of the time, as in
tests/test_learning.py), a KL term (its sharded reference model), a proposer update each step, two
groups per mini-batch and two sequences per micro-batch, so every mini-batch is dealt across both
processes, and an eval of 5 held-out problems at steps 0 and 2, greedy and 2 samples each (2
problems on rank 0, 3 on rank 1). lr is 1e-4, not the paper's 1e-6: the weights move by ~1e-3, a
hundred times the tolerance.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import eval as heldout
import experiments
import harness
import parallel
import sqlm
import tiny
from conftest import ENV, REPO, command, jsonl, launch, one_fact, tmpfs, weights

ARGS = ["--task", "arith", "--device", "cpu", "--threads", "1", "--steps", "2", "--batch", "4", "--n", "4",
        "--minibatch", "2", "--microbatch", "2", "--max-response", "32", "--lr", "1e-4", "--proposer-every", "1",
        "--eval-every", "2", "--eval-limit", "5", "--eval-samples", "2", "--save-every", "1", "--keep-last", "0",
        "--arith-check"]


def timing(key):
    return key.startswith("t_") or key.endswith("_seconds")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2-step run on one process and on two: {"base", 1: run dir, 2: run dir, "stderr": {1:
    .., 2: ..}}."""
    root = tmp_path_factory.mktemp("parallel")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = tiny.make(str(root / "base"), layers=2, hidden=64, init_std=0.02, tokenizer=experiments.arith_tokenizer())
        tiny.pretrain(base, steps=60, batch=16, lr=1e-2, log_every=0, transcripts=one_fact)
    finally:
        torch.set_num_threads(threads)
    out = {"base": base, "stderr": {}}
    for processes in (1, 2):
        out[processes] = str(root / f"run{processes}")
        done = launch(ARGS + ["--model", base, "--out", out[processes]], processes)
        assert done.returncode == 0, done.stderr[-3000:]
        out["stderr"][processes] = done.stderr
    return out


@pytest.mark.slow
def test_two_processes_sample_and_update_as_one(runs):
    """Identical samples.jsonl (every proposal, answer, vote and reward of both steps), metrics
    within 1e-6, and both checkpoints' weights within 1e-5 of the one-process run, which moved them
    ~1e-3. Guards: solver streams keyed by a process's own positions, a record not gathered, a
    per-process loss normaliser, the average of the two processes' gradients taken for their sum,
    the log-probs read from outside the sharded root."""
    one, two = runs[1], runs[2]
    with open(os.path.join(one, "samples.jsonl")) as a, open(os.path.join(two, "samples.jsonl")) as b:
        assert a.read() == b.read()
    m1, m2 = jsonl(os.path.join(one, "metrics.jsonl")), jsonl(os.path.join(two, "metrics.jsonl"))
    assert [m["step"] for m in m1] == [m["step"] for m in m2] == [0, 1, 2]  # 2: the final weights' eval
    assert m1[0]["solver_grad_norm"] > 0 and m1[1]["proposer_kl"] > 0  # a real update, the KL term in it
    for a, b in zip(m1, m2):
        assert a.keys() == b.keys()
        for key in a:
            if timing(key):
                continue
            if isinstance(a[key], float):
                assert abs(a[key] - b[key]) <= 1e-6, (a["step"], key, a[key], b[key])
            else:
                assert a[key] == b[key], (a["step"], key)
    base = load_file(os.path.join(runs["base"], "model.safetensors"))
    for step in (1, 2):
        w1, w2 = weights(one, step), weights(two, step)
        assert w1.keys() == w2.keys()  # the tied lm-head saved once, as save_pretrained does
        assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5
    assert max((base[k] - w1[k]).abs().max().item() for k in w1) > 1e-3


@pytest.mark.slow
def test_two_processes_evaluate_a_share_each_and_report_one_process_figures(runs):
    """The 5 held-out problems (greedy, then 2 samples each) at steps 0 and 2 are split 2 + 3: rank
    0's progress lines count its own 2 where one process counts 5, and every eval figure, the number
    of problems scored among them, equals one process's exactly. Guards: rank 0 evaluating the whole
    set (the other idle), a share's records not gathered or dropped, overlapping shares, a problem's
    samples keyed by its position in a share rather than in the set."""
    m1, m2 = (jsonl(os.path.join(runs[p], "metrics.jsonl")) for p in (1, 2))
    evals = [(a, b) for a, b in zip(m1, m2) if "eval_accuracy" in a]
    assert [a["step"] for a, _ in evals] == [0, 2]
    for a, b in evals:
        figures = {k: v for k, v in a.items() if k.startswith("eval_") and not timing(k)}
        assert "eval_sampled_pass_at_k" in figures and a["eval_n_problems"] == a["eval_sampled_n_problems"] == 5
        assert {k: b.get(k) for k in figures} == figures
    for label in ("eval step", "eval_sampled step"):
        for processes, share in ((1, "5/5"), (2, "2/2")):
            shown = re.findall(rf"^{label}\s+(\d+/\d+) rows", runs["stderr"][processes], re.M)
            assert shown == [share, share], (processes, label, shown)  # steps 0 and 2


@pytest.mark.slow
def test_with_signal_the_microbatch_changes_only_rounding(runs, tmp_path):
    """The same one-process run at --microbatch 8 (each mini-batch of 8 sequences in one forward)
    instead of 2: identical samples, and weights within 1e-5 after 2 steps that moved them ~1e-3.
    The gradient is the same sum in another order (float rounding, ~1e-7 relative); AdamW divides
    each coordinate by its own size, so where a coordinate's gradient is near 0 that rounding grows,
    hence a bound at 1% of the movement rather than at rounding.
    Guards: a per-micro-batch normaliser (micro-batches of unequal length weighted unequally)."""
    run = str(tmp_path / "mb8")
    assert harness.main(ARGS + ["--model", runs["base"], "--out", run, "--microbatch", "8"]) == 0
    with open(os.path.join(runs[1], "samples.jsonl")) as a, open(os.path.join(run, "samples.jsonl")) as b:
        assert a.read() == b.read()
    base = load_file(os.path.join(runs["base"], "model.safetensors"))
    w2, w8 = weights(runs[1], 2), weights(run, 2)
    moved, apart = max((base[k] - w2[k]).abs().max().item() for k in w2), max((w8[k] - w2[k]).abs().max().item() for k in w2)
    print(f"moved {moved:.3g} apart {apart:.3g}")
    assert moved > 1e-3 and apart <= 1e-5


@pytest.mark.slow
def test_two_processes_without_signal_never_move_the_weights(tiny_dir, tmp_path):
    """The random tiny model's answers never vote, so every advantage is 0; without weight decay
    nothing may move the weights. On 2 processes as on one: the KL term is exactly 0 at every
    mini-batch (its reference log-probs taken in the micro-batches each process's update runs), the
    samples are identical and both runs end on the base's weights bit for bit.
    Guards: reference or old log-probs in another layout than the update's, per process (a KL of
    rounding size that AdamW turns into a full lr step in a direction rounding chose)."""
    args = ["--task", "arith", "--device", "cpu", "--threads", "1", "--model", tiny_dir, "--steps", "2",
            "--batch", "4", "--n", "2", "--minibatch", "2", "--microbatch", "3", "--max-response", "8",
            "--eval-every", "0", "--proposer-every", "1", "--weight-decay", "0", "--lr", "1e-3", "--save-every", "2"]
    out = {p: str(tmp_path / f"run{p}") for p in (1, 2)}
    for processes, run in out.items():
        done = launch(args + ["--out", run], processes)
        assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(out[1], "samples.jsonl")) as a, open(os.path.join(out[2], "samples.jsonl")) as b:
        assert a.read() == b.read()
    assert all(m["zero_signal"] == 1.0 for m in jsonl(os.path.join(out[2], "metrics.jsonl")))
    base = load_file(os.path.join(tiny_dir, "model.safetensors"))
    for run in out.values():
        assert all(torch.equal(weights(run, 2)[k], base[k]) for k in base)


@pytest.mark.slow
def test_the_checkpoint_of_two_processes_is_a_hugging_face_model(runs):
    """Rank 0 writes the whole weights in Hugging Face format: from_pretrained loads them exactly
    (not the sharded halves), and the optimizer state is in one file per process."""
    from transformers import AutoModelForCausalLM
    checkpoint = os.path.join(runs[2], "step-000002")
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    saved = weights(runs[2], 2)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], saved[k]) for k in saved)
    assert params["model.embed_tokens.weight"].shape[0] == model.config.vocab_size
    assert sorted(os.listdir(os.path.join(checkpoint, "optimizer"))) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_two_processes_killed_after_a_checkpoint_resume_to_the_uninterrupted_run(runs, tmp_path):
    """The same run on 2 processes, SIGTERM to torchrun as soon as its step-1 checkpoint exists
    (during step 2), prints rank 0's line with the torchrun resume command; resumed on two processes
    it ends exactly where the uninterrupted run did: samples, metrics and weights equal. Resumed on
    one process it is refused in one line, and with a damaged AdamW shard it is one line too.
    Guards: the AdamW shards or a process's RNG not restored, the KL reference taken from the
    checkpoint."""
    run = str(tmp_path / "killed")
    killed = subprocess.Popen(command(ARGS + ["--model", runs["base"], "--out", run, "--steps", "3"], 2), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.time() + 600
    while not os.path.isdir(os.path.join(run, "step-000001")) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGTERM)
    _, err = killed.communicate(timeout=300)
    assert killed.returncode != 0
    assert (f"sqlm.py: interrupted by SIGTERM at step 1; last complete checkpoint: {run}/step-000001; resume with: "
            f"torchrun --nproc-per-node 2 ") in err, err[-3000:]
    done = launch(["--resume", run, "--steps", "2"], processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("samples.jsonl", "metrics.jsonl"):
        got, want = jsonl(os.path.join(run, name)), jsonl(os.path.join(runs[2], name))
        strip = lambda rows: [{k: v for k, v in r.items() if not timing(k)} for r in rows]  # noqa: E731
        assert strip(got) == strip(want)
    got, want = weights(run, 2), weights(runs[2], 2)
    assert all(torch.equal(got[k], want[k]) for k in want)

    shutil.rmtree(os.path.join(run, "step-000002"))
    refused = launch(["--resume", run, "--steps", "2"])
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"sqlm.py: error: {run}/step-000001 was written by 2 processes, this run has 1: its optimizer state is per "
        f"process; resume it with torchrun --nproc-per-node 2 sqlm.py -- --resume {run}"]

    with open(os.path.join(run, "step-000001", "optimizer", "__1_0.distcp"), "r+b") as f:
        f.truncate(100)  # rank 1's AdamW shard damaged: one line from rank 0, not a traceback per process
    damaged = launch(["--resume", run, "--steps", "2"], processes=2)
    assert damaged.returncode != 0
    assert (f"sqlm.py: error: cannot read {run}/step-000001/optimizer (") in damaged.stderr
    assert "Traceback" not in damaged.stderr.split("sqlm.py: error:")[0]  # nothing from sqlm.py before the line


@pytest.mark.slow
def test_a_full_disk_at_a_two_process_checkpoint_is_one_line(runs):
    """The AdamW shards are the first write of a 2-process checkpoint; on a full disk
    torch.distributed.checkpoint wraps each process's ENOSPC, and the run still ends with rank 0's
    one line (the disk error, the torchrun resume command), no traceback from sqlm.py and no
    step-000001.tmp left (root: a real 64 KB tmpfs; skipped where mount is refused, as in
    tests/test_failures.py). Guards: the wrapped failure not unwrapped."""
    with tmpfs("64k") as disk:
        run = os.path.join(disk, "run")
        done = launch(ARGS + ["--model", runs["base"], "--out", run, "--eval-every", "0"], processes=2)
        assert done.returncode != 0
        ours = [line for line in done.stderr.splitlines() if line.startswith("sqlm.py")]
        assert ours == [f"sqlm.py: error: cannot write checkpoint step-000001 at step 1 (No space left on device); "
                        f"last complete checkpoint: none yet; resume with: torchrun --nproc-per-node 2 sqlm.py -- "
                        f"--resume {run}"], done.stderr[-3000:]
        assert "Traceback" not in done.stderr.split("sqlm.py: error:")[0]
        assert sorted(os.listdir(run)) == ["config.json", "metrics.jsonl", "samples.jsonl"]


RESHARD = """
import os, sys, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
import parallel, rollout
from torch.distributed.tensor import DTensor
model, _ = rollout.load(sys.argv[1], device="cpu")
ref = parallel.shard(model.requires_grad_(sys.argv[3] == "0"), parallel.World(0, 1, torch.device("cpu")))
ids = torch.randint(5, 100, (2, 12))
with torch.no_grad():
    ref(ids, torch.ones_like(ids), (torch.arange(12) >= 6).long().expand(2, 12), 1.0, 4096)
print(sorted(n for n, p in ref.named_parameters() if not isinstance(p, DTensor)))
"""


@pytest.mark.slow
def test_the_kl_reference_is_sharded_again_after_each_forward(tiny_dir):
    """FSDP2 keeps a root's weights gathered after a forward until the backward that follows; the KL
    reference (frozen: no weight requires grad) has no backward, so `shard` reshards it after each
    forward: after a no-grad forward every weight is a shard again. A trained model's root stays
    gathered for its backward (on N GPUs, the reference's whole embedding would otherwise stay on
    every one for the rest of the run). Guards: the frozen model's reshard dropped."""
    import socket
    out = {}
    for frozen in ("1", "0"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        done = subprocess.run([sys.executable, "-c", RESHARD, tiny_dir, port, frozen], capture_output=True,
                              text=True, timeout=300, env={**ENV, "PYTHONPATH": REPO})
        assert done.returncode == 0, done.stderr[-2000:]
        out[frozen] = done.stdout.strip().splitlines()[-1]
    assert out["1"] == "[]"
    assert "model.model.embed_tokens.weight" in out["0"]


def test_a_wrapped_checkpoint_failure_is_reported_as_what_it_wraps():
    """torch.distributed.checkpoint wraps every process's failure; the run reports the disk error
    (one line, exit 2) or the interrupt (the Ctrl-C line) inside it, an interrupt first."""
    from torch.distributed.checkpoint.api import CheckpointException
    full, stop = OSError(28, "No space left on device"), KeyboardInterrupt()
    assert parallel.cause(CheckpointException("save", {1: (full, None)})) is full
    assert parallel.cause(CheckpointException("save", {0: (full, None), 1: (stop, None)})) is stop
    assert parallel.cause(full) is full


# --- the dealing, without processes ---------------------------------------------------

def test_shares_cover_the_items_in_order():
    """World.share on 1, 2, 3 or 5 processes: the shares, in rank order, are the items in order, and
    no two differ by more than one item. Guards: a share that drops or repeats an item, the
    remainder all on one process."""
    for size in (1, 2, 3, 5):
        for count in (0, 1, 4, 7):
            shares = [parallel.World(r, size).share(list(range(count))) for r in range(size)]
            assert [x for share in shares for x in share] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


class Rank(parallel.World):
    """Rank `rank` of 2, both in this process: `gather` keeps what this rank gives and returns the
    records `before` it (the lower rank's, given by the test) followed by them."""

    def __init__(self, rank, before=()):
        super().__init__(rank, 2)
        self.before, self.given = list(before), None

    def gather(self, items):
        self.given = list(items)
        return self.before + self.given


@pytest.mark.parametrize("samples", [1, 2])
def test_each_process_evaluates_its_share_and_the_gathered_records_are_one_process_records(tiny_model, samples):
    """5 problems on 2 processes: rank 0 answers problems 0-1 and rank 1 problems 2-4 (the records
    each gives the gather), and the gathered records and figures equal one process's exactly, greedy
    and with 2 samples a problem at temperature 1 (the random model's samples differ from problem to
    problem). Guards: rank 0 evaluating the whole set, shares that overlap or drop a problem, a
    share not gathered, a problem's samples seeded by its position in a share."""
    model, tokenizer = tiny_model
    problems = heldout.arith_set()[:5]

    def run(world):
        return heldout.evaluate(model, tokenizer, "arith", problems, samples=samples, max_new_tokens=8, world=world)
    one = run(parallel.ONE)
    first = Rank(0)
    run(first)
    second = Rank(1, before=first.given or [])
    both = run(second)
    asked = [p["problem"] for p in problems for _ in range(samples)]
    assert [r["problem"] for r in first.given] == asked[:2 * samples]
    assert [r["problem"] for r in second.given] == asked[2 * samples:]
    assert both == {**one, "seconds": both["seconds"]}
    assert len({(r["response"], r["length"]) for r in one["records"]}) > 1


def test_a_minibatch_is_dealt_by_tokens_with_equal_calls_on_every_process():
    """Each process gets a near-equal token count (within the longest sequence) and makes as many
    forward/backward calls as the busiest one, padding with empty micro-batches; one process keeps
    every sequence in order, in the micro-batches it always had."""
    lengths = [30, 5, 5, 5, 5, 5, 5, 28, 2]
    cfg = sqlm.Config(minibatch=100, microbatch=2)
    seqs = [sqlm.Seq([1], [0] * (n - 1), 0.0, group=0) for n in lengths]
    for size in (2, 3):
        micros = [parallel.World(r, size).micro_batches(seqs, cfg.microbatch) for r in range(size)]
        tokens = [sum(len(s.prompt_ids) + len(s.completion_ids) for micro in m for s in micro) for m in micros]
        assert max(tokens) - min(tokens) <= max(lengths)
        assert len({len(m) for m in micros}) == 1  # the same number of calls everywhere
        assert sorted(id(s) for m in micros for micro in m for s in micro) == sorted(map(id, seqs))
        assert parallel.World(0, size).count_micro_batches(seqs, cfg.microbatch) == \
            sum(1 for m in micros for micro in m if micro)
    assert parallel.ONE.micro_batches(seqs, cfg.microbatch) == [seqs[i:i + 2] for i in range(0, len(seqs), 2)]


def test_deal_gives_the_longest_sequence_first_to_the_process_with_fewest_tokens():
    """Sequences of 5, 1, 1, 1, 1 tokens on two processes, by hand: the 5 to process 0, then each 1
    to the process with fewer tokens, all four to process 1: 5 and 4 tokens. Shortest first would
    deal the 1s to 0, 1, 0, 1 and the 5 to 0 (a tie, the lower rank): 7 and 2. Guards: the order of
    the deal changed (the bound "within the longest sequence" holds for both)."""
    assert parallel.World(0, 2).deal([5, 1, 1, 1, 1]) == [0, 1, 1, 1, 1]


def test_the_flags_after_torchruns_double_dash_are_sqlm_flags():
    """`torchrun ... sqlm.py -- --n 4`: a `--` that reaches sqlm.py (torchrun passes it on under
    some Python versions) is dropped, and every flag after it is read."""
    cfg = harness.parse_args(["--", "--task", "algebra", "--n", "3", "--lr", "-1e-6"])
    assert (cfg.task, cfg.n, cfg.lr) == ("algebra", 3, -1e-6)
