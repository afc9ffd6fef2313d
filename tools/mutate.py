"""Mutation check: does any test fail when a realistic one-line mistake is made?

Each mutation below is a single-point change a forker could make by accident (a sign, a slice, an
off-by-one, a swapped argument, a default, a flag not passed on). Each one is applied alone to a
scratch copy of the checkout, the tests it names are run there, and it is reported as

    killed     a test failed (or the tests could not be collected): something guards this line
    survived   every test passed: nothing guards it
    timeout    the tests ran past --timeout (counted as not killed)
    stale      its old text is no longer in the file: the code moved, update the mutation
    ambiguous  its old text occurs more than once in the file: give it more context
    invalid    the mutated file does not compile: the mutation is wrong, not the tests
    error      pytest found no tests or was misused (exit 4 or 5): a test named here moved

    python tools/mutate.py                                  # every mutation, with the tests each names
    python tools/mutate.py tests/test_update.py             # every mutation, these test files instead
    python tools/mutate.py --only kl-arguments-swapped,adv-population-std --timeout 300
    python tools/mutate.py --list                           # the mutations, nothing run

The copy holds the tracked files (`git ls-files`) as they are in the working tree, so an edit not
yet committed is in it and a new file is in it once `git add`ed; the checkout itself is never
written. Before the mutations the tests run once on the unchanged copy: they must pass there, or
every mutation would look killed. When you add a knob, add a mutation that ignores it and see it
killed. Not run by CI; standard library only.

Each mutation names the fast tests that should catch it, so the whole list runs in well under an
hour on two busy cores; a survivor there is worth running against the whole suite before a test is
written. A survivor that changes nothing observable (what a line computes is never read) points at
the code, not the tests: the line can go.
"""
import argparse
import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTEST = [sys.executable, "-m", "pytest", "-q", "-x"]
DEFAULT_TESTS = '-m "not slow"'  # a mutation that names no tests: the suite without its slow tests


@dataclasses.dataclass
class Mutation:
    name: str
    path: str     # relative to the repository root
    old: str      # exact text, found once in the file
    new: str
    tests: str = DEFAULT_TESTS  # pytest arguments (files, node ids, -k), shell-quoted


# Test selections (pytest -x stops at the first failure, so a killed mutation costs little). The
# learning runs (tests/test_learning.py, up to a minute each) and the torchrun launches are left out
# unless named.
EQUATIONS = "tests/test_equations.py"
STEP = "tests/test_step.py"
UPDATE = "tests/test_update.py"
REWARDS = "tests/test_rewards.py"
RUNS = "tests/test_runs.py -m 'not slow'"
EVAL = "tests/test_eval.py"
ROLLOUT = "tests/test_rollout.py"
PARALLEL_UNITS = ("tests/test_parallel.py::test_shares_cover_the_items_in_order "
                  "tests/test_parallel.py::test_a_minibatch_is_dealt_by_tokens_with_equal_calls_on_every_process "
                  "tests/test_parallel.py::test_deal_gives_the_longest_sequence_first_to_the_process_with_fewest_tokens")
RESUME = "tests/test_runs.py tests/test_failures.py -k resum"
GLUE = f"{STEP} {UPDATE}"
CORE = f"{EQUATIONS} {STEP} {UPDATE}"
CRITIC = "tests/test_critic.py -m 'not slow'"


m = Mutation  # one short line per mutation below


MUTATIONS = [
    # --- the equations ------------------------------------------------------------------------
    m("kl-arguments-swapped", "sqlm.py", "delta = (ref_logp - logp).clamp", "delta = (logp - ref_logp).clamp",
      CORE),
    m("kl-k1-estimator", "sqlm.py", "k3 = (delta.exp() - delta - 1)", "k3 = (-delta)", CORE),
    m("kl-own-token-count", "sqlm.py", "normalizer = mask.sum() if normalizer is None else normalizer\n    return",
      "normalizer = mask.sum()\n    return", CORE),
    m("kl-coefficient-sign", "sqlm.py", "loss = loss + cfg.kl_coef * kl", "loss = loss - cfg.kl_coef * kl",
      CORE),
    m("kl-released-code-ignored", "sqlm.py", "if cfg.kl_coef and ref_model is not None",
      "if cfg.kl and ref_model is not None", GLUE),
    m("adv-population-std", "sqlm.py", "adv / (r.std(1, keepdim=True) + eps)",
      "adv / (r.std(1, keepdim=True, unbiased=False) + eps)", CORE),
    m("adv-groups-transposed", "sqlm.py", ".view(-1, group_size)\n", ".view(group_size, -1)\n", CORE),
    m("adv-eps-default", "sqlm.py", 'norm="std", eps=1e-6):', 'norm="std", eps=1e-4):', CORE),
    m("clip-bounds-swapped", "sqlm.py", "ratio.clamp(1 - clip_low, 1 + clip_high)",
      "ratio.clamp(1 - clip_high, 1 + clip_low)", CORE),
    m("dual-clip-sign", "sqlm.py", "torch.minimum(per_token, -adv * clip_c)", "torch.minimum(per_token, adv * clip_c)",
      CORE),
    m("dual-clip-zero-not-off", "sqlm.py", "    if clip_c:\n", "    if clip_c is not None:\n", CORE),
    m("ratio-inverted", "sqlm.py", "log_ratio = (logp - old_logp)", "log_ratio = (old_logp - logp)", CORE),
    m("normaliser-per-micro-batch", "sqlm.py", "* count if cfg.as_released else tokens",
      "* count if cfg.as_released else mask.sum()", CORE),
    m("released-normaliser-local-count", "sqlm.py", "count = world.count_micro_batches(minibatch, cfg.microbatch)",
      "count = len(world.micro_batches(minibatch, cfg.microbatch))", f"{PARALLEL_UNITS} {GLUE}"),
    m("micro-batch-count-floor", "parallel.py", "return sum(-(-ranks.count(rank) // size)",
      "return sum(ranks.count(rank) // size", f"{PARALLEL_UNITS} {GLUE}"),
    m("micro-batch-slice-short", "parallel.py", "mine[start:start + size]", "mine[start:start + size - 1]",
      f"{PARALLEL_UNITS} {CORE}"),
    m("idle-micro-batches-not-padded", "parallel.py", "return micros + [[]] * (busiest - len(micros))",
      "return micros", PARALLEL_UNITS),
    m("merge-keeps-the-unworked-copy", "parallel.py", "return [done.get(p.index, p) for p in batch]",
      "return list(batch)", "tests/test_parallel.py::test_two_processes_sample_and_update_as_one"),
    # --- logged statistics -----------------------------------------------------------------------
    m("approx-kl-sign", "sqlm.py", '"approx_kl": (-log_ratio * mask)', '"approx_kl": (log_ratio * mask)',
      CORE),
    m("clip-frac-counts-ties", "sqlm.py", "((clipped > unclipped)", "((clipped >= unclipped)", CORE),
    m("zero-signal-reads-task-rewards", "sqlm.py", "len(set(p.solver_rewards)) == 1", "len(set(p.task_rewards)) == 1",
      GLUE),
    m("proposer-reward-mean-over-batch", "sqlm.py", "np.mean([p.proposer_reward for p in solved])",
      "np.mean([p.proposer_reward for p in batch])", GLUE),
    m("record-solver-rewards-are-task-rewards", "harness.py", "solver_rewards=p.solver_rewards,",
      "solver_rewards=p.task_rewards,", GLUE),
    m("kl-stat-not-token-weighted", "sqlm.py", 'stats["kl"] = kl.item() * tokens', 'stats["kl"] = kl.item()',
      CORE),
    # --- the on-policy shortcut, mini-batches, dealing -------------------------------------------
    m("on-policy-grouped-by-n", "sqlm.py", "s.on_policy = s.group // cfg.minibatch == first",
      "s.on_policy = s.group // cfg.n == first", CORE),
    m("minibatches-grouped-by-n", "sqlm.py", "out.setdefault(s.group // cfg.minibatch, [])",
      "out.setdefault(s.group // cfg.n, [])", CORE),
    m("deal-shortest-first", "parallel.py", "key=lambda i: -lengths[i]", "key=lambda i: lengths[i]",
      f"{PARALLEL_UNITS} {GLUE}"),
    m("share-floor-per-rank", "parallel.py", "(self.rank + 1) * len(items) // self.size",
      "(self.rank + 1) * (len(items) // self.size)", PARALLEL_UNITS),
    # --- which rule scores which role ----------------------------------------------------------
    m("proposer-rule-kind-always-majority", "sqlm.py", 'kind="tests" if code else "majority"', 'kind="majority"',
      GLUE),
    m("proposer-reads-solver-rewards", "sqlm.py", "rewards.proposer_reward(p.task_rewards,",
      "rewards.proposer_reward(p.solver_rewards,", GLUE),
    m("sqlm-majority-bound-off-by-one", "rewards.py", "float(1 < m < n) if", "float(0 < m < n) if", REWARDS),
    m("sqlm-tests-rule-counts-perfect", "rewards.py", 'else float(0 < share < 1)', 'else float(1 < m < n)',
      f"{REWARDS} {STEP}"),
    m("azr-pays-unsolved", "rewards.py", "return 0.0 if share in (0.0, 1.0) else 1.0 - share", "return 1.0 - share",
      REWARDS),
    m("rzero-share-is-count-for-tests", "rewards.py", "share = m / n if kind == \"majority\" else sum(scores) / n",
      "share = m / n", REWARDS),
    m("majority-rewards-none", "rewards.py", "1.0 if majority is not None and a == majority",
      "1.0 if a == majority", REWARDS),
    m("invalid-proposals-trained", "sqlm.py", "for p, a in zip(batch, proposer_adv) if p.valid or cfg.as_released]",
      "for p, a in zip(batch, proposer_adv)]", STEP),
    m("proposer-group-is-the-proposal", "sqlm.py", "a, group=p.index // cfg.n,", "a, group=p.index,", STEP),
    # --- the switches in combination -----------------------------------------------------------
    m("format-reward-ignores-released", "sqlm.py", "cfg.task, cfg.as_released)",
      "cfg.task)", GLUE),
    m("format-rewards-read-released-default", "rewards.py", "float(extract_answer(t, released) is not None)",
      "float(extract_answer(t) is not None)", f"{REWARDS} {GLUE}"),
    m("parse-ignores-released", "sqlm.py", "released=cfg.as_released,", "released=False,",
      GLUE),
    m("propose-prompt-without-cat", "sqlm.py", "prompts.proposer_prompt(cfg.task, cat=cfg.cat)",
      "prompts.proposer_prompt(cfg.task)", CORE),
    m("cat-filter-judge-exact", "sqlm.py", 'lenient=cfg.judge == "lenient")):', "lenient=False)):", CORE),
    m("score-judge-exact", "sqlm.py", 'lenient=cfg.judge == "lenient"))\n', "lenient=False))\n", GLUE),
    m("released-kl-code-and-arith", "sqlm.py", "0.0 if self.as_released and self.task == \"code\" else self.kl",
      "0.0 if self.as_released or self.task == \"code\" else self.kl", GLUE),
    m("released-prompt-cut-from-the-right", "sqlm.py", "prompt_ids.append(ids[-cfg.max_prompt:])",
      "prompt_ids.append(ids[:cfg.max_prompt])", STEP),
    # --- parsing -------------------------------------------------------------------------------
    m("algebra-first-marker", "rewards.py", "question = body[marks[-1].end():]", "question = body[marks[0].end():]",
      REWARDS),
    m("released-answer-first-tag", "rewards.py", 'answer = found[-1].strip() if found else ""',
      'answer = found[0].strip() if found else ""', f"{REWARDS} {STEP}"),
    m("answer-first-open-tag", "rewards.py", 'start = text.rfind("<answer>", 0, close)',
      'start = text.find("<answer>", 0, close)', REWARDS),
    m("code-tests-one-too-many", "rewards.py", "if t][:MAX_TESTS]", "if t][:MAX_TESTS + 1]", REWARDS),
    m("program-first-block", "rewards.py", "return programs[-1] if programs else None",
      "return programs[0] if programs else None", REWARDS),
    # --- sampling ------------------------------------------------------------------------------
    m("solver-on-proposer-streams", "sqlm.py", "(cfg.seed, step, 1), world)", "(cfg.seed, step, 0), world)", GLUE),
    m("solver-streams-by-position", "sqlm.py", "[p.index for p in todo], cfg, seed", "range(len(todo)), cfg, seed",
      GLUE),
    m("top-p-not-passed", "sqlm.py", "temperature=cfg.temperature, top_p=cfg.top_p)",
      "temperature=cfg.temperature, top_p=1.0)", GLUE),
    m("logprobs-at-temperature-one", "sqlm.py", "comp, temperature=cfg.temperature)", "comp, temperature=1.0)", GLUE),
    m("top-p-keeps-one-token-too-few", "rollout.py", "masked_fill(mass_before >= top_p,",
      "masked_fill(mass_before + sorted_probs >= top_p,", ROLLOUT),
    # --- the loop, resume, logs ------------------------------------------------------------------
    m("proposer-schedule-from-zero", "sqlm.py", "(step + 1) % cfg.proposer_every == 0",
      "step % cfg.proposer_every == 0",
      "tests/test_update.py::test_proposer_updates_on_the_released_schedule"),
    m("save-schedule-off-by-one", "sqlm.py", "(step + 1) % cfg.save_every == 0:", "step % cfg.save_every == 0:",
      "tests/test_runs.py::test_loop_evaluates_and_saves_on_schedule"),
    m("resumable-gains-kl-and-temperature", "harness.py", '"fit_memory", "threads")',
      '"fit_memory", "threads", "kl", "temperature")', RESUME),
    m("resume-skips-a-step", "harness.py", 'start = state["step"]\n', 'start = state["step"] + 1\n', RESUME),
    m("resume-keeps-the-checkpoint-steps-logs", "harness.py", 'return json.loads(line)["step"] < step',
      'return json.loads(line)["step"] <= step', RESUME),
    m("resume-reference-from-checkpoint", "sqlm.py", "rollout.load(cfg.model, device=model.device)[0] if resumed",
      "copy.deepcopy(model) if resumed", RESUME),
    m("resumable-loses-threads", "harness.py", '"fit_memory", "threads")', '"fit_memory")', RESUME),
    m("prune-keeps-the-oldest", "harness.py", "complete_checkpoints(run)[:-keep_last]",
      "complete_checkpoints(run)[keep_last:]", RUNS),
    m("load-shortage-reported-as-a-broken-model", "rollout.py", "short_of = shortage(e)\n", "short_of = None\n",
      f"{RUNS} -k 'resource or loadable'"),
    # --- eval ----------------------------------------------------------------------------------
    m("eval-limit-not-passed", "harness.py", "limit=cfg.eval_limit or None,", "limit=None,",
      "tests/test_runs.py::test_in_training_eval_takes_the_runs_settings"),
    m("eval-maj-counts-unanswered", "eval.py", '[r["answer"] for r in g if r["answer"] is not None]',
      '[r["answer"] for r in g]', EVAL),
    m("eval-pass-at-k-needs-all", "eval.py", "_mean(any(r[\"correct\"] for r in g) for g in groups)",
      "_mean(all(r[\"correct\"] for r in g) for g in groups)", EVAL),
    m("eval-responses-dealt-round-robin", "eval.py", "owners = [problems[i // k] for i in range(len(responses))]",
      "owners = [problems[i % len(problems)] for i in range(len(responses))]", EVAL),
    # --- the critic (--critic) -----------------------------------------------------------------
    m("gae-gamma-lambda-swapped", "sqlm.py", "running = token_rewards[:, t] + gamma * next_value",
      "running = token_rewards[:, t] + lam * next_value", CRITIC),
    m("value-read-at-the-token", "sqlm.py",
      "return torch.nn.functional.pad(values[:, :-1], (1, 0)) * completion_mask",
      "return values * completion_mask", CRITIC),
    m("value-clip-ignored", "sqlm.py", "mask, cfg.value_clip, normalizer)", "mask, 0.5, normalizer)",
      CRITIC),
    m("released-code-without-critic", "sqlm.py", "if cfg.use_critic else None",
      "if cfg.critic else None", CRITIC),
    m("whiten-biased-variance", "sqlm.py", '["sq"] / (count - 1)', '["sq"] / count', CRITIC),
    m("critic-at-the-policys-lr", "sqlm.py", "lr=cfg.critic_lr,", "lr=cfg.lr,", CRITIC),
    m("critic-value-loss-min", "sqlm.py",
      "(torch.maximum(unclipped_loss, clipped_loss) * mask)",
      "(torch.minimum(unclipped_loss, clipped_loss) * mask)", CRITIC),
    m("critic-optimizer-not-restored", "harness.py",
      'pairs.append(("critic_optimizer", models.critic, models.critic_optimizer))', "pass",
      "tests/test_critic.py -k resumed"),
    m("critic-rebuilt-on-resume", "harness.py", "critic_state=read_critic(checkpoint, cfg))",
      "critic_state=None)", "tests/test_critic.py -k resumed"),
    m("released-shape-for-every-task", "sqlm.py",
      'released_code = self.as_released and self.task == "code"', "released_code = self.as_released",
      CRITIC),
    m("released-shape-overrides-a-given-batch", "sqlm.py",
      "self.batch = self.batch or (1024 if released_code else 64)",
      "self.batch = 1024 if released_code else self.batch or 64", CRITIC),
    m("critic-read-back-only-with-the-flag", "harness.py",
      "if checkpoint is None or not cfg.use_critic:", "if checkpoint is None or not cfg.critic:",
      "tests/test_critic.py -k resumed"),
    m("world-sum-keeps-the-last-process", "parallel.py",
      "total[key] = total.get(key, 0.0) + value", "total[key] = value",
      "tests/test_critic.py -k two_processes"),
]


# --- running one mutation ----------------------------------------------------------------

VERDICTS = ("killed", "survived", "timeout", "stale", "ambiguous", "invalid", "error")


def tracked_files(repo):
    out = subprocess.run(["git", "-C", repo, "ls-files", "-z"], check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p]


def scratch_copy(repo, dest):
    """The tracked files of `repo` as they are in its working tree, copied under `dest`."""
    for rel in tracked_files(repo):
        src = os.path.join(repo, rel)
        if os.path.isfile(src):  # a tracked file deleted in the working tree is left out
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def run_tests(copy, tests, timeout):
    """(exit code or None on timeout, seconds, the first FAILED/ERROR line of pytest's summary)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # a stale .pyc could hide a same-size edit
    start = time.time()
    proc = subprocess.Popen(PYTEST + shlex.split(tests), cwd=copy, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, time.time() - start, ""
    first = next((line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
    return proc.returncode, time.time() - start, first


class NotApplied(Exception):
    def __init__(self, verdict, detail):
        super().__init__(detail)
        self.verdict = verdict


def applicable(copy, mutation):
    """(original, mutated) text of the mutation's file; NotApplied (stale, ambiguous, invalid) if it cannot be."""
    path = os.path.join(copy, mutation.path)
    if not os.path.exists(path):
        raise NotApplied("stale", f"{mutation.path} is gone")
    with open(path) as f:
        original = f.read()
    found = original.count(mutation.old)
    if found != 1:
        raise NotApplied("stale" if found == 0 else "ambiguous", f"old text found {found} times in {mutation.path}")
    mutated = original.replace(mutation.old, mutation.new)
    try:
        compile(mutated, path, "exec")
    except SyntaxError as e:
        raise NotApplied("invalid", f"{mutation.path} does not compile: {e}") from None
    return original, mutated


def mutate(copy, mutation, tests, timeout):
    """Apply `mutation` to the copy, run `tests`, restore the file: (verdict, seconds, detail)."""
    path = os.path.join(copy, mutation.path)
    try:
        original, mutated = applicable(copy, mutation)
    except NotApplied as e:
        return e.verdict, 0.0, str(e)
    with open(path, "w") as f:
        f.write(mutated)
    try:
        code, seconds, first = run_tests(copy, tests, timeout)
    finally:
        with open(path, "w") as f:
            f.write(original)
    if code is None:
        return "timeout", seconds, f"past {timeout} s"
    if code in (1, 2, 3):  # tests failed, collection failed (the module no longer imports), internal error
        return "killed", seconds, first
    if code == 0:
        return "survived", seconds, ""
    return "error", seconds, f"pytest exit {code}: no tests collected or a bad argument"


# --- the command line ----------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tests", nargs="*",
                   help="test files or node ids run for every mutation (default: each mutation's own)")
    p.add_argument("--only", default="", help="comma-separated mutation names")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutation's test run (default 600)")
    p.add_argument("--no-baseline", action="store_true", help="skip the run on the unchanged copy")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = p.parse_args(argv)
    chosen = MUTATIONS
    if args.only:
        names = args.only.split(",")
        unknown = [n for n in names if n not in {x.name for x in MUTATIONS}]
        if unknown:
            p.error(f"unknown mutation {', '.join(unknown)}")
        chosen = [x for x in MUTATIONS if x.name in names]
    if len({x.name for x in MUTATIONS}) != len(MUTATIONS):
        p.error("two mutations share a name")
    if args.list:
        for x in chosen:
            print(f"{x.name:40s} {x.path:12s} {x.tests}")
        return 0

    def tests_of(x):
        return " ".join(map(shlex.quote, args.tests)) if args.tests else x.tests

    with tempfile.TemporaryDirectory(prefix="mutate-") as copy:
        scratch_copy(REPO, copy)
        checked = set()
        verdicts = []
        for i, x in enumerate(chosen, 1):
            try:
                runs = bool(applicable(copy, x))
            except NotApplied:
                runs = False
            if runs and not args.no_baseline and tests_of(x) not in checked:  # each selection once, before use
                code, seconds, first = run_tests(copy, tests_of(x), args.timeout)
                print(f"baseline  {seconds:6.1f}s  {tests_of(x)}", flush=True)
                if code != 0:
                    print(f"the tests fail on the unchanged copy ({first or f'exit {code}'}): fix that first")
                    return 1
                checked.add(tests_of(x))
            verdict, seconds, detail = mutate(copy, x, tests_of(x), args.timeout)
            verdicts.append((x, verdict))
            print(f"[{i:2d}/{len(chosen)}] {verdict:9s} {seconds:6.1f}s  {x.name:40s} {x.path:11s} {detail}",
                  flush=True)
    counted = [v for _, v in verdicts if v in ("killed", "survived", "timeout")]
    killed = counted.count("killed")
    print(f"kill rate {killed}/{len(counted)}" + (f" = {killed / len(counted):.0%}" if counted else ""))
    for kind in VERDICTS[1:]:
        names = [x.name for x, v in verdicts if v == kind]
        if names:
            print(f"{kind}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
