"""Self-Questioning Language Models (SQLM, arXiv 2508.03682): the method, readable in one sitting.

One model plays two roles. As proposer it reads a topic prompt and writes a problem; as
solver it answers each problem n times. With no labels, the solver's reward is agreement
with the majority of its own answers (arith, algebra) or the share of the proposer's unit
tests its program passes (code); the proposer is rewarded when its problem is neither
trivial nor impossible for the current solver (Sec. 3). Both roles are trained with the
same clipped policy gradient and GRPO group advantages; with --critic (as released for code)
the advantages come from a learned value model instead (PPO with GAE).

One step (`train_step`), in the order the functions below run:
  1. proposer rollout: batch x n proposals from the topic prompt     (propose)
  2. parse each into a record; invalid ones leave both updates        (parse)
  3. solver rollout: n answers per valid problem                      (solve)
  4. rewards: majority vote or unit tests; proposer reward            (score)
  5. GRPO advantages per group, the sequences each role trains on     (to_sequences)
  6. old log-probs (training model) and KL-reference log-probs        (prepare)
     --critic: old values, GAE advantages and returns                 (value_baseline)
  7. --critic: the critic's update on both roles                      (value_update)
     solver update; proposer update every `proposer_every` steps     (policy_update)
  8. rebuild the bf16 sampling copy (GPU), freed during 6-7           (refresh_sampler)
`train` is the loop around it, and `build_models` makes what a step trains and samples with (the
policy, its sampling copy, the frozen KL reference, AdamW, the critic). `world` (parallel.py) is this process
among the run's: for one process `parallel.ONE`, whose methods hand back their input (its share is
everything, its micro-batches are consecutive slices); under torchrun each process works on a share
of steps 1, 3 and 4, every process then holds every record, and each trains on the sequences a
mini-batch deals it. What a reader skips on first reading (flag checks, the CLI, run directories,
checkpoints and resume, logging, interrupts, memory fitting) is in harness.py, which imports this
module and never the reverse.

Simplifications, stated up front: no sequence packing, one epoch per batch; the code task's
released batch shape (1,024 prompts, mini-batch 256) comes with --as-released, not with --critic.

    python sqlm.py --task arith                                   # Qwen2.5-3B-Instruct, one GPU
    python sqlm.py --task arith --model /tmp/tiny --batch 4 ...   # offline, CPU
    torchrun --nproc-per-node 4 sqlm.py -- --task arith           # 4 GPUs (FSDP2)
"""
# `python sqlm.py`: harness.main, which imports this file once, as `sqlm`
if __name__ == "__main__":
    import cli
    # before torch loads
    cli.exit_on_signals("sqlm.py: interrupted while starting; nothing was written")
    import harness
    harness.end(harness.main())

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import parallel
import prompts
import rewards
import rollout

# --- config: every default is the paper's released setting unless its comment says otherwise ---

DEFAULT_MODELS = {"arith": "Qwen/Qwen2.5-3B-Instruct", "algebra": "Qwen/Qwen2.5-3B-Instruct",
                  "code": "Qwen/Qwen2.5-Coder-3B-Instruct"}


def opt(default, help, choices=None):
    """A Config field whose comment is its --help line (and whose choices argparse enforces)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Config:
    task: str = opt("arith", "the self-play task", prompts.TASKS)
    model: str = opt("", "hub id or local dir; '' = the paper's model for the task")
    device: str = opt("", "'' = cuda if available, else cpu")
    steps: int = opt(100, "training steps")
    batch: int = opt(0, "proposer prompts per step; 0 = 64 (--as-released --task code: 1,024, "
                        "as released)")
    n: int = opt(4, "proposals per prompt, and answers per problem")
    minibatch: int = opt(0, "groups (prompts/problems) per optimizer step; 0 = 32 (32 x 4 = 128 "
                            "sequences; --as-released --task code: 256)")
    microbatch: int = opt(8, "sequences per forward/backward (memory only; gradient unchanged)")
    lr: float = opt(1e-6, "AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay (verl actor default)")
    grad_clip: float = opt(1.0, "global grad-norm clip")
    clip_low: float = opt(0.2, "PPO ratio clip, lower side")
    clip_high: float = opt(0.2, "PPO ratio clip, upper side")
    clip_c: float = opt(3.0, "dual-clip bound for negative advantages; 0 disables")
    kl: float = opt(0.001, "k3 KL-to-initial-model coefficient; 0 drops the reference model")
    adv_norm: str = opt("std", "std (GRPO) | none (Dr. GRPO: no division by the group std)",
                        ("std", "none"))
    proposer_every: int = opt(5, "proposer update period in steps (5, 10, ... from 1); 0 = never")
    proposer_reward: str = opt("sqlm", "sqlm: 1 < m < n | azr | rzero", ("sqlm", "azr", "rzero"))
    solver_reward: str = opt("", "'' = majority (arith, algebra) / tests (code); "
                                 "format = format-only baseline",
                             ("", "majority", "tests", "format"))
    judge: str = opt("exact", "code output judge: exact (released: text equal after stripping "
                              "trailing newlines) | lenient (whitespace, list punctuation, integer "
                              "spelling)", ("exact", "lenient"))
    cat: bool = opt(False, "Code-as-Task filter: reference passes every test, wrong solution "
                           "fails one")
    arith_check: bool = opt(False, "arith: a proposal must hold one well-formed arithmetic "
                                   "expression")
    as_released: bool = opt(False, "reproduce the released code where it differs from the paper's "
                                   "text (README: 'Where this differs from the released code')")
    max_prompt: int = opt(512, "longer solver prompts invalidate their proposal (released: cut "
                               "from the left)")
    max_response: int = opt(0, "0 = per task: 1024 arith, 3072 algebra, 512 code")
    temperature: float = opt(1.0, "sampling temperature (log-probs use the same)")
    top_p: float = opt(1.0, "nucleus sampling; no top-k anywhere: the sampled policy is the "
                            "trained one")
    rollout_rows: int = opt(256, "most sequences per generate call (KV-cache memory only; samples "
                                 "unchanged)")
    threads: int = opt(0, "torch CPU threads; 0 = torch's default (docs/runs.md: on a shared CPU "
                          "fewer can be faster)")
    seed: int = opt(0, "run seed: sampling streams derive from (seed, step, role, prompt)")
    eval_every: int = opt(5, "greedy eval at step 0 and every k steps; 0 = never")
    eval_limit: int = opt(0, "0 = the whole held-out set")
    eval_data: str = opt("", "JSONL file replacing the built-in held-out set (eval.py's format)")
    eval_samples: int = opt(0, "also k samples per problem at --temperature: sampled accuracy, "
                               "pass@k, maj@k")
    save_every: int = opt(10, "save a checkpoint every k steps and at the end; 0 = at the end "
                              "only (ours: a kill loses at most k steps)")
    keep_last: int = opt(2, "complete checkpoints kept: older ones are deleted once a newer one is "
                            "written; 0 = keep all (a 3B one with AdamW state is ~37 GB)")
    out: str = opt("", "run directory (must not hold a run already); '' = runs/<task>-<time>")
    resume: str = opt("", "run directory to continue from its last complete checkpoint (none yet: "
                          "from step 0)")
    critic: bool = opt(False, "PPO's learned value baseline (GAE) instead of GRPO's group baseline; "
                              "on with --as-released --task code (a second model and its AdamW)")
    critic_lr: float = opt(1e-5, "the critic's AdamW learning rate (released)")
    value_clip: float = opt(0.5, "clip of the critic's prediction around its old value (released)")
    gamma: float = opt(1.0, "GAE discount (released: 1)")
    lam: float = opt(1.0, "GAE lambda (released: 1); at gamma = lambda = 1, A_t = r - V_t")
    grad_checkpointing: bool = opt(False, "recompute activations in backward (memory for speed)")
    fit_memory: bool = opt(True, "on a GPU, set --rollout-rows and --microbatch to the largest the "
                                 "memory plan fits on the card; --no-fit-memory keeps them as "
                                 "given")

    def resolve(self):
        """Fill the task-dependent defaults (model, response limit, solver reward, batch shape);
        idempotent. The flags' ranges are checked by harness.check_config."""
        released_code = self.as_released and self.task == "code"  # exps/coding_selfplay.yaml
        self.batch = self.batch or (1024 if released_code else 64)
        self.minibatch = self.minibatch or (256 if released_code else 32)
        self.model = self.model or DEFAULT_MODELS[self.task]
        self.max_response = self.max_response or prompts.MAX_RESPONSE[self.task]
        self.solver_reward = self.solver_reward or ("tests" if self.task == "code" else "majority")
        return self

    @property
    def kl_coef(self):
        """The KL coefficient in force: the released code-task config has no KL term."""
        return 0.0 if self.as_released and self.task == "code" else self.kl

    @property
    def use_critic(self):
        """A learned critic in force: --critic, or the released code-task config (PPO with GAE)."""
        return self.critic or (self.as_released and self.task == "code")


# --- the method, one function per equation -------------------------------------------

def grpo_advantages(rewards_, group_size, norm="std", eps=1e-6):
    """GRPO advantage per sample: A_i = (r_i - mean(r_group)) / (std(r_group) + eps).

    rewards_: (N,) with N = groups * group_size, group g at [g*k:(g+1)*k], group_size >= 2 (a
    group of one carries no comparison; harness.check_config refuses --n 1). std is the unbiased
    (n-1) estimate, as the released code computes it. norm="none" drops the division (Dr. GRPO).
    """
    r = torch.as_tensor(rewards_, dtype=torch.float64).view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if norm == "std":
        adv = adv / (r.std(1, keepdim=True) + eps)  # torch.std is the unbiased (n-1) estimate
    return adv.view(-1).float()


def clipped_pg_loss(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.2, normalizer=None,
                    clip_c=3.0):
    """PPO-clip policy-gradient loss, token-mean over the mini-batch (Sec. 3, GRPO objective).

    per token: l = -min(r*A, clip(r, 1-clip_low, 1+clip_high)*A), r = exp(logp - old_logp);
    dual clip (A < 0 only): l = min(l, -clip_c*A), so a huge ratio on a bad token cannot blow up
    (clip_c None or 0 disables it).
    loss = sum(l * mask) / normalizer, normalizer = mask.sum() by default; pass the token
    count of the whole mini-batch so that micro-batches sum to the mini-batch's gradient.
    logp, old_logp, mask: (B, T); advantages: (B,) or (B, T).
    """
    mask = mask.float()
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)  # exp() stays finite
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if clip_c:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * clip_c), per_token)
    normalizer = mask.sum() if normalizer is None else normalizer
    loss = (per_token * mask).sum() / normalizer
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1)
        stats = {"clip_frac": ((clipped > unclipped).float() * mask).sum().item() / tokens.item(),
                 "approx_kl": (-log_ratio * mask).sum().item() / tokens.item(),
                 "ratio": (ratio * mask).sum().item() / tokens.item()}
    return loss, stats


def kl_penalty(logp, ref_logp, mask, normalizer=None):
    """k3 estimator of KL(pi || pi_ref), token-mean: exp(ref - logp) - (ref - logp) - 1, clamped to
    [-10, 10]."""
    delta = (ref_logp - logp).clamp(-20.0, 20.0)  # exp() stays finite
    k3 = (delta.exp() - delta - 1).clamp(-10.0, 10.0)
    normalizer = mask.sum() if normalizer is None else normalizer
    return (k3 * mask).sum() / normalizer


def gae_advantages(rewards_, values, mask, gamma=1.0, lam=1.0):
    """Generalised advantage estimation (PPO's learned baseline; the released code task).

    The task reward r sits on each sequence's last completion token, and the value after it is 0:
        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},
        returns R_t = A_t + V_t   (targets of the critic).
    At gamma = lam = 1 (released) this is A_t = r - V_t and R_t = r. rewards_: (B,); values, mask:
    (B, T), each row's completion tokens first (right-padded). Returns (A, R), (B, T), 0 on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    token_rewards = torch.zeros_like(values)
    last = mask.sum(1).long() - 1
    token_rewards[torch.arange(len(last)), last] = torch.as_tensor(rewards_, dtype=values.dtype)
    advantages, running = torch.zeros_like(values), torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else 0.0
        running = token_rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten(advantages, world):
    """A_t -> (A_t - mean) / sqrt(var + 1e-8), mean and unbiased variance over every completion
    token of one role's batch (on N processes, of all of them), as released (`masked_whiten`).
    advantages: a list of (T_i,) tensors, one per sequence."""
    flat = torch.cat(advantages).double()
    sums = world.sum({"n": float(flat.numel()), "sum": flat.sum().item()})
    count, mean = sums["n"], sums["sum"] / sums["n"]
    var = world.sum({"sq": ((flat - mean) ** 2).sum().item()})["sq"] / (count - 1)
    return [((a.double() - mean) * (var + 1e-8) ** -0.5).to(a.dtype) for a in advantages]


def clipped_value_loss(values, old_values, returns, mask, clip=0.5, normalizer=None):
    """PPO's clipped value loss, token-mean: per token max((V - R)^2, (V_clip - R)^2) with
    V_clip = clamp(V, V_old - clip, V_old + clip), so one update cannot move a value far from the
    one its advantage was computed with. Returns (loss, stats: clip fraction, mean value)."""
    mask = mask.to(values.dtype)
    clipped = torch.clamp(values, old_values - clip, old_values + clip)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped - returns) ** 2
    normalizer = mask.sum() if normalizer is None else normalizer
    loss = (torch.maximum(unclipped_loss, clipped_loss) * mask).sum() / normalizer
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1).item()
        stats = {"value_clip_frac": ((clipped_loss > unclipped_loss).float() * mask).sum().item()
                 / tokens,
                 "value_mean": (values * mask).sum().item() / tokens}
    return loss, stats


# --- one record per proposal ----------------------------------------------------------

@dataclass
class Proposal:
    """Everything a step derives from one proposal, filled in the order the step runs.

    Its proposer group is `index // n` (the n proposals from one prompt); its n answers are
    one solver group, numbered by `index` too, so mini-batches follow the step's batch
    whatever was dropped. `valid`: it parsed into a problem (reason "ok"); `solved`: it has
    answers. An invalid proposal is not solved and counts as proposer reward 0 in its group;
    as released it is solved as its raw text instead.
    """
    index: int                       # position among the step's batch x n proposals
    sample: rollout.Sample           # the proposer's sample
    problem: rewards.Problem = None  # what the solver sees (None: it did not parse)
    reason: str = "ok"               # "ok", or why the proposal is invalid
    answers: list = field(default_factory=list)         # the n solver Samples
    extracted: list = field(default_factory=list)       # each answer's vote (or program, code)
    majority: object = None                             # most common of `extracted`, None included
    majority_count: int = 0
    task_rewards: list = field(default_factory=list)    # majority vote or test pass rates
    solver_rewards: list = field(default_factory=list)  # what the solver trains on (task or format)
    proposer_reward: float = 0.0
    truth: str = None                # arith diagnostic: the problem's true value, never a reward

    @property
    def valid(self):
        return self.reason == "ok"

    @property
    def solved(self):
        return bool(self.answers)


@dataclass
class Seq:
    """One trained sequence: a prompt, its sampled completion, and the completion's advantage."""
    prompt_ids: list
    completion_ids: list
    advantage: object              # GRPO: one float; with a critic: (len(completion_ids),) GAE
    # proposal index (solver) or prompt index (proposer) in the step's batch
    group: int
    reward: float = 0.0            # the reward its advantage came from
    # in the first mini-batch of an update: old log-probs = current, detached
    on_policy: bool = False
    old_logp: torch.Tensor = None  # (len(completion_ids),) under the training model pre-update
    ref_logp: torch.Tensor = None  # same, under the frozen initial model (KL term)
    old_value: torch.Tensor = None  # same, the critic's values before its update
    returns: torch.Tensor = None   # same, the critic's targets (GAE)


# --- steps 1-4: rollouts and rewards ---------------------------------------------------

def derive_seed(*keys):
    """An independent 63-bit seed per (run seed, step, role, prompt): a resumed run samples what it
    would have."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sample(sampler, tokenizer, prompt_ids, keys, cfg, seed, world, label="sample"):
    """cfg.n samples per prompt at the run's temperature and top-p; seed: a key tuple.

    Prompt i draws from its own stream, derived from (seed, keys[i]), keys[i] being its index in the
    step (the prompt's, or that of the proposal a problem came from), so the samples are the same
    however the prompts are split into generate calls (--rollout-rows is a memory knob only) or
    across processes.
    """
    seeds = [derive_seed(*seed, key) for key in keys]
    # shown only for a phase longer than 10 s
    show = rollout.progress_printer(label, quiet_seconds=10)

    def progress(out):
        if world.main:
            show(len(out), len(prompt_ids) * cfg.n,
                 {"tokens": sum(len(s.completion_ids) for s in out)})
    return rollout.generate_many(sampler, tokenizer, prompt_ids, cfg.n, seeds, cfg.rollout_rows,
                                 progress, max_new_tokens=cfg.max_response,
                                 temperature=cfg.temperature, top_p=cfg.top_p)


def propose(sampler, tokenizer, cfg, seed, world):
    """Step 1: batch x n proposals from the topic prompt, parsed into one record each (each process
    samples and parses its share of the prompts; every process returns every record)."""
    topic = rollout.chat_prompt(tokenizer, prompts.proposer_prompt(cfg.task, cat=cfg.cat))
    mine = world.share(range(cfg.batch))
    samples = sample(sampler, tokenizer, [topic] * len(mine), mine, cfg, seed, world, "propose")
    return world.gather(parse(cfg, samples, first=mine.start * cfg.n))


def parse(cfg, samples, first=0):
    """Step 2: one record per proposal (numbered from `first`), with its problem or the reason it is
    invalid (truncated proposals are parsed too, as released). --cat: the problem must carry a
    reference solution that passes its tests and a wrong one that fails one (all checks of a step in
    one sandbox call)."""
    batch = [Proposal(first + i, s, *rewards.parse_proposal(cfg.task, s.text, cat=cfg.cat,
                                                             released=cfg.as_released,
                                                             arith_check=cfg.arith_check))
             for i, s in enumerate(samples)]
    if cfg.cat:
        candidates = [p for p in batch if p.valid]
        for p, (ok, reason) in zip(candidates,
                                   rewards.cat_filter([p.problem for p in candidates],
                                                      lenient=cfg.judge == "lenient")):
            p.problem, p.reason = (p.problem if ok else None), reason
    return batch


def solve(sampler, tokenizer, cfg, batch, seed, world):
    """Step 3: n answers to each valid proposal (as released: to every proposal, an invalid one as
    its raw text). A solver prompt longer than `max_prompt` invalidates its proposal (released: it
    is cut from the left instead). Each process answers a share of the problems; every process
    returns every record."""
    todo, prompt_ids = [], []
    for p in batch:
        if not (p.valid or cfg.as_released):
            continue
        # released: code gets no tests, so scores 0
        problem = p.problem or rewards.Problem(p.sample.text)
        ids = rollout.chat_prompt(tokenizer, prompts.solver_prompt(cfg.task, problem.text))
        if len(ids) > cfg.max_prompt and not cfg.as_released:
            p.problem, p.reason = None, "prompt too long"
            continue
        p.problem = problem
        todo.append(p)
        prompt_ids.append(ids[-cfg.max_prompt:])
    todo, prompt_ids = world.share(todo), world.share(prompt_ids)
    answers = iter(sample(sampler, tokenizer, prompt_ids, [p.index for p in todo], cfg, seed, world,
                          "solve"))
    for p in todo:
        p.answers = [next(answers) for _ in range(cfg.n)]
    return world.merge(batch, todo)


def score(cfg, batch, world):
    """Step 4: each solved proposal's votes, task rewards, solver rewards and proposer reward.

    Task rewards: majority (a sample scores 1 iff its answer equals the non-None majority) or
    tests (the share of the proposer's tests its program passes, sandboxed). The solver is
    trained on them, or with --solver-reward format on 1 per parseable answer. The proposer
    reward always reads the task rewards (rewards.proposer_reward, sqlm: 1 < m < n for the
    vote, 0 < mean < 1 for tests): the format baseline changes what the solver learns, not
    which problems count as neither trivial nor impossible. Each process scores a share of the
    solved proposals (the sandbox's work, for code); every process returns every record.
    """
    solved = world.share([p for p in batch if p.solved])
    code = cfg.task == "code"
    for p in solved:
        p.extracted = [rewards.extract_program(s.text) if code
                       else rewards.extract_answer(s.text, cfg.as_released) for s in p.answers]
        p.majority, p.majority_count = vote = rewards.majority_vote(p.extracted)
        if not code:
            p.task_rewards = rewards.majority_solver_rewards(p.extracted, vote)
    if code:  # every program x test of the step in one sandbox call
        rates = iter(rewards.test_pass_rates([x for p in solved for x in p.extracted],
                                             [p.problem.tests for p in solved for _ in p.answers],
                                             lenient=cfg.judge == "lenient"))
        for p in solved:
            p.task_rewards = [next(rates) for _ in p.answers]
    for p in solved:
        p.solver_rewards = (rewards.format_solver_rewards([s.text for s in p.answers],
                                                          cfg.task, cfg.as_released)
                            if cfg.solver_reward == "format" else p.task_rewards)
        p.proposer_reward = rewards.proposer_reward(p.task_rewards, rule=cfg.proposer_reward,
                                                    kind="tests" if code else "majority")
        if cfg.task == "arith":
            p.truth = rewards.arith_truth(p.problem.text)
    return world.merge(batch, solved)


# --- steps 5-8: advantages, log-probs, the update, the sampling copy -------------------

def to_sequences(batch, cfg, proposer_too):
    """Step 5: GRPO advantages per group and the sequences each update trains on (with a critic
    the advantages are GAE's, from `value_baseline`).

    Solver: every solved proposal's n answers, one group each. Proposer (when it updates, or
    every step with a critic, which learns from both roles): the n proposals of a prompt form a
    group, an unsolved proposal counting as reward 0; invalid proposals are then masked out of
    the update (released: all are trained).
    """
    solved = [p for p in batch if p.solved]
    solver_rewards = [r for p in solved for r in p.solver_rewards]
    solver_adv = iter(grpo_advantages(solver_rewards, cfg.n, cfg.adv_norm).tolist()
                      if solved else [])
    rewards_ = iter(solver_rewards)
    solver = [Seq(s.prompt_ids, s.completion_ids, next(solver_adv), group=p.index,
                  reward=next(rewards_)) for p in solved for s in p.answers]
    if not proposer_too:
        return solver, []
    proposer_adv = grpo_advantages([p.proposer_reward for p in batch], cfg.n, cfg.adv_norm).tolist()
    proposer = [Seq(p.sample.prompt_ids, p.sample.completion_ids, a, group=p.index // cfg.n,
                    reward=p.proposer_reward)
                for p, a in zip(batch, proposer_adv) if p.valid or cfg.as_released]
    return solver, proposer


def mark_on_policy(seqs, cfg):
    """The first mini-batch of an update runs before any weight moves: its old log-probs are its
    current ones, so `prepare` skips them and the update detaches them (ratio exactly 1)."""
    if seqs:
        first = min(s.group for s in seqs) // cfg.minibatch
        for s in seqs:
            s.on_policy = s.group // cfg.minibatch == first


def minibatches(seqs, cfg):
    """The update's mini-batches: k holds groups [k*minibatch, (k+1)*minibatch) of the step's batch
    whatever was dropped (8 solver and 2 proposer steps at the paper's shape, fewer only when a
    whole mini-batch's proposals were invalid)."""
    out = {}
    for s in seqs:
        out.setdefault(s.group // cfg.minibatch, []).append(s)
    return [out[k] for k in sorted(out)]


def micro_logprobs(model, seqs, cfg, device):
    """(B, T) completion log-probs of a micro-batch under `model` (at the sampling temperature), and
    its mask."""
    ids, attn, comp = rollout.pack([(s.prompt_ids, s.completion_ids) for s in seqs], pad_id=0,
                                   device=device)
    with rollout.autocast(device):
        logp = rollout.token_logprobs(model, ids, attn, comp, temperature=cfg.temperature)
    return logp, comp


@torch.no_grad()
def prepare(model, ref_model, seqs, cfg, device, world):
    """Step 6: old log-probs from the training model and reference log-probs from the frozen one,
    for one role's update (on N processes: of the sequences dealt to this one).

    Each micro-batch is the one the update will run (`minibatches`, then `world.micro_batches`): the
    same rows, padding and shapes give the same rounding, so until the policy moves its log-probs
    equal these bit for bit: the KL term is exactly 0 with exactly 0 gradient, and the ratio
    exactly 1 (another layout would differ by rounding, ~1e-7, which AdamW would scale to a full
    step in a direction rounding chose). A sequence marked `on_policy` (the first mini-batch of the
    solver update) skips the old forward: its old log-probs are its current ones, detached, in the
    update.
    """
    for minibatch in minibatches(seqs, cfg):
        for micro in world.micro_batches(minibatch, cfg.microbatch):
            for name, net in (("ref_logp", ref_model), ("old_logp", model)):
                if net is None or (name == "old_logp" and minibatch[0].on_policy):
                    continue
                # an empty micro-batch (N processes: this one has run its share) still joins the
                # others' collectives with a forward, whose log-probs are not kept
                logp, comp = micro_logprobs(net, micro or minibatch[:1], cfg, device)
                for s, row, m in zip(micro, logp, comp.bool()):
                    setattr(s, name, row[m])


def micro_values(critic, seqs, cfg, device):
    """(B, T) the critic's value of each completion token of a micro-batch, and its mask."""
    ids, attn, comp = rollout.pack([(s.prompt_ids, s.completion_ids) for s in seqs], pad_id=0,
                                   device=device)
    with rollout.autocast(device):
        values = critic(ids, attn, comp)
    return values, comp


@torch.no_grad()
def value_baseline(critic, seqs, cfg, device, world):
    """Step 6 with a critic: each sequence's old values (the critic before its update, in the
    update's micro-batches), then its GAE advantages, whitened over the role's batch, and returns.
    The GRPO advantage of `to_sequences` is replaced."""
    for minibatch in minibatches(seqs, cfg):
        for micro in world.micro_batches(minibatch, cfg.microbatch):
            values, comp = micro_values(critic, micro or minibatch[:1], cfg, device)
            for s, row, m in zip(micro, values, comp.bool()):
                s.old_value = row[m].float()
    if not seqs:
        return
    mine = [s for s in seqs if s.old_value is not None]  # N processes: the ones dealt to this one
    if not mine:  # fewer sequences than processes: join the others' collectives
        whiten([torch.zeros(0)], world)
        return
    values = torch.nn.utils.rnn.pad_sequence([s.old_value for s in mine], batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s.old_value) for s in mine],
                                           batch_first=True)
    advantages, returns = gae_advantages([s.reward for s in mine], values.double(), mask, cfg.gamma,
                                         cfg.lam)
    lengths = [len(s.old_value) for s in mine]
    advantages = whiten([row[:n] for row, n in zip(advantages, lengths)], world)
    for s, a, row, n in zip(mine, advantages, returns, lengths):
        s.advantage, s.returns = a.float(), row[:n].float()


def per_token(mask, rows):
    """(B, T) from one (T_i,) tensor per row, placed at the row's completion tokens (mask)."""
    return torch.zeros(mask.shape, dtype=rows[0].dtype, device=mask.device).masked_scatter(
        mask, torch.cat(rows).to(mask.device))


def backward_in_micro_batches(model, minibatch, cfg, device, world, forward, micro_loss):
    """Backward of one mini-batch's loss (the policy's or the critic's) in micro-batches; returns
    its token-weighted statistics. `forward(model, micro, cfg, device)` gives (B, T) outputs and
    the completion mask; `micro_loss(outputs, mask, micro, normalizer, tokens)` the micro-batch's
    loss and its statistics as token-weighted sums.

    Ours: every micro-batch divides by the token count of the whole mini-batch (over all
    processes), so the summed gradient is the same however the mini-batch is split (a
    per-micro-batch normaliser would weight short micro-batches' tokens more). Released: each
    micro-batch's token mean, averaged over the micro-batches (of all processes). Each process
    runs the micro-batches dealt to it; FSDP2 averages the processes' gradients, so each loss is
    scaled by their number to make the average the sum.
    """
    tokens = sum(len(s.completion_ids) for s in minibatch)
    count = world.count_micro_batches(minibatch, cfg.microbatch)  # released: every process's
    totals = {}
    for micro in world.micro_batches(minibatch, cfg.microbatch):
        # N processes: this one has run its share; a zero loss joins the others' collectives
        if not micro:
            forward(model, minibatch[:1], cfg, device)[0].sum().mul(0.0).backward()
            continue
        outputs, comp = forward(model, micro, cfg, device)
        mask = comp.bool()
        normalizer = mask.sum().clamp(min=1) * count if cfg.as_released else tokens
        loss, stats = micro_loss(outputs, mask, micro, normalizer, tokens)
        (loss * world.size).backward()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value / tokens
    return world.sum(totals)


def accumulate_gradients(model, ref_model, minibatch, cfg, device, world):
    """The policy's gradient of one mini-batch: clipped_pg_loss + kl * kl_penalty."""
    def micro_loss(logp, mask, micro, normalizer, tokens):
        old = per_token(mask, [row[m].detach() if s.on_policy else s.old_logp
                               for s, row, m in zip(micro, logp, mask)])
        adv = per_token(mask, [s.advantage if torch.is_tensor(s.advantage) else
                               torch.full((len(s.completion_ids),), float(s.advantage))
                               for s in micro])
        loss, stats = clipped_pg_loss(logp, old, adv, mask, cfg.clip_low, cfg.clip_high,
                                      normalizer, cfg.clip_c)
        stats = {k: v * mask.sum().item() for k, v in stats.items()}  # token-weighted sums
        stats["pg_loss"] = loss.item() * tokens
        if cfg.kl_coef and ref_model is not None:
            kl = kl_penalty(logp, per_token(mask, [s.ref_logp for s in micro]), mask, normalizer)
            loss = loss + cfg.kl_coef * kl
            stats["kl"] = kl.item() * tokens
        return loss, stats
    return backward_in_micro_batches(model, minibatch, cfg, device, world, micro_logprobs,
                                     micro_loss)


def value_gradients(critic, minibatch, cfg, device, world):
    """The critic's gradient of one mini-batch: clipped_value_loss against the GAE returns."""
    def micro_loss(values, mask, micro, normalizer, tokens):
        old, returns = (per_token(mask, [getattr(s, name) for s in micro])
                        for name in ("old_value", "returns"))
        loss, stats = clipped_value_loss(values, old, returns, mask, cfg.value_clip, normalizer)
        stats = {k: v * mask.sum().item() for k, v in stats.items()}  # token-weighted sums
        stats["value_loss"] = loss.item() * tokens
        return loss, stats
    return backward_in_micro_batches(critic, minibatch, cfg, device, world, micro_values,
                                     micro_loss)


def optimizer_steps(model, optimizer, seqs, cfg, gradients):
    """One epoch over `seqs`, one optimizer step per mini-batch of `minibatch` groups (x n
    sequences): `gradients(minibatch)` accumulates its gradient and returns its statistics, then
    AdamW steps after a global grad-norm clip. Returns the mean of each statistic."""
    model.train()
    batches = minibatches(seqs, cfg)
    totals = {}
    for minibatch in batches:
        optimizer.zero_grad(set_to_none=True)
        stats = gradients(minibatch)
        stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                            cfg.grad_clip).item()
        optimizer.step()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value / len(batches)
    # no gradients held through the next rollout (12 GB at 3B)
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return totals


def policy_update(model, ref_model, optimizer, seqs, cfg, device, world):
    """Step 7: the policy's epoch over `seqs` (loss = clipped_pg_loss + kl * kl_penalty)."""
    return optimizer_steps(model, optimizer, seqs, cfg, lambda minibatch: accumulate_gradients(
        model, ref_model, minibatch, cfg, device, world))


def value_update(critic, optimizer, seqs, cfg, device, world):
    """Step 7 with a critic: its epoch over `seqs` (clipped_value_loss), before the policy's.
    Adds how much of the returns the old values explain, as released (`vf_explained_var`):
    1 - Var(R - V) / (Var(R) + 1e-5), unbiased variances over every completion token."""
    stats = optimizer_steps(critic, optimizer, seqs, cfg, lambda minibatch: value_gradients(
        critic, minibatch, cfg, device, world))
    mine = [s for s in seqs if s.old_value is not None]
    returns = torch.cat([s.returns for s in mine]).double() if mine else torch.zeros(0)
    residual = returns - (torch.cat([s.old_value for s in mine]).double() if mine else returns)
    sums = world.sum({"n": float(len(returns)), "r": returns.sum().item(),
                      "r2": (returns ** 2).sum().item(), "e": residual.sum().item(),
                      "e2": (residual ** 2).sum().item()})
    n = sums["n"]
    var = {k: (sums[k + "2"] - sums[k] ** 2 / n) / (n - 1) for k in ("r", "e")} if n > 1 else None
    stats["explained_variance"] = 1.0 - var["e"] / (var["r"] + 1e-5) if var else 0.0
    return stats


# --- the models a step uses -------------------------------------------------------------

@dataclass
class Models:
    """What a step trains and samples with (`build_models`)."""
    policy: torch.nn.Module     # trained (fp32); on N processes the FSDP2 root around `model`
    model: torch.nn.Module      # the Hugging Face model inside the policy: what a checkpoint saves
    sampler: torch.nn.Module    # sampling copy: bf16 on a GPU; on one CPU process the model itself
    reference: torch.nn.Module  # the frozen initial model of the KL term (None when kl = 0)
    optimizer: torch.optim.Optimizer
    critic: torch.nn.Module = None  # the learned value baseline (--critic), FSDP2-sharded alike
    critic_optimizer: torch.optim.Optimizer = None


class Critic(torch.nn.Module):
    """PPO's value model, as released: the initial policy's decoder with a scalar head in place of
    its lm-head (verl: AutoModelForTokenClassification, one label, dropout 0; the head initialised
    as transformers does, normal(0, initializer_range), bias 0). Its forward gives each completion
    token's value V(s_t), read off the hidden state before the token, where its log-prob is read."""

    def __init__(self, model, seed=0):
        super().__init__()
        self.decoder = copy.deepcopy(model.get_decoder())
        self.head = torch.nn.Linear(model.config.hidden_size, 1, device=model.device)
        weight = torch.randn(self.head.weight.shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            self.head.weight.copy_(weight * model.config.initializer_range)
            self.head.bias.zero_()

    def get_decoder(self):
        return self.decoder

    def forward(self, input_ids, attention_mask, completion_mask):
        hidden = rollout.last_hidden(self.decoder, input_ids, attention_mask)
        values = self.head(hidden).squeeze(-1).float()  # (B, T): the state ending at token t
        return torch.nn.functional.pad(values[:, :-1], (1, 0)) * completion_mask


def build_models(cfg, model, device, world, resumed=False, kl_dtype=torch.float32,
                 critic_state=None):
    """The models of a run, from the loaded policy `model` (fp32, on `device`; on N processes on
    the CPU).

    - KL reference: the frozen *initial* model (after a resume, `cfg.model` loaded again), fp32 and
      run under the policy's own autocast, so that KL = 0 exactly while the policy is unchanged (a
      bf16 copy differs by ~0.006 per token); bf16 only where the memory plan fits nothing else
      (`kl_dtype`).
    - Sampling copy: at lr 1e-6 a bf16 weight would not move, so the trained weights stay fp32 and a
      GPU samples from a bf16 copy; N CPU processes from a whole fp32 copy (the trained weights are
      sharded); one CPU process from the model itself.
    - Critic (--critic): `Critic` from the initial weights, or a resumed run's `critic_state`, fp32
      like the policy, with its own AdamW at --critic-lr.
    - N processes: FSDP2 shards the policy, the reference and the critic alike (parallel.shard).
    - AdamW over the policy's (sharded) weights.
    """
    reference = None
    if cfg.kl_coef:
        reference = (rollout.load(cfg.model, device=model.device)[0] if resumed
                     else copy.deepcopy(model))
        reference.requires_grad_(False)
        for p in reference.parameters():  # parameters only: the fp32 RoPE buffers stay fp32
            p.data = p.data.to(kl_dtype)
    critic = Critic(model, seed=cfg.seed) if cfg.use_critic else None
    if critic is not None and critic_state is not None:
        critic.load_state_dict(critic_state)
    if cfg.grad_checkpointing:
        model.activation_checkpointing_enable()
        if critic is not None:
            critic.decoder.activation_checkpointing_enable()
    sampler = (bf16_copy(model).to(device) if device.type == "cuda" else
               copy.deepcopy(model) if world.size > 1 else model)
    policy = model
    if world.size > 1:
        policy = parallel.shard(model, world)
        reference = parallel.shard(reference, world) if reference is not None else None
        critic = parallel.shard(critic, world, root=critic) if critic is not None else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    critic_optimizer = (torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr,
                                          weight_decay=cfg.weight_decay) if critic else None)
    return Models(policy, model, sampler, reference, optimizer, critic, critic_optimizer)


def bf16_copy(model):
    """A bf16 copy of the weights for sampling. Parameters only: `.to(bfloat16)` would also round
    the fp32 RoPE buffers (inv_freq), shifting positions by radians at long range, so the sampled
    policy would not be the trained one (from_pretrained(dtype=bfloat16) keeps them fp32 too)."""
    sampler = copy.deepcopy(model)
    for p in sampler.parameters():
        p.data = p.data.to(torch.bfloat16)
    return sampler.requires_grad_(False)


@torch.no_grad()
def release_sampler(sampler, model):
    """Before step 6: a separate sampling copy gives its memory to the update (2 bytes per weight on
    a GPU: 6 GB at 3B, what lets the paper's step with its KL term fit one 80 GB card,
    docs/memory.md); `refresh_sampler` rebuilds it from the updated weights, so the samples do not
    change."""
    if sampler is not model:
        for p in sampler.parameters():
            p.data = p.data.new_empty(0)


@torch.no_grad()
def refresh_sampler(sampler, model):
    """Step 8: the sampling copy (bf16 on GPU; on N processes a whole copy on each) is rebuilt from
    the updated weights; on one CPU process it is the model itself."""
    if sampler is not model:
        for p_sample, p_train in zip(sampler.parameters(), model.parameters()):
            # a shard is gathered first
            p_sample.data = parallel.full_tensor(p_train).to(p_sample.dtype, copy=True)


# --- one step, and the loop -------------------------------------------------------------

def train_step(step, models, tokenizer, cfg, device, world):
    """Steps 1-8 of the module docstring; returns the step's metrics and its records (one per
    proposal)."""
    # released: step 5, 10, ...
    update_proposer = cfg.proposer_every > 0 and (step + 1) % cfg.proposer_every == 0
    policy, sampler, reference, optimizer = (models.policy, models.sampler, models.reference,
                                             models.optimizer)
    t0 = time.perf_counter()
    batch = propose(sampler, tokenizer, cfg, (cfg.seed, step, 0), world)
    t1 = time.perf_counter()
    batch = solve(sampler, tokenizer, cfg, batch, (cfg.seed, step, 1), world)
    t2 = time.perf_counter()
    batch = score(cfg, batch, world)
    t3 = time.perf_counter()
    critic = models.critic
    solver_seqs, proposer_seqs = to_sequences(batch, cfg, update_proposer or critic is not None)
    mark_on_policy(solver_seqs, cfg)
    release_sampler(sampler, policy)
    # the proposer's old log-probs are taken before the solver update changes the weights
    prepare(policy, reference, solver_seqs, cfg, device, world)
    if update_proposer:
        prepare(policy, reference, proposer_seqs, cfg, device, world)
    critic_stats = {}
    if critic is not None:  # as released: values of both roles, then the critic learns from both
        for seqs in (proposer_seqs, solver_seqs):
            value_baseline(critic, seqs, cfg, device, world)
        for role, seqs in (("proposer", proposer_seqs), ("solver", solver_seqs)):
            stats = value_update(critic, models.critic_optimizer, seqs, cfg, device, world)
            critic_stats.update({f"{role}_value_grad_norm" if k == "grad_norm" else f"{role}_{k}": v
                                 for k, v in (stats.items() if seqs else ())})
    solver_stats = (policy_update(policy, reference, optimizer, solver_seqs, cfg, device, world)
                    if solver_seqs else {})
    proposer_stats = (policy_update(policy, reference, optimizer, proposer_seqs, cfg, device, world)
                      if update_proposer and proposer_seqs else {})
    refresh_sampler(sampler, policy)
    t4 = time.perf_counter()
    metrics = {"step": step, "t_propose": t1 - t0, "t_solve": t2 - t1, "t_rewards": t3 - t2,
               "t_update": t4 - t3,
               **step_metrics(batch, cfg),
               **{f"solver_{k}": v for k, v in solver_stats.items()},
               **{f"proposer_{k}": v for k, v in proposer_stats.items()}, **critic_stats}
    return metrics, batch


def train(cfg, models, tokenizer, device, run, start, world):
    """The loop: greedy eval at step 0 and every `eval_every` steps (and after the last), one
    `train_step` per step, a checkpoint every `save_every` steps and at the end. `run` (harness.Run)
    does the bookkeeping: evaluate(step) -> figures, log(step, metrics, batch), save(step)."""
    def eval_due(step):
        return cfg.eval_every and step % cfg.eval_every == 0

    for step in range(start, cfg.steps):
        figures = run.evaluate(step) if eval_due(step) else {}
        metrics, batch = train_step(step, models, tokenizer, cfg, device, world)
        run.log(step, {**metrics, **figures}, batch)
        if cfg.save_every and (step + 1) % cfg.save_every == 0:
            run.save(step + 1)
    if eval_due(cfg.steps):  # the final weights
        run.log(cfg.steps, run.evaluate(cfg.steps))
    if not (cfg.save_every and cfg.steps % cfg.save_every == 0):  # else the loop has saved them
        run.save(cfg.steps)


# --- what a step reports ----------------------------------------------------------------

def step_metrics(batch, cfg):
    """The step's figures, read off its records (means over solved proposals unless said)."""
    solved = [p for p in batch if p.solved]
    answers = [s for p in solved for s in p.answers]
    prompt_groups = [batch[g:g + cfg.n] for g in range(0, len(batch), cfg.n)]
    metrics = {
        "valid_rate": float(np.mean([p.valid for p in batch])),
        "proposer_reward": float(np.mean([p.proposer_reward for p in solved])) if solved else 0.0,
        "solver_reward": float(np.mean([r for p in solved for r in p.solver_rewards]))
                         if solved else 0.0,
        "majority_share": float(np.mean([p.majority_count / cfg.n for p in solved]))
                          if solved else 0.0,
        "zero_signal": float(np.mean([len(set(p.solver_rewards)) == 1 for p in solved]))
                       if solved else 1.0,
        "zero_signal_proposer": float(np.mean([len({p.proposer_reward for p in g}) == 1
                                               for g in prompt_groups])),
        "response_len": float(np.mean([len(s.completion_ids) for s in answers]))
                        if answers else 0.0,
        "proposal_len": float(np.mean([len(p.sample.completion_ids) for p in batch])),
        "solver_entropy": token_mean_entropy(answers),
        "proposer_entropy": token_mean_entropy([p.sample for p in batch]),
    }
    # label quality: how often the vote is right, on problems with a true value and a vote
    if cfg.task == "arith":
        checked = [p for p in solved if p.truth is not None and p.majority is not None]
        metrics["majority_checked"] = len(checked)
        metrics["majority_correct"] = (float(np.mean([rewards.normalize_answer(p.majority)
                                                      == p.truth for p in checked]))
                                       if checked else None)
        shapes = [rewards.arith_shape(p.problem.text) for p in batch if p.valid]
        metrics["proposal_mix"] = {s: shapes.count(s) / len(shapes) for s in sorted(set(shapes))}
    return metrics


def token_mean_entropy(samples):
    """Mean entropy (nats) of the sampling distribution per sampled token: falling to ~0 is
    collapse."""
    tokens = sum(len(s.completion_ids) for s in samples)
    return sum(s.entropy * len(s.completion_ids) for s in samples) / tokens if tokens else 0.0
