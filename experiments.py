"""The tiny world: SQLM's label-free gain, measured on a CPU (the README's table and plot).

    python experiments.py tiny-world            # base model, then 4 arms x 3 seeds (~2 h on 2 cores)
    python experiments.py tiny-world --quick    # one seed, fewer steps (~15 min)
    python experiments.py report                # table + plot from whatever runs have finished

A tiny Qwen2 pre-trained on synthetic transcripts (`tiny.py pretrain --task arith`) multiplies
2-digit by 1-digit numbers right by majority vote but slips in single samples, which is the
room majority-vote RL has to gain. Every arm then trains with no labels at all and is scored
on held-out pairs that no stage has seen (`eval.arith_world`: pairs split by a hash into
held-out, dev and train; only train pairs carry labels, in pre-training). Settings were
chosen on the dev split (DEV_CHOICES says what was tried); the held-out split is only
reported. Every finished run leaves `result.json` in its directory, so an interrupted sweep
resumes where it stopped and a table can be assembled from runs made at different times.

Arms: sqlm (proposer updated every 5 steps, the paper's setting), format (the format-only
solver reward, the paper's baseline), never (proposer never updated), every (every step).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import eval as heldout

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = "2x1,1x1"  # the solver's world: A 10-99 or 2-9, B 2-9
BASE_ARGS = ["--task", "arith", "--digits", DIGITS]  # tiny.py pretrain flags beyond these: BASE_FLAGS
BASE_FLAGS = ["--layers", "4", "--hidden", "128", "--steps", "2000", "--seed", "0"]
# Chosen on the dev split (see DEV_CHOICES); the paper's lr 1e-6 is for 3B weights.
WORLD = ["--task", "arith", "--batch", "16", "--n", "4", "--minibatch", "8", "--microbatch", "64",
         "--max-response", "64", "--lr", "3e-5", "--kl", "0", "--arith-check", "--eval-every", "10",
         "--eval-samples", "8", "--rollout-rows", "512"]
ARMS = {"sqlm": [], "format": ["--solver-reward", "format"], "never": ["--proposer-every", "0"],
        "every": ["--proposer-every", "1"]}
DEV_CHOICES = "see README, 'The tiny world'"


def sh(args, log):
    """Run a python entry point of this project, its output to `log`; exit on failure."""
    with open(log, "a") as f:
        code = subprocess.call([sys.executable, *args], cwd=HERE, stdout=f, stderr=subprocess.STDOUT)
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


def run_arm(out, base, arm, seed, steps, split):
    """One training run; returns its result (cached in result.json)."""
    run = os.path.join(out, f"{arm}-s{seed}")
    result_path = os.path.join(run, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    if os.path.exists(run):  # an interrupted run: start it again from scratch
        subprocess.call(["rm", "-rf", run])
    started = time.time()
    print(f"{arm} seed {seed}: {steps} steps -> {run}", flush=True)
    os.makedirs(run)
    sh(["sqlm.py", *WORLD, *ARMS[arm], "--model", base, "--seed", str(seed), "--steps", str(steps),
        "--eval-data", os.path.join(out, f"{split}.jsonl"), "--out", run], os.path.join(run, "log.txt"))
    with open(os.path.join(run, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    curve = [{k: r[k] for k in ("step", "eval_accuracy", "eval_sampled_accuracy", "eval_sampled_maj_at_k",
                                "eval_sampled_pass_at_k")} for r in records if "eval_accuracy" in r]
    trained = [r for r in records if "valid_rate" in r]
    last = trained[-10:]  # the last ten steps' proposals
    mix = {}
    for r in last:
        for shape, share in r.get("proposal_mix", {}).items():
            mix[shape] = mix.get(shape, 0.0) + share / len(last)
    result = {"arm": arm, "seed": seed, "steps": steps, "split": split, "curve": curve, "final": curve[-1],
              "valid_rate": sum(r["valid_rate"] for r in last) / len(last),
              "maj_ok": [r.get("majority_correct") for r in trained],
              "maj_ok_checked": [r.get("majority_checked") for r in trained],
              "proposal_mix_last10": mix, "minutes": round((time.time() - started) / 60, 1)}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def report(out):
    """table.md (mean and range over seeds at the last eval) and tiny_world.png (accuracy against step)."""
    results = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "result.json")
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
    base = json.load(open(os.path.join(out, "base.json"))) if os.path.exists(os.path.join(out, "base.json")) else None
    lines = ["| arm | seeds | greedy | sampled (T=1) | maj@8 | pass@8 | valid | mix (last 10 steps) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    if base:
        b = base["heldout"]
        lines.append(f"| base model | - | {b['greedy']:.3f} | {b['sampled']:.3f} | {b['maj_at_8']:.3f} | "
                     f"{b['pass_at_8']:.3f} | - | - |")

    def cell(values):
        mean = sum(values) / len(values)
        return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"

    for arm in ARMS:
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        mix = {}
        for r in rs:
            for shape, share in r["proposal_mix_last10"].items():
                mix[shape] = mix.get(shape, 0.0) + share / len(rs)
        top = ", ".join(f"{s} {v:.2f}" for s, v in sorted(mix.items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"| {arm} | {len(rs)} | {cell([r['final']['eval_accuracy'] for r in rs])} | "
                     f"{cell([r['final']['eval_sampled_accuracy'] for r in rs])} | "
                     f"{cell([r['final']['eval_sampled_maj_at_k'] for r in rs])} | "
                     f"{cell([r['final']['eval_sampled_pass_at_k'] for r in rs])} | "
                     f"{cell([r['valid_rate'] for r in rs])} | {top} |")
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
            for j, r in enumerate(r for r in results if r["arm"] == arm):
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
    p.add_argument("--quick", action="store_true", help="one seed, 30 steps (~15 min)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    p.add_argument("--steps", type=int, default=60, help="training steps per run")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms: " + ", ".join(ARMS))
    p.add_argument("--split", default="heldout", choices=["heldout", "dev"], help="what the runs are scored on")
    p.error = lambda message: (print(f"experiments.py: error: {message}", file=sys.stderr), sys.exit(2))
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if a.command == "report":
        return report(a.out)
    arms = a.arms.split(",")
    if not set(arms) <= set(ARMS):
        p.error(f"unknown arm in --arms {a.arms} (choose from {', '.join(ARMS)})")
    seeds = [0] if a.quick else [int(s) for s in a.seeds.split(",")]
    steps = 30 if a.quick else a.steps
    write_sets(a.out)
    base, figures = base_model(a.out)
    print("base model: " + json.dumps(figures), flush=True)
    for seed in seeds:
        for arm in arms:
            r = run_arm(a.out, base, arm, seed, steps, a.split)
            print(f"{arm} seed {seed}: " + json.dumps(r["final"]) + f" ({r['minutes']} min)", flush=True)
    report(a.out)


if __name__ == "__main__":
    main()
