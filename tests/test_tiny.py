"""tiny.py: the offline model every other test stands on."""
import hashlib
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import rollout
import tiny


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    """`make` is seeded: a rebuilt test model must be the same model."""
    a, b, c = (load_file(f"{tiny.make(str(tmp_path / d), seed=s)}/model.safetensors")
               for d, s in (("a", 0), ("b", 0), ("c", 1)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_loads_with_from_pretrained_and_chatml_template(tiny_dir):
    """Plain Hugging Face loading works, and prompts use Qwen's ChatML layout."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    text = tok.decode(rollout.chat_prompt(tok, "What is 12 * 34?"))
    assert text == "<|im_start|>user\nWhat is 12 * 34?<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_round_trips_any_text(tiny_dir):
    """Byte-level BPE: any string, including unseen unicode, encodes and decodes back unchanged."""
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    for text in ["<answer>-3/4</answer>", "naïve ünïcödé ✓ 漢字", "```python\nprint(1)\n```", "  \t\n"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_format_pretraining_lowers_the_loss(tmp_path):
    """A few steps on synthetic transcripts must reduce the reply cross-entropy and save the weights."""
    out = tiny.make(str(tmp_path / "m"), init_std=0.02)
    before = load_file(f"{out}/model.safetensors")
    losses = tiny.pretrain(out, steps=30, batch=4, log_every=0)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    after = load_file(f"{out}/model.safetensors")
    assert not all(torch.equal(before[k], after[k]) for k in before)


# --- the arith world's base model ----------------------------------------------------

import random  # noqa: E402
import re  # noqa: E402

import eval as world  # noqa: E402
import prompts  # noqa: E402
import rewards  # noqa: E402


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
    assert tiny.arith_reply(47, 8, rng) == "<think>\n7 * 8 = 56\n4 * 8 = 32\n32 + 5 = 37\n</think>\n<answer>376</answer>"
    bad_lines = set()
    for a, b in [(47, 8), (7, 8), (40, 8), (99, 9), (305, 6), (12, 2)] * 20:
        clean, bad = tiny.arith_reply(a, b, rng), tiny.arith_reply(a, b, rng, corrupt=1.0)
        assert rewards.extract_answer(clean) == str(a * b) == implied_answer(working_lines(clean))
        assert all(rewards.arith_value(left) == v for left, v in working_lines(clean))
        lines, true = working_lines(bad), working_lines(clean)
        assert rewards.extract_answer(bad) == implied_answer(lines) != str(a * b)
        first_wrong = next(i for i, ((_, v), (_, t)) in enumerate(zip(lines, true)) if v != t)
        bad_lines.add((a, b, first_wrong))
        v, t = str(lines[first_wrong][1]), str(true[first_wrong][1])
        assert len(v) == len(t) and sum(x != y for x, y in zip(v, t)) == 1
        assert all(rewards.arith_value(left) == v for left, v in lines[first_wrong + 1:])
    assert {i for a, b, i in bad_lines if (a, b) == (47, 8)} == {0, 1, 2}  # any line can be the wrong one


def test_arith_transcripts_use_real_prompts_train_pairs_only_and_vary_the_proposer():
    """Solver turns: the real solver prompt on train-split pairs of the asked shapes; proposer
    turns (about 15%): the real proposer prompt, a problem of each proposer shape, no answer."""
    draw, rng = tiny.arith_transcripts(((2, 1), (1, 1)), corrupt=0.3), random.Random(1)
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
        assert world.world_split(a, b) == "train"
    assert 0.12 < n_proposer / 3000 < 0.18
    assert proposer_shapes == set(tiny.PROPOSER_SHAPES)
    assert 0.25 < wrong / (3000 - n_proposer) < 0.35


def test_the_tiny_worlds_corpus_is_the_one_its_published_base_was_trained_on():
    """Without a proposer mix the arith corpus draws exactly what it drew before the curriculum
    world existed (the same roles and replies from the same seed), so the tiny world's base and
    every figure measured on it stay reproducible."""
    draw, rng = tiny.arith_transcripts(), random.Random(3)
    pairs = [draw(rng) for _ in range(400)]
    text = "".join(("P" if user == prompts.proposer_prompt("arith") else "S") + reply for user, reply in pairs)
    assert hashlib.sha256(text.encode()).hexdigest() == "85859ea124abdbc739e69b03988d915045bbfb12464fa1ef3ca8d7c1a19583a2"


def test_the_curriculum_corpus_gives_the_proposer_mostly_1x1_a_quarter_2x1_and_nothing_beyond():
    draw, rng = tiny.arith_transcripts(proposer_mix=tiny.CURRICULUM_MIX), random.Random(1)
    shapes = []
    for _ in range(6000):
        user, reply = draw(rng)
        if user == prompts.proposer_prompt("arith"):
            a, b = map(int, re.fullmatch(r"What is (\d+) \* (\d+)\?", reply).groups())
            assert world.world_split(a, b) == "train"
            shapes.append((len(str(a)), len(str(b))))
    assert set(shapes) == {(1, 1), (2, 1)} and 0.12 < len(shapes) / 6000 < 0.18
    assert 0.71 < shapes.count((1, 1)) / len(shapes) < 0.79


def test_a_base_pretrained_on_the_curriculum_corpus_proposes_its_mix(tmp_path):
    """The curriculum world's construction, measured where it matters: on the proposals a base
    pre-trained on it writes (a fast 2 x 64 base, half its turns the proposer's, 120 steps; the
    sweep's base is measured the same way into base.json). The tiny world's mix puts a third of
    its proposals beyond 2x1."""
    import experiments
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tiny.make(str(tmp_path / "m"), layers=2, hidden=64, init_std=0.02, tokenizer=tiny.arith_tokenizer())
        tiny.pretrain(out, steps=120, batch=8, lr=1e-2, log_every=0,
                      transcripts=tiny.arith_transcripts(proposer_share=0.5, proposer_mix=tiny.CURRICULUM_MIX))
        model, tok = rollout.load(out, device="cpu")
        mix, well_formed = experiments.proposer_mix(model, tok, n=256)
    finally:
        torch.set_num_threads(threads)
    assert well_formed > 0.8, well_formed
    assert 0.6 < mix.get("1x1", 0) < 0.9 and 0.1 < mix.get("2x1", 0) < 0.4, mix
    assert sum(share for shape, share in mix.items() if shape not in ("1x1", "2x1")) < 0.05, mix


def test_proposer_mix_flag_reads_shapes_and_weights_and_refuses_anything_else(tmp_path, capsys):
    assert tiny.parse_mix("curriculum") == tiny.CURRICULUM_MIX
    assert tiny.parse_mix("1x1:3,2x1:1") == {(1, 1): 3.0, (2, 1): 1.0}
    for bad in ("1x1", "1x1:-1", "5x1:1", "1x1:0", "x:1", ""):
        with pytest.raises(ValueError, match="--proposer-mix must be"):
            tiny.parse_mix(bad)
    with pytest.raises(SystemExit) as e:
        tiny.main(["pretrain", "--task", "arith", "--out", str(tmp_path / "m"), "--proposer-mix", "2x1"])
    assert e.value.code == 2 and "--proposer-mix must be" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_arith_tokenizer_gives_each_digit_its_own_token_the_default_does_not():
    text = "<answer>376</answer> 40 * 8 = 320"
    split = tiny.arith_tokenizer()
    pieces = [split.decode([i]) for i in split.encode(text, add_special_tokens=False)]
    assert split.decode(split.encode(text, add_special_tokens=False)) == text
    assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p))
    default = tiny.make_tokenizer()
    assert any(sum(c.isdigit() for c in default.decode([i])) > 1 for i in default.encode(text, add_special_tokens=False))


def role_rates(out_dir, n=16):
    """(share of greedy solver replies with an <answer>, share of proposer replies sampled at
    T=1 that are an arithmetic problem)."""
    model, tok = rollout.load(out_dir, device="cpu")
    problems = [p["problem"] for p in world.arith_world(((2, 1),), split="dev", size=n)]
    solved = rollout.generate(model, tok, [rollout.chat_prompt(tok, prompts.solver_prompt("arith", p)) for p in problems],
                              max_new_tokens=64, temperature=0.0)
    proposed = rollout.generate(model, tok, [rollout.chat_prompt(tok, prompts.proposer_prompt("arith"))], n=n,
                                max_new_tokens=16, temperature=1.0, seed=0)
    return (sum(rewards.extract_answer(s.text) is not None for s in solved) / n,
            sum(rewards.arith_value(s.text) is not None for s in proposed) / n)


def test_arith_pretraining_teaches_both_roles_their_formats(tmp_path):
    """A short run (a 2 x 64 model, 120 steps, more proposer turns than the default so both
    roles are seen often) already answers in <answer> tags and proposes parseable problems
    far more often than the same model untrained."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is many times faster than two
    try:
        out = tiny.make(str(tmp_path / "m"), layers=2, hidden=64, init_std=0.02, tokenizer=tiny.arith_tokenizer())
        untrained = role_rates(out)
        tiny.pretrain(out, steps=120, batch=8, lr=1e-2, log_every=0, transcripts=tiny.arith_transcripts(proposer_share=0.3))
        trained = role_rates(out)
    finally:
        torch.set_num_threads(threads)
    assert trained[0] >= untrained[0] + 0.5 and trained[1] >= untrained[1] + 0.5, (untrained, trained)


def test_pretrain_cli_checks_its_flags(tmp_path, capsys):
    for bad in (["--digits", "2y1"], ["--digits", "2x2"], ["--corrupt", "1.5"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as e:
            tiny.main(["pretrain", "--task", "arith", "--out", str(tmp_path / "m"), *bad])
        assert e.value.code == 2
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("argv, message", [
    (["--layers", "0"], "--layers must be at least 1"), (["--hidden", "-4"], "--hidden must be at least 1"),
    (["--pretrain", "-5"], "--pretrain must be >= 0"), (["--seed", "99999999999"], "--seed must be in [0, 2**32)"),
    (["--heads", "3"], "--hidden must be divisible by --heads"),
    (["pretrain", "--task", "arith", "--kv-heads", "0"], "--kv-heads must be at least 1"),
])
def test_bad_tiny_flags_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    """Zero or negative sizes and steps used to be accepted (or crash in the model constructor)."""
    out = tmp_path / "model"
    args = argv[:1] + ["--out", str(out)] + argv[1:] if argv[0] == "pretrain" else ["--out", str(out)] + argv
    with pytest.raises(SystemExit) as e:
        tiny.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_tiny_refuses_to_overwrite_a_model_unless_asked(tmp_path, capsys):
    out = tmp_path / "model"
    tiny.main(["--out", str(out)])
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as e:
        tiny.main(["--out", str(out), "--seed", "1"])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    tiny.main(["--out", str(out), "--seed", "1", "--overwrite"])
    assert (out / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize("argv", [["--pretrain", "3"], ["pretrain", "--task", "arith", "--steps", "3"]])
def test_a_failed_or_interrupted_write_leaves_out_as_it_was(tmp_path, monkeypatch, argv):
    """The model is built beside --out and moved there only once complete: Ctrl-C during
    pre-training leaves no half-written model, and over an existing one (--overwrite) keeps it."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    out = tmp_path / "model"
    monkeypatch.setattr(tiny, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny.main([*argv, "--out", str(out)])
    assert os.listdir(tmp_path) == []  # neither --out nor the directory it was being built in
    monkeypatch.undo()
    tiny.main(["--out", str(out)])
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(tiny, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny.main([*argv, "--out", str(out), "--overwrite", "--seed", "1"])
    assert os.listdir(tmp_path) == ["model"] and (out / "model.safetensors").read_bytes() == before
