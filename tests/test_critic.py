"""PPO's learned critic (--critic; on with --as-released --task code): GAE, the batch whitening and
the clipped value loss against the released formulas written out here in float64, the value
model's head and alignment against Hugging Face's own forward, and each knob through the real step."""
import copy
import shutil

import pytest
import torch

import harness
import parallel
import rollout
import sqlm

CPU = torch.device("cpu")
ONE = parallel.ONE


# --- the released formulas, written out (verl core_algos / torch_functional, float64) -----------

def released_gae(token_rewards, values, gamma, lam):
    """The released recursion over the whole padded width: the value after position t is the
    critic's value at t + 1 whatever it is, 0 after the last column."""
    width, running, out = values.shape[1], 0.0, []
    for t in reversed(range(width)):
        next_values = values[:, t + 1] if t < width - 1 else 0.0
        delta = token_rewards[:, t] + gamma * next_values - values[:, t]
        running = delta + gamma * lam * running
        out.append(running)
    advantages = torch.stack(out[::-1], dim=1)
    return advantages, advantages + values


def released_masked_mean(x, mask):
    return (x * mask).sum() / (mask.sum() + 1e-8)


def released_whiten(x, mask):
    mean = released_masked_mean(x, mask)
    var = released_masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1)
    return (x - mean) * torch.rsqrt(var + 1e-8)


def released_value_loss(vpreds, returns, values, mask, clip):
    clipped = torch.max(torch.min(vpreds, values + clip), values - clip)
    unclipped_loss, clipped_loss = (vpreds - returns) ** 2, (clipped - returns) ** 2
    loss = released_masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    return loss, released_masked_mean((clipped_loss > unclipped_loss).double(), mask)


def right_padded(batch=6, width=9, seed=0):
    """Random float64 rewards, values and a right-padded mask (lengths 1..width), the reward
    placed on each row's last token as the released reward managers place it."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).double()
    rewards = torch.rand(batch, generator=g, dtype=torch.float64)
    values = torch.randn(batch, width, generator=g, dtype=torch.float64)
    token_rewards = torch.zeros(batch, width, dtype=torch.float64)
    token_rewards[torch.arange(batch), lengths - 1] = rewards
    return rewards, values, mask, token_rewards


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8), (0.5, 1.0), (1.0, 0.0)])
def test_gae_equals_the_released_recursion(gamma, lam):
    """On valid tokens, A and R equal the released recursion where the critic's values after a row's
    end are 0 (the value of the state after the last token). Guards: gamma and lambda swapped, the
    reward on the first token, the value after the end taken from padding, returns without V."""
    rewards, values, mask, token_rewards = right_padded()
    ours_a, ours_r = sqlm.gae_advantages(rewards, values, mask, gamma, lam)
    ref_a, ref_r = released_gae(token_rewards, values * mask, gamma, lam)
    assert torch.allclose(ours_a, ref_a * mask, rtol=0, atol=1e-9)
    assert torch.allclose(ours_r, ref_r * mask, rtol=0, atol=1e-9)


def test_at_gamma_and_lambda_one_padding_values_cancel_and_a_is_r_minus_v():
    """At the released gamma = lambda = 1 the released recursion gives A_t = r - V_t and R_t = r on
    every valid token whatever the critic says on padding; ours gives the same."""
    rewards, values, mask, token_rewards = right_padded(seed=1)
    ref_a, ref_r = released_gae(token_rewards, values, 1.0, 1.0)  # padding values left in
    ours_a, ours_r = sqlm.gae_advantages(rewards, values, mask)
    assert torch.allclose(ours_a, ref_a * mask, rtol=0, atol=1e-9)
    assert torch.allclose(ours_a, (rewards[:, None] - values) * mask, rtol=0, atol=1e-12)
    assert torch.allclose(ours_r, rewards[:, None] * mask, rtol=0, atol=1e-12)


def test_whitening_equals_the_released_masked_whiten():
    """Whitening over every valid token of the batch (not per row), unbiased variance, 1e-8 inside
    the root. Guards: per-row statistics, the biased variance, padding counted."""
    _, values, mask, _ = right_padded(seed=2)
    rows = [row[m.bool()] for row, m in zip(values, mask)]
    ours = sqlm.whiten(rows, ONE)
    ref = released_whiten(values, mask)
    for row, want, m in zip(ours, ref, mask):
        assert torch.allclose(row, want[m.bool()], rtol=0, atol=1e-9)


@pytest.mark.parametrize("clip", [0.5, 0.05])
def test_value_loss_equals_the_released_clipped_loss(clip):
    """Token-mean of max((V - R)^2, (clip(V, V_old +- c) - R)^2) and the clipped fraction. Guards:
    min for max, the clip around R instead of V_old, the mean over padding."""
    g = torch.Generator().manual_seed(3)
    _, old, mask, _ = right_padded(seed=3)
    vpreds = old + 0.3 * torch.randn(old.shape, generator=g, dtype=torch.float64)
    returns = torch.randn(old.shape, generator=g, dtype=torch.float64)
    loss, stats = sqlm.clipped_value_loss(vpreds, old, returns, mask, clip)
    want, want_frac = released_value_loss(vpreds, returns, old, mask, clip)
    want = want * (mask.sum() + 1e-8) / mask.sum()  # its mean divides by n + 1e-8, ours by n
    assert abs(loss.item() - want.item()) < 1e-12
    assert abs(stats["value_clip_frac"] - want_frac.item()) < 1e-9
    assert 0 < stats["value_clip_frac"] < 1  # the inputs reach both branches


# --- the value model -----------------------------------------------------------------------------

def test_critic_starts_from_the_policy_with_a_fresh_scalar_head(tiny_dir):
    """The critic's decoder is the initial policy's, its head a (1, hidden) linear drawn with
    std initializer_range and bias 0 (transformers' init of a token-classification head), the
    same for the same seed. Guards: a head left at torch's default init, the lm-head reused."""
    model, _ = rollout.load(tiny_dir, device="cpu")
    critic = sqlm.Critic(model, seed=5)
    for (name, a), (_, b) in zip(critic.decoder.named_parameters(),
                                 model.get_decoder().named_parameters()):
        assert torch.equal(a, b) and a is not b, name
    weight = critic.head.weight
    assert weight.shape == (1, model.config.hidden_size) and torch.all(critic.head.bias == 0)
    std = model.config.initializer_range
    assert 0.5 * std < weight.std().item() < 1.5 * std
    assert torch.equal(weight, sqlm.Critic(model, seed=5).head.weight)


def test_a_tokens_value_is_read_from_the_hidden_state_before_it(tiny_dir):
    """V of completion token t is head(h_{t-1}), from Hugging Face's own forward of the decoder:
    the state the token was sampled in, where its log-prob is read too. Guards: a value read at
    the token itself (off by one), padding not masked."""
    model, _ = rollout.load(tiny_dir, device="cpu")
    critic = sqlm.Critic(model)
    pairs = [([5, 6, 7], [8, 9]), ([5, 6], [10, 11, 12, 13])]
    ids, attn, comp = rollout.pack(pairs, pad_id=0, device=CPU)
    with torch.no_grad():
        values = critic(ids, attn, comp)
        for i, (prompt, completion) in enumerate(pairs):
            seq = torch.tensor([prompt + completion])
            hidden = model.get_decoder()(input_ids=seq).last_hidden_state[0]
            want = (hidden @ critic.head.weight.T).squeeze(-1) + critic.head.bias
            got = values[i][comp[i].bool()]
            assert torch.allclose(got, want[len(prompt) - 1:-1], atol=1e-5)
    assert torch.all(values[comp == 0] == 0)


# --- the knobs through the real step --------------------------------------------------------------

def critic_cfg(**overrides):
    settings = dict(task="arith", batch=4, n=4, minibatch=2, microbatch=8, max_response=8,
                    kl=0.0, critic=True, proposer_every=0, lr=1e-3)
    return sqlm.Config(**{**settings, **overrides}).resolve()


def scored(cfg, batch, world):
    """score replaced: answer k of each problem earns k % 2, the proposer 1 (signal everywhere)."""
    for p in (p for p in batch if p.solved):
        p.solver_rewards = p.task_rewards = [float(k % 2) for k in range(len(p.answers))]
        p.proposer_reward, p.extracted = 1.0, [None] * len(p.answers)
    return batch


def step_seqs(tiny_dir, monkeypatch, cfg):
    """One real train_step; the sequences each policy update and value update received."""
    seen = {"policy": [], "value": []}
    real_policy, real_value = sqlm.policy_update, sqlm.value_update
    monkeypatch.setattr(sqlm, "score", scored)
    monkeypatch.setattr(sqlm, "policy_update", lambda m, r, o, seqs, *a: seen["policy"].append(
        [copy.copy(s) for s in seqs]) or real_policy(m, r, o, seqs, *a))
    monkeypatch.setattr(sqlm, "value_update", lambda c, o, seqs, *a: seen["value"].append(
        [copy.copy(s) for s in seqs]) or real_value(c, o, seqs, *a))
    model, tok = rollout.load(tiny_dir, device="cpu")
    models = sqlm.build_models(cfg, model, CPU, ONE)
    critic_before = copy.deepcopy(models.critic)
    metrics, _ = sqlm.train_step(0, models, tok, cfg, CPU, ONE)
    return seen, metrics, models, critic_before


def test_with_a_critic_the_policy_trains_on_whitened_gae_advantages(tiny_dir, monkeypatch):
    """--critic: the solver's advantages are per token, whiten(r - V_old) over the solver batch with
    V_old the critic's values before its update; the critic updates on the proposer batch, then on
    the solver batch, every step (proposer policy never updated here). Without --critic: one GRPO
    number per sequence and no critic. Guards: --critic ignored, the critic's values taken after
    its update, the critic skipping the proposer batch."""
    cfg = critic_cfg()
    seen, metrics, models, critic_before = step_seqs(tiny_dir, monkeypatch, cfg)
    (solver,) = seen["policy"]
    proposer_batch, solver_batch = seen["value"]
    assert [s.group for s in solver_batch] == [s.group for s in solver]
    assert len(proposer_batch) == cfg.batch * cfg.n  # every valid proposal; none invalid here
    with torch.no_grad():
        old = [sqlm.micro_values(critic_before, [s], cfg, CPU)[0][0][-len(s.completion_ids):]
               for s in solver]
    raw = [s.reward - v.double() for s, v in zip(solver, old)]
    flat = torch.cat(raw)
    want = [(r - flat.mean()) / (flat.var() + 1e-8).sqrt() for r in raw]
    for s, w in zip(solver, want):
        assert torch.is_tensor(s.advantage)
        assert torch.allclose(s.advantage.double(), w, atol=1e-4)
    assert metrics["solver_value_loss"] > 0 and "proposer_value_loss" in metrics
    assert any(not torch.equal(a, b) for a, b in zip(critic_before.parameters(),
                                                     models.critic.parameters()))

    monkeypatch.undo()
    plain = critic_cfg(critic=False)
    seen, metrics, models, _ = step_seqs(tiny_dir, monkeypatch, plain)
    assert models.critic is None and not seen["value"] and "solver_value_loss" not in metrics
    assert all(isinstance(s.advantage, float) for s in seen["policy"][0])


def test_released_code_config_runs_with_a_critic(tiny_dir):
    """--as-released --task code builds a critic (the released PPO with GAE); arith as released and
    code by default do not. Guards: the released rule read from --critic alone."""
    model, _ = rollout.load(tiny_dir, device="cpu")
    for task, released, critic in (("code", True, True), ("code", False, False),
                                   ("arith", True, False)):
        cfg = sqlm.Config(task=task, as_released=released, kl=0).resolve()
        assert (sqlm.build_models(cfg, model, CPU, ONE).critic is not None) == critic


def test_released_code_config_takes_the_released_batch_shape():
    """`--as-released --task code` in force, as exps/coding_selfplay.yaml sets it: 1,024 prompts a
    step, mini-batch 256, no KL, the critic; the arith shape (64, 32) otherwise; a shape given on
    the command line is kept. Guards: the released shape not applied, applied to another task or
    without --as-released, or overriding a given --batch / --minibatch."""
    def in_force(*argv):
        cfg = harness.parse_args(["--model", "m", *argv]).resolve()
        return cfg.batch, cfg.minibatch, cfg.kl_coef, cfg.use_critic
    assert in_force("--task", "code", "--as-released") == (1024, 256, 0.0, True)
    assert in_force("--task", "code") == (64, 32, 0.001, False)
    assert in_force("--task", "arith", "--as-released") == (64, 32, 0.001, False)
    assert in_force("--task", "algebra", "--as-released") == (64, 32, 0.001, False)
    assert in_force("--task", "code", "--as-released", "--batch", "8", "--minibatch", "2") == \
        (8, 2, 0.0, True)
    assert in_force("--task", "code", "--as-released", "--batch", "512")[:2] == (512, 256)


def test_the_critics_optimizer_takes_critic_lr_and_its_own_weights(tiny_dir):
    """The critic's AdamW is over the critic's weights at --critic-lr (released 1e-5), the policy's
    over the policy's at --lr. Guards: the critic stepped by the policy's optimizer or lr."""
    model, _ = rollout.load(tiny_dir, device="cpu")
    models = sqlm.build_models(critic_cfg(critic_lr=3e-4, lr=2e-6), model, CPU, ONE)
    group = models.critic_optimizer.param_groups[0]
    assert group["lr"] == 3e-4 and models.optimizer.param_groups[0]["lr"] == 2e-6
    assert {id(p) for p in group["params"]} == {id(p) for p in models.critic.parameters()}


def test_gamma_and_lambda_reach_the_advantages(tiny_dir):
    """value_baseline's advantages are whiten(GAE(--gamma, --lam)) of the old values: equal to the
    formula at (0.5, 0.7) and different from (1, 1). Guards: gamma or lambda not passed."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    outs = rollout.generate(model, tok, [rollout.chat_prompt(tok, "go")], n=4, max_new_tokens=6,
                            seed=3)
    critic = sqlm.Critic(model)
    advantages = {}
    for gamma, lam in ((0.5, 0.7), (1.0, 1.0)):
        seqs = [sqlm.Seq(s.prompt_ids, s.completion_ids, 0.0, group=0, reward=float(i % 2))
                for i, s in enumerate(outs)]
        sqlm.value_baseline(critic, seqs, critic_cfg(gamma=gamma, lam=lam), CPU, ONE)
        values = torch.nn.utils.rnn.pad_sequence([s.old_value.double() for s in seqs], True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(s.old_value)) for s in seqs], True)
        ref, _ = released_gae(token_rewards_of(seqs, mask), values * mask, gamma, lam)
        want = released_whiten(ref, mask.double())
        for s, row, m in zip(seqs, want, mask):
            assert torch.allclose(s.advantage.double(), row[m.bool()], atol=1e-5)
        advantages[gamma] = torch.cat([s.advantage for s in seqs])
    assert not torch.allclose(advantages[0.5], advantages[1.0])


def token_rewards_of(seqs, mask):
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for i, s in enumerate(seqs):
        out[i, len(s.completion_ids) - 1] = s.reward
    return out


def test_value_clip_reaches_the_loss_and_the_critic_learns(tiny_dir):
    """Repeated value updates on one batch (two mini-batches, so the second sees moved values):
    the value loss falls; with --value-clip 1e-4 the clipped branch is taken on the second
    mini-batch, with 100 never. Guards: --value-clip ignored, the critic's loss not reaching its
    weights."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    outs = rollout.generate(model, tok, [rollout.chat_prompt(tok, "go")], n=8, max_new_tokens=6,
                            seed=4)
    fractions = {}
    for clip in (1e-4, 100.0):
        cfg = critic_cfg(value_clip=clip, minibatch=1, critic_lr=1e-3)
        models = sqlm.build_models(cfg, copy.deepcopy(model), CPU, ONE)
        losses = []
        for _ in range(4):
            seqs = [sqlm.Seq(s.prompt_ids, s.completion_ids, 0.0, group=i // 4, reward=float(i % 2))
                    for i, s in enumerate(outs)]
            sqlm.value_baseline(models.critic, seqs, cfg, CPU, ONE)
            stats = sqlm.value_update(models.critic, models.critic_optimizer, seqs, cfg, CPU, ONE)
            losses.append(stats["value_loss"])
        fractions[clip] = stats["value_clip_frac"]
        if clip == 100.0:
            assert losses[-1] < losses[0]
    assert fractions[1e-4] > 0 and fractions[100.0] == 0


# --- the memory plan with a critic ----------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_the_plan_counts_the_critics_weights(tied):
    """memory.critic_parameter_count is sqlm.Critic's own count (the decoder with its embedding, no
    lm-head, a scalar head), tied head or not; the plan keeps 12 bytes of each resident (fp32
    weights and AdamW's two moments) and adds the critic's update phases. Guards: the lm-head
    counted twice or the critic left out of the plan."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    import memory
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    critic = sqlm.Critic(Qwen2ForCausalLM(config))
    count = memory.critic_parameter_count(config)
    assert count == sum(p.numel() for p in critic.parameters())
    settings = dict(rollout_rows=4, microbatch=2, max_prompt=16, max_response=16, kl=False)
    without = memory.memory_plan(config, **settings)
    with_critic = memory.memory_plan(config, critic=True, **settings)
    assert with_critic["resident"] - without["resident"] == 12 * count
    assert "value_update_peak" in with_critic and "value_update_peak" not in without


def test_the_critics_update_peak_is_predicted():
    """The critic's forward + backward on one micro-batch, measured on CPU (fp32 and bf16 autocast),
    against the plan's value_update phase: within the bounds the policy's phases keep (never more
    than 10% under, at most 30% over)."""
    import json
    import tempfile
    from torch.profiler import ProfilerActivity, profile
    from transformers import Qwen2Config, Qwen2ForCausalLM
    import memory
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1024, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    critic = sqlm.Critic(Qwen2ForCausalLM(config)).train()
    ids = torch.randint(1024, (4, 128), generator=torch.Generator().manual_seed(0))
    attn, comp = torch.ones_like(ids), torch.zeros_like(ids)
    comp[:, 48:] = 1
    for autocast in (False, True):
        def job():
            critic.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                values = critic(ids, attn, comp)
            values.sum().backward()
        job()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            job()
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            prof.export_chrome_trace(f.name)
            events = [e["args"] for e in json.load(open(f.name))["traceEvents"]
                      if e.get("name") == "[memory]"]
        measured = (max(e["Total Allocated"] for e in events)
                    - (events[0]["Total Allocated"] - events[0]["Bytes"]))
        plan = memory.memory_plan(config, rollout_rows=1, microbatch=4, max_prompt=48,
                                  max_response=80, kl=False, gpu=autocast, critic=True)
        ratio = (plan["value_update_peak"] - plan["resident"]) / measured
        assert 0.9 < ratio < 1.3, (autocast, ratio, measured)
        critic.zero_grad(set_to_none=True)


# --- N processes ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_train_the_critic_as_one(tiny_dir, tmp_path):
    """The same 2-step --critic run on one process and under torchrun on two (FSDP2 shards the
    critic like the policy): every critic and policy statistic within 1e-6 (1e-5 relative: a grad
    norm of ~7 is summed in another order), the policy's and the critic's saved weights within 1e-5
    (the critic gathered whole to rank 0), and the critic's AdamW saved sharded; the two-process run
    resumed on two processes from its step-1 checkpoint ends with the same policy and critic, bit
    for bit. Guards: whitening over one process's tokens, the critic's loss not scaled by the
    process count (FSDP2 averages gradients), an idle process missing the critic's collectives, a
    critic AdamW shard not restored on resume."""
    import os
    from conftest import jsonl, launch, weights
    args = ["--task", "arith", "--device", "cpu", "--threads", "1", "--steps", "2", "--batch", "4",
            "--n", "4", "--minibatch", "2", "--microbatch", "2", "--max-response", "16",
            "--lr", "1e-4", "--critic", "--critic-lr", "1e-4", "--proposer-every", "1",
            "--eval-every", "0", "--save-every", "1", "--keep-last", "0", "--model", tiny_dir]
    runs = {}
    for processes in (1, 2):
        runs[processes] = str(tmp_path / f"run{processes}")
        done = launch(args + ["--out", runs[processes]], processes)
        assert done.returncode == 0, done.stderr[-3000:]
    m1, m2 = (jsonl(os.path.join(runs[p], "metrics.jsonl")) for p in (1, 2))
    assert m1[0]["solver_value_loss"] > 0 and "proposer_explained_variance" in m1[1]
    for a, b in zip(m1, m2):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float) and not key.startswith("t_"):
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (a["step"], key)
    w1, w2 = weights(runs[1], 2), weights(runs[2], 2)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5
    from safetensors.torch import load_file
    c1, c2 = (load_file(os.path.join(runs[p], "step-000002", "critic.safetensors")) for p in (1, 2))
    assert c1.keys() == c2.keys() and max((c1[k] - c2[k]).abs().max().item() for k in c1) <= 1e-5
    assert os.path.isdir(os.path.join(runs[2], "step-000002", "critic_optimizer"))

    resumed = str(tmp_path / "resumed")  # the 2-process run as if killed during step 2
    shutil.copytree(runs[2], resumed)
    shutil.rmtree(os.path.join(resumed, "step-000002"))
    done = launch(["--resume", resumed], processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("model.safetensors", "critic.safetensors"):
        a, b = (load_file(os.path.join(run, "step-000002", name)) for run in (runs[2], resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# --- checkpoints and resume -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("critic", [["--critic"], ["--task", "code", "--as-released"]],
                         ids=["critic", "released-code"])
def test_a_resumed_critic_run_equals_the_uninterrupted_one(tiny_dir, tmp_path, critic):
    """A critic run (--critic, or --as-released --task code without --critic) stopped after step 1
    and resumed to step 2 ends with the same policy and critic weights as one run of 2 steps, bit
    for bit: the checkpoint holds the critic (critic.safetensors) and its AdamW state. Guards: the
    critic rebuilt from the initial model on resume, its AdamW moments dropped, the critic read back
    only when --critic is given (a released code run's critic lost on resume)."""
    import os
    import harness
    from conftest import FAST
    from safetensors.torch import load_file
    args = FAST + ["--model", tiny_dir, "--critic-lr", "1e-2", "--lr", "1e-3", "--kl", "0",
                   "--save-every", "1"] + critic
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    assert harness.main(args + ["--steps", "2", "--out", whole]) == 0
    assert harness.main(args + ["--steps", "1", "--out", parts]) == 0
    assert harness.main(["--resume", parts, "--steps", "2"]) == 0
    for name in ("model.safetensors", harness.CRITIC_FILE):
        a, b = (load_file(os.path.join(run, "step-000002", name)) for run in (whole, parts))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    first = load_file(os.path.join(whole, "step-000001", harness.CRITIC_FILE))
    assert any(not torch.equal(first[k], a[k]) for k in a)  # the critic moved in step 2
