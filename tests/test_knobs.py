"""Every flag that changes the method, through the real glue (parse, score, to_sequences, prepare,
accumulate_gradients, policy_update, train_step, the harness): each test fails when its flag is
ignored or miswired, not only when the pure function under it is wrong.

Each docstring names the wiring mutation it guards; tools/mutate.py applies them one at a time."""
import copy
import json
import os

import pytest
import torch

import eval as heldout
import harness
import rewards
import parallel
import rollout
import sqlm
from conftest import grads
from test_step import answered, proposal, sample  # the records a step leaves
from test_step import cfg_for as config

CPU = torch.device("cpu")


def perturbed(model):
    """A copy of `model` with every weight moved a little: a reference (or old policy) that differs."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    return ref


# --- which reward trains which role ----------------------------------------------------------

@pytest.mark.parametrize("rule, want", [("sqlm", 1.0), ("azr", 0.25), ("rzero", 0.5)])
def test_proposer_reward_rule_reaches_score(rule, want):
    """--proposer-reward: three of four agree, so sqlm pays 1, azr 1 - 3/4, rzero 1 - 2|3/4 - 1/2|.
    Guards: the rule flag not passed to rewards.proposer_reward."""
    batch = [proposal(0, answers=answered(6, 6, 6, 7))]
    sqlm.score(config(proposer_reward=rule), batch, parallel.ONE)
    assert batch[0].proposer_reward == pytest.approx(want)


def test_solver_trains_on_its_own_rewards_and_the_proposer_on_its_own():
    """--solver-reward format: the solver's advantages are the format rewards' (not the vote's), the
    proposer's are its own rewards' per prompt group. Guards: to_sequences reading task_rewards for
    the solver, or the solver's rewards for the proposer."""
    cfg = config(solver_reward="format")
    batch = [proposal(0, answers=answered(6, None, 6, 7)), proposal(1, answers=answered(5, 5, 5, 5)),
             proposal(2, answers=answered(1, 1, 2, 2)), proposal(3, answers=answered(None, 3, 3, 3))]
    sqlm.score(cfg, batch, parallel.ONE)
    solver, proposer = sqlm.to_sequences(batch, cfg, update_proposer=True)
    format_rewards = [1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    assert [s.advantage for s in solver] == pytest.approx(sqlm.grpo_advantages(format_rewards, 4).tolist())
    assert [p.proposer_reward for p in batch] == [1.0, 0.0, 1.0, 1.0]  # read off the vote, 1 < m < n
    assert [s.advantage for s in proposer] == pytest.approx(sqlm.grpo_advantages([1, 0, 1, 1], 4).tolist())


@pytest.mark.parametrize("norm", ["std", "none"])
def test_adv_norm_reaches_both_roles(norm):
    """--adv-norm none (Dr. GRPO) drops the division by the group std for the solver and the
    proposer alike; checked against the formula in float64. Guards: either role's call left at std."""
    cfg = config(adv_norm=norm)
    batch = [proposal(0, answers=answered(6, 6, 7, 8)), proposal(1, answers=answered(1, 1, 1, 2)),
             proposal(2, answers=answered(4, 4, 4, 4)), proposal(3, answers=answered(1, 2, 3, 4))]
    sqlm.score(cfg, batch, parallel.ONE)
    solver, proposer = sqlm.to_sequences(batch, cfg, update_proposer=True)

    def formula(r):
        r = torch.tensor(r, dtype=torch.float64).view(-1, 4)
        centred = r - r.mean(1, keepdim=True)
        return (centred / (r.std(1, keepdim=True) + 1e-6) if norm == "std" else centred).flatten().tolist()

    assert [s.advantage for s in solver] == pytest.approx(formula([r for p in batch for r in p.solver_rewards]))
    assert [s.advantage for s in proposer] == pytest.approx(formula([1.0, 1.0, 0.0, 0.0]))


@pytest.mark.parametrize("judge, want", [("exact", [1.0, 0.0]), ("lenient", [1.0, 1.0])])
def test_judge_reaches_the_code_rewards(judge, want):
    """--judge lenient forgives spacing in score's sandbox call. Guards: the judge not passed to test_pass_rates."""
    cfg = config(task="code", judge=judge, n=2, batch=1)
    p = proposal(0, "Print 3 4.", ["```python\nprint(3, 4)\n```", "```python\nprint('3  4')\n```"])
    p.problem.tests = [("", "3 4")]
    sqlm.score(cfg, [p], parallel.ONE)
    assert p.task_rewards == want


def test_released_answers_are_parsed_as_released_in_score():
    """--as-released: votes compare int()-parseable raw strings, so `007` and `7` split. Guards: score
    calling extract_answer without the released flag."""
    for released, want in ((False, [1, 1, 1, 1]), (True, [1, 0, 0, 1])):
        batch = [proposal(0, answers=answered("007", 7, 7, "007"))]
        sqlm.score(config(as_released=released), batch, parallel.ONE)
        assert batch[0].task_rewards == want


def test_arith_check_reaches_parse():
    """--arith-check: a malformed arith proposal is invalid in the step's records. Guards: the flag
    not passed to rewards.parse_proposal."""
    samples = [sample("What is 61 * 8*?"), sample("What is 61 * 8?")]
    assert [p.reason for p in sqlm.parse(config(), samples)] == ["ok", "ok"]
    assert [p.valid for p in sqlm.parse(config(arith_check=True), samples)] == [False, True]


CAT_REPLY = ("Print the sum.\nTest Cases:\n1 2 ||| 3 0\nReference Solution:\n```python\n{ref}\n```\n"
             "Wrong Solution:\n```python\nprint(0)\n```\n")


@pytest.mark.parametrize("judge, valid", [("exact", False), ("lenient", True)])
def test_cat_verdicts_use_the_runs_judge(judge, valid):
    """--cat with --judge lenient: a reference whose output differs only in spacing verifies its
    problem. Guards: cat_filter called without the judge, or its verdict not applied to the record."""
    reply = CAT_REPLY.format(ref="a, b = map(int, input().split())\nprint(a + b, '', 0)")
    batch = sqlm.parse(config(task="code", cat=True, judge=judge, n=2, batch=1), [sample(reply)])
    assert batch[0].valid is valid and (batch[0].problem is not None) is valid


# --- the loss: clips, dual clip, normaliser, KL ------------------------------------------------

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
    """--clip-low/--clip-high (asymmetric), --clip-c and --as-released's micro-batch normaliser, through
    accumulate_gradients against the float64 formula. Guards: a bound swapped or ignored, the dual
    clip fixed at 3, the released aggregation ignored."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(kl=0, microbatch=4, clip_low=lo, clip_high=hi, clip_c=clip_c, as_released=released)
    seqs, current = shifted_seqs(model, tok, cfg)
    stats = sqlm.accumulate_gradients(model, None, seqs, cfg, CPU, parallel.ONE)
    assert stats["pg_loss"] == pytest.approx(reference_pg_loss(seqs, current, lo, hi, clip_c, 4, released), rel=1e-5)
    assert 0 < stats["clip_frac"] < 1


def kl_only_gradient(model, ref, tok, cfg):
    """Sequences with every advantage 0 (so only the KL term can pull), their reference log-probs, and
    accumulate_gradients' stats and gradient on them."""
    seqs, _ = shifted_seqs(model, tok, cfg)
    for s in seqs:
        s.advantage = 0.0
    sqlm.prepare(model, ref, seqs, cfg, CPU, parallel.ONE)
    model.zero_grad()
    stats = sqlm.accumulate_gradients(model, ref, seqs, cfg, CPU, parallel.ONE)
    return seqs, stats, grads(model)


def test_kl_term_is_its_coefficient_times_the_k3_gradient(tiny_dir):
    """With every advantage 0 only the KL term pulls: its gradient must be +kl x grad(k3 against the
    reference's log-probs), k3 = exp(d) - d - 1 with d = ref - logp written out here, token-mean over
    the mini-batch. Guards: the sign flipped, the coefficient fixed, the term dropped, another
    estimator or its arguments swapped."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    ref = perturbed(model)
    cfg = sqlm.Config(kl=0.05, microbatch=4)
    seqs, stats, got = kl_only_gradient(model, ref, tok, cfg)
    model.zero_grad()
    logp, comp = sqlm.micro_logprobs(model, seqs, cfg, CPU)
    d = torch.cat([s.ref_logp for s in seqs]).double() - logp[comp.bool()].double()
    kl = (d.exp() - d - 1).mean()
    (0.05 * kl).backward()
    want = grads(model)
    assert want.abs().max() > 0 and stats["kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_released_code_run_has_no_kl_gradient(tiny_dir):
    """--as-released --task code: the released code config has no KL term, so with advantages 0
    nothing moves (arith as released keeps it). Guards: accumulate_gradients reading cfg.kl."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    ref = perturbed(model)
    for task, moves in (("code", False), ("arith", True)):
        cfg = sqlm.Config(task=task, kl=0.05, as_released=True, microbatch=8).resolve()
        _, stats, got = kl_only_gradient(model, ref, tok, cfg)
        assert bool(got.abs().max() > 0) is moves and ("kl" in stats) is moves


def test_reference_log_probs_come_from_the_reference_model(tiny_dir):
    """prepare: old log-probs from the training model, reference log-probs from the frozen one, each
    equal to its own model's token_logprobs. Guards: the reference pass run on the training model."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    ref = perturbed(model)
    cfg = sqlm.Config(microbatch=3)
    seqs, _ = shifted_seqs(model, tok, cfg)
    sqlm.prepare(model, ref, seqs, cfg, CPU, parallel.ONE)
    for net, name in ((model, "old_logp"), (ref, "ref_logp")):
        with torch.no_grad():
            logp, comp = sqlm.micro_logprobs(net, seqs, cfg, CPU)
        want = [row[m] for row, m in zip(logp, comp.bool())]
        assert all(torch.allclose(getattr(s, name), w, atol=1e-5) for s, w in zip(seqs, want)), name
    assert not torch.allclose(seqs[0].old_logp, seqs[0].ref_logp, atol=1e-3)


def test_kl_reference_is_the_initial_model_also_after_a_resume(tiny_dir, tmp_path, monkeypatch):
    """The KL reference is the frozen initial model: after training and a resume, it is the weights the
    run started from (cfg.model), not the checkpoint's. Guards: the reference loaded from the checkpoint."""
    loaded = []
    real = rollout.load

    def load(name, **kw):
        loaded.append(str(name))
        return real(name, **kw)
    args = ["--task", "arith", "--model", tiny_dir, "--batch", "2", "--n", "2", "--minibatch", "1",
            "--max-response", "4", "--eval-every", "0", "--save-every", "1", "--device", "cpu"]
    assert harness.main(args + ["--steps", "1", "--out", str(tmp_path / "run")]) == 0
    monkeypatch.setattr(rollout, "load", load)
    assert harness.main(["--steps", "2", "--resume", str(tmp_path / "run")]) == 0
    assert loaded == [str(tmp_path / "run" / "step-000001"), tiny_dir]


def test_kl_reference_takes_the_dtype_the_memory_plan_chose(tiny_dir, tmp_path, monkeypatch):
    """Where only a bf16 reference fits (harness.fit_to_memory says so on a GPU), the loop gets the
    reference's weights in bf16, its RoPE buffers fp32, and the policy stays fp32; where fp32 fits,
    fp32. Guards: the plan's choice ignored (an fp32 reference that does not fit the card)."""
    class Stop(Exception):
        pass

    def train(cfg, models, *rest):
        seen.update(model=models.policy, ref=models.reference)
        raise Stop
    monkeypatch.setattr(sqlm, "train", train)
    for dtype in (torch.bfloat16, torch.float32):
        seen = {}
        monkeypatch.setattr(harness, "fit_to_memory", lambda cfg, config, device, world=1: dtype)
        cfg = sqlm.Config(task="arith", model=tiny_dir, device="cpu", kl=0.001, out=str(tmp_path / str(dtype)))
        with pytest.raises(Stop):
            harness.train(cfg)
        assert {p.dtype for p in seen["ref"].parameters()} == {dtype}
        assert {b.dtype for b in seen["ref"].buffers()} == {torch.float32}
        assert {p.dtype for p in seen["model"].parameters()} == {torch.float32}


# --- the on-policy shortcut, the optimizer, the sampling copy -----------------------------------

def test_on_policy_shortcut_gives_the_old_log_prob_passs_gradient(tiny_dir):
    """The first mini-batch's old log-probs are its current ones, detached: its gradient equals the one
    from a separate old-log-prob pass. Guards: the detach dropped (ratio exp(0) has no gradient)."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(kl=0, microbatch=8)
    seqs, _ = shifted_seqs(model, tok, cfg)
    results = []
    for on_policy in (True, False):
        for s in seqs:
            s.on_policy, s.old_logp = on_policy, None
        sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)
        model.zero_grad()
        sqlm.accumulate_gradients(model, None, seqs, cfg, CPU, parallel.ONE)
        results.append(grads(model))
    assert results[1].abs().max() > 0
    assert torch.allclose(results[0], results[1], rtol=1e-4, atol=1e-8)


def test_each_optimizer_step_takes_its_own_minibatchs_gradient(tiny_dir):
    """Mini-batch k holds groups [k*minibatch, (k+1)*minibatch) and its step sees only its own gradient.
    Guards: grouping by n instead of minibatch, zero_grad left out of the loop (gradients leak on)."""
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


def test_grad_clip_bounds_each_step(tiny_dir):
    """--grad-clip: an SGD step of lr 1 moves the weights by exactly the clip norm when the gradient is
    larger. Guards: the clip fixed at 1.0 or skipped."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(kl=0, minibatch=1, microbatch=8, grad_clip=1e-3)
    seqs, _ = shifted_seqs(model, tok, cfg)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    stats = sqlm.policy_update(model, None, torch.optim.SGD(model.parameters(), lr=1.0), seqs, cfg, CPU, parallel.ONE)
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert stats["grad_norm"] > 1e-2 and moved.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_optimizer_takes_the_runs_lr_and_weight_decay(tiny_dir, tmp_path):
    """--lr and --weight-decay reach the run's AdamW (betas 0.9, 0.999), as its checkpoint records.
    Guards: the harness building AdamW with fixed settings."""
    run = tmp_path / "run"
    assert harness.main(["--task", "arith", "--model", tiny_dir, "--batch", "2", "--n", "2", "--minibatch", "1",
                      "--max-response", "4", "--eval-every", "0", "--steps", "1", "--lr", "3e-4",
                      "--weight-decay", "0.05", "--device", "cpu", "--out", str(run)]) == 0
    group = torch.load(run / "step-000001" / "trainer_state.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"], tuple(group["betas"])) == (3e-4, 0.05, (0.9, 0.999))


def liked_rewards(cfg, batch, world):
    """score replaced: answer k of each problem earns k % 2, so every solver group carries signal."""
    for p in (p for p in batch if p.solved):
        p.solver_rewards = p.task_rewards = [float(k % 2) for k in range(len(p.answers))]
        p.proposer_reward, p.extracted = 1.0, [None] * len(p.answers)
    return batch


def test_train_step_refreshes_a_separate_sampling_copy(tiny_dir, monkeypatch):
    """Step 8: a separate sampling copy (bf16 on GPU; here a bf16 copy on CPU) holds no memory during
    the update and is rebuilt from the updated weights after it, in its own dtype.
    Guards: the refresh left out, which would sample every later step from the initial weights; the
    copy kept through the update (its 2 bytes per weight on top of the update's peak)."""
    monkeypatch.setattr(sqlm, "score", liked_rewards)
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


# --- sampling: streams, settings, the trained policy -------------------------------------------

def test_each_role_and_step_samples_its_own_streams(tiny_dir, monkeypatch):
    """Prompt i of step s draws from derive_seed(seed, s, 0, i) (the proposer), and the problem of
    proposal j from derive_seed(seed, s, 1, j) (the solver), j its index in the step's batch, not its
    position among the valid ones: the key a share of the problems on another process keeps. Guards:
    the solver on the proposer's streams, a step's streams repeating another step's, solver streams
    numbered by position."""
    calls = []
    real_generate, real_parse = rollout.generate, sqlm.parse

    def generate(model, tok, prompts, seed=None, **kw):
        calls.append(list(seed))
        return real_generate(model, tok, prompts, seed=seed, **kw)

    def parse(cfg, samples, first=0):  # proposals 0 and 3 invalid, the rest valid problems
        batch = real_parse(cfg, samples, first)
        for p in batch:
            p.problem, p.reason = (None, "bad") if p.index in (0, 3) else (rewards.Problem("What is 2 * 3?"), "ok")
        return batch
    monkeypatch.setattr(rollout, "generate", generate)
    monkeypatch.setattr(sqlm, "parse", parse)
    monkeypatch.setattr(sqlm, "score", liked_rewards)
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(task="arith", batch=3, n=2, minibatch=1, max_response=4, kl=0, seed=7, proposer_every=0).resolve()
    sqlm.train_step(3, sqlm.Models(model, model, model, None, torch.optim.SGD(model.parameters(), lr=0.0)), tok, cfg, CPU, parallel.ONE)
    assert calls[0] == [sqlm.derive_seed(7, 3, 0, i) for i in range(3)]
    assert calls[1] == [sqlm.derive_seed(7, 3, 1, j) for j in (1, 2, 4, 5)]


def test_sample_uses_the_runs_sampling_settings(tiny_dir):
    """sqlm.sample draws with --temperature, --top-p and the response limit, per-prompt streams, in
    calls of --rollout-rows. Guards: any of them not passed to generate."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    prompts = [rollout.chat_prompt(tok, text) for text in ("a", "bb", "ccc")]
    cfg = sqlm.Config(temperature=0.7, top_p=0.5, max_response=6, rollout_rows=2, n=2)
    got = sqlm.sample(model, tok, prompts, range(3), cfg, seed=(1, 2, 3), world=parallel.ONE)
    want = rollout.generate(model, tok, prompts, n=2, max_new_tokens=6, temperature=0.7, top_p=0.5,
                            seed=[sqlm.derive_seed(1, 2, 3, i) for i in range(3)])
    assert [s.completion_ids for s in got] == [s.completion_ids for s in want]
    plain = rollout.generate(model, tok, prompts, n=2, max_new_tokens=6, seed=[sqlm.derive_seed(1, 2, 3, i) for i in range(3)])
    assert [s.completion_ids for s in got] != [s.completion_ids for s in plain]  # the settings matter here


def test_old_log_probs_are_the_sampling_distributions(tiny_dir):
    """The trained policy is the sampled one: prepare's old log-probs at --temperature equal the
    log-probs the sampler drew each token with. Guards: log-probs taken at temperature 1."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(temperature=0.6, max_response=8, n=3)
    outs = sqlm.sample(model, tok, [rollout.chat_prompt(tok, "go")], [0], cfg, seed=(4,), world=parallel.ONE)
    seqs = [sqlm.Seq(s.prompt_ids, s.completion_ids, 0.0, group=0) for s in outs]
    sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)
    for s, o in zip(seqs, outs):
        assert s.old_logp.tolist() == pytest.approx(o.logprobs, abs=1e-4)


def test_sampled_eval_streams_are_per_problem(tiny_model):
    """Sampled eval: problem i draws from its own stream (seed i), so the samples do not depend on
    the batch size, and two copies of one problem draw differently. Guards: one seed per call."""
    model, tok = tiny_model
    problems = [{"problem": "What is 2 * 3?", "answer": "6"}] * 2 + [{"problem": "What is 4 * 5?", "answer": "20"}]
    runs = [[r["response"] for r in heldout.evaluate(model, tok, "arith", problems, samples=2, temperature=1.0,
                                                     max_new_tokens=6, batch_size=rows)["records"]]
            for rows in (2, 6)]
    assert runs[0] == runs[1] and runs[0][:2] != runs[0][2:4]


def test_run_eval_is_greedy_and_sampled_at_the_runs_temperature(monkeypatch):
    """In-training eval: greedy (temperature 0, one sample) and, with --eval-samples k, k samples at
    --temperature over --eval-limit problems. Guards: a temperature or the limit not passed."""
    calls = []

    def evaluate(model, tok, task, problems=None, **kw):
        calls.append((kw["samples"], kw["temperature"], kw["limit"]))
        return {"accuracy": 0.5}
    monkeypatch.setattr(heldout, "evaluate", evaluate)
    harness.run_eval(None, None, sqlm.Config(eval_samples=3, temperature=0.8, eval_limit=7).resolve(), parallel.ONE)
    assert calls == [(1, 0.0, 7), (3, 0.8, 7)]


# --- the loop's schedule ------------------------------------------------------------------------

def test_loop_evaluates_and_saves_on_schedule(tiny_dir, tmp_path):
    """--eval-every 2 --save-every 2 over 5 steps: eval at steps 0, 2, 4 (not 5: not a multiple),
    checkpoints after steps 2, 4 and the last, 5. Guards: either period off by one, the last
    checkpoint skipped or written twice."""
    run = tmp_path / "run"
    assert harness.main(["--task", "arith", "--model", tiny_dir, "--batch", "2", "--n", "2", "--minibatch", "1",
                      "--max-response", "4", "--eval-every", "2", "--eval-limit", "2", "--save-every", "2",
                      "--keep-last", "0", "--steps", "5", "--device", "cpu", "--out", str(run)]) == 0
    metrics = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]
    assert [m["step"] for m in metrics if "eval_accuracy" in m] == [0, 2, 4]
    assert sorted(os.listdir(run)) == ["config.json", "metrics.jsonl", "samples.jsonl",
                                       "step-000002", "step-000004", "step-000005"]
