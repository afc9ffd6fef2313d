"""The tiny world: SQLM's label-free gain, measured on a CPU (the README's table and plot).

    python experiments.py tiny-world --jobs 2   # base model, then 4 arms x 3 seeds x 60 steps
    python experiments.py tiny-world --quick    # one seed, 30 steps (reuses the base if present)
    python experiments.py tiny-world --base-seed 1 --arms sqlm,never --seeds 0,1   # another base model
    python experiments.py tiny-world --world curriculum --arms sqlm,every,never      # the curriculum world
    python experiments.py report                # tables + plot from whatever runs have finished
    python experiments.py export --to results/tiny-world   # the finished runs' result.json, to commit

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
solver reward, the paper's baseline), never (proposer never updated), every (every step),
azr and rzero (the proposer paid 1 - p, Absolute Zero, 0 when p is 1, or 1 - 2|p - 1/2|, R-Zero,
where p is the share of the solver's samples that agree with the vote; updated every 5 steps as sqlm).

Worlds and bases: one base model per (world, base seed), each in its own directory with its
runs, so results of two bases never mix: `--out` itself for the tiny world's seed-0 base,
`--out`/<world>-base<seed> for any other (`world_dir`). The curriculum world changes only the
proposer's pre-training mix (`tiny.CURRICULUM_MIX`: 1x1 0.75, 2x1 0.25; the tiny world's is
1x1 to 3x2 uniformly); the solver's corpus, the held-out set and the settings are the tiny world's.
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
import prompts
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
        "every": ["--proposer-every", "1"], "azr": ["--proposer-reward", "azr"],
        "rzero": ["--proposer-reward", "rzero"]}
WORLDS = {"tiny": [], "curriculum": ["--proposer-mix", "curriculum"]}  # tiny.py pretrain flags beyond BASE_FLAGS
WINDOW = 10  # steps per window of the proposer's mix over time
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


def world_dir(out, world="tiny", base_seed=0):
    """Where a base model and its runs live: `out` for the tiny world's seed-0 base, else
    out/<world>-base<seed> (runs/tiny-world/curriculum-base0, runs/tiny-world/tiny-base1)."""
    return out if (world, base_seed) == ("tiny", 0) else os.path.join(out, f"{world}-base{base_seed}")


def base_flags(world="tiny", base_seed=0, threads=None):
    """tiny.py pretrain's flags for a world's base model at a seed (BASE_FLAGS' --seed, and
    --threads if given, replaced)."""
    flags = list(BASE_FLAGS)
    flags[flags.index("--seed") + 1] = str(base_seed)
    if threads:
        flags[flags.index("--threads") + 1] = str(threads)
    return [*BASE_ARGS, *flags, *WORLDS[world]]


def scores(model, tok, problems, samples, temperature):
    """eval.evaluate on every problem at once (so each problem draws the stream a run's eval draws),
    then {"all": figures, "by_shape": {shape: figures}}: accuracy, and with samples > 1 maj@k, pass@k."""
    result = heldout.evaluate(model, tok, "arith", problems, samples=samples, temperature=temperature,
                              max_new_tokens=64, batch_size=512)
    records, by = result["records"], {}
    for i, p in enumerate(problems):
        by.setdefault(rewards.arith_shape(p["problem"]), []).extend(records[i * samples:(i + 1) * samples])
    return {"all": heldout.summarize(records, samples),
            "by_shape": {shape: heldout.summarize(rs, samples) for shape, rs in sorted(by.items())}}


def figures_of(model, tok, problems):
    """{"greedy", "sampled", "maj_at_8", "pass_at_8", "by_shape": {shape: the same four}}."""
    greedy, sampled = scores(model, tok, problems, 1, 0.0), scores(model, tok, problems, 8, 1.0)

    def four(g, s):
        return {"greedy": g["accuracy"], "sampled": s["accuracy"], "maj_at_8": s["maj_at_k"], "pass_at_8": s["pass_at_k"]}
    return {**four(greedy["all"], sampled["all"]),
            "by_shape": {shape: four(greedy["by_shape"][shape], sampled["by_shape"][shape]) for shape in greedy["by_shape"]}}


def base_model(out, world="tiny", base_seed=0, threads=None):
    """Pre-train the base model once (tiny.py pretrain), then score it on both splits (base.json,
    with each shape's figures and the base proposer's mix: `proposer_mix`)."""
    base = os.path.join(out, "base")
    if not os.path.exists(os.path.join(base, "config.json")):
        print(f"pre-training the base model into {base} ...", flush=True)
        sh(["tiny.py", "pretrain", *base_flags(world, base_seed, threads), "--out", base], os.path.join(out, "base.log"))
    figures_path = os.path.join(out, "base.json")
    if not os.path.exists(figures_path):
        model, tok = rollout.load(base, device="cpu")
        mix, well_formed = proposer_mix(model, tok)
        figures = {"world": world, "base_seed": base_seed, "proposer_mix": mix, "proposer_well_formed": well_formed}
        for split in ("dev", "heldout"):
            figures[split] = figures_of(model, tok, heldout.read_jsonl(os.path.join(out, f"{split}.jsonl"), "arith"))
        with open(figures_path, "w") as f:
            json.dump(figures, f, indent=1)
    with open(figures_path) as f:
        return base, json.load(f)


def proposer_mix(model, tok, n=512, seed=0):
    """(mix, well-formed share) of `n` proposals the model writes to the arith proposer prompt at
    T=1: mix is {shape: share} over the well-formed ones (`rewards.arith_shape`: "AxB" or "other"),
    as a run's `proposal_mix` counts its valid proposals."""
    samples = rollout.generate(model, tok, [rollout.chat_prompt(tok, prompts.proposer_prompt("arith"))], n=n,
                               max_new_tokens=16, temperature=1.0, seed=seed)
    shapes = [shape for shape in (rewards.arith_shape(s.text) for s in samples) if shape != "malformed"]
    return {shape: shapes.count(shape) / len(shapes) for shape in sorted(set(shapes))}, len(shapes) / n


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


def run_arm(out, base, arm, seed, steps, split, threads=None, extra=(), world="tiny", base_seed=0):
    """One training run (`extra`: sqlm.py flags after WORLD's); returns its result (cached in result.json):
    the eval curve; per step the zero-signal share of solver groups, `majority_correct` and the
    proposer's mix (also by WINDOW-step windows); `shape_stats`; and the final weights scored on
    the run's split shape by shape (`by_shape`, the same streams as the run's own last eval)."""
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
    minutes = round((time.time() - started) / 60, 1)
    model, tok = rollout.load(os.path.join(run, f"step-{steps:06d}"), device="cpu")
    by_shape = figures_of(model, tok, heldout.read_jsonl(os.path.join(out, f"{split}.jsonl"), "arith"))["by_shape"]
    result = {"arm": arm, "seed": seed, "steps": steps, "split": split, "extra": list(extra),
              "world": world, "base_seed": base_seed, "curve": curve, "final": curve[-1],
              "valid_rate": sum(r["valid_rate"] for r in last) / len(last),
              "maj_ok": [r.get("majority_correct") for r in trained],
              "maj_ok_checked": [r.get("majority_checked") for r in trained],
              "zero_signal": [r["zero_signal"] for r in trained],
              "proposal_mix": [r.get("proposal_mix", {}) for r in trained],
              "mix_by_window": [mean_mix([r.get("proposal_mix", {}) for r in trained[i:i + WINDOW]])
                                for i in range(0, len(trained), WINDOW)],
              "shape_stats": shape_stats(run, WINDOW, WINDOW), "by_shape": by_shape,
              "proposal_mix_last10": mix, "minutes": minutes,
              "shape_eval_minutes": round((time.time() - started) / 60 - minutes, 1)}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def cell(values, digits=3):
    """mean, and over several values ± its standard error (range): 0.754 ± 0.003 (0.749-0.758)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    se = (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5
    return f"{mean:.{digits}f} ± {se:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def label(r):
    """An arm with its variant: sqlm; sqlm --lr 1e-4; every (30 steps)."""
    extra = " ".join(r.get("extra", [])) + ("" if r["steps"] == STEPS else f" ({r['steps']} steps)")
    return f"{r['arm']} {extra.strip()}".strip()


def grouped(results):
    """[(label, [result])] in ARMS order, then by variant."""
    groups = {}
    for r in results:
        groups.setdefault(label(r), []).append(r)
    return sorted(groups.items(), key=lambda kv: (list(ARMS).index(kv[1][0]["arm"]), kv[0]))


def runs_cell(rs):
    """How many runs, and over how many base models: 6 (3 bases)."""
    bases = len({r.get("base_seed", 0) for r in rs})
    return f"{len(rs)}" + (f" ({bases} bases)" if bases > 1 else "")


def maj_ok_cell(rs, last=10):
    """How often the vote was the true product over the last steps, weighted by the proposals it
    covers, with how many problems that is per run: 0.35 (621)."""
    ok = [(o, c) for r in rs for o, c in zip(r["maj_ok"][-last:], r["maj_ok_checked"][-last:]) if c]
    return f"{sum(o * c for o, c in ok) / sum(c for _, c in ok):.2f} ({sum(c for _, c in ok) / len(rs):.0f})" if ok else "-"


def base_cells(bases, split):
    """The base model's row cells (greedy, sampled, maj@8, pass@8) over one or several bases."""
    return [cell([b[split][k] for b in bases]) for k in ("greedy", "sampled", "maj_at_8", "pass_at_8")]


def table_lines(results, bases, split):
    """Markdown rows: the base model (mean over `bases`), then one row per (arm, variant): mean ±
    standard error (range) over every run of it, all bases and seeds together, at the last eval;
    valid rate, `maj_ok` (with the proposals it covers) and the problem mix over the last ten steps."""
    lines = [f"| {'held-out' if split == 'heldout' else split} | runs | greedy | sampled (T=1) | maj@8 | pass@8 | valid | maj_ok (checked) | mix, last 10 steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if bases:
        lines.append(f"| base model | {len(bases)} | " + " | ".join(base_cells(bases, split)) + " | - | - | - |")
    for name, rs in grouped(results):
        mix = mean_mix([r["proposal_mix_last10"] for r in rs])
        top = ", ".join(f"{s} {v:.2f}" for s, v in sorted(mix.items(), key=lambda kv: -kv[1])[:4])
        f = [r["final"] for r in rs]
        lines.append(f"| {name} | {runs_cell(rs)} | {cell([x['eval_accuracy'] for x in f])} | "
                     f"{cell([x['eval_sampled_accuracy'] for x in f])} | {cell([x['eval_sampled_maj_at_k'] for x in f])} | "
                     f"{cell([x['eval_sampled_pass_at_k'] for x in f])} | {cell([r['valid_rate'] for r in rs])} | "
                     f"{maj_ok_cell(rs)} | {top} |")
    return lines


def per_base_lines(results, bases):
    """Markdown: each base model's held-out figures and, under it, each arm's mean over run seeds
    on that base, so a change that holds on one base and not another is visible."""
    lines = ["| held-out, by base | runs | greedy | sampled (T=1) | maj@8 |", "| --- | --- | --- | --- | --- |"]
    for seed in sorted({r.get("base_seed", 0) for r in results} | set(bases)):
        if seed in bases:
            b = bases[seed]["heldout"]
            lines.append(f"| base {seed} | - | {b['greedy']:.3f} | {b['sampled']:.3f} | {b['maj_at_8']:.3f} |")
        for name, rs in grouped([r for r in results if r.get("base_seed", 0) == seed]):
            f = [r["final"] for r in rs]
            lines.append(f"| base {seed}: {name} | {len(rs)} | {cell([x['eval_accuracy'] for x in f])} | "
                         f"{cell([x['eval_sampled_accuracy'] for x in f])} | {cell([x['eval_sampled_maj_at_k'] for x in f])} |")
    return lines


def by_shape_lines(results, bases):
    """Markdown: held-out greedy / sampled / maj@8 of the final weights on each operand shape."""
    shapes = sorted({s for r in results for s in r.get("by_shape", {})} | {s for b in bases for s in b["heldout"].get("by_shape", {})})
    if not shapes:
        return []
    lines = ["| held-out by shape | runs | " + " | ".join(f"{s} greedy | {s} sampled | {s} maj@8" for s in shapes) + " |",
             "| --- | --- |" + " --- |" * 3 * len(shapes)]
    rows = [("base model", [b["heldout"] for b in bases if "by_shape" in b["heldout"]], None)]
    rows += [(name, [r for r in rs if "by_shape" in r], runs_cell([r for r in rs if "by_shape" in r]))
             for name, rs in grouped(results)]
    for name, rs, runs in rows:
        if rs:
            cells = [cell([r["by_shape"][s][k] for r in rs if s in r["by_shape"]])
                     for s in shapes for k in ("greedy", "sampled", "maj_at_8")]
            lines.append(f"| {name} | {runs or len(rs)} | " + " | ".join(cells) + " |")
    return lines


def signal_lines(results):
    """Markdown: per arm, the share of solver groups with no signal (all rewards equal) over the
    first and last ten steps and over the run, and how often the vote was the true product."""
    lines = ["| training signal | runs | zero-signal groups, first 10 steps | last 10 | all steps | "
             "maj_ok, first 10 | maj_ok, last 10 (checked) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rs in grouped([r for r in results if "zero_signal" in r]):
        def mean(xs):
            return sum(xs) / len(xs)
        zero = [[mean(r["zero_signal"][:10]) for r in rs], [mean(r["zero_signal"][-10:]) for r in rs],
                [mean(r["zero_signal"]) for r in rs]]
        first = [dict(r, maj_ok=r["maj_ok"][:10], maj_ok_checked=r["maj_ok_checked"][:10]) for r in rs]
        lines.append(f"| {name} | {runs_cell(rs)} | " + " | ".join(cell(z, 2) for z in zero) +
                     f" | {maj_ok_cell(first)} | {maj_ok_cell(rs)} |")
    return lines


def mix_lines(results, bases):
    """Markdown: the proposer's mix (share of valid proposals by shape) in each WINDOW-step window,
    mean over runs, after the base proposer's own mix (`base_model`'s 512 samples)."""
    results = [r for r in results if "mix_by_window" in r]
    if not results:
        return []
    windows = min(len(r["mix_by_window"]) for r in results)
    lines = ["| proposer's mix | shape | base | " + " | ".join(f"steps {i * WINDOW}-{i * WINDOW + WINDOW - 1}"
                                                           for i in range(windows)) + " |",
             "| --- | --- | --- |" + " --- |" * windows]
    base_mix = mean_mix([b["proposer_mix"] for b in bases if "proposer_mix" in b])
    for name, rs in grouped(results):
        per_window = [mean_mix([r["mix_by_window"][i] for r in rs]) for i in range(windows)]
        shapes = sorted({s for w in per_window for s in w} | set(base_mix), key=lambda s: (-per_window[0].get(s, 0), s))
        for shape in shapes:
            if max([base_mix.get(shape, 0)] + [w.get(shape, 0) for w in per_window]) >= 0.005:
                lines.append(f"| {name} ({len(rs)}) | {shape} | {base_mix.get(shape, 0):.2f} | "
                             + " | ".join(f"{w.get(shape, 0):.2f}" for w in per_window) + " |")
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


def shape_lines(results, name, window=WINDOW):
    """Markdown: the arm's solved proposals by shape in its first and last `window` steps (mean
    over runs): share, proposer reward, and how often the vote was the true product."""
    stats = [r["shape_stats"] for r in results if "shape_stats" in r and label(r) == name]
    if not stats:
        return []
    shapes = sorted({shape for s in stats for w in s.values() for shape in w})
    lines = [f"| {name} ({len(stats)}): shape | share, first {window} steps | share, last {window} | "
             f"proposer reward, first | last | majority = truth, first | last |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for shape in shapes:
        cells = []
        for i in range(3):
            for window_ in ("first", "last"):
                values = [s[window_][shape][i] for s in stats if shape in s[window_]]
                cells.append(f"{sum(values) / len(values):.2f}" if values else "-")
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return lines


def world_dirs(out):
    """[(directory, world, base seed)]: `out` itself (the tiny world's seed-0 base) and every
    <world>-base<seed> directory under it."""
    found = [(out, "tiny", 0)]
    for name in sorted(os.listdir(out)):
        world, _, seed = name.rpartition("-base")
        if world in WORLDS and seed.isdigit() and os.path.isdir(os.path.join(out, name)):
            found.append((os.path.join(out, name), world, int(seed)))
    return found


def load(out):
    """{world: (bases {seed: base.json}, [result])} of every finished run under `out`."""
    worlds = {}
    for path, world, seed in world_dirs(out):
        bases, results = worlds.setdefault(world, ({}, []))
        if os.path.exists(os.path.join(path, "base.json")):
            with open(os.path.join(path, "base.json")) as f:
                bases[seed] = json.load(f)
        for name in sorted(os.listdir(path)):
            if os.path.exists(os.path.join(path, name, "result.json")):
                with open(os.path.join(path, name, "result.json")) as f:
                    results.append({**json.load(f), "world": world, "base_seed": seed, "dir": os.path.join(path, name)})
    return {w: v for w, v in worlds.items() if v[0] or v[1]}


def is_reported(r):
    return r["split"] == "heldout" and not r.get("extra") and r["steps"] == STEPS


def report(out):
    """table.md (per world: mean ± standard error (range) over bases and seeds at the last eval,
    each base apart, each shape, the training signal, the proposer's mix over time) and
    tiny_world.png (accuracy against step), from the result.json of every finished run."""
    worlds, lines = load(out), []
    for world, (bases, results) in sorted(worlds.items(), key=lambda kv: list(WORLDS).index(kv[0])):
        seeds = ", ".join(map(str, sorted({r["base_seed"] for r in results} | set(bases))))
        lines += [f"## {world} world (base seeds {seeds})", ""]
        reported = [r for r in results if is_reported(r)]
        base_list = [bases[s] for s in sorted(bases)]
        lines += table_lines(reported, base_list, "heldout")
        if len({r["base_seed"] for r in reported} | set(bases)) > 1:
            lines += ["", *per_base_lines(reported, bases)]
        for part in (by_shape_lines(reported, base_list), signal_lines(reported), mix_lines(reported, base_list)):
            if part:
                lines += ["", *part]
        for name, _ in grouped(reported):
            part = shape_lines(reported, name)
            if part:
                lines += ["", *part]
        shorter = [r for r in results if r["split"] == "heldout" and not is_reported(r)]
        dev = [r for r in results if r["split"] == "dev"]
        if shorter:
            lines += ["", "Shorter runs (--quick) and variants, held-out:", ""]
            lines += table_lines(shorter, base_list, "heldout")
        if dev:
            lines += ["", "Dev-split runs (choosing settings; the held-out split is never used for this):", ""]
            lines += table_lines(dev, base_list, "dev")
        lines.append("")
    table = "\n".join(lines)
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
    shown = [(w, v) for w, v in sorted(worlds.items(), key=lambda kv: list(WORLDS).index(kv[0]))
             if any(is_reported(r) for r in v[1])]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 2, figsize=(10, 4 * len(shown)), sharey=True, squeeze=False)
    for row, (world, (bases, results)) in zip(axes, shown):
        for ax, key, title in ((row[0], "eval_accuracy", "held-out greedy"),
                               (row[1], "eval_sampled_accuracy", "held-out sampled (T=1)")):
            for i, arm in enumerate(ARMS):
                for j, r in enumerate(r for r in results if is_reported(r) and r["arm"] == arm):
                    ax.plot([c["step"] for c in r["curve"]], [c[key] for c in r["curve"]], color=f"C{i}", alpha=0.7,
                            label=arm if j == 0 else None)
            if bases:
                ax.axhline(sum(b["heldout"]["maj_at_8"] for b in bases.values()) / len(bases), color="grey",
                           linestyle="--", label="base maj@8")
            ax.set_title(f"{world} world: {title}")
            ax.set_xlabel("step")
        row[0].set_ylabel("accuracy")
        row[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "tiny_world.png"), dpi=100)
    print(f"plot: {os.path.join(out, 'tiny_world.png')}")


def export(out, to):
    """Copy base.json and every finished run's result.json under `out` to the same places under
    `to` (small files, to commit), so `report --out TO` rebuilds the tables without the runs."""
    copied = 0
    for path, _, _ in world_dirs(out):
        dest = os.path.join(to, os.path.relpath(path, out))
        for name in ["base.json"] + [os.path.join(n, "result.json") for n in sorted(os.listdir(path))]:
            if os.path.isfile(os.path.join(path, name)):
                os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
                shutil.copyfile(os.path.join(path, name), os.path.join(dest, name))
                copied += 1
    print(f"copied {copied} files from {out} to {to}")


def main(argv=None):
    p = argparse.ArgumentParser(description="The tiny world: SQLM's label-free gain on a CPU.")
    p.add_argument("command", choices=["tiny-world", "report", "export"])
    p.add_argument("--out", default="runs/tiny-world",
                   help="where the base models, runs and report go (one directory per world and base seed under it)")
    p.add_argument("--world", default="tiny", choices=list(WORLDS),
                   help="tiny: the base proposer writes 1x1 to 3x2 evenly; curriculum: mostly 1x1, a quarter 2x1")
    p.add_argument("--base-seed", type=int, default=0, help="the base model's pre-training seed")
    p.add_argument("--to", help="export: where the result.json and base.json files are copied")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each run and of the pre-training (default: cores/jobs with --jobs > 1, "
                        "else torch's own for runs and 2 for the pre-training)")
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
    if a.command in ("report", "export"):
        if not os.path.isdir(a.out):
            p.error(f"--out {a.out} holds no runs yet")
        if a.command == "export":
            if not a.to:
                p.error("export needs --to DIR")
            return export(a.out, a.to)
        return report(a.out)
    if not 0 <= a.base_seed < 2**32 or (a.threads is not None and a.threads < 1):
        p.error(f"--base-seed must be in [0, 2**32) and --threads at least 1 (got {a.base_seed}, {a.threads})")
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
    out = world_dir(a.out, a.world, a.base_seed)
    os.makedirs(out, exist_ok=True)
    write_sets(out)
    threads = a.threads or (max(1, (os.cpu_count() or 1) // a.jobs) if a.jobs > 1 else None)
    try:
        base, figures = base_model(out, a.world, a.base_seed, a.threads)
    except rollout.LoadError as e:
        p.error(f"{e} (delete {os.path.join(out, 'base')} to build it again)")
    print("base model: " + json.dumps({k: figures[k] for k in ("dev", "heldout") if k in figures}), flush=True)

    def one(job):
        arm, seed = job
        r = run_arm(out, base, arm, seed, steps, a.split, threads, extra, a.world, a.base_seed)
        print(f"{arm} seed {seed}: " + json.dumps(r["final"]) + f" ({r['minutes']} min)", flush=True)
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:  # runs are processes; threads only wait
        list(pool.map(one, [(arm, seed) for seed in seeds for arm in arms]))
    report(a.out)


if __name__ == "__main__":
    cli.exit_on_interrupt(main, "experiments.py: interrupted; finished runs are kept, and a rerun resumes the sweep")
