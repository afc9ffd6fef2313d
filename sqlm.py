"""Self-Questioning Language Models (SQLM, arXiv 2508.03682): the CLI and the training loop.

One model plays two roles. As proposer it reads a topic prompt and writes a problem; as
solver it answers each problem n times. With no labels, the solver's reward is agreement
with the majority of its own answers (arith, algebra) or the share of the proposer's unit
tests its program passes (code); the proposer is rewarded when its problem is neither
trivial nor impossible for the current solver (Sec. 3). Both roles are trained with the
same critic-free clipped policy gradient and GRPO group advantages.

One step, in the order the functions below run:
  1. proposer rollout: batch x n problems from the topic prompt      (propose)
  2. parse proposals; invalid ones are masked out of both updates    (rewards.parse_proposal)
  3. solver rollout: n answers per valid problem                     (solve)
  4. rewards: majority vote or unit tests; proposer reward           (score)
  5. GRPO advantages per group                                        (grpo_advantages)
  6. old log-probs (training model) and KL-reference log-probs       (prepare)
  7. solver update; proposer update every `proposer_every` steps    (policy_update)
  8. refresh the bf16 sampling copy (GPU)

Simplifications, stated up front: no learned critic (the released code used PPO with a
critic for code; we use this update for all three tasks), one GPU (no distribution), no
sequence packing, one epoch per batch.

    python sqlm.py --task arith                                   # Qwen2.5-3B-Instruct, one GPU
    python sqlm.py --task arith --model /tmp/tiny --batch 4 ...   # offline, CPU
"""
import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import prompts
import rewards
import rollout

# --- config: every default is the paper's released setting unless its comment says otherwise ---

TASKS = ("arith", "algebra", "code")
DEFAULT_MODELS = {"arith": "Qwen/Qwen2.5-3B-Instruct", "algebra": "Qwen/Qwen2.5-3B-Instruct",
                  "code": "Qwen/Qwen2.5-Coder-3B-Instruct"}
MAX_RESPONSE = {"arith": 1024, "algebra": 3072, "code": 512}


POSITIVE = ("batch", "minibatch", "microbatch", "steps", "rollout_rows", "max_prompt", "max_response", "lr",
            "temperature", "top_p", "grad_clip")
NON_NEGATIVE = ("clip_low", "clip_high", "clip_c", "kl", "weight_decay", "proposer_every", "eval_every",
                "eval_limit", "eval_samples", "save_every", "keep_last", "seed")


def opt(default, help, choices=None):
    """A Config field whose comment is its --help line (and whose choices argparse enforces)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Config:
    task: str = opt("arith", "the self-play task", TASKS)
    model: str = opt("", "hub id or local dir; '' = the paper's model for the task")
    device: str = opt("", "'' = cuda if available, else cpu")
    steps: int = opt(100, "training steps")
    batch: int = opt(64, "proposer prompts per step")
    n: int = opt(4, "proposals per prompt, and answers per problem")
    minibatch: int = opt(32, "groups (prompts/problems) per optimizer step: 32 x 4 = 128 sequences")
    microbatch: int = opt(8, "sequences per forward/backward (memory only; gradient unchanged)")
    lr: float = opt(1e-6, "AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay (verl actor default)")
    grad_clip: float = opt(1.0, "global grad-norm clip")
    clip_low: float = opt(0.2, "PPO ratio clip, lower side")
    clip_high: float = opt(0.2, "PPO ratio clip, upper side")
    clip_c: float = opt(3.0, "dual-clip bound for negative advantages; 0 disables")
    kl: float = opt(0.001, "k3 KL-to-initial-model coefficient; 0 drops the reference model")
    adv_norm: str = opt("std", "std (GRPO) | none (Dr. GRPO: no division by the group std)", ("std", "none"))
    proposer_every: int = opt(5, "proposer update period in steps (5, 10, ... from 1); 0 = never")
    proposer_reward: str = opt("sqlm", "sqlm: 1 < m < n | azr | rzero", ("sqlm", "azr", "rzero"))
    solver_reward: str = opt("", "'' = majority (arith, algebra) / tests (code); format = format-only baseline",
                             ("", "majority", "tests", "format"))
    judge: str = opt("exact", "code output judge: exact (released: text equal after stripping trailing "
                              "newlines) | lenient (whitespace, list punctuation, integer spelling)", ("exact", "lenient"))
    cat: bool = opt(False, "Code-as-Task filter: reference passes every test, wrong solution fails one")
    arith_check: bool = opt(False, "arith: a proposal must hold one well-formed arithmetic expression")
    as_released: bool = opt(False, "reproduce the released code where it differs from the paper's text "
                                   "(README: 'Where this differs from the released code')")
    max_prompt: int = opt(512, "longer solver prompts invalidate their proposal (released: cut from the left)")
    max_response: int = opt(0, "0 = per task: 1024 arith, 3072 algebra, 512 code")
    temperature: float = opt(1.0, "sampling temperature (log-probs use the same)")
    top_p: float = opt(1.0, "nucleus sampling; no top-k anywhere: the sampled policy is the trained one")
    rollout_rows: int = opt(256, "most sequences per generate call (KV-cache memory only; samples unchanged)")
    seed: int = opt(0, "run seed: sampling streams derive from (seed, step, role, prompt)")
    eval_every: int = opt(5, "greedy eval at step 0 and every k steps; 0 = never")
    eval_limit: int = opt(0, "0 = the whole held-out set")
    eval_data: str = opt("", "JSONL file replacing the built-in held-out set (eval.py's format)")
    eval_samples: int = opt(0, "also k samples per problem at --temperature: sampled accuracy, pass@k, maj@k")
    save_every: int = opt(10, "save a checkpoint every k steps and at the end; 0 = at the end only "
                              "(ours: a kill loses at most k steps)")
    keep_last: int = opt(2, "complete checkpoints kept: older ones are deleted once a newer one is written; "
                            "0 = keep all (a 3B one with AdamW state is ~37 GB)")
    out: str = opt("", "run directory (must not hold a run already); '' = runs/<task>-<time>")
    resume: str = opt("", "run directory to continue from its last complete checkpoint (none yet: from step 0)")
    grad_checkpointing: bool = opt(False, "recompute activations in backward (memory for speed)")
    fit_memory: bool = opt(True, "on a GPU, set --rollout-rows and --microbatch to the largest the memory plan "
                                 "fits on the card; --no-fit-memory keeps them as given")

    def resolve(self):
        """Fill the task-dependent defaults, make paths absolute (a run resumes from any directory)
        and check values (idempotent); ValueError is one line naming the flag, for the CLI."""
        if self.task not in MAX_RESPONSE:
            raise ValueError(f"unknown task '{self.task}' (arith, algebra, code)")
        self.model = self.model or DEFAULT_MODELS[self.task]
        if os.path.isdir(os.path.expanduser(self.model)):  # a local model; a hub id stays as given
            self.model = os.path.abspath(os.path.expanduser(self.model))
        self.max_response = self.max_response or MAX_RESPONSE[self.task]
        self.solver_reward = self.solver_reward or ("tests" if self.task == "code" else "majority")
        self.out = self.out or os.path.join("runs", f"{self.task}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.out, self.resume, self.eval_data = (os.path.abspath(os.path.expanduser(p)) if p else p
                                                 for p in (self.out, self.resume, self.eval_data))
        for f in dataclasses.fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if f.metadata["choices"] and value not in f.metadata["choices"]:
                raise ValueError(f"{flag} must be one of {', '.join(c for c in f.metadata['choices'] if c)}, "
                                 f"not {value!r}")
            if f.type in (float, "float") and not math.isfinite(value):
                raise ValueError(f"{flag} must be finite, not {value}")
            if f.name in POSITIVE and not value > 0:
                raise ValueError(f"{flag} must be positive, not {value}")
            if f.name in NON_NEGATIVE and not value >= 0:
                raise ValueError(f"{flag} must be >= 0, not {value}")
        checks = [((self.solver_reward == "tests") == (self.task == "code") or self.solver_reward == "format",
                   f"--solver-reward {self.solver_reward} does not fit --task {self.task}"),
                  (not self.cat or self.task == "code", "--cat applies to --task code only"),
                  (not self.arith_check or self.task == "arith", "--arith-check applies to --task arith only"),
                  (self.n >= 2, f"--n must be at least 2, not {self.n} (groups of one carry no signal)"),
                  (self.top_p <= 1, f"--top-p must be in (0, 1], not {self.top_p}"),
                  (self.clip_low < 1, f"--clip-low must be in [0, 1), not {self.clip_low}"),
                  (self.clip_c == 0 or self.clip_c > 1, f"--clip-c must be > 1 (or 0 to disable), not {self.clip_c}"),
                  (self.seed <= 2**32 - 1, f"--seed must be at most 2**32-1 = {2**32 - 1}, not {self.seed}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        kind = self.device.split(":")[0] or ("cuda" if torch.cuda.is_available() else "cpu")  # "" stays "" (resume)
        if kind not in ("cpu", "cuda") or (kind == "cuda" and not torch.cuda.is_available()):
            raise ValueError(f"unknown or unavailable --device '{self.device}' (cpu, or cuda[:N] on a GPU machine)")
        return self

    @property
    def kl_coef(self):
        """The KL coefficient in force: the released code-task config has no KL term."""
        return 0.0 if self.as_released and self.task == "code" else self.kl


# --- the method, one function per equation -------------------------------------------

def grpo_advantages(rewards_, group_size, norm="std", eps=1e-6, released=False):
    """GRPO advantage per sample: A_i = (r_i - mean(r_group)) / (std(r_group) + eps).

    rewards_: (N,) with N = groups * group_size, group g at [g*k:(g+1)*k]. std is the
    unbiased (n-1) estimate, as the released code computes it. A group of one gets 0 (it
    carries no comparison); released: mean 0 and std 1, so A = r (unreachable with n >= 2).
    norm="none" drops the division (Dr. GRPO).
    """
    r = torch.as_tensor(rewards_, dtype=torch.float64).view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if group_size == 1:
        return r.view(-1).float() if released else torch.zeros(r.numel())
    if norm == "std":
        adv = adv / (r.std(1, keepdim=True) + eps)  # torch.std is the unbiased (n-1) estimate
    return adv.view(-1).float()


def clipped_pg_loss(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.2, normalizer=None, clip_c=3.0):
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
    """k3 estimator of KL(pi || pi_ref), token-mean: exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10]."""
    delta = (ref_logp - logp).clamp(-20.0, 20.0)  # exp() stays finite
    k3 = (delta.exp() - delta - 1).clamp(-10.0, 10.0)
    normalizer = mask.sum() if normalizer is None else normalizer
    return (k3 * mask).sum() / normalizer


# --- one record per proposal ----------------------------------------------------------

@dataclass
class Proposal:
    """Everything a step derives from one proposal, filled in the order the step runs.

    Its proposer group is `index // n` (the n proposals from one prompt); its n answers are
    one solver group, numbered by `index` too, so mini-batches follow the step's batch
    whatever was dropped. An invalid proposal is not solved (reason says why) and counts
    as proposer reward 0 in its group; as released it is solved as raw text instead.
    """
    index: int                       # position among the step's batch x n proposals
    sample: rollout.Sample           # the proposer's sample
    problem: rewards.Problem = None  # what the solver sees; None: not solved
    reason: str = "ok"               # "ok", or why the proposal is invalid
    answers: list = field(default_factory=list)         # the n solver Samples
    extracted: list = field(default_factory=list)       # each answer's vote (or program, code)
    majority: object = None                             # most common extracted answer, None included
    majority_count: int = 0
    task_rewards: list = field(default_factory=list)    # majority vote or test pass rates
    solver_rewards: list = field(default_factory=list)  # what the solver is trained on (task or format)
    proposer_reward: float = 0.0
    truth: str = None                # arith diagnostic only: the problem's true value, never a reward

    @property
    def valid(self):
        return self.reason == "ok"


@dataclass
class Seq:
    """One trained sequence: a prompt, its sampled completion, and the completion's advantage."""
    prompt_ids: list
    completion_ids: list
    advantage: float
    group: int                     # proposal index (solver) or prompt index (proposer) in the step's batch
    on_policy: bool = False        # in the first mini-batch of an update: old log-probs = current, detached
    old_logp: torch.Tensor = None  # (len(completion_ids),) under the training model before the update
    ref_logp: torch.Tensor = None  # same, under the frozen initial model (KL term)


# --- rollouts ------------------------------------------------------------------------

def derive_seed(*keys):
    """An independent 63-bit seed per (run seed, step, role, prompt): a resumed run samples what it would have."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sample(sampler, tokenizer, prompt_ids, n, cfg, seed, label="sample"):
    """n samples per prompt, in generate calls of at most `rollout_rows` sequences; seed: a key tuple.

    Prompt i draws from its own stream, derived from (seed, i), so the samples are the same
    however the prompts are split into calls: --rollout-rows is a memory knob only.
    """
    import eval as heldout  # its progress line: shown only for a phase longer than 10 s
    per_call = max(1, cfg.rollout_rows // n)
    seeds = [derive_seed(*seed, i) for i in range(len(prompt_ids))]
    show = heldout.progress_printer(label, quiet_seconds=10)
    out = []
    for start in range(0, len(prompt_ids), per_call):
        out += rollout.generate(sampler, tokenizer, prompt_ids[start:start + per_call], n=n,
                                max_new_tokens=cfg.max_response, temperature=cfg.temperature,
                                top_p=cfg.top_p, seed=seeds[start:start + per_call])
        show(len(out), len(prompt_ids) * n, {"tokens": sum(len(s.completion_ids) for s in out)})
    return out


def propose(sampler, tokenizer, cfg, seed):
    """Steps 1-2: batch x n proposals from the topic prompt, each parsed into its record."""
    topic = rollout.chat_prompt(tokenizer, prompts.proposer_prompt(cfg.task, cat=cfg.cat))
    samples = sample(sampler, tokenizer, [topic] * cfg.batch, cfg.n, cfg, seed, "propose")
    batch = [Proposal(i, s, *rewards.parse_proposal(cfg.task, s.text, cat=cfg.cat, released=cfg.as_released,
                                                     arith_check=cfg.arith_check))
             for i, s in enumerate(samples)]  # truncated ones too, as released
    if cfg.cat:  # all CaT checks of the step in one sandbox call
        candidates = [p for p in batch if p.problem is not None]
        for p, (ok, reason) in zip(candidates, rewards.cat_filter([p.problem for p in candidates],
                                                                  lenient=cfg.judge == "lenient")):
            p.problem, p.reason = (p.problem if ok else None), reason
    if cfg.as_released:  # invalid proposals are solved as their raw text (code: no tests, so score 0)
        for p in batch:
            p.problem = p.problem or rewards.Problem(p.sample.text)
    return batch


def solve(sampler, tokenizer, cfg, batch, seed):
    """Step 3: n answers to each proposal that has a problem. A solver prompt longer than
    `max_prompt` invalidates its proposal (released: it is cut from the left instead)."""
    todo, prompt_ids = [], []
    for p in batch:
        if p.problem is None:
            continue
        ids = rollout.chat_prompt(tokenizer, prompts.solver_prompt(cfg.task, p.problem.text))
        if len(ids) > cfg.max_prompt and not cfg.as_released:
            p.problem, p.reason = None, "prompt too long"
            continue
        todo.append(p)
        prompt_ids.append(ids[-cfg.max_prompt:])
    answers = iter(sample(sampler, tokenizer, prompt_ids, cfg.n, cfg, seed, "solve"))
    for p in todo:
        p.answers = [next(answers) for _ in range(cfg.n)]


def score(cfg, batch):
    """Step 4: each solved proposal's votes, task rewards, solver rewards and proposer reward.

    Task rewards: majority (a sample scores 1 iff its answer equals the non-None majority) or
    tests (the share of the proposer's tests its program passes, sandboxed). The solver is
    trained on them, or with --solver-reward format on 1 per parseable answer. The proposer
    reward always reads the task rewards (rewards.proposer_reward, sqlm: 1 < m < n for the
    vote, 0 < mean < 1 for tests): the format baseline changes what the solver learns, not
    which problems count as neither trivial nor impossible.
    """
    solved = [p for p in batch if p.answers]
    code = cfg.task == "code"
    for p in solved:
        p.extracted = [rewards.extract_program(s.text) if code else rewards.extract_answer(s.text, cfg.as_released)
                       for s in p.answers]
        p.majority, p.majority_count = rewards.majority_vote(p.extracted)
        if not code:
            p.task_rewards = rewards.majority_solver_rewards(p.extracted)
    if code:  # every program x test of the step in one sandbox call
        rates = iter(rewards.test_pass_rates([x for p in solved for x in p.extracted],
                                             [p.problem.tests for p in solved for _ in p.answers],
                                             lenient=cfg.judge == "lenient"))
        for p in solved:
            p.task_rewards = [next(rates) for _ in p.answers]
    for p in solved:
        p.solver_rewards = (rewards.format_solver_rewards([s.text for s in p.answers], cfg.task, cfg.as_released)
                            if cfg.solver_reward == "format" else p.task_rewards)
        p.proposer_reward = rewards.proposer_reward(p.task_rewards, rule=cfg.proposer_reward,
                                                    kind="tests" if code else "majority")
        if cfg.task == "arith":
            p.truth = rewards.arith_truth(p.problem.text)


def to_sequences(batch, cfg, update_proposer):
    """Step 5: GRPO advantages per group and the sequences each update trains on.

    Solver: every solved proposal's n answers, one group each. Proposer (when it updates):
    the n proposals of a prompt form a group, an unsolved proposal counting as reward 0;
    invalid proposals are then masked out of the update (released: all are trained).
    """
    solved = [p for p in batch if p.answers]
    solver_adv = iter(grpo_advantages([r for p in solved for r in p.solver_rewards], cfg.n, cfg.adv_norm,
                                      released=cfg.as_released).tolist() if solved else [])
    solver = [Seq(s.prompt_ids, s.completion_ids, next(solver_adv), group=p.index) for p in solved for s in p.answers]
    if not update_proposer:
        return solver, []
    proposer_adv = grpo_advantages([p.proposer_reward for p in batch], cfg.n, cfg.adv_norm,
                                   released=cfg.as_released).tolist()
    proposer = [Seq(p.sample.prompt_ids, p.sample.completion_ids, a, group=p.index // cfg.n)
                for p, a in zip(batch, proposer_adv) if p.valid or cfg.as_released]
    return solver, proposer


# --- old / reference log-probs and the update ----------------------------------------

def autocast(device):
    """bf16 autocast over fp32 master weights on GPU; plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def micro_logprobs(model, seqs, cfg, device):
    """(B, T) completion log-probs of a micro-batch under `model`, and its completion mask."""
    ids, attn, comp = rollout.pack([(s.prompt_ids, s.completion_ids) for s in seqs],
                                   pad_id=0, device=device)
    with autocast(device):
        logp = rollout.token_logprobs(model, ids, attn, comp, temperature=cfg.temperature)
    return logp, comp


@torch.no_grad()
def prepare(model, ref_model, seqs, cfg, device):
    """Step 6: old log-probs from the training model and reference log-probs from the frozen one.

    A sequence marked `on_policy` (the first mini-batch of the solver update) skips the old
    forward: nothing has moved yet, so its old log-probs are its current ones, detached, in
    the update itself (the ratio is exactly 1 there).
    """
    for name, net in (("old_logp", model), ("ref_logp", ref_model)):
        todo = [s for s in seqs if not (name == "old_logp" and s.on_policy)] if net is not None else []
        for start in range(0, len(todo), cfg.microbatch):
            micro = todo[start:start + cfg.microbatch]
            logp, comp = micro_logprobs(net, micro, cfg, device)
            for s, row, m in zip(micro, logp, comp.bool()):
                setattr(s, name, row[m])


def accumulate_gradients(model, ref_model, minibatch, cfg, device):
    """Backward of one mini-batch's loss in micro-batches; returns token-weighted stats.

    Ours: every micro-batch divides by the token count of the whole mini-batch, so the summed
    gradient is the same however the mini-batch is split (a per-micro-batch normaliser
    would weight short micro-batches' tokens more). Released: each micro-batch's token mean,
    averaged over the micro-batches.
    """
    tokens = sum(len(s.completion_ids) for s in minibatch)
    micros = [minibatch[start:start + cfg.microbatch] for start in range(0, len(minibatch), cfg.microbatch)]
    totals = {}
    for micro in micros:
        logp, comp = micro_logprobs(model, micro, cfg, device)
        mask = comp.bool()
        old = torch.cat([logp[i][mask[i]].detach() if s.on_policy else s.old_logp for i, s in enumerate(micro)])
        old = torch.zeros_like(logp).masked_scatter(mask, old)
        adv = torch.tensor([s.advantage for s in micro], device=device)
        normalizer = mask.sum() * len(micros) if cfg.as_released else tokens
        loss, stats = clipped_pg_loss(logp, old, adv, comp, cfg.clip_low, cfg.clip_high, normalizer, cfg.clip_c)
        stats = {k: v * mask.sum().item() for k, v in stats.items()}  # token-weighted sums
        stats["pg_loss"] = loss.item() * tokens
        if cfg.kl_coef and ref_model is not None:
            ref = torch.zeros_like(logp).masked_scatter(mask, torch.cat([s.ref_logp for s in micro]))
            kl = kl_penalty(logp, ref, comp, normalizer)
            loss = loss + cfg.kl_coef * kl
            stats["kl"] = kl.item() * tokens
        loss.backward()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value / tokens
    return totals


def policy_update(model, ref_model, optimizer, seqs, cfg, device):
    """Step 7: one epoch over `seqs`, one optimizer step per mini-batch of `minibatch` groups (x n sequences).

    loss = clipped_pg_loss + kl * kl_penalty, AdamW after a global grad-norm clip.
    Returns the mean of each statistic over the mini-batches.
    """
    model.train()
    # Mini-batch k holds groups [k*minibatch, (k+1)*minibatch) of the step's batch whatever was
    # dropped: 8 solver and 2 proposer steps at the paper's shape, fewer only when a whole
    # mini-batch's proposals were invalid (no tokens).
    minibatches = {}
    for s in seqs:
        minibatches.setdefault(s.group // cfg.minibatch, []).append(s)
    minibatches = [minibatches[k] for k in sorted(minibatches)]
    totals = {}
    for minibatch in minibatches:
        optimizer.zero_grad(set_to_none=True)
        stats = accumulate_gradients(model, ref_model, minibatch, cfg, device)
        stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        optimizer.step()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value / len(minibatches)
    optimizer.zero_grad(set_to_none=True)  # no gradients held through the next rollout (12 GB at 3B)
    model.eval()
    return totals


# --- one step ------------------------------------------------------------------------

def train_step(step, model, sampler, ref_model, optimizer, tokenizer, cfg, device):
    """Steps 1-8 of the module docstring; returns the step's metrics and one record per proposal."""
    update_proposer = cfg.proposer_every > 0 and (step + 1) % cfg.proposer_every == 0  # released: global step 5, 10, ...
    t0 = time.perf_counter()
    batch = propose(sampler, tokenizer, cfg, seed=(cfg.seed, step, 0))
    t1 = time.perf_counter()
    solve(sampler, tokenizer, cfg, batch, seed=(cfg.seed, step, 1))
    t2 = time.perf_counter()
    score(cfg, batch)
    t3 = time.perf_counter()
    solver_seqs, proposer_seqs = to_sequences(batch, cfg, update_proposer)
    if solver_seqs:  # the solver's first mini-batch is on-policy: no separate old-log-prob pass
        first = min(s.group for s in solver_seqs) // cfg.minibatch
        for s in solver_seqs:
            s.on_policy = s.group // cfg.minibatch == first
    # steps 6-8: the proposer's old log-probs are taken before the solver update changes the weights
    prepare(model, ref_model, solver_seqs + proposer_seqs, cfg, device)
    solver_stats = policy_update(model, ref_model, optimizer, solver_seqs, cfg, device) if solver_seqs else {}
    proposer_stats = policy_update(model, ref_model, optimizer, proposer_seqs, cfg, device) if proposer_seqs else {}
    if sampler is not model:
        with torch.no_grad():
            for p_sample, p_train in zip(sampler.parameters(), model.parameters()):
                p_sample.copy_(p_train)
    t4 = time.perf_counter()
    metrics = {"step": step, "t_propose": t1 - t0, "t_solve": t2 - t1, "t_rewards": t3 - t2, "t_update": t4 - t3,
               **step_metrics(batch, cfg),
               **{f"solver_{k}": v for k, v in solver_stats.items()},
               **{f"proposer_{k}": v for k, v in proposer_stats.items()}}
    return metrics, [record(step, p) for p in batch]


def step_metrics(batch, cfg):
    """The step's figures, read off its records (means over solved proposals unless said)."""
    solved = [p for p in batch if p.answers]
    answers = [s for p in solved for s in p.answers]
    prompt_groups = [batch[g:g + cfg.n] for g in range(0, len(batch), cfg.n)]
    metrics = {
        "valid_rate": float(np.mean([p.valid for p in batch])),
        "proposer_reward": float(np.mean([p.proposer_reward for p in solved])) if solved else 0.0,
        "solver_reward": float(np.mean([r for p in solved for r in p.solver_rewards])) if solved else 0.0,
        "majority_share": float(np.mean([p.majority_count / cfg.n for p in solved])) if solved else 0.0,
        "zero_signal": float(np.mean([len(set(p.solver_rewards)) == 1 for p in solved])) if solved else 1.0,
        "zero_signal_proposer": float(np.mean([len({p.proposer_reward for p in g}) == 1 for g in prompt_groups])),
        "response_len": float(np.mean([len(s.completion_ids) for s in answers])) if answers else 0.0,
        "proposal_len": float(np.mean([len(p.sample.completion_ids) for p in batch])),
        "solver_entropy": token_mean_entropy(answers), "proposer_entropy": token_mean_entropy([p.sample for p in batch]),
    }
    if cfg.task == "arith":  # label quality: how often the vote is right, on problems with a true value and a vote
        checked = [p for p in solved if p.truth is not None and p.majority is not None]
        metrics["majority_checked"] = len(checked)
        metrics["majority_correct"] = (float(np.mean([rewards.normalize_answer(p.majority) == p.truth
                                                      for p in checked])) if checked else None)
        shapes = [rewards.arith_shape(p.problem.text) for p in batch if p.valid]
        metrics["proposal_mix"] = {s: shapes.count(s) / len(shapes) for s in sorted(set(shapes))}
    return metrics


def record(step, p):
    """One samples.jsonl line: the proposal, its verdict, and (if solved) its answers, vote and rewards."""
    rec = {"step": step, "index": p.index, "proposal": p.sample.text, "valid": p.valid, "reason": p.reason}
    if p.answers:
        rec.update(problem=p.problem.text, responses=[s.text for s in p.answers], answers=p.extracted,
                   majority=p.majority, majority_count=p.majority_count, task_rewards=p.task_rewards,
                   solver_rewards=p.solver_rewards, proposer_reward=p.proposer_reward)
        if p.truth is not None:
            rec["truth"] = p.truth
    return rec


def token_mean_entropy(samples):
    """Mean entropy (nats) of the sampling distribution per sampled token: falling to ~0 is collapse."""
    tokens = sum(len(s.completion_ids) for s in samples)
    return sum(s.entropy * len(s.completion_ids) for s in samples) / tokens if tokens else 0.0


# --- checkpoints ---------------------------------------------------------------------

def save_checkpoint(run, step, model, tokenizer, optimizer, cfg):
    """run/step-NNNNNN: save_pretrained model + tokenizer, optimizer, step, RNG states, config.

    Written under a temporary name and renamed, so a kill mid-save leaves no broken checkpoint.
    """
    final = os.path.join(run, f"step-{step:06d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "config": dataclasses.asdict(cfg),
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}},
               os.path.join(tmp, "trainer_state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def complete_checkpoints(run):
    """A run's complete step-* directories (a trainer_state.pt written, not a .tmp), oldest first."""
    return sorted(d for d in os.listdir(run) if d.startswith("step-") and not d.endswith(".tmp")
                  and os.path.exists(os.path.join(run, d, "trainer_state.pt"))) if os.path.isdir(run) else []


def last_checkpoint(run):
    """The newest complete step-* directory of a run, or None."""
    done = complete_checkpoints(run)
    return os.path.join(run, done[-1]) if done else None


def prune_checkpoints(run, keep_last):
    """Delete all but the newest `keep_last` complete checkpoints (0: keep all) and any .tmp a kill left.

    Called only after a save has completed, so the newest complete checkpoint always stays. An
    old one loses its trainer_state.pt first, so a kill mid-delete leaves it incomplete, never
    half a checkpoint that `last_checkpoint` would pick.
    """
    for name in os.listdir(run):
        if name.startswith("step-") and name.endswith(".tmp"):
            shutil.rmtree(os.path.join(run, name), ignore_errors=True)
    for name in complete_checkpoints(run)[:-keep_last] if keep_last else []:
        os.remove(os.path.join(run, name, "trainer_state.pt"))
        shutil.rmtree(os.path.join(run, name), ignore_errors=True)


def read_trainer_state(checkpoint):
    """A checkpoint's trainer_state.pt (optimizer, step, RNG states); RunError if it cannot be read."""
    path = os.path.join(checkpoint, "trainer_state.pt")
    try:
        state = torch.load(path, weights_only=False)  # our own file: numpy RNG state needs the unpickler
        state["step"], state["optimizer"], state["rng"]["python"]  # noqa: B018 (the fields a resume reads)
    except Exception as e:  # truncated, overwritten, not a torch file: one line, no traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise RunError(f"cannot read {path} ({first}): delete {checkpoint} to resume from the checkpoint "
                       f"before it") from None
    return state


# --- the run -------------------------------------------------------------------------

class RunError(Exception):
    """Bad input found as a run starts (run directory, checkpoint, prompts): one line for the CLI."""


class Interrupted(Exception):
    """Ctrl-C during a run; the message says where it stopped and the command that continues it."""

    def __init__(self, run, step):
        checkpoint = last_checkpoint(run)
        script = os.path.relpath(__file__) if not os.path.relpath(__file__).startswith("..") else __file__
        super().__init__(f"interrupted at step {step}; last complete checkpoint: {checkpoint or 'none yet'}; "
                         f"resume with: python {shlex.quote(script)} --resume {shlex.quote(run)}")
        self.run, self.step = run, step


RUN_FILES = ("config.json", "metrics.jsonl", "samples.jsonl")  # and step-* directories


def check_new_run_dir(out):
    """A new run's --out: not a file, not a run already (its logs would be appended to), creatable."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"--out {out} is a file, not a directory")
    if os.path.isdir(out) and any(n in RUN_FILES or n.startswith("step-") for n in os.listdir(out)):
        raise RunError(f"--out {out} already holds a run: continue it with --resume {out}, or choose another --out")
    parent = os.path.abspath(out)  # dirname('run') is '': the walk up needs a root to stop at
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise RunError(f"--out {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"--out {out}: no permission to write in {parent}")


def check_prompts(cfg, tokenizer):
    """The task's prompt files are usable: a proposer prompt, a solver prompt with its {problem}
    slot, and room under --max-prompt for a problem after the solver prompt's own tokens."""
    files = f"prompts/{cfg.task}_proposer{'_cat' if cfg.cat else ''}.txt, prompts/{cfg.task}_solver.txt"
    try:
        topic, solver = prompts.proposer_prompt(cfg.task, cat=cfg.cat), prompts.load(cfg.task, "solver")
    except OSError as e:
        raise RunError(f"cannot read the prompts ({files}): {e.strerror}: {e.filename}") from None
    if not topic or not solver:
        raise RunError(f"a prompt file is empty ({files})")
    if prompts.PROBLEM_SLOT not in solver:
        raise RunError(f"prompts/{cfg.task}_solver.txt has no {prompts.PROBLEM_SLOT} slot for the problem")
    frame = len(rollout.chat_prompt(tokenizer, prompts.solver_prompt(cfg.task, "")))  # load checked the template
    if frame >= cfg.max_prompt:
        raise RunError(f"--max-prompt {cfg.max_prompt} leaves no room for a problem: the {cfg.task} solver prompt "
                       f"alone is {frame} tokens with this tokenizer")


def truncate_logs(run, step):
    """Keep only the records of steps before `step` in the run's jsonl logs (and no line a kill cut short)."""
    def before(line):
        try:
            return json.loads(line)["step"] < step
        except (ValueError, KeyError, TypeError):
            return False

    for name in ("metrics.jsonl", "samples.jsonl"):
        path = os.path.join(run, name)
        if os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if before(line)]
            with open(path, "w") as f:
                f.writelines(kept)


def log(run, name, record):
    with open(os.path.join(run, name), "a") as f:
        f.write(json.dumps(record) + "\n")


def format_line(m):
    """One human line per step; the full record goes to metrics.jsonl."""
    fields = [f"step {m['step']:4d}",
              f"t {m['t_propose']:.1f}/{m['t_solve']:.1f}/{m['t_rewards']:.1f}/{m['t_update']:.1f}s",
              f"valid {m['valid_rate']:.2f}", f"r_prop {m['proposer_reward']:.3f}", f"r_solve {m['solver_reward']:.3f}",
              f"maj {m['majority_share']:.2f}", f"zero {m['zero_signal']:.2f}",
              f"clip {m.get('solver_clip_frac', 0):.3f}", f"kl {m.get('solver_kl', 0):.2e}",
              f"ent {m['solver_entropy']:.2f}", f"len {m['response_len']:.0f}"]
    if m.get("majority_correct") is not None:
        fields.append(f"maj_ok {m['majority_correct']:.2f}/{m['majority_checked']}")
    if "eval_accuracy" in m:
        fields.append(f"eval {m['eval_accuracy']:.3f}")
    if "eval_sampled_accuracy" in m:
        fields.append(f"sampled {m['eval_sampled_accuracy']:.3f}")
    return " | ".join(fields)


def run_eval(sampler, tokenizer, cfg):
    """Held-out figures: greedy (eval_*), and with --eval-samples k also k samples per problem at
    the training temperature (eval_sampled_*: accuracy of one sample, pass@k, maj@k)."""
    import eval as heldout
    problems = heldout.read_jsonl(cfg.eval_data, cfg.task) if cfg.eval_data else None
    runs = [("eval_", 1, 0.0)] + ([("eval_sampled_", cfg.eval_samples, cfg.temperature)] if cfg.eval_samples else [])
    figures = {}
    for prefix, samples, temperature in runs:
        result = heldout.evaluate(sampler, tokenizer, cfg.task, problems, limit=cfg.eval_limit or None,
                                  samples=samples, temperature=temperature, max_new_tokens=cfg.max_response,
                                  batch_size=cfg.rollout_rows,
                                  progress=heldout.progress_printer(f"{prefix.rstrip('_')} step", samples))
        figures.update({prefix + k: v for k, v in result.items() if isinstance(v, (int, float))})
    return figures


def bf16_copy(model):
    """A bf16 copy of the weights for sampling. Parameters only: `.to(bfloat16)` would also round the
    fp32 RoPE buffers (inv_freq), shifting positions by radians at long range, so the sampled policy
    would not be the trained one (from_pretrained(dtype=bfloat16) keeps them fp32 too)."""
    sampler = copy.deepcopy(model)
    for p in sampler.parameters():
        p.data = p.data.to(torch.bfloat16)
    return sampler.requires_grad_(False)


def fit_to_memory(cfg, model_config, device):
    """On a GPU with --fit-memory: --rollout-rows and --microbatch become the largest that the memory
    plan (rollout.memory_plan) fits on the card, up to the step's own sizes. Memory knobs only: the
    samples and the gradient do not depend on them."""
    if device.type == "cuda" and cfg.fit_memory:
        fit = rollout.fit_memory(model_config, torch.cuda.get_device_properties(device).total_memory,
                                 max_rows=cfg.batch * cfg.n * cfg.n, max_microbatch=cfg.minibatch * cfg.n,
                                 max_prompt=cfg.max_prompt, max_response=cfg.max_response, n=cfg.n,
                                 kl=bool(cfg.kl_coef), grad_checkpointing=cfg.grad_checkpointing, gpu=True)
        if fit is None:
            raise RunError("the memory plan fits not even one sequence on this GPU: try --grad-checkpointing, "
                             "--kl 0 or a shorter --max-response")
        cfg.rollout_rows, cfg.microbatch = fit
        print(f"memory plan: --rollout-rows {cfg.rollout_rows} --microbatch {cfg.microbatch}", flush=True)


def train(cfg):
    """The whole run: load, (resume), step loop with eval, logging and checkpoints. Returns the run dir.

    Raises RunError on bad input found as the run starts (nothing is written then) and
    Interrupted on Ctrl-C.
    """
    cfg = cfg.resolve()  # idempotent: no Config reaches the loop with its task defaults unfilled
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    run, resume_from, state = cfg.resume or cfg.out, None, None
    if cfg.resume:  # from its last complete checkpoint, or from step 0 if it has none yet
        cfg.out = run
        resume_from = last_checkpoint(run)
        state = read_trainer_state(resume_from) if resume_from else None
        if state and cfg.steps <= state["step"]:
            raise RunError(f"--steps {cfg.steps} is not beyond the last checkpoint ({resume_from}, step "
                           f"{state['step']}): give --steps above {state['step']} to train on")
    else:
        check_new_run_dir(run)
    if cfg.eval_data:  # read now, not at the first eval
        import eval as heldout
        try:
            heldout.read_jsonl(cfg.eval_data, cfg.task)
        except ValueError as e:
            raise RunError(f"--eval-data: {e}") from None
    model, tokenizer = rollout.load(resume_from or cfg.model, device=device, dtype=torch.float32)
    try:
        rollout.check_plain_head(model)  # token_logprobs reads the lm-head directly: one line, not wrong numbers
    except ValueError as e:
        raise RunError(str(e)) from None
    check_prompts(cfg, tokenizer)
    ref_model = None
    if cfg.kl_coef:  # the frozen *initial* model, also after a resume. fp32, run under the policy's own autocast,
        # so that KL = 0 exactly while the policy is unchanged (a bf16 copy differs by ~0.006 per token)
        ref_model = copy.deepcopy(model) if resume_from is None else rollout.load(cfg.model, device=device)[0]
        ref_model.requires_grad_(False)
    if cfg.grad_checkpointing:
        model.activation_checkpointing_enable()
    # At lr 1e-6 a bf16 weight does not move, so the trained weights stay fp32; sampling on GPU uses a bf16 copy.
    sampler = bf16_copy(model) if device.type == "cuda" else model
    fit_to_memory(cfg, model.config, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    try:  # only now: a start that fails leaves no directory behind
        os.makedirs(run, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the run directory {run}: {e.strerror}") from None
    if cfg.resume:
        truncate_logs(run, start)  # steps after the checkpoint are run again
        print(f"resumed from {resume_from} at step {start}" if resume_from else
              f"no checkpoint in {run} yet: running it again from step 0", flush=True)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2)
    print("config " + json.dumps(dataclasses.asdict(cfg)), flush=True)

    step = start
    try:
        for step in range(start, cfg.steps + 1):
            metrics = {}
            if cfg.eval_every and step % cfg.eval_every == 0:
                metrics.update(run_eval(sampler, tokenizer, cfg))
            if step == cfg.steps:  # the last iteration only evaluates the final weights
                if metrics:
                    log(run, "metrics.jsonl", {"step": step, **metrics})
                    print(f"step {step:4d} | eval {metrics.get('eval_accuracy', float('nan')):.3f}", flush=True)
                break
            step_metrics, records = train_step(step, model, sampler, ref_model, optimizer, tokenizer, cfg, device)
            metrics = {**step_metrics, **metrics}
            log(run, "metrics.jsonl", metrics)
            for rec in records:
                log(run, "samples.jsonl", rec)
            print(format_line(metrics), flush=True)
            if cfg.save_every and (step + 1) % cfg.save_every == 0:
                save_checkpoint(run, step + 1, model, tokenizer, optimizer, cfg)
                prune_checkpoints(run, cfg.keep_last)
        if last_checkpoint(run) != os.path.join(run, f"step-{cfg.steps:06d}"):
            save_checkpoint(run, cfg.steps, model, tokenizer, optimizer, cfg)
            prune_checkpoints(run, cfg.keep_last)
    except KeyboardInterrupt:
        raise Interrupted(run, step) from None
    print(run_summary(run), flush=True)
    return run


def run_summary(run):
    """Where the run and its final checkpoint are, and its held-out accuracy against step."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        evals = [(m["step"], m["eval_accuracy"]) for m in map(json.loads, f) if "eval_accuracy" in m]
    trajectory = ", ".join(f"{step}: {accuracy:.3f}" for step, accuracy in evals) or "none (--eval-every 0)"
    return (f"run directory     {run}\nfinal checkpoint  {last_checkpoint(run)}\n"
            f"eval accuracy     {trajectory} (step: greedy accuracy)")


# --- CLI -----------------------------------------------------------------------------

NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-(inf|infinity|nan)", re.IGNORECASE)


def negative_values_joined(argv):
    """`--lr -1e-6` becomes `--lr=-1e-6`: argparse takes a token that starts with '-' for a flag
    unless it looks like -1 or -.5, so `-1e-6` or `-inf` read as "expected one argument"."""
    out = []
    for token in argv:
        if out and out[-1].startswith("--") and out[-1] != "--" and "=" not in out[-1] \
                and NEGATIVE_NUMBER.fullmatch(token):
            out[-1] += "=" + token
        else:
            out.append(token)
    return out


def saved_config(run):
    """The config a run was started with (its config.json), checked field by field; ValueError if unusable."""
    path = os.path.join(run, "config.json")
    if not os.path.isdir(run):
        raise ValueError(f"--resume {run}: no such run directory")
    try:
        with open(path) as f:
            saved = json.load(f)
    except OSError as e:
        raise ValueError(f"--resume {run}: cannot read {path} ({e.strerror})") from None
    except (ValueError, RecursionError):
        raise ValueError(f"--resume {run}: {path} is damaged (not valid JSON)") from None
    kinds = {f.name: {"int": int, "float": (int, float), "str": str, "bool": bool}[
        f.type if isinstance(f.type, str) else f.type.__name__] for f in dataclasses.fields(Config)}
    if not isinstance(saved, dict):
        raise ValueError(f"--resume {run}: {path} is not a config (a JSON object)")
    for key, value in saved.items():
        if key not in kinds:
            raise ValueError(f"--resume {run}: {path} has an unknown field {key!r}")
        if not isinstance(value, kinds[key]) or (isinstance(value, bool) and kinds[key] is not bool):
            raise ValueError(f"--resume {run}: {path} has {key} = {value!r}, not a valid value")
    return saved


def parse_args(argv):
    """Config from the flags; with --resume, the run's saved config with only the given flags changed."""
    p = argparse.ArgumentParser(description="Self-Questioning Language Models: train a model on problems it writes.")
    p.error = lambda message: (print(f"sqlm.py: error: {message}", file=sys.stderr), sys.exit(2))
    for f in dataclasses.fields(Config):
        flag, help_ = "--" + f.name.replace("_", "-"), f"{f.metadata['help']} (default: {f.default!r})"
        if f.type is bool or f.type == "bool":  # --cat / --no-cat: a resumed run can switch a flag off
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_, choices=f.metadata["choices"])
    given = vars(p.parse_args(negative_values_joined(sys.argv[1:] if argv is None else argv)))
    if "resume" in given:
        given = {**saved_config(given["resume"]), **given}
    cfg = Config(**given)
    if 0 < cfg.batch < cfg.minibatch:  # on the command line; a Config built in code may shrink a batch for a test
        raise ValueError(f"--minibatch {cfg.minibatch} is more groups than the proposer's --batch {cfg.batch}: "
                         f"give --minibatch {cfg.batch} or less")
    return cfg


def main(argv=None):
    """CLI entry: bad input (flag, value, task, model, run directory) is one line on stderr and exit
    code 2; Ctrl-C is one line saying how to resume, exit code 130."""
    try:
        try:
            cfg = parse_args(argv).resolve()
        except ValueError as e:
            print(f"sqlm.py: error: {e}", file=sys.stderr)
            return 2
        try:
            train(cfg)
        except (RunError, rollout.LoadError) as e:
            print(f"sqlm.py: error: {e}", file=sys.stderr)
            return 2
        except Interrupted as e:
            print(f"sqlm.py: {e}", file=sys.stderr)
            return 130
    except KeyboardInterrupt:  # before the run directory exists: nothing was written
        print("sqlm.py: interrupted before the first step; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
