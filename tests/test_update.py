"""The update, from a step's sequences to its weights: prepare's old and reference log-probs, the
on-policy first mini-batch, mini-batches of groups, micro-batches and the loss normaliser, the
clipped loss and the KL term through accumulate_gradients, the optimizer step, the sampling copy.
Each flag that changes them is checked through the real code on the tiny model, against the
formula written out in float64 or against the same computation done another way.

Each docstring names the wiring mistake it guards; tools/mutate.py applies such mistakes one at a
time."""
import copy
import dataclasses

import pytest
import torch

import parallel
import rollout
import sqlm
from conftest import CPU, alternating_rewards, grads, run_steps, step_config, text_rewards


# --- sequences whose log-probs differ from their old and reference ones -----------------------

def perturbed(model):
    """A copy of `model` with every weight moved a little: a reference (or old policy) that
    differs."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    return ref


def shifted_seqs(model, tok, cfg):
    """Sequences whose old log-probs sit at known offsets from the current ones, so the ratio
    exp(logp - old) lands below, inside and above the clip range and far above it (dual clip)."""
    outs = rollout.generate(model, tok, [rollout.chat_prompt(tok, "go")], n=6, max_new_tokens=7, seed=5)
    seqs = [sqlm.Seq(s.prompt_ids, s.completion_ids[:3 + i % 4], a, group=0)
            for i, (s, a) in enumerate(zip(outs, [1.0, -1.0, 0.5, -2.0, 1.5, -0.5]))]
    with torch.no_grad():
        logp, comp = sqlm.micro_logprobs(model, seqs, cfg, CPU)
    shifts = torch.tensor([0.6, -0.6, 0.05, 2.5, -0.05, 0.15, -2.5])
    current = []
    for s, row, m in zip(seqs, logp, comp.bool()):
        now = row[m]
        s.old_logp = now - shifts[:len(now)]
        current.append(now)
    return seqs, current


def tiny_seqs(model, tok, count=8, seed=0):
    """`count` sequences in groups of count/2, completions of 2 to 9 tokens (unequal, so a
    per-micro-batch normaliser would differ from the mini-batch's), random advantages."""
    prompts = [rollout.chat_prompt(tok, "go"), rollout.chat_prompt(tok, "a longer prompt")]
    samples = rollout.generate(model, tok, prompts, n=count // 2, max_new_tokens=9 + seed, seed=seed)
    adv = sqlm.grpo_advantages(torch.randn(count, generator=torch.Generator().manual_seed(seed)), count // 2)
    return [sqlm.Seq(s.prompt_ids, s.completion_ids[:2 + (5 * i) % 8], a, group=i // (count // 2))
            for i, (s, a) in enumerate(zip(samples, adv.tolist()))]


# --- prepare: old and reference log-probs -----------------------------------------------------

def test_reference_log_probs_come_from_the_reference_model(tiny_dir):
    """prepare: old log-probs from the training model, reference log-probs from the frozen one,
    each equal to its own model's token_logprobs. Guards: the reference pass run on the training
    model."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    ref = perturbed(model)
    cfg = sqlm.Config(microbatch=3).resolve()
    seqs, _ = shifted_seqs(model, tok, cfg)
    sqlm.prepare(model, ref, seqs, cfg, CPU, parallel.ONE)
    for net, name in ((model, "old_logp"), (ref, "ref_logp")):
        with torch.no_grad():
            logp, comp = sqlm.micro_logprobs(net, seqs, cfg, CPU)
        want = [row[m] for row, m in zip(logp, comp.bool())]
        assert all(torch.allclose(getattr(s, name), w, atol=1e-5) for s, w in zip(seqs, want)), name
    assert not torch.allclose(seqs[0].old_logp, seqs[0].ref_logp, atol=1e-3)


def test_old_log_probs_are_the_sampling_distributions(tiny_dir):
    """The trained policy is the sampled one: prepare's old log-probs at --temperature equal the
    log-probs the sampler drew each token with. Guards: log-probs taken at temperature 1."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(temperature=0.6, max_response=8, n=3).resolve()
    outs = sqlm.sample(model, tok, [rollout.chat_prompt(tok, "go")], [0], cfg, seed=(4,), world=parallel.ONE)
    seqs = [sqlm.Seq(s.prompt_ids, s.completion_ids, 0.0, group=0) for s in outs]
    sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)
    for s, o in zip(seqs, outs):
        assert s.old_logp.tolist() == pytest.approx(o.logprobs, abs=1e-4)


# --- the first mini-batch, on policy ----------------------------------------------------------

def test_the_first_minibatch_is_on_policy_ratio_one_and_the_same_gradient(tiny_dir, monkeypatch):
    """The first mini-batch (marked on_policy) takes its old log-probs from the update's own
    forward, detached: prepare runs no old-log-prob forward for it (the second mini-batch's rows
    still get theirs before any update), its ratio is exactly 1 with nothing clipped, and its
    gradient equals the one from a separate old-log-prob pass. Guards: the shortcut's forward not
    skipped, its old log-probs from another pass (a ratio 1 only up to rounding), the detach
    dropped (exp(0) has no gradient, so the policy-gradient term would vanish)."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    outs = rollout.generate(model, tok, [rollout.chat_prompt(tok, "go")], n=8, max_new_tokens=6,
                            seed=0)
    advantages = [1.0, -1.0, 0.5, -2.0, 1.5, -0.5, 0.25, -0.75]
    seqs = [sqlm.Seq(s.prompt_ids, s.completion_ids, a, group=i // 2, on_policy=i < 4)
            for i, (s, a) in enumerate(zip(outs, advantages))]
    cfg = sqlm.Config(kl=0, minibatch=2, microbatch=8)
    rows = []
    real = sqlm.micro_logprobs
    monkeypatch.setattr(sqlm, "micro_logprobs",
                        lambda m, micro, *a: rows.append(len(micro)) or real(m, micro, *a))
    sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)
    assert rows == [4]  # only the second mini-batch's rows
    assert all(s.old_logp is None for s in seqs[:4])
    assert all(s.old_logp is not None for s in seqs[4:])
    model.zero_grad()
    stats = sqlm.accumulate_gradients(model, None, seqs[:4], cfg, CPU, parallel.ONE)
    assert stats["ratio"] == 1.0 and stats["clip_frac"] == 0.0
    shortcut = grads(model)
    for s in seqs[:4]:
        s.on_policy = False
    sqlm.prepare(model, None, seqs[:4], cfg, CPU, parallel.ONE)
    model.zero_grad()
    sqlm.accumulate_gradients(model, None, seqs[:4], cfg, CPU, parallel.ONE)
    separate = grads(model)
    assert separate.abs().max() > 0
    assert torch.allclose(shortcut, separate, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("groups, on_policy", [
    (range(8), {0, 1}),        # mini-batch 0 holds groups 0 and 1 (grouping by n = 4 would mark 0-3)
    ((3, 4, 5, 6, 7), {3}),    # groups 0-2 dropped: the first mini-batch left is 1, groups 2 and 3
])
def test_on_policy_marks_the_first_minibatch_of_groups_not_of_n(groups, on_policy):
    """minibatch 2 != n 4, so grouping by either tells them apart: the first mini-batch present is
    the one whose old log-probs are skipped. Guards: marking by n, or always mini-batch 0."""
    cfg = step_config(n=4, minibatch=2)
    seqs = [sqlm.Seq([1], [2], 0.0, group=g) for g in groups for _ in range(4)]
    sqlm.mark_on_policy(seqs, cfg)
    assert [s.on_policy for s in seqs] == [s.group in on_policy for s in seqs]


def test_train_step_marks_only_the_solvers_first_minibatch_on_policy(tiny_dir, monkeypatch):
    """The proposer's old log-probs predate the solver update: none of its sequences may skip
    them."""
    marks = []
    real = sqlm.prepare
    monkeypatch.setattr(sqlm, "prepare", lambda m, r, seqs, *a: marks.append([s.on_policy for s in seqs])
                        or real(m, r, seqs, *a))
    cfg = sqlm.Config(task="arith", batch=4, n=2, minibatch=2, max_response=4, kl=0, proposer_every=1).resolve()
    model, tok = rollout.load(tiny_dir, device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sqlm.train_step(0, sqlm.Models(model, model, model, None, optimizer), tok, cfg, CPU, parallel.ONE)
    assert marks == [[True] * 4 + [False] * 12, [False] * 8]  # 8 solver groups of 2, 2 a mini-batch; proposer 8


@pytest.mark.slow
def test_proposer_ratio_sees_the_solver_update(tiny_dir, monkeypatch):
    """The proposer's old log-probs are taken before the solver update of the same step, so its
    first ratio already differs from 1 (taking them after the solver update would hide that
    update)."""
    # one optimizer step per role
    metrics = run_steps(tiny_dir, monkeypatch, 1, text_rewards(), proposer_every=1, minibatch=4)
    assert abs(metrics[0]["proposer_ratio"] - 1) > 1e-3


# --- mini-batches, micro-batches and the normaliser -------------------------------------------

def test_minibatches_follow_groups_not_surviving_rows(tiny_dir):
    """Invalid proposals must not reshape the update: groups [0,4) and [4,8) are two optimizer
    steps.

    Cutting only the surviving rows into chunks of minibatch x n would make this one step (and,
    elsewhere, a ragged extra step)."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    seqs = tiny_seqs(model, tok, count=4)  # only groups 0 and 5 survived
    for s, group in zip(seqs, [0, 0, 5, 5]):
        s.group = group
    cfg = sqlm.Config(kl=0, minibatch=4, n=2, microbatch=3)
    sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)
    steps = []

    class Counting(torch.optim.SGD):
        def step(self, closure=None):
            steps.append(1)
            return super().step(closure)

    sqlm.policy_update(model, None, Counting(model.parameters(), lr=0.0), seqs, cfg, CPU,
                       parallel.ONE)
    assert len(steps) == 2


def test_each_optimizer_step_takes_its_own_minibatchs_gradient(tiny_dir):
    """Mini-batch k holds groups [k*minibatch, (k+1)*minibatch) and its step sees only its own
    gradient. Guards: grouping by n instead of minibatch, zero_grad left out of the loop (gradients
    leak on)."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(kl=0, minibatch=2, n=4, microbatch=8, grad_clip=1e9)
    seqs, _ = shifted_seqs(model, tok, cfg)
    for i, s in enumerate(seqs):
        s.group = i * 4 // len(seqs)  # groups 0, 0, 1, 2, 2, 3: mini-batches {0, 1} and {2, 3}
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(grads(model).clone())

    sqlm.policy_update(model, None, Recording(model.parameters(), lr=0.0), seqs, cfg, CPU, parallel.ONE)
    want = []
    for part in (seqs[:3], seqs[3:]):
        model.zero_grad()
        sqlm.accumulate_gradients(model, None, part, cfg, CPU, parallel.ONE)
        want.append(grads(model))
    assert len(seen) == 2 and all(torch.allclose(a, b, rtol=1e-5, atol=1e-9) for a, b in zip(seen, want))


def test_gradient_independent_of_micro_batch_split(tiny_dir):
    """One micro-batch of 8 or four of 2: the same gradient (the normaliser is the mini-batch's)."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    ref = rollout.load(tiny_dir, device="cpu")[0]
    with torch.no_grad():  # make the policy differ from the old and reference log-probs
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seqs = tiny_seqs(model, tok)
    cfg = sqlm.Config(kl=0.1).resolve()
    sqlm.prepare(ref, ref, seqs, cfg, CPU, parallel.ONE)
    grads = []
    for micro in (8, 2):
        model.zero_grad()
        sqlm.accumulate_gradients(model, ref, seqs, dataclasses.replace(cfg, microbatch=micro), CPU,
                                  parallel.ONE)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()


class RankZeroOfTwo(parallel.World):
    """Rank 0 of two processes, standing alone: its sums are its own values (no process group)."""

    def __init__(self):
        super().__init__(rank=0, size=2, device=CPU)

    def sum(self, values):
        return values


@pytest.mark.parametrize("as_released", [False, True])
def test_normaliser_counts_every_processs_micro_batches(tiny_dir, as_released):
    """Two processes, micro-batches of 2: rank 0 is dealt the long sequence (one micro-batch, then
    an idle one), rank 1 the three short ones (two micro-batches). At ratio 1 the per-token loss is
    -A, so rank 0's share of the loss is -A * its tokens / all four sequences' tokens (ours), or its
    micro-batch's token mean -A divided by the 3 micro-batches of both processes (released; its own
    2 calls would give -A/2). Guards: a normaliser counted on one process, a count rounded down."""
    model, _ = rollout.load(tiny_dir, device="cpu")
    seqs = [sqlm.Seq([1], [7] * n, 0.5, group=0, on_policy=True) for n in (20, 3, 3, 3)]
    assert RankZeroOfTwo().deal([1 + n for n in (20, 3, 3, 3)]) == [0, 1, 1, 1]  # the deal this test needs
    cfg = sqlm.Config(kl=0, microbatch=2, as_released=as_released).resolve()
    stats = sqlm.accumulate_gradients(model, None, seqs, cfg, CPU, RankZeroOfTwo())
    tokens = [len(s.completion_ids) for s in seqs]
    want = -0.5 / 3 if as_released else -0.5 * tokens[0] / sum(tokens)
    assert stats["pg_loss"] == pytest.approx(want, rel=1e-6)


def test_gradient_checkpointing_changes_no_gradient(tiny_dir):
    """--grad-checkpointing recomputes activations in backward; the gradient must be the same."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    seqs = tiny_seqs(model, tok)
    cfg = sqlm.Config(kl=0).resolve()
    sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train().zero_grad()
        sqlm.accumulate_gradients(model, None, seqs, cfg, CPU, parallel.ONE)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()


# --- the clipped loss and the KL term ---------------------------------------------------------

def reference_pg_loss(seqs, current, lo, hi, clip_c, micro, released):
    """The per-token loss in float64 straight from the formula, aggregated as ours (every token over
    the mini-batch's count) or as released (micro-batch token means, averaged)."""
    def token_losses(s, now):
        out = []
        for new, old in zip(now.double().tolist(), s.old_logp.double().tolist()):
            r, a = torch.tensor(new - old, dtype=torch.float64).exp().item(), s.advantage
            loss = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
            out.append(min(loss, -a * clip_c) if clip_c and a < 0 else loss)
        return out
    losses = [token_losses(s, now) for s, now in zip(seqs, current)]
    if not released:
        return sum(map(sum, losses)) / sum(map(len, losses))
    groups = [losses[i:i + micro] for i in range(0, len(losses), micro)]
    return sum(sum(map(sum, g)) / sum(map(len, g)) for g in groups) / len(groups)


@pytest.mark.parametrize("lo, hi, clip_c, released", [
    (0.2, 0.2, 3.0, False), (0.1, 0.3, 3.0, False), (0.3, 0.1, 3.0, False),
    (0.2, 0.2, 2.0, False), (0.2, 0.2, 0.0, False), (0.2, 0.28, 3.0, True)])
def test_clip_bounds_dual_clip_and_normaliser_reach_the_loss(tiny_dir, lo, hi, clip_c, released):
    """--clip-low/--clip-high (asymmetric), --clip-c and --as-released's micro-batch normaliser,
    through accumulate_gradients against the float64 formula. Guards: a bound swapped or ignored,
    the dual clip fixed at 3, the released aggregation ignored."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(kl=0, microbatch=4, clip_low=lo, clip_high=hi, clip_c=clip_c, as_released=released).resolve()
    seqs, current = shifted_seqs(model, tok, cfg)
    stats = sqlm.accumulate_gradients(model, None, seqs, cfg, CPU, parallel.ONE)
    assert stats["pg_loss"] == pytest.approx(reference_pg_loss(seqs, current, lo, hi, clip_c, 4, released), rel=1e-5)
    assert 0 < stats["clip_frac"] < 1


def kl_only_gradient(model, ref, tok, cfg):
    """Sequences with every advantage 0 (so only the KL term can pull), their reference log-probs,
    and accumulate_gradients' stats and gradient on them."""
    seqs, _ = shifted_seqs(model, tok, cfg)
    for s in seqs:
        s.advantage = 0.0
    sqlm.prepare(model, ref, seqs, cfg, CPU, parallel.ONE)
    model.zero_grad()
    stats = sqlm.accumulate_gradients(model, ref, seqs, cfg, CPU, parallel.ONE)
    return seqs, stats, grads(model)


def test_kl_term_is_its_coefficient_times_the_k3_gradient(tiny_dir):
    """With every advantage 0 only the KL term pulls: its gradient must be +kl x grad(k3 against the
    reference's log-probs), k3 = exp(d) - d - 1 with d = ref - logp written out here, token-mean
    over the mini-batch. Guards: the sign flipped, the coefficient fixed, the term dropped, another
    estimator or its arguments swapped."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    ref = perturbed(model)
    cfg = sqlm.Config(kl=0.05, microbatch=4).resolve()
    seqs, stats, got = kl_only_gradient(model, ref, tok, cfg)
    model.zero_grad()
    logp, comp = sqlm.micro_logprobs(model, seqs, cfg, CPU)
    d = torch.cat([s.ref_logp for s in seqs]).double() - logp[comp.bool()].double()
    kl = (d.exp() - d - 1).mean()
    (0.05 * kl).backward()
    want = grads(model)
    assert want.abs().max() > 0 and stats["kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_released_code_config_has_no_kl():
    """The released code-task config has no KL term (kl_coef 0 with --as-released --task code); ours
    keeps kl for code, and arith as released keeps it. Guards: the exception widened to every
    released run or to every code run."""
    assert sqlm.Config(task="code", as_released=True).resolve().kl_coef == 0.0
    assert sqlm.Config(task="code").resolve().kl_coef == 0.001
    assert sqlm.Config(task="arith", as_released=True).resolve().kl_coef == 0.001


def test_released_code_run_has_no_kl_gradient(tiny_dir):
    """--as-released --task code: the released code config has no KL term, so with advantages 0
    nothing moves (arith as released keeps it). Guards: accumulate_gradients reading cfg.kl."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    ref = perturbed(model)
    for task, moves in (("code", False), ("arith", True)):
        cfg = sqlm.Config(task=task, kl=0.05, as_released=True, microbatch=8).resolve()
        _, stats, got = kl_only_gradient(model, ref, tok, cfg)
        assert bool(got.abs().max() > 0) is moves and ("kl" in stats) is moves


# --- the optimizer step and the sampling copy -------------------------------------------------

def test_grad_clip_bounds_each_step(tiny_dir):
    """--grad-clip: an SGD step of lr 1 moves the weights by exactly the clip norm when the gradient
    is larger. Guards: the clip fixed at 1.0 or skipped."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(kl=0, minibatch=1, microbatch=8, grad_clip=1e-3)
    seqs, _ = shifted_seqs(model, tok, cfg)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    stats = sqlm.policy_update(model, None, torch.optim.SGD(model.parameters(), lr=1.0), seqs, cfg, CPU, parallel.ONE)
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert stats["grad_norm"] > 1e-2 and moved.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_proposer_updates_on_the_released_schedule(tiny_dir, monkeypatch):
    """--proposer-every k updates the proposer at steps k, 2k, ... counting from 1 (0-based k-1,
    2k-1)."""
    metrics = run_steps(tiny_dir, monkeypatch, 4, text_rewards(), proposer_every=2, max_response=2)
    assert ["proposer_pg_loss" in m for m in metrics] == [False, True, False, True]


def test_sampling_copy_keeps_fp32_rope_buffers(tiny_dir):
    """The bf16 sampling copy has bf16 weights, RoPE buffers fp32 and equal to the model's, and its
    lm-head tied to its embedding as in the original. Guards: `.to(bfloat16)` on the whole model,
    which also rounds RoPE's inv_freq (the sampler then drifts from the trained policy by radians at
    long range)."""
    model, _ = rollout.load(tiny_dir, device="cpu")
    sampler = sqlm.bf16_copy(model)
    assert all(p.dtype == torch.bfloat16 for p in sampler.parameters())
    buffers = dict(model.named_buffers())
    assert buffers and all(torch.equal(b, buffers[name]) and b.dtype == buffers[name].dtype
                           for name, b in sampler.named_buffers())
    assert sampler.lm_head.weight is sampler.model.embed_tokens.weight  # tied, as in the original


def test_train_step_refreshes_a_separate_sampling_copy(tiny_dir, monkeypatch):
    """Step 8: a separate sampling copy (bf16 on GPU; here a bf16 copy on CPU) holds no memory
    during the update and is rebuilt from the updated weights after it, in its own dtype. Guards:
    the refresh left out, which would sample every later step from the initial weights; the copy
    kept through the update (its 2 bytes per weight on top of the update's peak)."""
    monkeypatch.setattr(sqlm, "score", alternating_rewards)
    model, tok = rollout.load(tiny_dir, device="cpu")
    sampler = sqlm.bf16_copy(model)
    held = []
    real_update = sqlm.policy_update
    monkeypatch.setattr(sqlm, "policy_update", lambda *a: held.append(sum(p.numel() for p in sampler.parameters()))
                        or real_update(*a))
    cfg = sqlm.Config(task="arith", batch=2, n=2, minibatch=1, max_response=4, kl=0, proposer_every=0).resolve()
    before = [p.detach().clone() for p in model.parameters()]
    sqlm.train_step(0, sqlm.Models(model, model, sampler, None, torch.optim.SGD(model.parameters(), lr=1.0)), tok, cfg, CPU, parallel.ONE)
    assert held == [0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.dtype == torch.bfloat16 for p in sampler.parameters())
    assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(sampler.parameters(), model.parameters()))
    assert sampler is not model and all(a is not b for a, b in zip(sampler.parameters(), model.parameters()))
