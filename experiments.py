"""The tiny world: SQLM's label-free gain, measured on a CPU (the README's table and plot).

    python experiments.py tiny-world --jobs 2   # base model, then 4 arms x 3 seeds x 60 steps
    python experiments.py tiny-world --quick    # one seed, 30 steps (reuses the base if present)
    python experiments.py tiny-world --base-seed 1 --arms sqlm,never --seeds 0,1   # another base
    python experiments.py tiny-world --world curriculum --arms sqlm,every,never   # curriculum world
    python experiments.py pretrain --out DIR    # a base model alone (--help: its flags)
    python experiments.py report                # tables + plot from whatever runs have finished
    python experiments.py export --to results/tiny-world   # the finished runs' result.json

The whole experiment, in the order it is built:
1. Splits (`world_split`, `arith_world`): pairs (a, b) split by a hash into held-out (25%), dev
   (15%) and train (60%). Only train pairs carry labels, only in pre-training; settings are
   chosen on dev (`--split dev`, variants as sqlm.py flags after `--`); held-out is only reported.
2. Corpus (`arith_transcripts`): solver turns multiply by the column method (`arith_reply`), 30%
   with one slipped digit, so the base is right by majority vote but slips in single samples,
   the room majority-vote RL has to gain; proposer turns write "What is a * b?".
3. Base model (`experiments.py pretrain`): tiny.py's model and pre-training loop on that
   corpus, one token per digit (`arith_tokenizer`).
4. Sweep (`base_model`, `run_arm`): every arm trains with sqlm.py and no labels, and leaves
   `result.json` in its directory, so an interrupted sweep resumes where it stopped and a table
   can be assembled from runs made at different times.
5. Report (`report`; plot.py draws its tables and figure) and `export`.

Arms: sqlm (proposer updated every 5 steps, the paper's setting), format (the format-only
solver reward, the paper's baseline), never (proposer never updated), every (every step),
azr and rzero (the proposer paid 1 - p, Absolute Zero, 0 when p is 1, or 1 - 2|p - 1/2|,
R-Zero, where p is the share of the solver's samples that agree with the vote; updated every 5
steps as sqlm), critic (sqlm with PPO's learned value baseline and GAE in place of the group
baseline, the released code task's algorithm; the critic's lr 3e-4, 10x the policy's as released).

Worlds and bases: one base model per (world, base seed), each in its own directory with its
runs, so results of two bases never mix: `--out` itself for the tiny world's seed-0 base,
`--out`/<world>-base<seed> for any other (`world_dir`). The curriculum world changes only the
proposer's pre-training mix (`CURRICULUM_MIX`: 1x1 0.75, 2x1 0.25; the tiny world's is 1x1 to
3x2 uniformly); the solver's corpus, the held-out set and the settings are the tiny world's.

Left out: any task but multiplication, a GPU (every run is a CPU process), and any choice
made on the held-out split.
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time

if __name__ == "__main__":  # Ctrl-C or SIGTERM while torch loads: one line, no traceback
    import cli
    cli.exit_on_signals("experiments.py: interrupted while starting; nothing was written")

import torch

import cli
import eval as heldout
import plot
import prompts
import rewards
import rollout
import tiny

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = "2x1,1x1"  # the solver's world: A 10-99 or 2-9, B 2-9
# `experiments.py pretrain`'s flags for a base model (as published for the seed-0 tiny world)
BASE_FLAGS = ["--digits", DIGITS, "--layers", "4", "--hidden", "128", "--steps", "3000",
              "--batch", "32", "--seed", "0", "--threads", "2"]
# Chosen on the dev split (README, 'The tiny world'); the paper's lr 1e-6 is for 3B weights.
WORLD = ["--task", "arith", "--batch", "16", "--n", "4", "--minibatch", "8", "--microbatch", "64",
         "--max-response", "64", "--lr", "3e-5", "--kl", "0", "--arith-check", "--eval-every", "10",
         "--eval-samples", "8", "--rollout-rows", "512"]
ARMS = {"sqlm": [], "format": ["--solver-reward", "format"], "never": ["--proposer-every", "0"],
        "every": ["--proposer-every", "1"], "azr": ["--proposer-reward", "azr"],
        "rzero": ["--proposer-reward", "rzero"],
        # PPO's learned baseline in place of the group's, its lr 10x the policy's as released
        "critic": ["--critic", "--critic-lr", "3e-4"]}
# Each world's pretrain flags beyond BASE_FLAGS
WORLDS = {"tiny": [], "curriculum": ["--proposer-mix", "curriculum"]}
WINDOW = 10  # steps per window of the proposer's mix over time
STEPS = 60  # training steps of the reported runs (--quick: 30)
OWN_FLAGS = ("--model", "--seed", "--steps", "--eval-data", "--out", "--resume")  # run_arm's own


# --- 1. the splits: a difficulty knob and disjoint pairs ---------------------------------

WORLD_SPLITS = {"heldout": (0, 25), "dev": (25, 40), "train": (40, 100)}  # % buckets of the hash


def operands(d):
    """The operands with d digits (one digit: 2-9, leaving out the trivial 0 and 1)."""
    return range(2, 10) if d == 1 else range(10 ** (d - 1), 10 ** d)


def parse_digits(spec):
    """"2x1,1x1" -> ((2, 1), (1, 1)): digits of a and of b, one shape per comma."""
    try:
        shapes = tuple(tuple(int(d) for d in shape.split("x")) for shape in spec.split(","))
    except ValueError:
        shapes = ()
    if not shapes or any(len(s) != 2 or not 1 <= min(s) <= max(s) <= 4 for s in shapes):
        raise ValueError(f"--digits must look like 2x1 or 2x1,1x1 (1 to 4 digits a side), "
                         f"not {spec!r}")
    return shapes


def world_split(a, b):
    """Which split the pair (a, b) belongs to, fixed by a hash of the pair (not by any seed), so
    the held-out problems never reach the base model's training data or the dev set."""
    bucket = int(hashlib.sha256(f"{a}*{b}".encode()).hexdigest(), 16) % 100
    return next(name for name, (lo, hi) in WORLD_SPLITS.items() if lo <= bucket < hi)


def arith_world(digits=((2, 1),), split="heldout", size=None, seed=0):
    """Problems "What is a * b?" of the given digit shapes whose pair lies in `split`, shuffled
    by `seed` (the first `size`). heldout (25% of pairs) is never used to choose anything; dev
    (15%) is for choosing settings; train (60%) is all the base model's labels ever see."""
    pairs = [(a, b) for da, db in digits for a in operands(da) for b in operands(db)
             if world_split(a, b) == split]
    random.Random(seed).shuffle(pairs)
    return [{"problem": f"What is {a} * {b}?", "answer": str(a * b)} for a, b in pairs[:size]]


# --- 2. the base model's corpus: a base that multiplies, unreliably ----------------------

PROPOSER_SHAPES = ((1, 1), (2, 1), (2, 2), (3, 1), (3, 2))  # the base proposer's, easy to hard
# The curriculum world's proposer (`--proposer-mix curriculum`): mostly problems the solver learns
# to answer unanimously within a few steps (1x1, one line of working), a quarter at the frontier
# it was taught and slips on (2x1), nothing beyond (docs/tiny_world.md, 'A world where the
# curriculum should matter').
CURRICULUM_MIX = {(1, 1): 0.75, (2, 1): 0.25}


def parse_mix(spec):
    """"curriculum" -> CURRICULUM_MIX; "1x1:3,2x1:1" -> {(1, 1): 3.0, (2, 1): 1.0}; ValueError is
    one line."""
    if spec == "curriculum":
        return dict(CURRICULUM_MIX)
    mix = {}
    try:
        for part in spec.split(","):
            shape, weight = part.split(":")
            a, b = (int(d) for d in shape.split("x"))
            mix[(a, b)] = float(weight)
    except ValueError:
        mix = {}
    if not mix or any(not 1 <= min(s) <= max(s) <= 4 for s in mix) \
            or any(w < 0 for w in mix.values()) or not sum(mix.values()) > 0:
        raise ValueError(f"--proposer-mix must be 'curriculum' or look like 1x1:0.75,2x1:0.25 "
                         f"(non-negative weights, 1 to 4 digits a side), not {spec!r}")
    return mix


def corrupt_one_digit(value, rng):
    """`value` with one digit, chosen at random, replaced by another (no new leading zero)."""
    digits = list(str(value))
    i = rng.randrange(len(digits))
    choices = [d for d in "0123456789"
               if d != digits[i] and not (d == "0" and i == 0 and len(digits) > 1)]
    digits[i] = rng.choice(choices)
    return int("".join(digits))


def column_working(a, b, bad=None, rng=None):
    """(lines, answer): a * b for a one-digit b by the column method, right to left.

    47 * 8 -> lines [("7 * 8", 56), ("4 * 8", 32), ("32 + 5", 37)], answer "376": each
    digit's product, plus the carry (the tens of the step before) when there is one; the
    answer is the last value followed by the units digits the earlier steps wrote down.
    Every line is a one-digit fact or a small sum, so a model that learns them on some pairs
    can multiply pairs it never saw (a summed partial-product line, 320 + 56 = 376, is new
    for every pair, and a tiny model learns it far more slowly). If `bad` is a line index,
    that line's value has one digit wrong (`corrupt_one_digit`) and every later line and the
    answer follow from the lines as written.
    """
    if not 0 <= b <= 9:
        raise ValueError(f"the column method here takes a one-digit b (got {b})")
    lines = []

    def write(left, value):
        lines.append((left, corrupt_one_digit(value, rng) if len(lines) == bad else value))
        return lines[-1][1]

    digits, carry, low = [int(d) for d in str(a)][::-1], 0, ""
    for i, d in enumerate(digits):
        value = write(f"{d} * {b}", d * b)
        if carry:
            value = write(f"{value} + {carry}", value + carry)
        if i < len(digits) - 1:
            low, carry = str(value % 10) + low, value // 10
    return lines, str(value) + low


def arith_reply(a, b, rng, corrupt=0.0):
    """The solver's reply to "What is a * b?": the column method in <think>, then <answer>.

    With probability `corrupt` one digit of one line's value is wrong (a line chosen
    uniformly) and everything after it follows from it, so the answer is the one the
    written working implies: a model trained on these is sometimes wrong when sampled but
    right in its majority, the regime where majority-vote RL has something to gain.
    """
    bad = rng.randrange(len(column_working(a, b)[0])) if rng.random() < corrupt else None
    lines, answer = column_working(a, b, bad, rng)
    working = "\n".join(f"{left} = {v}" for left, v in lines)
    return f"<think>\n{working}\n</think>\n<answer>{answer}</answer>"


def world_pairs(shapes):
    """{shape: [(a, b)]} of the train split only: the base never sees a dev or held-out pair."""
    return {shape: [(a, b) for a in operands(shape[0]) for b in operands(shape[1])
                    if world_split(a, b) == "train"] for shape in shapes}


def arith_transcripts(solver_shapes=((2, 1), (1, 1)), corrupt=0.3, proposer_share=0.15,
                      proposer_shapes=PROPOSER_SHAPES, proposer_mix=None):
    """rng -> (user prompt, reply): the arith task's real prompts, as `tiny.transcript` does.

    Solver turns (1 - proposer_share): a train-split pair of a shape in `solver_shapes`
    (shape first, uniformly, so 1x1 is not drowned by 2x1), answered by `arith_reply`.
    Proposer turns: "What is a * b?" of a shape in `proposer_shapes`, uniformly, train pairs
    only, so the proposer starts with a spread of difficulties and no answer in its reply.
    proposer_mix: {shape: weight} instead of `proposer_shapes` drawn uniformly (the
    curriculum world, `CURRICULUM_MIX`); None keeps the uniform draw and its random stream.
    """
    if proposer_mix is not None:
        proposer_shapes = tuple(s for s, w in proposer_mix.items() if w > 0)
        weights = [proposer_mix[s] for s in proposer_shapes]
    solver_pairs, proposer_pairs = world_pairs(solver_shapes), world_pairs(proposer_shapes)

    def proposer_shape(rng):
        if proposer_mix is None:
            return rng.choice(proposer_shapes)
        return rng.choices(proposer_shapes, weights)[0]

    def draw(rng):
        if rng.random() < proposer_share:
            a, b = rng.choice(proposer_pairs[proposer_shape(rng)])
            return prompts.proposer_prompt("arith"), f"What is {a} * {b}?"
        a, b = rng.choice(solver_pairs[rng.choice(solver_shapes)])
        return (prompts.solver_prompt("arith", f"What is {a} * {b}?"),
                arith_reply(a, b, rng, corrupt))
    return draw


def arith_tokenizer(seed=0, transcripts=2000):
    """One token per digit, merges learnt from arith transcripts (short prompts)."""
    draw, rng = arith_transcripts(((1, 1), (2, 1), (3, 1))), random.Random(seed)
    corpus = (text for _ in range(transcripts) for text in draw(rng))
    return tiny.make_tokenizer(single_digits=True, corpus=corpus)


# --- 3. the base model: `python experiments.py pretrain` ---------------------------------

def pretrain_args(argv):
    """`experiments.py pretrain`'s flags, checked (a bad one is one line and exit code 2):
    (flags, solver shapes, proposer mix or None)."""
    p = argparse.ArgumentParser(prog="experiments.py pretrain", description=(
        "Write a tiny Qwen2 model pre-trained to play both roles of the tiny world (CPU)."),
        epilog="The tiny world's base (BASE_FLAGS: --steps 3000 --batch 32) took 19.5 min on 2 "
               "x86-64 cores with --threads 2, 47-48 min with --threads 1 beside another "
               "(docs/tiny_world.md).", formatter_class=Defaults)
    tiny.add_shape_args(p, layers=4, hidden=128)
    p.add_argument("--steps", type=int, default=2000, help="pre-training steps")
    p.add_argument("--batch", type=int, default=8, help="transcripts per step")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--digits", default=DIGITS,
                   help="solver problems' shapes, digits of a x digits of b")
    p.add_argument("--corrupt", type=float, default=0.3, help="share of solver replies with one "
                   "wrong digit in the working (and the answer it implies)")
    p.add_argument("--proposer-share", type=float, default=0.15, help="share of proposer turns")
    p.add_argument("--proposer-mix", default=None,
                   help="proposer turns' shapes and weights, e.g. 1x1:0.75,2x1:0.25, or "
                        "'curriculum' (default: 1x1, 2x1, 2x2, 3x1, 3x2 uniformly)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (on a shared "
                   "2-core machine one is many times faster than two)")
    a = p.parse_args(argv)
    tiny.check_shape(p, a)
    try:
        shapes = parse_digits(a.digits)
        mix = None if a.proposer_mix is None else parse_mix(a.proposer_mix)
    except ValueError as e:
        p.error(str(e))
    if any(b_digits != 1 for _, b_digits in shapes):
        p.error(f"--digits: the solver's working is the column method, which takes a one-digit b "
                f"(got {a.digits})")
    if a.steps < 1 or a.batch < 1 or not a.lr > 0 or a.threads < 1:
        p.error("--steps, --batch and --threads must be at least 1 and --lr positive")
    if not 0 <= a.corrupt <= 1 or not 0 <= a.proposer_share <= 1:
        p.error("--corrupt and --proposer-share must lie in [0, 1]")
    return a, shapes, mix


def main_pretrain(argv):
    """A base model for the tiny world: `tiny.make` with `arith_tokenizer`, then `tiny.pretrain`
    on `arith_transcripts`, built beside --out and moved there only once complete."""
    a, shapes, mix = pretrain_args(argv)
    torch.set_num_threads(a.threads)
    with tiny.staged(a.out, "experiments.py pretrain") as out:
        tiny.make(out, layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads,
                  seed=a.seed, init_std=0.02, tokenizer=arith_tokenizer(a.seed))
        corpus = arith_transcripts(shapes, a.corrupt, a.proposer_share, proposer_mix=mix)
        tiny.pretrain(out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, transcripts=corpus)
    print(f"pre-trained {a.out} on the arith world ({a.digits}, corrupt {a.corrupt}"
          + (f", proposer mix {a.proposer_mix}" if mix else "") + f") for {a.steps} steps")


# --- 4. the sweep ---------------------------------------------------------------------------

def check_variant(extra, arms):
    """The sqlm.py flags after `--` make a valid run with every arm's flags, checked before the
    base model is built (twenty minutes) instead of by the first run after it; ValueError is one
    line."""
    import harness  # torch: only for a variant
    own = [x for x in extra if x.split("=")[0] in OWN_FLAGS]
    if own:
        raise ValueError(f"after --: {own[0].split('=')[0]} is set by experiments.py for each run "
                         f"({', '.join(OWN_FLAGS)})")
    for arm in arms:
        try:
            harness.check_config(harness.parse_args([*WORLD, *ARMS[arm], *extra]))
        except ValueError as e:
            raise ValueError(f"after -- (sqlm.py flags, with arm {arm}): {e}") from None


def sh(args, log, threads=None):
    """Run a python entry point of this project, its output to `log`; exit on failure."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with open(log, "a") as f:
        code = subprocess.call([sys.executable, *args], cwd=HERE, stdout=f,
                               stderr=subprocess.STDOUT, env=env)
    if code:
        sys.exit(f"experiments.py: {' '.join(args[:2])} failed (exit {code}); see {log}")


def write_sets(out):
    """dev.jsonl and heldout.jsonl of the tiny world, in eval.py's JSONL format."""
    shapes = parse_digits(DIGITS)
    for split in ("dev", "heldout"):
        path = os.path.join(out, f"{split}.jsonl")
        if not os.path.exists(path):
            with open(path, "w") as f:
                for p in arith_world(shapes, split):
                    f.write(json.dumps(p) + "\n")


def world_dir(out, world="tiny", base_seed=0):
    """Where a base model and its runs live: `out` for the tiny world's seed-0 base, else
    out/<world>-base<seed> (runs/tiny-world/curriculum-base0, runs/tiny-world/tiny-base1)."""
    if (world, base_seed) == ("tiny", 0):
        return out
    return os.path.join(out, f"{world}-base{base_seed}")


def base_flags(world="tiny", base_seed=0, threads=None):
    """`experiments.py pretrain`'s flags for a world's base model at a seed (BASE_FLAGS' --seed,
    and --threads if given, replaced)."""
    flags = list(BASE_FLAGS)
    flags[flags.index("--seed") + 1] = str(base_seed)
    if threads:
        flags[flags.index("--threads") + 1] = str(threads)
    return [*flags, *WORLDS[world]]


def scores(model, tok, problems, samples, temperature):
    """heldout.evaluate on every problem at once (so each problem draws the stream a run's eval
    draws), then {"all": figures, "by_shape": {shape: figures}}: accuracy, and with samples > 1
    maj@k, pass@k."""
    result = heldout.evaluate(model, tok, "arith", problems, samples=samples,
                              temperature=temperature, max_new_tokens=64, batch_size=512)
    records, by = result["records"], {}
    for i, p in enumerate(problems):
        by.setdefault(rewards.arith_shape(p["problem"]), []).extend(
            records[i * samples:(i + 1) * samples])
    return {"all": heldout.summarize(records, samples),
            "by_shape": {shape: heldout.summarize(rs, samples) for shape, rs in sorted(by.items())}}


def figures_of(model, tok, problems):
    """{"greedy", "sampled", "maj_at_8", "pass_at_8", "by_shape": {shape: the same four}}."""
    greedy, sampled = scores(model, tok, problems, 1, 0.0), scores(model, tok, problems, 8, 1.0)

    def four(g, s):
        return {"greedy": g["accuracy"], "sampled": s["accuracy"], "maj_at_8": s["maj_at_k"],
                "pass_at_8": s["pass_at_k"]}
    return {**four(greedy["all"], sampled["all"]),
            "by_shape": {shape: four(greedy["by_shape"][shape], sampled["by_shape"][shape])
                         for shape in greedy["by_shape"]}}


def base_model(out, world="tiny", base_seed=0, threads=None):
    """Pre-train the base model once (`experiments.py pretrain`), then score it on both splits
    (base.json, with each shape's figures and the base proposer's mix: `proposer_mix`)."""
    base = os.path.join(out, "base")
    if not os.path.exists(os.path.join(base, "config.json")):
        print(f"pre-training the base model into {base} ...", flush=True)
        sh(["experiments.py", "pretrain", *base_flags(world, base_seed, threads), "--out", base],
           os.path.join(out, "base.log"))
    figures_path = os.path.join(out, "base.json")
    if not os.path.exists(figures_path):
        model, tok = rollout.load(base, device="cpu")
        mix, well_formed = proposer_mix(model, tok)
        figures = {"world": world, "base_seed": base_seed, "proposer_mix": mix,
                   "proposer_well_formed": well_formed}
        for split in ("dev", "heldout"):
            problems = heldout.read_jsonl(os.path.join(out, f"{split}.jsonl"), "arith")
            figures[split] = figures_of(model, tok, problems)
        with open(figures_path, "w") as f:
            json.dump(figures, f, indent=1)
    with open(figures_path) as f:
        return base, json.load(f)


def proposer_mix(model, tok, n=512, seed=0):
    """(mix, well-formed share) of `n` proposals the model writes to the arith proposer prompt at
    T=1: mix is {shape: share} over the well-formed ones (`rewards.arith_shape`: "AxB" or
    "other"), as a run's `proposal_mix` counts its valid proposals."""
    prompt = rollout.chat_prompt(tok, prompts.proposer_prompt("arith"))
    samples = rollout.generate(model, tok, [prompt], n=n, max_new_tokens=16, temperature=1.0,
                               seed=seed)
    shapes = [shape for shape in (rewards.arith_shape(s.text) for s in samples)
              if shape != "malformed"]
    mix = {shape: shapes.count(shape) / len(shapes) for shape in sorted(set(shapes))}
    return mix, len(shapes) / n


def run_name(arm, seed, split, extra, steps=None):
    """sqlm-s0 for the reported runs; sqlm-s0-30steps for --quick; sqlm-s0-dev-lr_1e-4 for a dev
    variant."""
    variant = (("" if steps in (None, STEPS) else f"-{steps}steps")
               + ("" if split == "heldout" else "-dev")
               + ("-" + "_".join(x.lstrip("-") for x in extra) if extra else ""))
    return f"{arm}-s{seed}{variant}"


def run_arm(out, base, arm, seed, steps, split, threads=None, extra=(), world="tiny", base_seed=0):
    """One training run (`extra`: sqlm.py flags after WORLD's); returns its result (cached in
    result.json): `step_figures`; `shape_stats`; and the final weights scored on the run's split
    shape by shape (`by_shape`, the same streams as the run's own last eval)."""
    run = os.path.join(out, run_name(arm, seed, split, extra, steps))
    result_path = os.path.join(run, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    if os.path.exists(run):  # an interrupted run: start it again from scratch
        shutil.rmtree(run)
    started = time.time()
    print(f"{arm} seed {seed}: {steps} steps -> {run}", flush=True)
    os.makedirs(run)
    split_file = os.path.join(out, f"{split}.jsonl")
    sh(["sqlm.py", *WORLD, *ARMS[arm], *extra, "--model", base, "--seed", str(seed),
        "--steps", str(steps), "--eval-data", split_file, "--out", run],
       os.path.join(run, "log.txt"), threads)
    figures, mix = step_figures(run)
    minutes = round((time.time() - started) / 60, 1)
    model, tok = rollout.load(os.path.join(run, f"step-{steps:06d}"), device="cpu")
    by_shape = figures_of(model, tok, heldout.read_jsonl(split_file, "arith"))["by_shape"]
    result = {"arm": arm, "seed": seed, "steps": steps, "split": split, "extra": list(extra),
              "world": world, "base_seed": base_seed, **figures,
              "shape_stats": shape_stats(run, WINDOW, WINDOW), "by_shape": by_shape,
              "proposal_mix_last10": mix, "minutes": minutes,
              "shape_eval_minutes": round((time.time() - started) / 60 - minutes, 1)}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def step_figures(run):
    """(figures, mix) from a finished run's metrics.jsonl: the eval curve and its last point; the
    valid rate over the last ten steps; per trained step `majority_correct` (and how many problems
    it checked), the zero-signal share of solver groups and the proposer's mix, also by
    WINDOW-step windows; and mix, the proposer's mix over the last ten steps."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    curve = [{k: r[k] for k in ("step", "eval_accuracy", "eval_sampled_accuracy",
                                "eval_sampled_maj_at_k", "eval_sampled_pass_at_k")}
             for r in records if "eval_accuracy" in r]
    trained = [r for r in records if "valid_rate" in r]
    last = trained[-10:]  # the last ten steps' proposals
    mixes = [r.get("proposal_mix", {}) for r in trained]
    figures = {"curve": curve, "final": curve[-1],
               "valid_rate": sum(r["valid_rate"] for r in last) / len(last),
               "maj_ok": [r.get("majority_correct") for r in trained],
               "maj_ok_checked": [r.get("majority_checked") for r in trained],
               "zero_signal": [r["zero_signal"] for r in trained], "proposal_mix": mixes,
               "mix_by_window": [plot.mean_mix(mixes[i:i + WINDOW])
                                 for i in range(0, len(trained), WINDOW)]}
    return figures, plot.mean_mix([r.get("proposal_mix", {}) for r in last])


def shape_stats(run, first, last):
    """{window: {shape: (share of solved proposals, proposer reward, maj_ok)}} over steps
    [0, first) and the last `last` steps, read from the run's samples.jsonl: where the
    proposer's problems went, whether it was paid for them, and whether the vote it was paid
    on agreed with the true product."""
    with open(os.path.join(run, "samples.jsonl")) as f:
        records = [json.loads(line) for line in f]
    records = [r for r in records if "answers" in r]
    end = max(r["step"] for r in records) + 1
    stats = {}
    for window, keep in (("first", lambda s: s < first), ("last", lambda s: s >= end - last)):
        rows = [r for r in records if keep(r["step"])]
        by = {}
        for r in rows:
            by.setdefault(rewards.arith_shape(r["problem"]), []).append(r)
        stats[window] = {shape: (len(rs) / len(rows),
                                 sum(r["proposer_reward"] for r in rs) / len(rs),
                                 sum(r["majority"] == r.get("truth") for r in rs) / len(rs))
                         for shape, rs in by.items()}
    return stats


# --- 5. the report and export ---------------------------------------------------------------

def world_dirs(out):
    """[(directory, world, base seed)]: `out` itself (the tiny world's seed-0 base) and every
    <world>-base<seed> directory under it."""
    found = [(out, "tiny", 0)]
    for name in sorted(os.listdir(out)):
        world, _, seed = name.rpartition("-base")
        if world in WORLDS and seed.isdigit() and os.path.isdir(os.path.join(out, name)):
            found.append((os.path.join(out, name), world, int(seed)))
    return found


def load(out):
    """{world: (bases {seed: base.json}, [result])} of every finished run under `out`."""
    worlds = {}
    for path, world, seed in world_dirs(out):
        bases, results = worlds.setdefault(world, ({}, []))
        if os.path.exists(os.path.join(path, "base.json")):
            with open(os.path.join(path, "base.json")) as f:
                bases[seed] = json.load(f)
        for name in sorted(os.listdir(path)):
            if os.path.exists(os.path.join(path, name, "result.json")):
                with open(os.path.join(path, name, "result.json")) as f:
                    results.append({**json.load(f), "world": world, "base_seed": seed,
                                    "dir": os.path.join(path, name)})
    return {w: v for w, v in worlds.items() if v[0] or v[1]}


def report(out):
    """table.md (per world: mean ± standard error (range) over bases and seeds at the last eval,
    each base apart, each shape, the training signal, the proposer's mix over time) and
    tiny_world.png (accuracy against step), from the result.json of every finished run; both
    drawn by plot.py."""
    worlds = [(world, bases, results) for world, (bases, results)
              in sorted(load(out).items(), key=lambda kv: list(WORLDS).index(kv[0]))]
    table = plot.world_tables(worlds, list(ARMS), STEPS, WINDOW)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("experiments.py: matplotlib is not installed (pip install matplotlib): table only",
              file=sys.stderr)
        return
    path = os.path.join(out, "tiny_world.png")
    if plot.world_figure(worlds, list(ARMS), STEPS, path):
        print(f"plot: {path}")


def export(out, to):
    """Copy base.json and every finished run's result.json under `out` to the same places under
    `to` (small files, to commit), so `report --out TO` rebuilds the tables without the runs."""
    copied = 0
    for path, _, _ in world_dirs(out):
        dest = os.path.join(to, os.path.relpath(path, out))
        runs = [os.path.join(name, "result.json") for name in sorted(os.listdir(path))]
        for name in ["base.json", *runs]:
            if os.path.isfile(os.path.join(path, name)):
                os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
                shutil.copyfile(os.path.join(path, name), os.path.join(dest, name))
                copied += 1
    print(f"copied {copied} files from {out} to {to}")


# --- command line -----------------------------------------------------------------------------

class Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, unless it is None, the flag required, or the help says
    the default itself."""

    def _get_help_string(self, action):
        if action.default is None or action.required or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


RUN_TIME = (  # docs/tiny_world.md, 'Wall time'
    "Run time, measured on 2 x86-64 cores (torch 2.13.0 CPU; docs/tiny_world.md): a base model "
    "19.5 min with --threads 2, 47-48 min with --threads 1 beside another; a 60-step run 8.7-11.7 "
    "min with --jobs 2 (one thread each; 6.5-16.3 min, mean 11.1, on a busy machine). So a sweep "
    "of R runs takes about the base + R x 11 / 2 min with --jobs 2: 12 runs (4 arms x 3 seeds) "
    "took 61 min, the default 7 arms x 3 seeds, about 2.3 hours; --quick (4 arms, 30 steps) took "
    "10 min once the base existed.")


def parser():
    p = argparse.ArgumentParser(description=(
        "The tiny world: SQLM's label-free gain on a CPU. `experiments.py pretrain --help`: "
        "a base model alone."), epilog=RUN_TIME, formatter_class=Defaults)
    p.add_argument("command", choices=["tiny-world", "report", "export"])
    p.add_argument("--out", default="runs/tiny-world", help="where the base models, runs and "
                   "report go (one directory per world and base seed under it)")
    p.add_argument("--world", default="tiny", choices=list(WORLDS), help="tiny: the base "
                   "proposer writes 1x1 to 3x2 evenly; curriculum: mostly 1x1, a quarter 2x1")
    p.add_argument("--base-seed", type=int, default=0, help="the base model's pre-training seed")
    p.add_argument("--to", help="export: where the result.json and base.json files are copied")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each run and of the pre-training (default: cores/jobs "
                        "with --jobs > 1, else torch's own for runs and 2 for the pre-training)")
    p.add_argument("--quick", action="store_true", help="one seed, 30 steps")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    p.add_argument("--steps", type=int, default=STEPS, help="training steps per run")
    p.add_argument("--arms", default=",".join(ARMS),
                   help="comma-separated arms: " + ", ".join(ARMS))
    p.add_argument("--split", default="heldout", choices=["heldout", "dev"],
                   help="what the runs are scored on")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each with cores/jobs torch threads")
    p.error = lambda message: (print(f"experiments.py: error: {message}", file=sys.stderr),
                               sys.exit(2))
    return p


def sweep_settings(p, a, extra):
    """(arms, run seeds, steps) of a `tiny-world` sweep, every flag checked before anything is
    built (a bad one is one line and exit code 2)."""
    if not 0 <= a.base_seed < 2**32 or (a.threads is not None and a.threads < 1):
        p.error(f"--base-seed must be in [0, 2**32) and --threads at least 1 "
                f"(got {a.base_seed}, {a.threads})")
    arms = a.arms.split(",")
    if not set(arms) <= set(ARMS):
        p.error(f"unknown arm in --arms {a.arms} (choose from {', '.join(ARMS)})")
    if a.jobs < 1 or a.steps < 1:
        p.error(f"--jobs and --steps must be at least 1 (got {a.jobs}, {a.steps})")
    try:
        seeds = [0] if a.quick else [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds takes comma-separated integers (got {a.seeds})")
    try:
        check_variant(extra, arms)
    except ValueError as e:
        p.error(str(e))
    return arms, seeds, 30 if a.quick else a.steps


def tiny_world(p, a, arms, seeds, steps, extra):
    """The sweep: the splits and the base model of (--world, --base-seed), every (arm, seed) run
    (--jobs at once), then the report of everything under --out."""
    out = world_dir(a.out, a.world, a.base_seed)
    os.makedirs(out, exist_ok=True)
    write_sets(out)
    threads = a.threads or (max(1, (os.cpu_count() or 1) // a.jobs) if a.jobs > 1 else None)
    try:
        base, figures = base_model(out, a.world, a.base_seed, a.threads)
    except rollout.LoadError as e:
        p.error(f"{e} (delete {os.path.join(out, 'base')} to build it again)")
    print("base model: " + json.dumps({k: figures[k] for k in ("dev", "heldout") if k in figures}),
          flush=True)

    def one(job):
        arm, seed = job
        r = run_arm(out, base, arm, seed, steps, a.split, threads, extra, a.world, a.base_seed)
        print(f"{arm} seed {seed}: {json.dumps(r['final'])} ({r['minutes']} min)", flush=True)
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:  # runs are processes; threads wait
        list(pool.map(one, [(arm, seed) for seed in seeds for arm in arms]))
    report(a.out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pretrain"]:
        return main_pretrain(argv[1:])
    p = parser()
    cut = argv.index("--") if "--" in argv else len(argv)
    extra = argv[cut + 1:]  # sqlm.py flags for a variant (dev only)
    a = p.parse_args(argv[:cut])
    if extra and a.split != "dev":
        p.error("flags after -- make a variant to compare on the dev split: add --split dev")
    if a.command in ("report", "export"):
        if not os.path.isdir(a.out):
            p.error(f"--out {a.out} holds no runs yet")
        if a.command == "export":
            if not a.to:
                p.error("export needs --to DIR")
            return export(a.out, a.to)
        return report(a.out)
    tiny_world(p, a, *sweep_settings(p, a, extra), extra)


if __name__ == "__main__":
    cli.exit_on_interrupt(main, "experiments.py: interrupted; " + (
        "--out is as it was before" if sys.argv[1:2] == ["pretrain"]
        else "finished runs are kept, and a rerun resumes the sweep"))
