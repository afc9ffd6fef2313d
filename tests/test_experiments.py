"""experiments.py: the tiny world's splits, its base model's corpus and command, and the sweep's
table, assembled from whatever runs have finished."""
import hashlib
import json
import os
import random
import re
from collections import Counter

import pytest
import torch

import experiments
import prompts
import rewards
import rollout
import tiny
from conftest import interrupted_pretraining_keeps_out


# --- the splits --------------------------------------------------------------------------------

def test_the_splits_are_the_published_ones():
    """The 2x1 and 1x1 pairs every published figure was measured on: the sizes of held-out, dev
    and train (198, 112, 474, as docs/tiny_world.md reports them) and a hash of the held-out and
    dev files the sweep writes, so a change to the hash, the buckets or the shuffle shows here."""
    shapes = experiments.parse_digits(experiments.DIGITS)
    sets = {split: experiments.arith_world(shapes, split) for split in ("heldout", "dev", "train")}
    assert {split: len(problems) for split, problems in sets.items()} == \
        {"heldout": 198, "dev": 112, "train": 474}
    digests = {split: hashlib.sha256("".join(json.dumps(p) + "\n" for p in sets[split])
                                     .encode()).hexdigest() for split in ("heldout", "dev")}
    assert digests == {
        "heldout": "fc655e5954d5a1edb4c7301d1c2d3cb0a76d001e35648e510026774dabcabbcd",
        "dev": "01838f6bf278ed66ee518faaf72d73f69b6832773b95003f16b4974fac001377"}


def test_a_pair_has_one_split_by_its_hash_in_the_shares_25_15_60():
    """Across the 7,200 3x1 pairs the buckets give held-out 25%, dev 15% and train 60%, and a
    split's pairs do not depend on the shuffle seed (only their order does)."""
    pairs = [(a, b) for a in range(100, 1000) for b in range(2, 10)]
    shares = Counter(experiments.world_split(a, b) for a, b in pairs)
    assert {split: round(n / len(pairs), 2) for split, n in shares.items()} == \
        {"heldout": 0.25, "dev": 0.15, "train": 0.6}
    seed0, seed1 = (experiments.arith_world(((3, 1),), "dev", seed=s) for s in (0, 1))
    assert seed0 != seed1 and sorted(map(str, seed0)) == sorted(map(str, seed1))
    assert all(experiments.world_split(*map(int, re.findall(r"\d+", p["problem"]))) == "dev"
               for p in seed0)


# --- the base model's corpus -------------------------------------------------------------------

def working_lines(reply):
    """[(left side, value)] of the `x * y = v` / `u + v = w` lines inside <think>."""
    think = reply.split("<think>\n", 1)[1].split("\n</think>", 1)[0]
    return [(left, int(v)) for left, v in (line.rsplit(" = ", 1) for line in think.split("\n"))]


def implied_answer(lines):
    """The answer a column-method working implies, read from its lines as written: each step
    leaves its units digit and carries its tens into the next `v + carry` line."""
    low, carry = "", 0
    for i, (left, v) in enumerate(lines):
        if " + " in left:
            assert int(left.split(" + ")[1]) == carry  # the carry is the tens of the step before
        step_ends = i == len(lines) - 1 or " * " in lines[i + 1][0]
        if step_ends and i < len(lines) - 1:
            low, carry = str(v % 10) + low, v // 10
    return str(lines[-1][1]) + low


def test_arith_reply_works_by_the_column_method_and_a_corrupted_one_follows_its_working():
    """Clean: every line is true and the answer is a * b. Corrupted: each line after the wrong
    one is computed from the lines above it and the answer is what the working implies, so
    the answer is wrong; the wrong value differs from the true one in exactly one digit."""
    rng = random.Random(0)
    assert experiments.arith_reply(47, 8, rng) == \
        "<think>\n7 * 8 = 56\n4 * 8 = 32\n32 + 5 = 37\n</think>\n<answer>376</answer>"
    bad_lines = set()
    for a, b in [(47, 8), (7, 8), (40, 8), (99, 9), (305, 6), (12, 2)] * 20:
        clean = experiments.arith_reply(a, b, rng)
        bad = experiments.arith_reply(a, b, rng, corrupt=1.0)
        assert rewards.extract_answer(clean) == str(a * b) == implied_answer(working_lines(clean))
        assert all(rewards.arith_value(left) == v for left, v in working_lines(clean))
        lines, true = working_lines(bad), working_lines(clean)
        assert rewards.extract_answer(bad) == implied_answer(lines) != str(a * b)
        first_wrong = next(i for i, ((_, v), (_, t)) in enumerate(zip(lines, true)) if v != t)
        bad_lines.add((a, b, first_wrong))
        v, t = str(lines[first_wrong][1]), str(true[first_wrong][1])
        assert len(v) == len(t) and sum(x != y for x, y in zip(v, t)) == 1
        assert all(rewards.arith_value(left) == v for left, v in lines[first_wrong + 1:])
    assert {i for a, b, i in bad_lines if (a, b) == (47, 8)} == {0, 1, 2}  # any line can slip


def test_arith_transcripts_use_real_prompts_train_pairs_only_and_vary_the_proposer():
    """Solver turns: the real solver prompt on train-split pairs of the asked shapes; proposer
    turns (about 15%): the real proposer prompt, a problem of each proposer shape, no answer."""
    draw, rng = experiments.arith_transcripts(((2, 1), (1, 1)), corrupt=0.3), random.Random(1)
    solver_prompts, proposer_shapes, n_proposer, wrong = set(), set(), 0, 0
    for _ in range(3000):
        user, reply = draw(rng)
        if user == prompts.proposer_prompt("arith"):
            n_proposer += 1
            a, b = map(int, re.fullmatch(r"What is (\d+) \* (\d+)\?", reply).groups())
            proposer_shapes.add((len(str(a)), len(str(b))))
        else:
            problem = re.search(r"What is \d+ \* \d+\?", user).group()
            assert user == prompts.solver_prompt("arith", problem)
            a, b = map(int, re.findall(r"\d+", problem))
            assert (len(str(a)), len(str(b))) in {(2, 1), (1, 1)} and b >= 2
            wrong += rewards.extract_answer(reply) != str(a * b)
        assert experiments.world_split(a, b) == "train"
    assert 0.12 < n_proposer / 3000 < 0.18
    assert proposer_shapes == set(experiments.PROPOSER_SHAPES)
    assert 0.25 < wrong / (3000 - n_proposer) < 0.35


def test_the_tiny_worlds_corpus_is_the_one_its_published_base_was_trained_on():
    """Without a proposer mix the corpus draws the roles and replies the published tiny-world
    base was trained on (the same bytes from the same seed), so that base and every figure
    measured on it stay reproducible."""
    draw, rng = experiments.arith_transcripts(), random.Random(3)
    pairs = [draw(rng) for _ in range(400)]
    text = "".join(("P" if user == prompts.proposer_prompt("arith") else "S") + reply
                   for user, reply in pairs)
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "85859ea124abdbc739e69b03988d915045bbfb12464fa1ef3ca8d7c1a19583a2"


def test_the_curriculum_corpus_gives_the_proposer_mostly_1x1_a_quarter_2x1_and_nothing_beyond():
    """CURRICULUM_MIX's proposer turns: about 15% of all turns, 75% of them 1x1 and the rest 2x1,
    train pairs only."""
    draw = experiments.arith_transcripts(proposer_mix=experiments.CURRICULUM_MIX)
    rng = random.Random(1)
    shapes = []
    for _ in range(6000):
        user, reply = draw(rng)
        if user == prompts.proposer_prompt("arith"):
            a, b = map(int, re.fullmatch(r"What is (\d+) \* (\d+)\?", reply).groups())
            assert experiments.world_split(a, b) == "train"
            shapes.append((len(str(a)), len(str(b))))
    assert set(shapes) == {(1, 1), (2, 1)} and 0.12 < len(shapes) / 6000 < 0.18
    assert 0.71 < shapes.count((1, 1)) / len(shapes) < 0.79


def test_proposer_mix_flag_reads_shapes_and_weights_and_refuses_anything_else(tmp_path, capsys):
    """--proposer-mix: 'curriculum' or AxB:weight pairs; a shape without a weight, a negative or
    all-zero weight, more than 4 digits or an empty spec is a ValueError naming the flag, and at
    the command line exit code 2 before any model is written."""
    assert experiments.parse_mix("curriculum") == experiments.CURRICULUM_MIX
    assert experiments.parse_mix("1x1:3,2x1:1") == {(1, 1): 3.0, (2, 1): 1.0}
    for bad in ("1x1", "1x1:-1", "5x1:1", "1x1:0", "x:1", ""):
        with pytest.raises(ValueError, match="--proposer-mix must be"):
            experiments.parse_mix(bad)
    with pytest.raises(SystemExit) as e:
        experiments.main(["pretrain", "--out", str(tmp_path / "m"), "--proposer-mix", "2x1"])
    assert e.value.code == 2 and "--proposer-mix must be" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_arith_tokenizer_gives_each_digit_its_own_token_the_default_does_not():
    """The tiny world's tokenizer splits every digit (a product is written digit by digit); the
    test model's default BPE has multi-digit tokens."""
    text = "<answer>376</answer> 40 * 8 = 320"
    split = experiments.arith_tokenizer()
    pieces = [split.decode([i]) for i in split.encode(text, add_special_tokens=False)]
    assert split.decode(split.encode(text, add_special_tokens=False)) == text
    assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p))
    default = tiny.make_tokenizer()
    assert any(sum(c.isdigit() for c in default.decode([i])) > 1
               for i in default.encode(text, add_special_tokens=False))


# --- the base model: `experiments.py pretrain` -----------------------------------------

@pytest.mark.slow
def test_a_base_pretrained_on_the_curriculum_corpus_proposes_its_mix(tmp_path):
    """The curriculum world's construction, measured where it matters: on the proposals a base
    pre-trained on it writes (a fast 2 x 64 base, half its turns the proposer's, 120 steps; the
    sweep's base is measured the same way into base.json). The tiny world's mix puts a third of
    its proposals beyond 2x1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tiny.make(str(tmp_path / "m"), layers=2, hidden=64, init_std=0.02,
                        tokenizer=experiments.arith_tokenizer())
        corpus = experiments.arith_transcripts(proposer_share=0.5,
                                               proposer_mix=experiments.CURRICULUM_MIX)
        tiny.pretrain(out, steps=120, batch=8, lr=1e-2, log_every=0, transcripts=corpus)
        model, tok = rollout.load(out, device="cpu")
        mix, well_formed = experiments.proposer_mix(model, tok, n=256)
    finally:
        torch.set_num_threads(threads)
    assert well_formed > 0.8, well_formed
    assert 0.6 < mix.get("1x1", 0) < 0.9 and 0.1 < mix.get("2x1", 0) < 0.4, mix
    assert sum(share for shape, share in mix.items() if shape not in ("1x1", "2x1")) < 0.05, mix


def role_rates(out_dir, n=16):
    """(share of greedy solver replies with an <answer>, share of proposer replies sampled at
    T=1 that are an arithmetic problem)."""
    model, tok = rollout.load(out_dir, device="cpu")
    problems = [p["problem"] for p in experiments.arith_world(((2, 1),), split="dev", size=n)]
    solver_prompts = [rollout.chat_prompt(tok, prompts.solver_prompt("arith", p)) for p in problems]
    solved = rollout.generate(model, tok, solver_prompts, max_new_tokens=64, temperature=0.0)
    proposer_prompt = rollout.chat_prompt(tok, prompts.proposer_prompt("arith"))
    proposed = rollout.generate(model, tok, [proposer_prompt], n=n, max_new_tokens=16,
                                temperature=1.0, seed=0)
    return (sum(rewards.extract_answer(s.text) is not None for s in solved) / n,
            sum(rewards.arith_value(s.text) is not None for s in proposed) / n)


@pytest.mark.slow
def test_arith_pretraining_teaches_both_roles_their_formats(tmp_path):
    """A short run (a 2 x 64 model, 120 steps, more proposer turns than the default so both
    roles are seen often) already answers in <answer> tags and proposes parseable problems
    far more often than the same model untrained."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is many times faster than two
    try:
        out = tiny.make(str(tmp_path / "m"), layers=2, hidden=64, init_std=0.02,
                        tokenizer=experiments.arith_tokenizer())
        untrained = role_rates(out)
        tiny.pretrain(out, steps=120, batch=8, lr=1e-2, log_every=0,
                      transcripts=experiments.arith_transcripts(proposer_share=0.3))
        trained = role_rates(out)
    finally:
        torch.set_num_threads(threads)
    assert trained[0] >= untrained[0] + 0.5, (untrained, trained)
    assert trained[1] >= untrained[1] + 0.5, (untrained, trained)


@pytest.mark.parametrize("argv, message", [
    (["--digits", "2y1"], "--digits must look like 2x1"),
    (["--digits", "2x2"], "the column method, which takes a one-digit b"),
    (["--corrupt", "1.5"], "--corrupt and --proposer-share must lie in [0, 1]"),
    (["--steps", "0"], "--steps, --batch and --threads must be at least 1"),
    (["--kv-heads", "0"], "--kv-heads must be at least 1"),
])
def test_bad_pretrain_flags_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    """A shape the column method cannot work, a share outside [0, 1], no steps, a model shape no
    model can have: one line on stderr, exit code 2, nothing written."""
    with pytest.raises(SystemExit) as e:
        experiments.main(["pretrain", "--out", str(tmp_path / "m"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_an_interrupted_pretraining_leaves_out_as_it_was(tmp_path, monkeypatch):
    """The base model is built beside --out and moved there only once complete: Ctrl-C during
    pre-training leaves no half-written model, and over an existing one (--overwrite) keeps it."""
    interrupted_pretraining_keeps_out(experiments.main, ["pretrain", "--steps", "3"], tmp_path,
                                      monkeypatch)


# --- the sweep and its report -----------------------------------------------------------------

def fake_result(out, arm, seed, greedy, sampled, split="heldout", extra=(),
                steps=experiments.STEPS):
    run = os.path.join(out, experiments.run_name(arm, seed, split, list(extra), steps))
    os.makedirs(run)
    final = {"step": 60, "eval_accuracy": greedy, "eval_sampled_accuracy": sampled,
             "eval_sampled_maj_at_k": 0.9, "eval_sampled_pass_at_k": 0.95}
    with open(os.path.join(run, "result.json"), "w") as f:
        json.dump({"arm": arm, "seed": seed, "steps": steps, "split": split, "extra": list(extra),
                   "curve": [dict(final, step=0), final], "final": final, "valid_rate": 1.0,
                   "maj_ok": [0.5, 1.0], "maj_ok_checked": [2, 6],
                   "proposal_mix_last10": {"2x1": 0.75, "1x1": 0.25}}, f)


@pytest.mark.slow
def test_report_gives_mean_and_range_over_seeds_and_keeps_dev_variants_apart(tmp_path, capsys):
    """The main table holds the reported runs only (mean ± se (range) over seeds); shorter runs
    and dev-split variants each get a table of their own."""
    out = str(tmp_path)
    with open(os.path.join(out, "base.json"), "w") as f:
        figures = {"greedy": 0.9, "sampled": 0.6, "maj_at_8": 0.88, "pass_at_8": 0.97}
        json.dump({s: figures for s in ("dev", "heldout")}, f)
    fake_result(out, "sqlm", 0, 0.90, 0.70)
    fake_result(out, "sqlm", 1, 0.94, 0.80)
    fake_result(out, "format", 0, 0.50, 0.40)
    fake_result(out, "sqlm", 0, 0.10, 0.10, split="dev", extra=["--lr", "1e-4"])
    fake_result(out, "never", 0, 0.20, 0.20, split="dev")
    fake_result(out, "every", 0, 0.30, 0.30, steps=30)  # --quick: shorter, not in the main table
    experiments.report(out)
    table = open(os.path.join(out, "table.md")).read()
    held_out, rest = table.split("Shorter runs")
    shorter, dev = rest.split("Dev-split runs")
    assert "| every (30 steps) | 1 | 0.300 | 0.300 |" in shorter and "every" not in held_out + dev
    # mean ± standard error (range): se = sd / sqrt(n) = 0.0283 / 1.414
    assert "| sqlm | 2 | 0.920 ± 0.020 (0.900-0.940) | 0.750 ± 0.050 (0.700-0.800) |" in held_out
    assert "| format | 1 | 0.500 | 0.400 |" in held_out
    assert "0.100" not in held_out and "| sqlm --lr 1e-4 | 1 | 0.100 | 0.100 |" in dev
    assert "never" not in held_out and "| never | 1 | 0.200 | 0.200 |" in dev
    # maj_ok over the last steps, weighted by the proposals it covers: (0.5 * 2 + 1.0 * 6) / 8
    assert "| 0.88 (8) | 2x1 0.75, 1x1 0.25 |" in held_out


@pytest.mark.parametrize("argv, message", [
    (["tiny-world", "--jobs", "0"], "--jobs and --steps must be at least 1"),
    (["tiny-world", "--seeds", "0,x"], "--seeds takes comma-separated integers"),
    (["report"], "holds no runs yet"),
    (["tiny-world", "--", "--lr", "1e-4"], "add --split dev"),
    (["tiny-world", "--arms", "sqlm,nope"], "unknown arm"),
    (["tiny-world", "--split", "dev", "--", "--lr", "-1"],
     "after -- (sqlm.py flags, with arm sqlm): --lr must be positive"),
    (["tiny-world", "--split", "dev", "--", "--bogus"], "unrecognized arguments: --bogus"),
    (["tiny-world", "--split", "dev", "--arms", "format", "--", "--solver-reward", "tests"],
     "with arm format): --solver-reward tests does not fit --task arith"),
    (["tiny-world", "--split", "dev", "--", "--seed", "3"],
     "--seed is set by experiments.py for each run"),
    (["tiny-world", "--base-seed", "-1"], "--base-seed must be in [0, 2**32)"),
    (["tiny-world", "--world", "flat"], "argument --world: invalid choice"),
    (["export"], "holds no runs yet"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    """A bad flag, a bad sqlm.py flag after -- included, is one line and exit 2 before anything
    is built or written (the base model alone takes about twenty minutes)."""
    monkeypatch.setattr(experiments, "base_model",
                        lambda *a: pytest.fail("built the base model before the flags"))
    with pytest.raises(SystemExit) as e:
        experiments.main([*argv, "--out", str(tmp_path / "w")] if "--" not in argv else
                         [argv[0], "--out", str(tmp_path / "w"), *argv[1:]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()  # nothing written before the flags were checked


def test_shape_stats_read_where_the_proposer_went_and_whether_the_vote_was_right(tmp_path):
    """Per operand shape, over the first and last steps: share of solved proposals, proposer
    reward, and how often the majority answer was the true product."""
    def rec(step, problem, majority, truth, reward):
        return {"step": step, "problem": problem, "answers": [majority], "majority": majority,
                "truth": truth, "proposer_reward": reward}
    rows = [rec(0, "What is 12 * 3?", "36", "36", 1.0), rec(0, "What is 7 * 8?", "56", "56", 0.0),
            rec(1, "What is 123 * 4?", "482", "492", 1.0),
            rec(1, "What is 12 * 3?", "36", "36", 0.0),
            {"step": 1, "proposal": "nonsense", "valid": False}]  # not solved: not counted
    with open(tmp_path / "samples.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    stats = experiments.shape_stats(str(tmp_path), 1, 1)
    assert stats["first"] == {"2x1": (0.5, 1.0, 1.0), "1x1": (0.5, 0.0, 1.0)}
    assert stats["last"] == {"3x1": (0.5, 1.0, 0.0), "2x1": (0.5, 0.0, 1.0)}


def test_each_base_seed_and_world_has_its_own_base_and_runs(tmp_path, monkeypatch):
    """--base-seed and --world route the base model's pre-training flags and every run into one
    directory per (world, base seed); the tiny world's seed-0 base keeps --out itself."""
    calls = []

    def base_model(out, world, base_seed, threads):
        calls.append(("base", os.path.relpath(out, tmp_path),
                      experiments.base_flags(world, base_seed, threads)))
        return os.path.join(out, "base"), {}

    def run_arm(out, base, arm, seed, steps, split, threads, extra, world, base_seed):
        calls.append(("run", os.path.relpath(out, tmp_path), os.path.relpath(base, tmp_path), arm,
                      seed, world, base_seed))
        return {"final": {}, "minutes": 0}
    monkeypatch.setattr(experiments, "base_model", base_model)
    monkeypatch.setattr(experiments, "run_arm", run_arm)
    monkeypatch.setattr(experiments, "report", lambda out: None)
    for argv in (["--base-seed", "1"], ["--world", "curriculum"], []):
        experiments.main(["tiny-world", "--out", str(tmp_path), "--arms", "sqlm", "--seeds", "0",
                          *argv])
    (_, d1, flags1), run1, (_, d2, flags2), run2, (_, d0, flags0), run0 = calls
    assert (d1, d2, d0) == ("tiny-base1", "curriculum-base0", ".")
    assert run1[1:] == ("tiny-base1", "tiny-base1/base", "sqlm", 0, "tiny", 1)
    assert run2[1:] == ("curriculum-base0", "curriculum-base0/base", "sqlm", 0, "curriculum", 0)
    assert run0[1:] == (".", "base", "sqlm", 0, "tiny", 0)
    assert flags0 == experiments.BASE_FLAGS  # the published base's command
    assert flags1[flags1.index("--seed") + 1] == "1" and "--proposer-mix" not in flags1
    assert flags2[flags2.index("--seed") + 1] == "0"
    assert flags2[-2:] == ["--proposer-mix", "curriculum"]
    assert all(os.path.exists(tmp_path / d / "heldout.jsonl")
               for d in ("tiny-base1", "curriculum-base0", "."))


def full_result(out, arm, seed, sampled, zero, mix):
    """A result.json with everything run_arm records, in `out` (a world directory)."""
    fake_result(out, arm, seed, 0.9, sampled)
    path = os.path.join(out, experiments.run_name(arm, seed, "heldout", []), "result.json")
    with open(path) as f:
        r = json.load(f)
    r.update(zero_signal=[zero] * 20, proposal_mix=[mix] * 20, mix_by_window=[mix, mix],
             shape_stats={"first": {"1x1": [1.0, 0.5, 1.0]}, "last": {"1x1": [1.0, 0.25, 1.0]}},
             by_shape={"1x1": {"greedy": 1.0, "sampled": sampled, "maj_at_8": 1.0,
                               "pass_at_8": 1.0}})
    with open(path, "w") as f:
        json.dump(r, f)


@pytest.mark.slow
def test_report_pools_bases_shows_each_apart_and_rebuilds_from_the_exported_results(tmp_path):
    """Runs on two base models: the table pools them (mean ± se (range), and how many bases),
    a second table keeps each base apart, and `export` copies only result.json and base.json,
    from which `report` writes the same table."""
    runs = tmp_path / "runs"
    for seed, d in ((0, runs), (1, runs / "tiny-base1")):
        os.makedirs(d, exist_ok=True)
        with open(d / "base.json", "w") as f:
            one_by_one = {"greedy": 1.0, "sampled": 0.7, "maj_at_8": 1.0, "pass_at_8": 1.0}
            json.dump({"heldout": {"greedy": 0.9, "sampled": 0.6 + seed / 10, "maj_at_8": 0.88,
                                   "pass_at_8": 0.97, "by_shape": {"1x1": one_by_one}},
                       "proposer_mix": {"1x1": 0.5, "2x1": 0.5}}, f)
        full_result(str(d), "sqlm", 0, 0.70 + seed / 10, 0.5, {"1x1": 0.25, "2x1": 0.75})
        full_result(str(d), "never", 0, 0.60, 0.75, {"1x1": 0.5, "2x1": 0.5})
    (runs / "sqlm-s0" / "samples.jsonl").write_text("not copied\n")
    experiments.report(str(runs))
    table = (runs / "table.md").read_text()
    assert "| base model | 2 | 0.900 ± 0.000 (0.900-0.900) | 0.650 ± 0.050 (0.600-0.700) |" \
        in table
    assert "| sqlm | 2 (2 bases) | 0.900 ± 0.000 (0.900-0.900) | 0.750 ± 0.050 (0.700-0.800) |" \
        in table
    assert "| base 1: sqlm | 1 | 0.900 | 0.800 |" in table
    assert "| base 0: never | 1 | 0.900 | 0.600 |" in table
    assert ("| never | 2 (2 bases) | 0.75 ± 0.00 (0.75-0.75) | 0.75 ± 0.00 (0.75-0.75) | "
            "0.75 ± 0.00 (0.75-0.75) |") in table  # the training signal
    assert "| sqlm (2) | 2x1 | 0.50 | 0.75 | 0.75 |" in table  # the mix: base, each 10-step window
    assert "| sqlm | 2 (2 bases) | 1.000 ± 0.000 (1.000-1.000) | 0.750 ± 0.050 (0.700-0.800) |" \
        in table  # 1x1 by shape
    experiments.main(["export", "--out", str(runs), "--to", str(tmp_path / "results")])
    copied = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "results")
                    for d, _, files in os.walk(tmp_path / "results") for f in files)
    assert copied == ["base.json", "never-s0/result.json", "sqlm-s0/result.json",
                      "tiny-base1/base.json", "tiny-base1/never-s0/result.json",
                      "tiny-base1/sqlm-s0/result.json"]
    experiments.main(["report", "--out", str(tmp_path / "results")])
    assert (tmp_path / "results" / "table.md").read_text() == table
