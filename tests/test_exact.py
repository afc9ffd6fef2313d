"""What the memory knobs and the process count may change: before the policy moves, the KL term and
its gradient are exactly 0 and the ratio exactly 1, whatever the micro-batch size, because `prepare`
computes the reference and old log-probs in the very micro-batches the update runs. A step with no
signal then moves every weight by weight decay alone, the same at every `--microbatch`; with
signal, the knobs change only rounding.

A KL term that is ~1e-7 instead of 0 (log-probs taken in another batch layout) has a gradient of
rounding noise, which AdamW divides by its own size and turns into a full learning-rate step.
"""
import copy
import os

import pytest
import torch
from safetensors.torch import load_file

import harness
import parallel
import rollout
import sqlm
from conftest import CPU, FAST, grads, jsonl, weights


def seqs_of_two_minibatches(model, tok, n=2, minibatch=2):
    """Two mini-batches of `minibatch` groups x n sequences with completions of different lengths
    (so micro-batches of different sizes pad differently), every advantage 0."""
    outs = rollout.generate(model, tok, [rollout.chat_prompt(tok, "go"), rollout.chat_prompt(tok, "a longer prompt")],
                            n=2 * minibatch * n // 2, max_new_tokens=9, seed=3)
    return [sqlm.Seq(s.prompt_ids, s.completion_ids[:2 + i % 7], 0.0, group=i // n) for i, s in enumerate(outs)]


@pytest.mark.parametrize("microbatch", [1, 2, 3, 8])
def test_kl_and_its_gradient_are_exactly_zero_before_the_policy_moves(tiny_model, microbatch):
    """Reference = a copy of the policy, every advantage 0: both mini-batches' loss, KL statistic
    and gradient are exactly 0, and the second mini-batch's ratio (old log-probs from `prepare`)
    exactly 1. Guards: reference or old log-probs computed over all sequences at once (or any layout
    other than the update's), which leaves a rounding-sized KL whose gradient is noise."""
    model, tok = tiny_model
    ref = copy.deepcopy(model)
    cfg = sqlm.Config(kl=0.001, n=2, minibatch=2, microbatch=microbatch)
    seqs = seqs_of_two_minibatches(model, tok)
    sqlm.mark_on_policy(seqs, cfg)
    sqlm.prepare(model, ref, seqs, cfg, CPU, parallel.ONE)
    first, second = sqlm.minibatches(seqs, cfg)
    assert all(s.on_policy for s in first) and not any(s.on_policy for s in second)
    for minibatch in (first, second):
        model.zero_grad()
        stats = sqlm.accumulate_gradients(model, ref, minibatch, cfg, CPU, parallel.ONE)
        assert stats["kl"] == 0.0 and stats["approx_kl"] == 0.0 and stats["pg_loss"] == 0.0
        assert torch.count_nonzero(grads(model)) == 0
    model.zero_grad()


def test_old_log_probs_give_a_ratio_of_exactly_one_before_the_policy_moves(tiny_model):
    """With advantages that carry signal, every mini-batch's old log-probs (taken by `prepare` from
    the training model before any update, none on-policy) equal the policy's bit for bit, in
    micro-batches of 3 over completions of unequal lengths: every ratio is exactly 1, none clipped.
    Guards: old log-probs from another model or another batch layout (a ratio 1 only up to
    rounding)."""
    model, tok = tiny_model
    cfg = sqlm.Config(kl=0.0, n=2, minibatch=2, microbatch=3)
    seqs = seqs_of_two_minibatches(model, tok)
    for i, s in enumerate(seqs):
        s.advantage = (-1.0) ** i
    sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)  # none on-policy: every old log-prob is computed
    for minibatch in sqlm.minibatches(seqs, cfg):
        stats = sqlm.accumulate_gradients(model, None, minibatch, cfg, CPU, parallel.ONE)
        assert stats["approx_kl"] == 0.0 and stats["clip_frac"] == 0.0
        assert stats["ratio"] == pytest.approx(1.0, abs=1e-12)  # token-weighted over micro-batches
    model.zero_grad()


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def zero_signal_args(tiny_dir, out, *extra):
    """3 steps of the random tiny model, whose answers never vote: every group agrees, every
    advantage is 0. Mini-batches of 2 groups x 2 answers, so --microbatch 8 runs each as one
    micro-batch and 3 as 3 + 1; KL at its default 0.001."""
    return FAST + ["--model", tiny_dir, "--steps", "3", "--batch", "4", "--minibatch", "2", "--lr", "1e-3",
                   "--save-every", "3", "--out", out, *extra]


@pytest.mark.slow
def test_a_run_without_signal_and_without_weight_decay_never_moves(tiny_dir, tmp_path):
    """No advantage and no weight decay: nothing may move the weights, at any --microbatch. The KL
    term is exactly 0 at every mini-batch, so AdamW sees exact zeros and steps by 0; the three steps
    sample the same and end on the base's weights bit for bit.
    Guards: reference or old log-probs in a layout other than the update's (a KL of rounding size
    whose gradient AdamW turns into a full lr step: the weights move by ~1e-3)."""
    base = load_file(os.path.join(tiny_dir, "model.safetensors"))
    runs = {m: str(tmp_path / f"mb{m}") for m in (8, 3)}
    for micro, out in runs.items():
        assert harness.main(zero_signal_args(tiny_dir, out, "--microbatch", str(micro), "--weight-decay", "0")) == 0
        assert all(m["zero_signal"] == 1.0 for m in jsonl(os.path.join(out, "metrics.jsonl")))
        assert max_diff(weights(out, 3), base) == 0.0
    with open(os.path.join(runs[8], "samples.jsonl")) as a, open(os.path.join(runs[3], "samples.jsonl")) as b:
        assert a.read() == b.read()


def test_a_minibatch_without_signal_moves_the_weights_by_weight_decay_alone(tiny_model):
    """As released, a mini-batch with no signal still takes its AdamW step: its gradient is exactly
    0 (no advantage; KL 0 before the policy moves), so the step is the decoupled weight decay
    w <- w (1 - lr wd), bit for bit.
    Guards: a skipped optimizer step on such a mini-batch (not the released behaviour), and any
    rounding-sized gradient left in it."""
    model, tok = tiny_model
    policy, ref = copy.deepcopy(model), copy.deepcopy(model)
    cfg = sqlm.Config(kl=0.001, n=2, minibatch=4, microbatch=3, lr=1e-3, weight_decay=0.5)
    seqs = seqs_of_two_minibatches(model, tok)  # 4 groups: one mini-batch
    sqlm.mark_on_policy(seqs, cfg)
    sqlm.prepare(policy, ref, seqs, cfg, CPU, parallel.ONE)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sqlm.policy_update(policy, ref, optimizer, seqs, cfg, CPU, parallel.ONE)
    after, before = dict(policy.named_parameters()), dict(model.named_parameters())
    assert all(torch.equal(after[k], before[k] * (1 - 1e-3 * 0.5)) for k in before)
