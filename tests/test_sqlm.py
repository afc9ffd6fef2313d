"""sqlm.py: the clipped policy gradient, GRPO advantages, KL, and the update machinery."""
import dataclasses

import pytest
import torch

import harness
import parallel
import rollout
import sqlm


# --- the loss against a float64 reference ---------------------------------------------

def reference_loss(logp, old, adv, mask, lo, hi, clip_c):
    """Token by token in float64, straight from the formula."""
    total, count = 0.0, 0.0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            a = float(adv[b])
            r = float(torch.exp(logp[b, t].double() - old[b, t].double()))
            loss = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
            if clip_c and a < 0:
                loss = min(loss, -a * clip_c)
            total += loss
            count += 1
    return total / count


@pytest.mark.parametrize("clip_c", [3.0, None])
def test_clipped_pg_loss_matches_float64_formula(clip_c):
    """Both clip sides, dual clip and masked tokens, against a per-token float64 loop."""
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 9, generator=gen) * 3
    old = logp + torch.randn(6, 9, generator=gen) * 0.8  # ratios far outside [0.8, 1.2], and beyond clip_c
    adv = torch.tensor([2.0, -1.5, 0.5, -0.3, 0.0, 1.0])
    mask = torch.rand(6, 9, generator=gen) > 0.3
    loss, stats = sqlm.clipped_pg_loss(logp, old, adv, mask, 0.2, 0.28, clip_c=clip_c)
    assert abs(loss.item() - reference_loss(logp, old, adv, mask, 0.2, 0.28, clip_c)) < 1e-5
    assert 0 < stats["clip_frac"] < 1


def test_dual_clip_binds_for_negative_advantage():
    """With A < 0 and a huge ratio the loss is capped at -A * clip_c, and its gradient is zero."""
    logp = torch.tensor([[2.0]], requires_grad=True)
    loss, _ = sqlm.clipped_pg_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), clip_c=3.0)
    loss.backward()
    assert loss.item() == pytest.approx(3.0) and logp.grad.item() == 0


def test_loss_gradient_pushes_logp_along_advantage():
    """The sign: a positive advantage must raise the token's log-prob, a negative one lower it."""
    for a in (1.0, -1.0):
        logp = torch.zeros(1, 3, requires_grad=True)
        loss, _ = sqlm.clipped_pg_loss(logp, torch.zeros(1, 3), torch.tensor([a]), torch.ones(1, 3))
        loss.backward()
        assert (torch.sign(-logp.grad) == torch.sign(torch.tensor(a))).all()


def test_chunk_logprobs_stay_fp32_under_autocast():
    """Under bf16 autocast the lm-head matmul must still run in fp32 (bf16 logits err by ~0.1)."""
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(5, 16, generator=gen) * 4, torch.randn(50, 16, generator=gen)
    targets = torch.randint(0, 50, (5,), generator=gen)
    plain = rollout._chunk_logprobs(hidden, weight, targets, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = rollout._chunk_logprobs(hidden, weight, targets, 1.0)
    assert under.dtype == torch.float32 and torch.allclose(under, plain, atol=1e-5)


def test_normalizer_is_what_divides():
    """An explicit normaliser replaces the micro-batch's own token count."""
    logp, mask = torch.zeros(2, 4), torch.ones(2, 4)
    own, _ = sqlm.clipped_pg_loss(logp, logp, torch.tensor([1.0, 1.0]), mask)
    given, _ = sqlm.clipped_pg_loss(logp, logp, torch.tensor([1.0, 1.0]), mask, normalizer=16)
    assert own.item() == pytest.approx(-1.0) and given.item() == pytest.approx(-0.5)


# --- advantages and KL ----------------------------------------------------------------

def test_grpo_advantages_by_hand():
    """[1,0,0,0]: mean 1/4, unbiased std 1/2 -> [1.5, -0.5, -0.5, -0.5]; an all-equal group gets 0."""
    adv = sqlm.grpo_advantages([1, 0, 0, 0, 1, 1, 1, 1], group_size=4)
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0]), atol=1e-5)


def test_grpo_advantages_without_std():
    """Dr. GRPO (--adv-norm none): r - mean, no division."""
    adv = sqlm.grpo_advantages([1, 0, 0, 0], group_size=4, norm="none")
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_kl_zero_when_policy_is_reference_and_positive_otherwise():
    """k3 is exactly 0 at pi = pi_ref and > 0 elsewhere (it is a non-negative estimator)."""
    logp = -torch.rand(3, 5)
    mask = torch.ones(3, 5)
    assert sqlm.kl_penalty(logp, logp, mask).item() == 0
    assert sqlm.kl_penalty(logp, logp - 0.3 * torch.rand(3, 5), mask).item() > 0


def test_kl_is_k3_of_the_reference_over_the_policy_by_hand():
    """k3 = exp(d) - d - 1 with d = log pi_ref - log pi, per unmasked token: d = -0.5, 1, 0 give
    e^-0.5 - 0.5 = 0.10653..., e - 2 = 0.71828... and 0; the masked token (d = 3) counts for nothing.
    Other estimators are also 0 at equality and positive elsewhere: k1 (-d) gives 0.5, -1, 0, the
    arguments swapped (d = log pi - log pi_ref) give e^0.5 - 1.5 = 0.14872..., e^-1 = 0.36787..., 0."""
    logp = torch.tensor([[-1.0, -2.0, -0.5, -4.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    per_token = [0.10653065971263342, 0.7182818284590451, 0.0]
    assert sqlm.kl_penalty(logp, ref, mask).item() == pytest.approx(sum(per_token) / 3, rel=1e-6)
    assert sqlm.kl_penalty(logp, ref, mask, normalizer=2).item() == pytest.approx(sum(per_token) / 2, rel=1e-6)


def test_loss_statistics_by_hand():
    """The logged clip_frac, approx_kl and ratio on three tokens with log-ratios 0, 0.5 and 0.1 and A = 1:
    only e^0.5 = 1.6487 leaves [0.8, 1.2] (a ratio of exactly 1 is not clipped), approx_kl is the mean
    of old - new = -0.2, ratio the mean of 1, e^0.5 and e^0.1. A masked token changes none of them."""
    logp = torch.tensor([[-1.0, -1.0, -1.0, -3.0]])
    old = torch.tensor([[-1.0, -1.5, -1.1, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    _, stats = sqlm.clipped_pg_loss(logp, old, torch.tensor([1.0]), mask)
    assert stats["clip_frac"] == pytest.approx(1 / 3)
    assert stats["approx_kl"] == pytest.approx(-0.2, rel=1e-6)
    assert stats["ratio"] == pytest.approx((1 + 1.6487212707001282 + 1.1051709180756477) / 3, rel=1e-6)


# --- the update machinery on the tiny model --------------------------------------------

def tiny_seqs(model, tok, count=8, seed=0):
    """`count` sequences in groups of count/2, completions of 2 to 9 tokens (unequal, so a per-micro-batch
    normaliser would differ from the mini-batch's), random advantages."""
    prompts = [rollout.chat_prompt(tok, "go"), rollout.chat_prompt(tok, "a longer prompt")]
    samples = rollout.generate(model, tok, prompts, n=count // 2, max_new_tokens=9 + seed, seed=seed)
    adv = sqlm.grpo_advantages(torch.randn(count, generator=torch.Generator().manual_seed(seed)), count // 2)
    return [sqlm.Seq(s.prompt_ids, s.completion_ids[:2 + (5 * i) % 8], a, group=i // (count // 2))
            for i, (s, a) in enumerate(zip(samples, adv.tolist()))]


def test_gradient_independent_of_micro_batch_split(tiny_dir):
    """One micro-batch of 8 or four of 2: the same gradient (the normaliser is the mini-batch's)."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    ref = rollout.load(tiny_dir, device="cpu")[0]
    with torch.no_grad():  # make the policy differ from the old and reference log-probs
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seqs = tiny_seqs(model, tok)
    cfg = sqlm.Config(kl=0.1)
    sqlm.prepare(ref, ref, seqs, cfg, torch.device("cpu"), parallel.ONE)
    grads = []
    for micro in (8, 2):
        model.zero_grad()
        sqlm.accumulate_gradients(model, ref, seqs, dataclasses.replace(cfg, microbatch=micro), torch.device("cpu"), parallel.ONE)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()


def test_gradient_checkpointing_changes_no_gradient(tiny_dir):
    """--grad-checkpointing recomputes activations in backward; the gradient must be the same."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    seqs = tiny_seqs(model, tok)
    cfg = sqlm.Config(kl=0)
    sqlm.prepare(model, None, seqs, cfg, torch.device("cpu"), parallel.ONE)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train().zero_grad()
        sqlm.accumulate_gradients(model, None, seqs, cfg, torch.device("cpu"), parallel.ONE)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()


def test_first_ratio_is_exactly_one(tiny_dir):
    """Old log-probs come from the training model itself, so before any step the ratio is 1."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    seqs = tiny_seqs(model, tok)
    cfg = sqlm.Config(kl=0)
    sqlm.prepare(model, None, seqs, cfg, torch.device("cpu"), parallel.ONE)
    stats = sqlm.accumulate_gradients(model, None, seqs, cfg, torch.device("cpu"), parallel.ONE)
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-6) and stats["clip_frac"] == 0


def test_toy_rl_raises_programmatic_reward(tiny_dir):
    """Reward 1 when the first completion token is in a set holding ~25% of the initial mass: that mass must climb.

    Two optimizer steps per batch make the ratio move off 1, so a wrong sign or a wrong
    ratio (e.g. exp(old - new)) drives the probability down instead.
    """
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
        sqlm.prepare(model, None, seqs, cfg, torch.device("cpu"), parallel.ONE)
        sqlm.policy_update(model, None, optimizer, seqs, cfg, torch.device("cpu"), parallel.ONE)
    after = p_target()
    assert after > before + 0.3, (before, after)


def test_minibatches_follow_groups_not_surviving_rows(tiny_dir):
    """Invalid proposals must not reshape the update: groups [0,4) and [4,8) are two optimizer steps.

    Cutting only the surviving rows into chunks of minibatch x n would make this one step
    (and, elsewhere, a ragged extra step).
    """
    model, tok = rollout.load(tiny_dir, device="cpu")
    seqs = tiny_seqs(model, tok, count=4)  # only groups 0 and 5 survived
    for s, group in zip(seqs, [0, 0, 5, 5]):
        s.group = group
    cfg = sqlm.Config(kl=0, minibatch=4, n=2, microbatch=3)
    sqlm.prepare(model, None, seqs, cfg, torch.device("cpu"), parallel.ONE)
    steps = []

    class Counting(torch.optim.SGD):
        def step(self, closure=None):
            steps.append(1)
            return super().step(closure)

    sqlm.policy_update(model, None, Counting(model.parameters(), lr=0.0), seqs, cfg, torch.device("cpu"), parallel.ONE)
    assert len(steps) == 2


# --- one training step, wired end to end ----------------------------------------------

LIKED = set("aeiou ")  # solver reward: the share of the answer's characters in LIKED


def liked_share(text):
    return sum(c in LIKED for c in text) / max(1, len(text))


def liked_start(text):
    """Proposer reward: the problem's first character is one of about a third of all characters
    (a single decision: the proposer samples every problem from one and the same prompt)."""
    return float(ord(text[0]) % 3 == 0)


def fake_score(solver=True, proposer=True):
    """sqlm.score replaced: rewards computed from the text itself, so that steps can raise them."""
    def score(cfg, batch, world):
        for p in (p for p in batch if p.answers):
            p.solver_rewards = [liked_share(s.text) if solver else 0.5 for s in p.answers]
            p.proposer_reward = liked_start(p.problem.text) if proposer else 0.5
            p.extracted, p.task_rewards = [None] * cfg.n, p.solver_rewards
        return batch
    return score


def run_steps(tiny_dir, monkeypatch, steps, score, **overrides):
    """`steps` calls of sqlm.train_step on the tiny model; returns the metrics of each."""
    monkeypatch.setattr(sqlm, "score", score)
    settings = dict(task="arith", batch=4, n=4, minibatch=2, microbatch=8, max_response=8, lr=1e-2, kl=0.0,
                    weight_decay=0.0)
    cfg = sqlm.Config(**{**settings, **overrides}).resolve()
    model, tok = rollout.load(tiny_dir, device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    return [sqlm.train_step(step, sqlm.Models(model, model, model, None, optimizer), tok, cfg, torch.device("cpu"), parallel.ONE)[0]
            for step in range(steps)]


def rise(values, k=3):
    return sum(values[-k:]) / k - sum(values[:k]) / k


def test_train_step_raises_the_solver_reward(tiny_dir, monkeypatch):
    """Through propose -> solve -> score -> advantages -> update: a sign error or a wrong group
    in train_step turns the rise into a fall."""
    metrics = run_steps(tiny_dir, monkeypatch, 12, fake_score(proposer=False), proposer_every=0)
    assert rise([m["solver_reward"] for m in metrics]) > 0.15, [m["solver_reward"] for m in metrics]


def test_train_step_raises_the_proposer_reward(tiny_dir, monkeypatch):
    """Solver rewards all equal (no solver signal): only the proposer's own update can raise its reward."""
    metrics = run_steps(tiny_dir, monkeypatch, 12, fake_score(solver=False), proposer_every=1)
    assert all(m["solver_clip_frac"] == 0 for m in metrics)
    assert rise([m["proposer_reward"] for m in metrics], k=4) > 0.3, [m["proposer_reward"] for m in metrics]


def test_proposer_ratio_sees_the_solver_update(tiny_dir, monkeypatch):
    """The proposer's old log-probs are taken before the solver update of the same step, so its first
    ratio already differs from 1 (taking them after the solver update would hide that update)."""
    metrics = run_steps(tiny_dir, monkeypatch, 1, fake_score(), proposer_every=1, minibatch=4)  # one step per role
    assert abs(metrics[0]["proposer_ratio"] - 1) > 1e-3


def test_proposer_updates_on_the_released_schedule(tiny_dir, monkeypatch):
    """--proposer-every k updates the proposer at steps k, 2k, ... counting from 1 (0-based k-1, 2k-1)."""
    metrics = run_steps(tiny_dir, monkeypatch, 4, fake_score(), proposer_every=2, max_response=2)
    assert ["proposer_pg_loss" in m for m in metrics] == [False, True, False, True]


def test_sampling_copy_keeps_fp32_rope_buffers(tiny_dir):
    """`.to(bfloat16)` on a whole model also rounds RoPE's inv_freq, so the GPU sampler drifted from the
    trained policy by radians at long range; only the weights may become bf16."""
    model, _ = rollout.load(tiny_dir, device="cpu")
    sampler = sqlm.bf16_copy(model)
    assert all(p.dtype == torch.bfloat16 for p in sampler.parameters())
    buffers = dict(model.named_buffers())
    assert buffers and all(torch.equal(b, buffers[name]) and b.dtype == buffers[name].dtype
                           for name, b in sampler.named_buffers())
    assert sampler.lm_head.weight is sampler.model.embed_tokens.weight  # tied, as in the original


CAT_REPLY = ("Print the sum.\nTest Cases:\n1 2 ||| 3\n5 ||| 5\nReference Solution:\n```python\n{ref}\n```\n"
             "Wrong Solution:\n```python\nprint(0)\n```\n")


def test_propose_applies_the_cat_filter_to_each_proposal(monkeypatch):
    """--cat: a proposal whose reference fails its own tests is dropped with that reason; a verified one is kept."""
    replies = [CAT_REPLY.format(ref="print(sum(map(int, input().split())))"),
               CAT_REPLY.format(ref="print(max(map(int, input().split())))"), "no tests here"]
    monkeypatch.setattr(rollout, "chat_prompt", lambda tok, text: [0])
    monkeypatch.setattr(sqlm, "sample", lambda *a: [rollout.Sample([0], [], text, True) for text in replies])
    cfg = sqlm.Config(task="code", cat=True).resolve()
    batch = sqlm.propose(None, None, cfg, seed=(0,), world=parallel.ONE)
    assert [p.problem is not None for p in batch] == [True, False, False]
    assert [p.reason for p in batch] == ["ok", "reference fails a test", "no 'Test Cases:'"]
