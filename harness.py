"""The run around the method: flag checks and the CLI, run directories, logs, checkpoints and
resume, interrupts, and fitting the memory knobs to a GPU.

`python sqlm.py ...` lands in `main` here; `train(cfg)` sets a run up and hands the loop to
`sqlm.train` with a `Run` that evaluates, logs and saves. This module imports the method
(sqlm.py), never the reverse.

A run directory holds one run: rank 0 holds an flock on it for the run's life (a second process
that wants it is refused in one line; a crash releases it). It holds config.json, metrics.jsonl
(one line per step), samples.jsonl (one line per proposal) and step-NNNNNN/ checkpoints
(save_pretrained model and tokenizer plus trainer_state.pt: step, config, AdamW state). A
checkpoint is written under a temporary name and renamed, so a kill mid-save never leaves a
broken one; `--resume` continues from the last complete one with the saved config, changing
only the flags given, and only those that do not change what the run is (`RESUMABLE`: length,
eval, checkpoints, device and memory knobs).

Failures of the machine (no space, a read-only directory, permissions) and interrupts (Ctrl-C,
SIGTERM) at any point are one line that says where the run stands and how to continue it; every
file is written so that such a failure leaves the last complete checkpoint and the logs usable.

Under torchrun (parallel.py) every process runs `train` and evaluates its share of the held-out
set; rank 0 alone prints and writes the logs, the config and the model; each process's share of
the AdamW state is saved in the checkpoint's optimizer/ (torch.distributed.checkpoint), so a run
resumes on as many processes as wrote it. A write that fails on rank 0 ends it with its one line,
and torchrun stops the others.
"""
import argparse
import contextlib
import dataclasses
import fcntl
import itertools
import json
import math
import os
import re
import shlex
import shutil
import sys
import time

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import cli
import eval as heldout
import memory
import parallel
import prompts
import rollout
import sandbox
import sqlm
from sqlm import Config

POSITIVE = ("batch", "minibatch", "microbatch", "steps", "rollout_rows", "max_prompt",
            "max_response", "lr", "temperature", "top_p", "grad_clip", "critic_lr", "value_clip")
NON_NEGATIVE = ("clip_low", "clip_high", "clip_c", "kl", "weight_decay", "proposer_every",
                "eval_every", "eval_limit", "eval_samples", "save_every", "keep_last", "seed",
                "threads", "gamma", "lam")
RUN_FILES = ("config.json", "metrics.jsonl", "samples.jsonl")  # and step-* directories
CRITIC_FILE = "critic.safetensors"  # a --critic run's checkpoint: the value model's weights
# What --resume may change: how long and on what the run goes on, how it is watched and saved.
# Every other field (task, model, seed, batch shape, rewards, loss, sampling) is what the run *is*.
RESUMABLE = ("steps", "device", "eval_every", "eval_limit", "eval_data", "eval_samples",
             "save_every", "keep_last", "rollout_rows", "microbatch", "grad_checkpointing",
             "fit_memory", "threads")


class RunError(Exception):
    """Bad input found as a run starts (run directory, checkpoint, prompts): one line for the
    CLI."""


def launch_command(processes, per_node=None):
    """How to start sqlm.py on `processes` processes (`per_node` of them on each node): a checkpoint
    resumes on as many processes as wrote it."""
    script = os.path.relpath(sqlm.__file__)
    script = shlex.quote(sqlm.__file__ if script.startswith("..") else script)
    if processes == 1:
        return f"python {script}"
    per_node = per_node or processes
    nodes = f"--nnodes {processes // per_node} " if processes > per_node else ""
    return f"torchrun {nodes}--nproc-per-node {per_node} {script} --"


def where_it_stands(run):
    """The last complete checkpoint of a run and the command that continues it (one line's tail)."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    launch = launch_command(processes, int(os.environ.get("LOCAL_WORLD_SIZE", processes)))
    return (f"last complete checkpoint: {last_checkpoint(run) or 'none yet'}; "
            f"resume with: {launch} --resume {shlex.quote(run)}")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during a run; the message says where it stopped and the command that
    continues it. `code`: the exit code (cli.interrupt_code)."""

    def __init__(self, run, step, interrupt):
        self.code = cli.interrupt_code(interrupt)
        by = " by SIGTERM" if isinstance(interrupt, cli.Terminated) else ""
        super().__init__(f"interrupted{by} at step {step}; {where_it_stands(run)}")


class MachineError(RunError):
    """The machine failed a write during a run (no space, read-only, permissions): one line, exit 2,
    with where the run stands and how to resume it once the cause is fixed."""

    def __init__(self, run, step, what, reason):
        super().__init__(f"cannot write {what} at step {step} ({reason}); {where_it_stands(run)}")


# --- the config ----------------------------------------------------------------------

def flag(name):
    """The command-line spelling of a Config field: eval_every -> --eval-every."""
    return "--" + name.replace("_", "-")


def resolved(cfg):
    """`cfg` with its task defaults filled and a local model's path absolute, as a run's config.json
    stores them (a hub id stays as given)."""
    cfg.resolve()
    if os.path.isdir(os.path.expanduser(cfg.model)):
        cfg.model = os.path.abspath(os.path.expanduser(cfg.model))
    return cfg


def check_config(cfg):
    """Fill the task defaults, make paths absolute (a run resumes from any directory) and check
    every value; ValueError is one line naming the flag. Idempotent. A new run without --out is
    named when its directory is made (`claim_new_run_dir`)."""
    if cfg.task not in prompts.TASKS:
        raise ValueError(f"unknown task '{cfg.task}' ({', '.join(prompts.TASKS)})")
    resolved(cfg)
    cfg.out, cfg.resume, cfg.eval_data = (os.path.abspath(os.path.expanduser(p)) if p else p
                                          for p in (cfg.out, cfg.resume, cfg.eval_data))
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), flag(f.name)
        if f.metadata["choices"] and value not in f.metadata["choices"]:
            raise ValueError(f"{name} must be one of "
                             f"{', '.join(c for c in f.metadata['choices'] if c)}, not {value!r}")
        if f.type in (float, "float") and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, not {value}")
        if f.name in POSITIVE and not value > 0:
            raise ValueError(f"{name} must be positive, not {value}")
        if f.name in NON_NEGATIVE and not value >= 0:
            raise ValueError(f"{name} must be >= 0, not {value}")
    checks = [((cfg.solver_reward == "tests") == (cfg.task == "code")
               or cfg.solver_reward == "format",
               f"--solver-reward {cfg.solver_reward} does not fit --task {cfg.task}"),
              (not cfg.arith_check or cfg.task == "arith",
               "--arith-check applies to --task arith only"),
              (cfg.n >= 2, f"--n must be at least 2, not {cfg.n} (groups of one carry no signal)"),
              (cfg.top_p <= 1, f"--top-p must be in (0, 1], not {cfg.top_p}"),
              (cfg.clip_low < 1, f"--clip-low must be in [0, 1), not {cfg.clip_low}"),
              (cfg.clip_c == 0 or cfg.clip_c > 1,
               f"--clip-c must be > 1 (or 0 to disable), not {cfg.clip_c}"),
              (cfg.gamma <= 1 and cfg.lam <= 1,
               f"--gamma and --lam must be in [0, 1], not {cfg.gamma} and {cfg.lam}"),
              (cfg.seed <= 2**32 - 1,
               f"--seed must be at most 2**32-1 = {2**32 - 1}, not {cfg.seed}"),
              (cfg.threads <= cores(),  # torch would fail to start them, then crash
               f"--threads {cfg.threads} is more than the {cores()} CPU cores this process may "
               f"use: give at most {cores()} (0: torch's default)")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    prompts.check_task(cfg.task, cfg.cat)
    cli.device(cfg.device)
    return cfg


def cores():
    """The CPU cores this process may run on (its affinity, as taskset or a container sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def check_prompts(cfg, tokenizer):
    """The task's prompt files are usable: a proposer prompt, a solver prompt with its {problem}
    slot, and room under --max-prompt for a problem after the solver prompt's own tokens."""
    files = (f"prompts/{cfg.task}_proposer{'_cat' if cfg.cat else ''}.txt, "
             f"prompts/{cfg.task}_solver.txt")
    try:
        topic, solver = (prompts.proposer_prompt(cfg.task, cat=cfg.cat),
                         prompts.load(cfg.task, "solver"))
    except OSError as e:
        raise RunError(f"cannot read the prompts ({files}): {e.strerror}: {e.filename}") from None
    if not topic or not solver:
        raise RunError(f"a prompt file is empty ({files})")
    if prompts.PROBLEM_SLOT not in solver:
        raise RunError(f"prompts/{cfg.task}_solver.txt has no {prompts.PROBLEM_SLOT} slot for the "
                       "problem")
    # load checked the template
    frame = len(rollout.chat_prompt(tokenizer, prompts.solver_prompt(cfg.task, "")))
    if frame >= cfg.max_prompt:
        raise RunError(f"--max-prompt {cfg.max_prompt} leaves no room for a problem: the "
                       f"{cfg.task} solver prompt alone is {frame} tokens with this tokenizer")


def check_lengths(cfg, model_config, tokenizer, eval_problems):
    """--max-prompt + --max-response within the model's context (max_position_embeddings, the
    positions it was trained on), and each --eval-data problem's solver prompt within --max-prompt
    (the memory plan assumes it), before anything is generated."""
    context, total = (getattr(model_config, "max_position_embeddings", None),
                      cfg.max_prompt + cfg.max_response)
    if context and total > context:
        raise RunError(f"--max-prompt {cfg.max_prompt} + --max-response {cfg.max_response} is "
                       f"{total:,} tokens, more than the model's context of {context:,} "
                       f"(max_position_embeddings in its config.json): give a --max-prompt and "
                       f"--max-response that sum to at most {context}")
    if eval_problems:
        try:
            heldout.solver_prompt_ids(tokenizer, cfg.task, eval_problems, cfg.max_prompt,
                                      f"--max-prompt {cfg.max_prompt} tokens")
        except heldout.PromptTooLong as e:
            raise RunError(f"--eval-data {cfg.eval_data}: {e}") from None


# --- precision and memory --------------------------------------------------------------

def fit_to_memory(cfg, model_config, device, world=1):
    """On a GPU with --fit-memory: --rollout-rows and --microbatch become the largest that the
    memory plan (memory.memory_plan, per process of `world`) fits on the card, up to the step's own
    sizes. Memory knobs only: the samples and the gradient do not depend on them. Returns the KL
    reference's dtype: fp32, or bf16 (as released) only when the plan fits nothing with an fp32 one,
    said once."""
    if device.type != "cuda" or not cfg.fit_memory:
        return torch.float32
    settings = dict(max_rows=-(-cfg.batch * cfg.n * cfg.n // world),
                    max_microbatch=-(-cfg.minibatch * cfg.n // world),
                    max_prompt=cfg.max_prompt, max_response=cfg.max_response, n=cfg.n,
                    kl=bool(cfg.kl_coef), grad_checkpointing=cfg.grad_checkpointing, gpu=True,
                    world=world, critic=cfg.use_critic)  # sizes per process
    card = torch.cuda.get_device_properties(device).total_memory
    fit, kl_dtype = memory.fit_memory(model_config, card, **settings), torch.float32
    if fit is None and cfg.kl_coef:
        fit, kl_dtype = (memory.fit_memory(model_config, card, kl_bytes=2, **settings),
                         torch.bfloat16)
    if fit is None:
        raise RunError("the memory plan fits not even one sequence on this GPU: try "
                       "--grad-checkpointing, --kl 0, a shorter --max-response or more GPUs "
                       "(torchrun, README)")
    cfg.rollout_rows, cfg.microbatch = fit
    if parallel.rank_from_env() == 0:
        print(f"memory plan: --rollout-rows {cfg.rollout_rows} --microbatch {cfg.microbatch}"
              + ("; the fp32 KL reference does not fit this GPU, so it is kept in bf16 (as "
                 "released: the KL term starts near 0.006 per token, not at 0)"
                 if kl_dtype == torch.bfloat16 else ""), flush=True)
    return kl_dtype


# --- checkpoints ---------------------------------------------------------------------

def save_checkpoint(run, step, models, tokenizer, cfg, world):
    """run/step-NNNNNN: save_pretrained model + tokenizer, and trainer_state.pt: step, config and
    the AdamW state. No random generator state: every sample draws from a stream derived from (seed,
    step, role, prompt) (sqlm.derive_seed), so nothing carries over from one step to the next.

    Written under a temporary name and renamed, so a kill mid-save leaves no broken checkpoint. A
    failing disk raises MachineError with the temporary directory removed (a full disk is not made
    fuller, and a later save or prune finds nothing half-written). On N processes: the whole weights
    gathered to rank 0, which writes them, and each process's AdamW shard in optimizer/;
    trainer_state.pt is written last. With a critic: its weights in critic.safetensors and its
    AdamW state beside the policy's (critic_optimizer/ on N processes).
    """
    final = os.path.join(run, f"step-{step:06d}")
    tmp = final + ".tmp"
    sharded = world.size > 1
    try:
        # a collective, before rank 0 writes
        weights = parallel.full_state_dict(models.policy) if sharded else None
        critic = models.critic
        critic_weights = (None if critic is None else parallel.whole_state_dict(critic) if sharded
                          else critic.state_dict())
        if world.main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        world.barrier()
        if sharded:
            write_sharded(models.policy, models.optimizer, os.path.join(tmp, "optimizer"))
            if critic is not None:
                write_sharded(critic, models.critic_optimizer, os.path.join(tmp, "critic_optimizer"))
        if world.main:
            models.model.save_pretrained(tmp, state_dict=weights)
            tokenizer.save_pretrained(tmp)
            if critic is not None:
                save_file({k: v.contiguous() for k, v in critic_weights.items()},
                          os.path.join(tmp, CRITIC_FILE))
            state = {"step": step, "world_size": world.size, "config": dataclasses.asdict(cfg),
                     "optimizer": ("optimizer/ (sharded)" if sharded
                                   else models.optimizer.state_dict())}
            if critic is not None:
                state["critic_optimizer"] = ("critic_optimizer/ (sharded)" if sharded
                                             else models.critic_optimizer.state_dict())
            write_trainer_state(state, os.path.join(tmp, "trainer_state.pt"))
    except BaseException as e:  # no space, Ctrl-C: no half-written .tmp left to fill the disk
        e = parallel.cause(e)  # the sharded optimizer's save wraps what failed in every process
        # safetensors reports a failed write as its own
        machine = isinstance(e, (OSError, SafetensorError))
        # before the cleanup frees the space again
        reason = cli.os_reason(e, run) if machine else None
        shutil.rmtree(tmp, ignore_errors=True)
        if not machine:
            raise e
        raise MachineError(run, step, f"checkpoint step-{step:06d}", reason) from None
    if world.main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    world.barrier()  # every process sees the checkpoint complete before the run goes on
    return final


def write_sharded(module, optimizer, path):
    """parallel.save_optimizer, whose writer (torch.save's, in every process) reports a failed
    write (a full disk) as a RuntimeError: an OSError here."""
    try:
        parallel.save_optimizer(module, optimizer, path)
    except BaseException as e:
        cause = parallel.cause(e)
        if isinstance(cause, RuntimeError):
            raise OSError(f"torch.distributed.checkpoint could not write {path} "
                          f"({cli.first_line(cause)})") from None
        raise


def write_trainer_state(state, path):
    """torch.save, whose writer reports a failed write (a full disk) as a RuntimeError: an OSError
    here."""
    try:
        torch.save(state, path)
    except RuntimeError as e:
        raise OSError(f"torch.save could not write {path} ({cli.first_line(e)})") from None


def complete_checkpoints(run):
    """A run's complete step-* directories (a trainer_state.pt written, not a .tmp), oldest
    first."""
    return (sorted(d for d in os.listdir(run) if d.startswith("step-") and not d.endswith(".tmp")
                   and os.path.exists(os.path.join(run, d, "trainer_state.pt")))
            if os.path.isdir(run) else [])


def last_checkpoint(run):
    """The newest complete step-* directory of a run, or None."""
    done = complete_checkpoints(run)
    return os.path.join(run, done[-1]) if done else None


def prune_checkpoints(run, keep_last):
    """Delete all but the newest `keep_last` complete checkpoints (0: keep all) and any .tmp a kill
    left.

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
    """A checkpoint's trainer_state.pt (step, optimizer); RunError if it cannot be read."""
    path = os.path.join(checkpoint, "trainer_state.pt")
    try:
        state = torch.load(path, weights_only=False)  # our own file (the config's dict)
        state["step"], state["optimizer"]  # noqa: B018 (the fields a resume reads)
    except Exception as e:  # truncated, overwritten, not a torch file: one line, no traceback
        raise RunError(f"cannot read {path} ({cli.first_line(e)}): delete {checkpoint} to resume "
                       f"from the checkpoint before it") from None
    return state


def check_world_size(state, checkpoint, world, run):
    """A checkpoint's AdamW state is sharded per process: it resumes on as many processes as wrote
    it."""
    wrote = state.get("world_size", 1)
    if wrote != world.size:
        raise RunError(f"{checkpoint} was written by {wrote} process{'es' * (wrote > 1)}, this run "
                       f"has {world.size}: its optimizer state is per process; resume it with "
                       f"{launch_command(wrote)} --resume {run}")


# --- the run directory: one run at a time --------------------------------------------

class RunDir:
    """The run directory as this run holds it (`claimed`): `path`; `made`, the directories this
    run created for it (the run directory first, then parents it needed), removed again if the run
    ends before its first step; `started`, set once the first step begins."""

    def __init__(self, path, made=()):
        self.path, self.made, self.started = path, list(made), False


@contextlib.contextmanager
def claimed(cfg, world):
    """The run directory (a RunDir), held by this run from before its first write to its end.

    Rank 0, the process that writes it, holds an exclusive flock on the directory itself: the
    kernel drops it when the process ends, by kill -9 too, so a crash never leaves a directory
    locked, and no file is added to the run. Another process that wants the directory (a run
    started into the same --out, a second --resume) is refused in one line before it writes
    anything. Every process learns rank 0's verdict and the directory's name (a collective). A
    start that fails, or is interrupted, before the first step removes the directories it made.
    """
    run_dir, lock, verdict = None, None, None
    if world.main:
        try:
            run_dir, lock = (claim_resumed_run_dir(cfg.resume) if cfg.resume
                             else claim_new_run_dir(cfg.out, cfg.task))
        except RunError as e:
            verdict = str(e)
    path, verdict = world.gather([(run_dir and run_dir.path, verdict)])[0]
    if verdict:
        raise RunError(verdict)
    run_dir = run_dir or RunDir(path)
    cfg.out = path
    try:
        yield run_dir
    except BaseException:
        if not run_dir.started:
            remove_made(run_dir.made)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def claim_new_run_dir(out, task):
    """(RunDir, lock) for a new run: `out`, or without one runs/<task>-<time>, with -2, -3, ...
    where that name is taken (mkdir is atomic: runs started within one second get a directory
    each). RunError if `out` is a file, not creatable, held by a running run or a run already."""
    base = os.path.abspath(out or os.path.join("runs", f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"))
    for suffix in itertools.count(1):
        path = base if suffix == 1 else f"{base}-{suffix}"
        if out or not os.path.lexists(path):
            claim = claim_dir(path, given=bool(out))
            if claim:
                return claim


def claim_dir(path, given):
    """`claim_new_run_dir` for one name: (RunDir, lock), or None for a default name another run
    took meanwhile."""
    while True:  # again where the directory was removed or replaced while it was being locked
        made = []
        if not os.path.isdir(path):
            check_new_run_dir(path)  # a file, no permission: refused before anything is made
            made = make_run_dir(path)
            if not made and not given:
                return None
        lock = lock_run_dir(path)
        if lock == "held" and not given:
            return None
        if lock == "held":
            raise RunError(f"--out {path} is in use by a run still running{holder(path)}: choose "
                           f"another --out")
        if lock != "moved":
            break
    try:
        check_new_run_dir(path)  # under the lock: no run ended in it meanwhile
    except RunError:
        if lock is not None:
            os.close(lock)
        raise
    return RunDir(path, made), lock


def claim_resumed_run_dir(path):
    """(RunDir, lock) for a resumed run's directory; RunError if a running process holds it."""
    try:
        lock = lock_run_dir(path)
    except OSError as e:
        raise RunError(f"--resume {path}: {cli.os_reason(e)}") from None
    if lock in ("held", "moved"):
        raise RunError(f"--resume {path}: the run is still running{holder(path)}; stop it before "
                       f"resuming it")
    return RunDir(path), lock


def make_run_dir(path):
    """Create the directory `path` and any missing parents: those made, `path` first (a start that
    fails removes them), or [] if another process made `path` first."""
    missing, parent = [], os.path.dirname(path)
    while not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path)
    except FileExistsError:
        return []
    except OSError as e:
        remove_made(missing)
        raise RunError(f"cannot write the run directory {path}: {cli.os_reason(e)}") from None
    return [path] + missing


def remove_made(made):
    """Undo make_run_dir: the run directory with what it holds, then each parent it made while it
    is empty (another run may have made its own directory in it meanwhile)."""
    if made:
        shutil.rmtree(made[0], ignore_errors=True)
    for parent in made[1:]:
        try:
            os.rmdir(parent)
        except OSError:
            break


def lock_run_dir(path):
    """An exclusive, non-blocking flock on the directory `path`: its descriptor; "held" where
    another process holds it; "moved" where `path` was removed or replaced while it was being
    locked; None, with a line said, where the file system has no such locks (NFS refuses them on
    a directory), so the run goes on unguarded."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return "held"
    except OSError as e:
        os.close(fd)
        print(f"cannot lock the run directory {path} ({cli.os_reason(e)}): another run started "
              f"into it would not be refused", flush=True)
        return None
    try:
        same = os.path.samestat(os.stat(path), os.fstat(fd))
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return "moved"
    return fd


def holder(path):
    """" (pid N)" for the process holding the flock on `path` (/proc/locks, Linux), else ""."""
    try:
        st = os.stat(path)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for fields in map(str.split, f):
                if "FLOCK" in fields and key in fields:
                    return f" (pid {fields[fields.index(key) - 1]})"
    except (OSError, IndexError):
        pass
    return ""


def check_new_run_dir(out):
    """A new run's --out: not a file, not a run already (its logs would be appended to),
    creatable."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"--out {out} is a file, not a directory")
    if os.path.isdir(out) and any(n in RUN_FILES or n.startswith("step-") for n in os.listdir(out)):
        raise RunError(f"--out {out} already holds a run: continue it with --resume {out}, or "
                       f"choose another --out")
    try:
        cli.check_creatable(out)
    except ValueError as e:
        raise RunError(str(e)) from None


# --- logs ----------------------------------------------------------------------------

def truncate_logs(run, step):
    """Keep only the records of steps before `step` in the run's jsonl logs, and no line a kill or a
    full disk cut short. Returns each line so dropped, said: "metrics.jsonl line 3 (step 2: run
    again)", its step read from the line's start (every record begins with it); a step before
    `step` is not run again, so its record is "lost"."""
    def before(line):
        try:
            return json.loads(line)["step"] < step
        except (ValueError, KeyError, TypeError):
            return False

    dropped = []
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = os.path.join(run, name)
        if os.path.exists(path):
            with open(path) as f:
                lines = f.readlines()
            kept = [line for line in lines if before(line)]
            dropped += [f"{name} line {number} ({cut_step(line, step)})"
                        for number, line in enumerate(lines, 1) if not whole_record(line)]
            cli.write_atomic(path, "".join(kept))
    return dropped


def whole_record(line):
    """A log line that reads as a record (a JSON object with its step)."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "step" in record


def cut_step(line, step):
    """What a cut line held, for `truncate_logs`: its step and whether a resume from `step` runs it
    again."""
    found = re.match(r'\{"step": (\d+)', line)
    if not found:
        return "step unknown"
    return f"step {found[1]}: {'run again' if int(found[1]) >= step else 'lost'}"


def append_jsonl(path, records):
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def record(step, p):
    """One samples.jsonl line: the proposal, its verdict, and (if solved) its answers, vote and
    rewards."""
    rec = {"step": step, "index": p.index, "proposal": p.sample.text, "valid": p.valid,
           "reason": p.reason}
    if p.solved:
        rec.update(problem=p.problem.text, responses=[s.text for s in p.answers],
                   answers=p.extracted, majority=p.majority, majority_count=p.majority_count,
                   task_rewards=p.task_rewards, solver_rewards=p.solver_rewards,
                   proposer_reward=p.proposer_reward)
        if p.truth is not None:
            rec["truth"] = p.truth
    return rec


def format_line(m):
    """One human line per step; the full record goes to metrics.jsonl."""
    if "t_update" not in m:  # the final weights' eval
        return f"step {m['step']:4d} | eval {m.get('eval_accuracy', float('nan')):.3f}"
    fields = [f"step {m['step']:4d}",
              f"t {m['t_propose']:.1f}/{m['t_solve']:.1f}/{m['t_rewards']:.1f}/"
              f"{m['t_update']:.1f}s",
              f"valid {m['valid_rate']:.2f}", f"r_prop {m['proposer_reward']:.3f}",
              f"r_solve {m['solver_reward']:.3f}",
              f"maj {m['majority_share']:.2f}", f"zero {m['zero_signal']:.2f}",
              f"clip {m.get('solver_clip_frac', 0):.3f}", f"kl {m.get('solver_kl', 0):.2e}",
              f"ent {m['solver_entropy']:.2f}", f"len {m['response_len']:.0f}"]
    if "solver_value_loss" in m:
        fields.append(f"vloss {m['solver_value_loss']:.3f}")
        fields.append(f"ev {m['solver_explained_variance']:.2f}")
    if m.get("majority_correct") is not None:
        fields.append(f"maj_ok {m['majority_correct']:.2f}/{m['majority_checked']}")
    if "eval_accuracy" in m:
        fields.append(f"eval {m['eval_accuracy']:.3f}")
    if "eval_sampled_accuracy" in m:
        fields.append(f"sampled {m['eval_sampled_accuracy']:.3f}")
    return " | ".join(fields)


def run_eval(sampler, tokenizer, cfg, world):
    """Held-out figures: greedy (eval_*), and with --eval-samples k also k samples per problem at
    the training temperature (eval_sampled_*: accuracy of one sample, pass@k, maj@k). Each process
    of `world` answers its share of the problems; rank 0 shows the progress of its own."""
    problems = heldout.read_jsonl(cfg.eval_data, cfg.task) if cfg.eval_data else None
    runs = [("eval_", 1, 0.0)] + ([("eval_sampled_", cfg.eval_samples, cfg.temperature)]
                                  if cfg.eval_samples else [])
    figures = {}
    for prefix, samples, temperature in runs:
        show = (rollout.progress_printer(f"{prefix.rstrip('_')} step", samples) if world.main
                else None)
        result = heldout.evaluate(sampler, tokenizer, cfg.task, problems,
                                  limit=cfg.eval_limit or None, samples=samples,
                                  temperature=temperature, max_new_tokens=cfg.max_response,
                                  batch_size=cfg.rollout_rows, progress=show, world=world)
        figures.update({prefix + k: v for k, v in result.items() if isinstance(v, (int, float))})
    return figures


class Run:
    """A run directory as the loop (sqlm.train) sees it: evaluate, log and save; `step` is the step
    in progress (for the Ctrl-C line). On N processes every process evaluates its share of the
    held-out set, rank 0 logs, and every process takes part in a save."""

    def __init__(self, path, cfg, models, tokenizer, step, world):
        self.path, self.cfg, self.models, self.tokenizer, self.step, self.world = \
            path, cfg, models, tokenizer, step, world

    def evaluate(self, step):
        return run_eval(self.models.sampler, self.tokenizer, self.cfg, self.world)

    def log(self, step, metrics, batch=()):
        if self.world.main:
            try:  # a line cut short by a full disk is dropped on resume (truncate_logs)
                append_jsonl(os.path.join(self.path, "metrics.jsonl"), [{"step": step, **metrics}])
                if batch:
                    append_jsonl(os.path.join(self.path, "samples.jsonl"),
                                 [record(step, p) for p in batch])
            except OSError as e:
                raise MachineError(self.path, step, "the logs", cli.os_reason(e)) from None
            print(format_line({"step": step, **metrics}), flush=True)
        self.step = step + 1

    def save(self, step):
        save_checkpoint(self.path, step, self.models, self.tokenizer, self.cfg, self.world)
        if self.world.main:
            prune_checkpoints(self.path, self.cfg.keep_last)


# --- the run -------------------------------------------------------------------------

def train(cfg):
    """The whole run: check the config, load, (resume), then sqlm.train with eval, logs and
    checkpoints. Returns the run dir.

    Raises RunError on bad input found as the run starts (nothing is written then),
    sandbox.Unavailable for the code task on a machine whose sandbox cannot isolate, and Interrupted
    on Ctrl-C. Under torchrun, every process runs it (parallel.setup joins them).
    """
    try:
        cfg = check_config(cfg)  # no Config reaches the loop with its task defaults unfilled
    except ValueError as e:
        raise RunError(str(e)) from None
    if cfg.task == "code":  # a sandbox that cannot isolate refuses here, before a model loads
        sandbox.isolation()
    world, device = parallel.setup(cfg.device)
    try:
        with claimed(cfg, world) as run_dir:  # rank 0 holds the directory until the run ends
            path = train_on(cfg, world, device, run_dir)
        # every process is done with every collective before any tears the group down: a process
        # that exits while another still talks to it can abort in gloo's threads
        world.barrier()
        return path
    finally:
        parallel.teardown(world)


def start_point(cfg, world):
    """(run directory, checkpoint to resume from or None, its trainer state or None), checked: a
    resumed run's checkpoint is before --steps and from as many processes as this run has (a new
    run's directory was checked as it was claimed)."""
    path, checkpoint, state = cfg.out, None, None
    if cfg.resume:  # from its last complete checkpoint, or from step 0 if it has none yet
        checkpoint = last_checkpoint(path)
        state = read_trainer_state(checkpoint) if checkpoint else None
        if state and cfg.steps <= state["step"]:
            raise RunError(f"--steps {cfg.steps} is not beyond the last checkpoint ({checkpoint}, "
                           f"step {state['step']}): give --steps above {state['step']} to train on")
        if state:
            check_world_size(state, checkpoint, world, path)
    return path, checkpoint, state


def load_policy(cfg, checkpoint, device, world):
    """(fp32 model, tokenizer) from the checkpoint or --model, checked: a plain lm-head, usable
    prompts. On N GPUs the whole model is loaded on the CPU: fully_shard moves only each GPU's
    shard."""
    model, tokenizer = rollout.load(checkpoint or cfg.model,
                                    device=torch.device("cpu") if world.size > 1 else device,
                                    dtype=torch.float32)
    try:
        # token_logprobs reads the lm-head directly: one line, not wrong numbers
        rollout.check_plain_head(model)
    except ValueError as e:
        raise RunError(str(e)) from None
    check_prompts(cfg, tokenizer)
    return model, tokenizer


def restore_optimizer(models, checkpoint, state, world):
    """A checkpoint's AdamW states into the run's optimizers (the policy's, and the critic's if it
    has one; on N processes, each its own shard)."""
    pairs = [("optimizer", models.policy, models.optimizer)]
    if models.critic is not None:
        pairs.append(("critic_optimizer", models.critic, models.critic_optimizer))
    for name, module, optimizer in pairs:
        if world.size == 1:
            optimizer.load_state_dict(state[name])
            continue
        try:
            parallel.load_optimizer(module, optimizer, os.path.join(checkpoint, name))
        except BaseException as e:
            # a missing or damaged shard, in any process: one line, not a traceback
            e = parallel.cause(e)
            if isinstance(e, KeyboardInterrupt):
                raise e from None
            raise RunError(f"cannot read {checkpoint}/{name} ({cli.first_line(e)}): delete "
                           f"{checkpoint} to resume from the checkpoint before it") from None


def read_critic(checkpoint, cfg):
    """A resumed run's critic weights (its checkpoint's critic.safetensors), or None: a new run, or
    no critic. RunError if a critic run's checkpoint has none."""
    if checkpoint is None or not cfg.use_critic:
        return None
    try:
        return load_file(os.path.join(checkpoint, CRITIC_FILE))
    except (OSError, SafetensorError) as e:
        raise RunError(f"cannot read {checkpoint}/{CRITIC_FILE} ({cli.first_line(e)}): delete "
                       f"{checkpoint} to resume from the checkpoint before it") from None


def train_on(cfg, world, device, run_dir):
    """`train` in this process, a member of `world`, on `device`, in the claimed `run_dir`."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    path, checkpoint, state = start_point(cfg, world)
    world.barrier()  # every process has read the checkpoint before rank 0 writes in the directory
    eval_problems = None
    if cfg.eval_data:  # read now, not at the first eval
        try:
            eval_problems = heldout.read_jsonl(cfg.eval_data, cfg.task)
        except ValueError as e:
            raise RunError(f"--eval-data: {e}") from None
    model, tokenizer = load_policy(cfg, checkpoint, device, world)
    check_lengths(cfg, model.config, tokenizer, eval_problems)
    kl_dtype = fit_to_memory(cfg, model.config, device, world.size)
    models = sqlm.build_models(cfg, model, device, world, resumed=checkpoint is not None,
                               kl_dtype=kl_dtype, critic_state=read_critic(checkpoint, cfg))
    start = 0
    if state:
        restore_optimizer(models, checkpoint, state, world)
        start = state["step"]
    run = Run(path, cfg, models, tokenizer, start, world)
    dropped = prepare_run_dir(path, cfg, start) if world.main else []
    world.barrier()
    if world.main:
        if cfg.resume:
            print((f"resumed from {checkpoint} at step {start}" if checkpoint else
                   f"no checkpoint in {path} yet: running it again from step 0")
                  + (f"; dropped lines cut short: {', '.join(dropped)}" if dropped else ""),
                  flush=True)
        print(config_line(cfg, world), flush=True)
    run_dir.started = True
    try:
        sqlm.train(cfg, models, tokenizer, device, run, start, world)
    except KeyboardInterrupt as e:
        raise Interrupted(path, run.step, e) from None
    if world.main:
        print(run_summary(path), flush=True)
    return path


def prepare_run_dir(path, cfg, start):
    """Write config.json in the claimed run directory (a resumed run's logs cut back to `start`
    first). Returns the log lines dropped as cut short (truncate_logs)."""
    dropped = []
    try:
        if cfg.resume:
            dropped = truncate_logs(path, start)  # steps after the checkpoint are run again
        cli.write_atomic(os.path.join(path, "config.json"),
                         json.dumps(dataclasses.asdict(cfg), indent=2))
    except OSError as e:
        raise RunError(f"cannot write the run directory {path}: {cli.os_reason(e)}") from None
    except KeyboardInterrupt as e:
        if cfg.resume:
            raise Interrupted(path, start, e) from None
        # a new run, its config not yet (or just) written: as if never started (`claimed` removes
        # a directory it made; an --out that existed keeps no config.json)
        with contextlib.suppress(OSError):
            os.remove(os.path.join(path, "config.json"))
        raise
    return dropped


def config_line(cfg, world):
    """The start-up line: the flags whose values differ from the task's defaults, in the config
    block's order (--task always); config.json keeps every field."""
    defaults = resolved(Config(task=cfg.task))
    given = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "resume" or (f.name != "task" and value == getattr(defaults, f.name)):
            continue
        if isinstance(value, bool):
            given.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
        else:
            given.append(f"{flag(f.name)} {shlex.quote(str(value))}")
    processes = f" ({world.size} processes)" if world.size > 1 else ""
    return (f"config{processes}: {' '.join(given)} (the rest as default; every field: "
            f"{os.path.join(cfg.out, 'config.json')})")


def run_summary(run):
    """Where the run and its final checkpoint are, and its held-out accuracy against step."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        evals = [(m["step"], m["eval_accuracy"]) for m in map(json.loads, f)
                 if "eval_accuracy" in m]
    trajectory = (", ".join(f"{step}: {accuracy:.3f}" for step, accuracy in evals)
                  or "none (--eval-every 0)")
    return (f"run directory     {run}\nfinal checkpoint  {last_checkpoint(run)}\n"
            f"eval accuracy     {trajectory} (step: greedy accuracy)")


# --- CLI -----------------------------------------------------------------------------

def saved_config(run):
    """The config a run was started with (its config.json); ValueError, one line, if there is none
    or a field is unknown or of the wrong type (the values themselves are checked with the
    flags')."""
    path = os.path.join(run, "config.json")
    if os.path.exists(os.path.join(run, "trainer_state.pt")):
        raise ValueError(f"--resume {run} is a checkpoint; --resume takes the run directory that "
                         f"holds it ({os.path.dirname(os.path.abspath(run))}) and continues from "
                         f"its last checkpoint")
    if not os.path.isdir(run):
        raise ValueError(f"--resume {run}: no such run directory")
    try:
        with open(path) as f:
            saved = json.load(f)
    except OSError as e:
        raise ValueError(f"--resume {run}: cannot read {path} ({e.strerror})") from None
    except (ValueError, RecursionError):
        raise ValueError(f"--resume {run}: {path} is damaged (not valid JSON)") from None
    if not isinstance(saved, dict):
        raise ValueError(f"--resume {run}: {path} is not a config (a JSON object)")
    kinds = {f.name: (int, float) if f.type is float else f.type
             for f in dataclasses.fields(Config)}
    for key, value in saved.items():
        if (key not in kinds or not isinstance(value, kinds[key])
                or (isinstance(value, bool) and kinds[key] is not bool)):
            raise ValueError(f"--resume {run}: {path} has {key} = {value!r}, not a valid value")
    return saved


def check_same_run(cfg, run):
    """`--resume` continues the run, so it may change only the RESUMABLE fields; a change of what
    the run is (task, model, seed, batch shape, rewards, loss, sampling) would mix two runs' records
    and checkpoints in one directory. RunError names each change and how to start a new run
    instead."""
    try:
        saved = Config(**saved_config(run)).resolve()  # as saved: resolved, paths absolute
    except ValueError as e:
        raise RunError(str(e)) from None
    # before check_config too: its complaint would miss the point
    cfg = resolved(dataclasses.replace(cfg))
    changed = [f.name for f in dataclasses.fields(Config)
               if f.name not in RESUMABLE + ("out", "resume")
               and getattr(cfg, f.name) != getattr(saved, f.name)]
    if changed:
        what = ", ".join(f"{flag(n)} {getattr(cfg, n)!r} (the run's: {getattr(saved, n)!r})"
                         for n in changed)
        weights = last_checkpoint(run)
        raise RunError(f"--resume {run} cannot change what the run is: {what}. --resume may change "
                       f"only {', '.join(flag(n) for n in RESUMABLE)}; for the new settings start "
                       f"a new run with --out NEW_DIR"
                       + (f" (--model {weights} starts it from this run's weights)"
                          if weights else ""))


def parse_args(argv):
    """Config from the flags; with --resume, the run's saved config with only the given flags
    changed."""
    p = argparse.ArgumentParser(prog="sqlm.py",
                                description="Self-Questioning Language Models: train a model on "
                                            "problems it writes.",
                                epilog=cli.SANDBOX_HELP)
    # argparse's usage errors too: one line, exit 2 (main), and checkable by experiments.py
    def error(message):
        raise ValueError(message)
    p.error = error
    for f in dataclasses.fields(Config):
        help_ = f"{f.metadata['help']} (default: {f.default!r})"
        # --cat / --no-cat: a resumed run can switch a flag off
        if f.type is bool or f.type == "bool":
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str)
                                                            else f.type.__name__]
            choices = f.metadata["choices"]
            # '' (per task, the help says) is no choice a reader would type: {majority,tests,...}
            shown = "{" + ",".join(c for c in choices if c) + "}" if choices else None
            p.add_argument(flag(f.name), type=kind, default=argparse.SUPPRESS, help=help_,
                           choices=choices, metavar=shown)
    argv = sys.argv[1:] if argv is None else list(argv)
    # `torchrun ... sqlm.py -- --n 4`, where torchrun keeps the --
    argv = argv[1:] if argv[:1] == ["--"] else argv
    given = vars(p.parse_args(cli.negative_values_joined(argv)))
    if "resume" in given:
        if given.get("out") and os.path.abspath(os.path.expanduser(given["out"])) != \
                os.path.abspath(os.path.expanduser(given["resume"])):
            raise ValueError(f"--out {given['out']} with --resume: a resumed run stays in its own "
                             f"directory ({given['resume']}); for a copy to go on elsewhere, copy "
                             f"the directory and resume the copy")
        given = {**saved_config(given["resume"]), **given}
    cfg = Config(**given)
    # on the command line; a Config built in code may shrink a batch for a test
    shape = dataclasses.replace(cfg).resolve()  # the batch shape in force (0 = per task)
    if 0 < shape.batch < shape.minibatch:
        raise ValueError(f"--minibatch {shape.minibatch} is more groups than the proposer's "
                         f"--batch {shape.batch}: give --minibatch {shape.batch} or less")
    return cfg


def end(code):
    """End the process with exit code `code`. Under torchrun, without the interpreter's shutdown
    (os._exit, once stdout and stderr are flushed): every file is written and closed by then, and
    in that shutdown, after the process group is destroyed, a process sometimes aborts in gloo's
    threads ("terminate called without an active exception", exit -6: about one 2-process CPU
    launch in ten), which torchrun reports as a failed run."""
    if parallel.launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def say(line):
    """An error or interrupt line on stderr, once: from rank 0 of a torchrun launch (every process
    meets it)."""
    if parallel.rank_from_env() == 0:
        print(line, file=sys.stderr)


def main(argv=None):
    """CLI entry: bad input (flag, value, task, model, run directory) and a failing disk are one
    line on stderr and exit code 2; Ctrl-C or SIGTERM, at any moment, one line saying how to resume,
    exit code 130 (Ctrl-C) or 143 (SIGTERM)."""
    with cli.interrupts():
        try:
            try:
                cfg = parse_args(argv)
                if cfg.resume and cfg.task in prompts.TASKS:
                    # first: a changed --task fails check_config otherwise
                    check_same_run(cfg, cfg.resume)
            except (ValueError, RunError) as e:
                say(f"sqlm.py: error: {e}")
                return 2
            try:
                train(cfg)
            except (RunError, rollout.LoadError, sandbox.Unavailable) as e:
                say(f"sqlm.py: error: {e}")
                return 2
            except Interrupted as e:
                say(f"sqlm.py: {e}")
                return e.code
        except KeyboardInterrupt as e:  # before the run directory exists: nothing was written
            say("sqlm.py: interrupted before the first step; nothing was written")
            return cli.interrupt_code(e)
    return 0
