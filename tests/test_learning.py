"""The loop moves the model the right way: a few SQLM steps make a tiny base agree more often
with the true answer, which no stage of the loop ever sees.

The purpose-built base knows one fact, 7 * 8, the way the tiny world's base knows many
(`tiny.arith_reply`): 30% of its training replies carry one wrong digit in the working, so
sampled at T=1 it is often wrong while its majority is right, so majority-vote rewards pay
the true answer. Five steps (the proposer updated at step 0, as `--proposer-every 5` does)
must turn the majority's answer into the one-try answer. The tiny world in `experiments.py`
is the full-size version of this check, on held-out pairs.

How much: at 512 samples, over seeds 0-9 of this exact procedure (base, pre-training and run
seed varied together) the one-try accuracy rose by 0.086 to 0.344 (median 0.13); seed 0, the
one used here, 0.711 -> 0.818. The test asks for +0.04. The before and after samples share
their random streams (sample j draws the same uniforms), so the difference's standard error is
the paired one, sqrt(b + c) / 512 for b, c the samples that turned right and wrong: at seed 0,
109 and 54, a gain of 0.107 +- 0.025, 2.7 standard errors above the bar; the weakest seed,
0.086, is 1.8 above it. A solver rewarded for the minority, or on the format only, fails it.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval as heldout  # noqa: E402
import experiments  # noqa: E402
import harness  # noqa: E402
import prompts  # noqa: E402
import rollout  # noqa: E402
import sqlm  # noqa: E402
import tiny  # noqa: E402

FACT = (7, 8)
PROBLEMS = [{"problem": f"What is {FACT[0]} * {FACT[1]}?", "answer": str(FACT[0] * FACT[1])}]


def one_fact(rng):
    """Proposer turns (30%) write the one problem; solver turns answer it, 30% with a slip."""
    a, b = FACT
    if rng.random() < 0.3:
        return prompts.proposer_prompt("arith"), f"What is {a} * {b}?"
    return prompts.solver_prompt("arith", f"What is {a} * {b}?"), experiments.arith_reply(a, b, rng, corrupt=0.3)


def sampled_correct(model_dir, samples=512):
    """Whether each of `samples` answers at T=1 is right; sample j always draws the same uniforms."""
    model, tok = rollout.load(model_dir, device="cpu")
    result = heldout.evaluate(model, tok, "arith", PROBLEMS, samples=samples, temperature=1.0,
                              max_new_tokens=32, batch_size=128)
    return [r["correct"] for r in result["records"]]


def run(base, out, **overrides):
    cfg = sqlm.Config(task="arith", model=base, device="cpu", steps=5, batch=8, n=4, minibatch=4, microbatch=32,
                      max_response=32, lr=1e-3, kl=0.0, eval_every=0, save_every=0, arith_check=True, seed=0,
                      out=out, **overrides)
    harness.train(cfg)
    return os.path.join(out, "step-000005")


def test_a_few_sqlm_steps_turn_the_majority_answer_into_the_one_try_answer(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is many times faster than two
    try:
        base = tiny.make(str(tmp_path / "base"), layers=2, hidden=64, init_std=0.02, tokenizer=experiments.arith_tokenizer())
        tiny.pretrain(base, steps=100, batch=16, lr=1e-2, log_every=0, transcripts=one_fact)
        before = sampled_correct(base)
        after = sampled_correct(run(base, str(tmp_path / "sqlm")))
    finally:
        torch.set_num_threads(threads)
    n = len(before)
    turned_right = sum(a and not b for a, b in zip(after, before))
    turned_wrong = sum(b and not a for a, b in zip(after, before))
    gain, paired_se = (turned_right - turned_wrong) / n, (turned_right + turned_wrong) ** 0.5 / n
    assert 0.3 < sum(before) / n < 0.8, sum(before) / n  # the base is in the regime: often wrong in one try
    assert gain >= 0.04, (sum(before) / n, sum(after) / n, gain, paired_se)
