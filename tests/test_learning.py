"""The loop moves the model the right way: SQLM steps raise the rewards they are paid, and make a
tiny base agree more often with the true answer, which no stage of the loop ever sees. Learning
runs of seconds to a minute each: marked slow.

The purpose-built base knows one fact, 7 * 8, the way the tiny world's base knows many
(`experiments.arith_reply`): 30% of its training replies carry one wrong digit in the working, so
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

import pytest
import torch

import eval as heldout
import experiments
import harness
import parallel
import rollout
import sqlm
import tiny
from conftest import CPU, FACT, one_fact, run_steps, text_rewards

pytestmark = pytest.mark.slow


# --- a train step raises the rewards it is paid ------------------------------------------------

def test_toy_rl_raises_programmatic_reward(tiny_dir):
    """Reward 1 when the first completion token is in a set holding ~25% of the initial mass: that
    mass must climb. Two optimizer steps per batch make the ratio move off 1, so a wrong sign or a
    wrong ratio (e.g. exp(old - new)) drives the probability down instead."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    prompt = rollout.chat_prompt(tok, "pick")

    def p_first():
        with torch.no_grad():
            return model(torch.tensor([prompt])).logits[0, -1].softmax(-1)

    probs, order = p_first().sort(descending=True)
    target = order[1:1 + int((probs[1:].cumsum(0) < 0.25).sum()) + 1]  # skip the top token, take ~25%

    def p_target():
        return p_first()[target].sum().item()

    cfg = sqlm.Config(lr=3e-3, weight_decay=0.0, kl=0.0, n=16, minibatch=1, microbatch=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    before = p_target()
    for it in range(12):
        samples = rollout.generate(model, tok, [prompt] * 2, n=16, max_new_tokens=2, seed=it)
        reward = [float(s.completion_ids[0] in target) for s in samples]
        adv = sqlm.grpo_advantages(reward, 16)
        seqs = [sqlm.Seq(s.prompt_ids, s.completion_ids, a, group=i // 16)
                for i, (s, a) in enumerate(zip(samples, adv.tolist()))]
        sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)
        sqlm.policy_update(model, None, optimizer, seqs, cfg, CPU, parallel.ONE)
    after = p_target()
    assert after > before + 0.3, (before, after)


def rise(values, k=3):
    """The mean of the last k values less the mean of the first k."""
    return sum(values[-k:]) / k - sum(values[:k]) / k


def test_train_step_raises_the_solver_reward(tiny_dir, monkeypatch):
    """Through propose -> solve -> score -> advantages -> update: a sign error or a wrong group
    in train_step turns the rise into a fall."""
    metrics = run_steps(tiny_dir, monkeypatch, 12, text_rewards(proposer=False), proposer_every=0)
    assert rise([m["solver_reward"] for m in metrics]) > 0.15, [m["solver_reward"] for m in metrics]


def test_train_step_raises_the_proposer_reward(tiny_dir, monkeypatch):
    """Solver rewards all equal (no solver signal): only the proposer's own update can raise its
    reward."""
    metrics = run_steps(tiny_dir, monkeypatch, 12, text_rewards(solver=False), proposer_every=1)
    assert all(m["solver_clip_frac"] == 0 for m in metrics)
    assert rise([m["proposer_reward"] for m in metrics], k=4) > 0.3, [m["proposer_reward"] for m in metrics]


# --- a few steps turn the majority's answer into the one-try answer ----------------------------

PROBLEMS = [{"problem": f"What is {FACT[0]} * {FACT[1]}?", "answer": str(FACT[0] * FACT[1])}]


def sampled_correct(model_dir, samples=512):
    """Whether each of `samples` answers at T=1 is right; sample j always draws the same
    uniforms."""
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
    """The base of the module docstring, five steps: the one-try accuracy rises by at least 0.04
    (paired, over 512 samples). Guards: the solver rewarded for the minority or for the format only,
    a sign or a group wrong anywhere from the vote to the update."""
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
