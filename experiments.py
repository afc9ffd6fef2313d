"""The tiny world: SQLM's label-free gain, measured on a CPU (the README's table and plot).

    python experiments.py tiny-world --jobs 2   # base model, then 4 arms x 3 seeds x 60 steps
    python experiments.py tiny-world --quick    # one seed, 30 steps (reuses the base if present)
    python experiments.py report                # tables + plot from whatever runs have finished

A tiny Qwen2 pre-trained on synthetic transcripts (`tiny.py pretrain --task arith`) multiplies
2-digit by 1-digit numbers by the column method, right by majority vote but slipping in single
samples, which is the room majority-vote RL has to gain. Every arm then trains with no labels
at all and is scored on held-out pairs that no stage has seen (`eval.arith_world`: pairs split
by a hash into held-out, dev and train; only train pairs carry labels, in pre-training).
Settings were chosen on the dev split (`--split dev`, variants as sqlm.py flags after `--`);
the held-out split is only reported. Every finished run leaves `result.json` in its directory,
so an interrupted sweep resumes where it stopped and a table can be assembled from runs made
at different times.

Arms: sqlm (proposer updated every 5 steps, the paper's setting), format (the format-only
solver reward, the paper's baseline), never (proposer never updated), every (every step).
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time

if __name__ == "__main__":  # Ctrl-C or SIGTERM while torch loads: one line, no traceback
    import cli
    cli.exit_on_signals("experiments.py: interrupted while starting; nothing was written")

import cli
import eval as heldout
import rewards
import rollout

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = "2x1,1x1"  # the solver's world: A 10-99 or 2-9, B 2-9
BASE_ARGS = ["--task", "arith", "--digits", DIGITS]  # tiny.py pretrain flags beyond these: BASE_FLAGS
BASE_FLAGS = ["--layers", "4", "--hidden", "128", "--steps", "3000", "--batch", "32", "--seed", "0", "--threads", "2"]
# Chosen on the dev split (README, 'The tiny world'); the paper's lr 1e-6 is for 3B weights.
WORLD = ["--task", "arith", "--batch", "16", "--n", "4", "--minibatch", "8", "--microbatch", "64",
         "--max-response", "64", "--lr", "3e-5", "--kl", "0", "--arith-check", "--eval-every", "10",
         "--eval-samples", "8", "--rollout-rows", "512"]
ARMS = {"sqlm": [], "format": ["--solver-reward", "format"], "never": ["--proposer-every", "0"],
        "every": ["--proposer-every", "1"]}
STEPS = 60  # training steps of the reported runs (--quick: 30)
OWN_FLAGS = ("--model", "--seed", "--steps", "--eval-data", "--out", "--resume")  # run_arm sets these itself


def check_variant(extra, arms):
    """The sqlm.py flags after `--` make a valid run with every arm's flags, checked before the base
    model is built (twenty minutes) instead of by the first run after it; ValueError is one line."""
    import harness  # torch: only for a variant
    own = [x for x in extra if x.split("=")[0] in OWN_FLAGS]
    if own:
        raise ValueError(f"after --: {own[0].split('=')[0]} is set by experiments.py for each run "
                         f"({', '.join(OWN_FLAGS)})")
    for arm in arms:
        try:
            harness.check_config(harness.parse_args([*WORLD, *ARMS[arm], *extra]))
        except ValueError as e:
            raise ValueError(f"after -- (sqlm.py flags, with arm {arm}): {e}") from None


def sh(args, log, threads=None):
    """Run a python entry point of this project, its output to `log`; exit on failure."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with open(log, "a") as f:
        code = subprocess.call([sys.executable, *args], cwd=HERE, stdout=f, stderr=subprocess.STDOUT, env=env)
    if code:
        sys.exit(f"experiments.py: {' '.join(args[:2])} failed (exit {code}); see {log}")


def write_sets(out):
    """dev.jsonl and heldout.jsonl of the tiny world, in eval.py's JSONL format."""
    shapes = heldout.parse_digits(DIGITS)
    for split in ("dev", "heldout"):
        path = os.path.join(out, f"{split}.jsonl")
        if not os.path.exists(path):
            with open(path, "w") as f:
                for p in heldout.arith_world(shapes, split):
                    f.write(json.dumps(p) + "\n")


def base_model(out):
    """Pre-train the base model once (tiny.py pretrain), then score it on both splits."""
    base = os.path.join(out, "base")
    if not os.path.exists(os.path.join(base, "config.json")):
        print(f"pre-training the base model into {base} ...", flush=True)
        sh(["tiny.py", "pretrain", *BASE_ARGS, *BASE_FLAGS, "--out", base], os.path.join(out, "base.log"))
    figures_path = os.path.join(out, "base.json")
    if not os.path.exists(figures_path):
        import rollout
        model, tok = rollout.load(base, device="cpu")
        figures = {}
        for split in ("dev", "heldout"):
            problems = heldout.read_jsonl(os.path.join(out, f"{split}.jsonl"), "arith")
            greedy = heldout.evaluate(model, tok, "arith", problems, max_new_tokens=64, batch_size=512)
            sampled = heldout.evaluate(model, tok, "arith", problems, samples=8, temperature=1.0,
                                       max_new_tokens=64, batch_size=512)
            figures[split] = {"greedy": greedy["accuracy"], "sampled": sampled["accuracy"],
                              "maj_at_8": sampled["maj_at_k"], "pass_at_8": sampled["pass_at_k"]}
        with open(figures_path, "w") as f:
            json.dump(figures, f, indent=1)
    with open(figures_path) as f:
        return base, json.load(f)


def mean_mix(mixes):
    """{shape: mean share} over several {shape: share} problem mixes (a shape absent counts 0)."""
    mean = {}
    for mix in mixes:
        for shape, share in mix.items():
            mean[shape] = mean.get(shape, 0.0) + share / len(mixes)
    return mean


def run_name(arm, seed, split, extra, steps=None):
    """sqlm-s0 for the reported runs; sqlm-s0-30steps for --quick; sqlm-s0-dev-lr_1e-4 for a dev variant."""
    variant = ("" if steps in (None, STEPS) else f"-{steps}steps") + ("" if split == "heldout" else "-dev")
    return f"{arm}-s{seed}{variant}" + ("-" + "_".join(x.lstrip("-") for x in extra) if extra else "")


def run_arm(out, base, arm, seed, steps, split, threads=None, extra=()):
    """One training run (`extra`: sqlm.py flags after WORLD's); returns its result (cached in result.json)."""
    run = os.path.join(out, run_name(arm, seed, split, extra, steps))
    result_path = os.path.join(run, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    if os.path.exists(run):  # an interrupted run: start it again from scratch
        shutil.rmtree(run)
    started = time.time()
    print(f"{arm} seed {seed}: {steps} steps -> {run}", flush=True)
    os.makedirs(run)
    sh(["sqlm.py", *WORLD, *ARMS[arm], *extra, "--model", base, "--seed", str(seed), "--steps", str(steps),
        "--eval-data", os.path.join(out, f"{split}.jsonl"), "--out", run], os.path.join(run, "log.txt"), threads)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    curve = [{k: r[k] for k in ("step", "eval_accuracy", "eval_sampled_accuracy", "eval_sampled_maj_at_k",
                                "eval_sampled_pass_at_k")} for r in records if "eval_accuracy" in r]
    trained = [r for r in records if "valid_rate" in r]
    last = trained[-10:]  # the last ten steps' proposals
    mix = mean_mix([r.get("proposal_mix", {}) for r in last])
    result = {"arm": arm, "seed": seed, "steps": steps, "split": split, "extra": list(extra), "curve": curve, "final": curve[-1],
              "valid_rate": sum(r["valid_rate"] for r in last) / len(last),
              "maj_ok": [r.get("majority_correct") for r in trained],
              "maj_ok_checked": [r.get("majority_checked") for r in trained],
              "proposal_mix_last10": mix, "minutes": round((time.time() - started) / 60, 1)}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def cell(values):
    mean = sum(values) / len(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"


def table_lines(results, base, split):
    """Markdown rows: the base model, then one row per (arm, variant): mean (range) over seeds
    at the last eval; valid rate, `maj_ok` (with the proposals it covers) and the problem
    mix over the last ten steps."""
    lines = [f"| {split} | seeds | greedy | sampled (T=1) | maj@8 | pass@8 | valid | maj_ok (checked) | mix, last 10 steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if base:
        lines.append(f"| base model | - | {base['greedy']:.3f} | {base['sampled']:.3f} | {base['maj_at_8']:.3f} | "
                     f"{base['pass_at_8']:.3f} | - | - | - |")
    groups = {}
    for r in results:
        label = " ".join(r.get("extra", [])) + ("" if r["steps"] == STEPS else f" ({r['steps']} steps)")
        groups.setdefault((r["arm"], label.strip()), []).append(r)
    for (arm, extra), rs in sorted(groups.items(), key=lambda kv: (list(ARMS).index(kv[0][0]), kv[0][1])):
        mix = mean_mix([r["proposal_mix_last10"] for r in rs])
        top = ", ".join(f"{s} {v:.2f}" for s, v in sorted(mix.items(), key=lambda kv: -kv[1])[:4])
        ok = [(o, c) for r in rs for o, c in zip(r["maj_ok"][-10:], r["maj_ok_checked"][-10:]) if c]
        maj_ok = f"{sum(o * c for o, c in ok) / sum(c for _, c in ok):.2f} ({sum(c for _, c in ok) / len(rs):.0f})" if ok else "-"
        f = [r["final"] for r in rs]
        lines.append(f"| {arm}{' ' + extra if extra else ''} | {len(rs)} | {cell([x['eval_accuracy'] for x in f])} | "
                     f"{cell([x['eval_sampled_accuracy'] for x in f])} | {cell([x['eval_sampled_maj_at_k'] for x in f])} | "
                     f"{cell([x['eval_sampled_pass_at_k'] for x in f])} | {cell([r['valid_rate'] for r in rs])} | "
                     f"{maj_ok} | {top} |")
    return lines


def shape_stats(run, first, last):
    """{window: {shape: (share of solved proposals, proposer reward, maj_ok)}} over steps
    [0, first) and the last `last` steps, read from the run's samples.jsonl: where the
    proposer's problems went, whether it was paid for them, and whether the vote it was paid
    on agreed with the true product."""
    with open(os.path.join(run, "samples.jsonl")) as f:
        records = [json.loads(line) for line in f]
    records = [r for r in records if "answers" in r]
    end = max(r["step"] for r in records) + 1
    stats = {}
    for window, keep in (("first", lambda s: s < first), ("last", lambda s: s >= end - last)):
        rows = [r for r in records if keep(r["step"])]
        by = {}
        for r in rows:
            by.setdefault(rewards.arith_shape(r["problem"]), []).append(r)
        stats[window] = {shape: (len(rs) / len(rows), sum(r["proposer_reward"] for r in rs) / len(rs),
                                 sum(r["majority"] == r.get("truth") for r in rs) / len(rs))
                         for shape, rs in by.items()}
    return stats


def shape_lines(out, results, arm, window=10):
    """Markdown: the arm's problem mix by shape in its first and last `window` steps (mean over seeds)."""
    runs = [os.path.join(out, run_name(r["arm"], r["seed"], r["split"], r.get("extra", []), r["steps"]))
            for r in results if r["arm"] == arm]
    runs = [run for run in runs if os.path.exists(os.path.join(run, "samples.jsonl"))]
    if not runs:
        return []
    stats = [shape_stats(run, window, window) for run in runs]
    shapes = sorted({shape for s in stats for w in s.values() for shape in w})
    lines = [f"| {arm}: shape | share, first {window} steps | share, last {window} | proposer reward, first | "
             f"last | majority = truth, first | last |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for shape in shapes:
        cells = []
        for i in range(3):
            for window_ in ("first", "last"):
                values = [s[window_][shape][i] for s in stats if shape in s[window_]]
                cells.append(f"{sum(values) / len(values):.2f}" if values else "-")
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return lines


def report(out):
    """table.md (mean and range over seeds at the last eval) and tiny_world.png (accuracy against step)."""
    results = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "result.json")
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
    base = json.load(open(os.path.join(out, "base.json"))) if os.path.exists(os.path.join(out, "base.json")) else None
    reported = [r for r in results if r["split"] == "heldout" and not r.get("extra") and r["steps"] == STEPS]
    lines = table_lines(reported, base and base["heldout"], "held-out")
    shorter = [r for r in results if r["split"] == "heldout" and r not in reported]
    dev = [r for r in results if r["split"] == "dev"]
    if shorter:
        lines += ["", "Shorter runs (--quick) and variants, held-out:", ""]
        lines += table_lines(shorter, base and base["heldout"], "held-out")
    if dev:
        lines += ["", "Dev-split runs (choosing settings; the held-out split is never used for this):", ""]
        lines += table_lines(dev, base and base["dev"], "dev")
    for arm in ("sqlm", "every", "never"):
        extra_lines = shape_lines(out, reported, arm)
        if extra_lines:
            lines += ["", *extra_lines]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("experiments.py: matplotlib is not installed (pip install matplotlib): table only", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "eval_accuracy", "held-out greedy"),
                           (axes[1], "eval_sampled_accuracy", "held-out sampled (T=1)")):
        for i, arm in enumerate(ARMS):
            for j, r in enumerate(r for r in reported if r["arm"] == arm):
                ax.plot([c["step"] for c in r["curve"]], [c[key] for c in r["curve"]], color=f"C{i}", alpha=0.8,
                        label=arm if j == 0 else None)
        if base:
            ax.axhline(base["heldout"]["maj_at_8"], color="grey", linestyle="--", label="base maj@8")
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].set_ylabel("accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "tiny_world.png"), dpi=100)
    print(f"plot: {os.path.join(out, 'tiny_world.png')}")


def main(argv=None):
    p = argparse.ArgumentParser(description="The tiny world: SQLM's label-free gain on a CPU.")
    p.add_argument("command", choices=["tiny-world", "report"])
    p.add_argument("--out", default="runs/tiny-world", help="where the base model, runs and report go")
    p.add_argument("--quick", action="store_true", help="one seed, 30 steps")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    p.add_argument("--steps", type=int, default=STEPS, help="training steps per run")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms: " + ", ".join(ARMS))
    p.add_argument("--split", default="heldout", choices=["heldout", "dev"], help="what the runs are scored on")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each with cores/jobs torch threads")
    p.error = lambda message: (print(f"experiments.py: error: {message}", file=sys.stderr), sys.exit(2))
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    extra = argv[cut + 1:]  # sqlm.py flags for a variant (dev only)
    a = p.parse_args(argv[:cut])
    if extra and a.split != "dev":
        p.error("flags after -- make a variant to compare on the dev split: add --split dev")
    if a.command == "report":
        if not os.path.isdir(a.out):
            p.error(f"--out {a.out} holds no runs yet")
        return report(a.out)
    arms = a.arms.split(",")
    if not set(arms) <= set(ARMS):
        p.error(f"unknown arm in --arms {a.arms} (choose from {', '.join(ARMS)})")
    if a.jobs < 1 or a.steps < 1:
        p.error(f"--jobs and --steps must be at least 1 (got {a.jobs}, {a.steps})")
    try:
        seeds = [0] if a.quick else [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds takes comma-separated integers (got {a.seeds})")
    steps = 30 if a.quick else a.steps
    try:
        check_variant(extra, arms)
    except ValueError as e:
        p.error(str(e))
    os.makedirs(a.out, exist_ok=True)
    write_sets(a.out)
    try:
        base, figures = base_model(a.out)
    except rollout.LoadError as e:
        p.error(f"{e} (delete {os.path.join(a.out, 'base')} to build it again)")
    print("base model: " + json.dumps(figures), flush=True)
    threads = max(1, (os.cpu_count() or 1) // a.jobs) if a.jobs > 1 else None

    def one(job):
        arm, seed = job
        r = run_arm(a.out, base, arm, seed, steps, a.split, threads, extra)
        print(f"{arm} seed {seed}: " + json.dumps(r["final"]) + f" ({r['minutes']} min)", flush=True)
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:  # runs are processes; threads only wait
        list(pool.map(one, [(arm, seed) for seed in seeds for arm in arms]))
    report(a.out)


if __name__ == "__main__":
    cli.exit_on_interrupt(main, "experiments.py: interrupted; finished runs are kept, and a rerun resumes the sweep")
