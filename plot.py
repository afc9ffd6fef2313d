"""The standard curves of one or more training runs, read from their metrics.jsonl, in one PNG;
and the tiny world's report, its tables and figure, drawn for `experiments.py report`.

    python plot.py RUN [RUN ...] [--out FILE]      # default FILE: the first RUN's curves.png

Panels against step (`PANELS`): held-out accuracy (greedy, solid; sampled, dashed, when logged),
solver and proposer reward, the solver's KL to the initial model, solver entropy, solver
response length and the valid-proposal rate. Runs are overlaid, one colour each. A panel whose
curves are one constant gets a fixed range (`y_limits`: shares in [0, 1]), so a flat line reads
as flat.

The tiny world's report (`world_tables`, `world_figure`) renders result.json records that
experiments.py collects; which runs exist, and how they are run, is experiments.py's business.

matplotlib is an optional extra (`pip install matplotlib`): without it the command says so in
one line. Reading the curves (`curves`) and the tables need only the standard library.
"""
import argparse
import json
import os
import sys

PANELS = [  # (title, [(metrics.jsonl key, line style)])
    ("held-out accuracy (greedy -, sampled --)",
     [("eval_accuracy", "-"), ("eval_sampled_accuracy", "--")]),
    ("reward (solver -, proposer --)", [("solver_reward", "-"), ("proposer_reward", "--")]),
    ("solver KL to the initial model", [("solver_kl", "-")]),
    ("solver entropy (nats/token)", [("solver_entropy", "-")]),
    ("solver response length (tokens)", [("response_len", "-")]),
    ("valid proposals", [("valid_rate", "-")]),
]
SHARES = {"eval_accuracy", "eval_sampled_accuracy", "solver_reward", "proposer_reward",
          "valid_rate"}  # in [0, 1]; the rest (KL, entropy, length) >= 0


def fail(message):
    print(f"plot.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def curves(run):
    """{key: (steps, values)} for each PANELS key the run logged, in step order. metrics.jsonl holds
    one record per trained step plus the final eval record; a line a kill cut short is skipped."""
    path = os.path.join(run, "metrics.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    out = {}
    for record in sorted(records, key=lambda r: r["step"]):
        for key, _ in (k for _, keys in PANELS for k in keys):
            if isinstance(record.get(key), (int, float)):
                steps, values = out.setdefault(key, ([], []))
                steps.append(record["step"])
                values.append(record[key])
    if not out:
        raise ValueError(f"{path}: no step records")
    return out


def y_limits(keys, values):
    """A panel's fixed y range where its curves (`values`, one list per curve, of the panel's
    `keys`) are all one constant v, else None (matplotlib's own): [0, 1] with a margin for
    shares (SHARES), [0, 2v] (v > 0) or [0, 1] for the rest. matplotlib would draw v +- 0.04,
    where a flat line looks like noise."""
    flat = {v for curve in values for v in curve}
    if len(flat) != 1:
        return None
    if set(keys) <= SHARES:
        return (-0.05, 1.05)
    v = flat.pop()
    return (min(0.0, 2.0 * v), max(0.0, 2.0 * v)) if v else (0.0, 1.0)


def draw(runs, out):
    """One figure, a panel per PANELS row, every run's curves overlaid; saved as a PNG at `out`."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for i, (name, data) in enumerate(runs):
            for key, style in keys:
                if key in data:
                    steps, values = data[key]
                    ax.plot(steps, values, style, color=f"C{i}",
                            marker="." if len(steps) < 30 else None,
                            label=name if (key, style) == keys[0] else None)
        limits = y_limits([k for k, _ in keys],
                          [data[k][1] for _, data in runs for k, _ in keys if k in data])
        if limits:
            ax.set_ylim(*limits)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# --- the tiny world's report: table.md and tiny_world.png (`experiments.py report`) -----------
# A run is its result.json (`experiments.run_arm`); `arms` (the sweep's arms, in order), `steps`
# (a reported run's length) and `window` (steps per window of the mix) are the sweep's settings.

def is_reported(r, steps):
    """A run of the main table: held-out split, no variant flags, the reported length."""
    return r["split"] == "heldout" and not r.get("extra") and r["steps"] == steps


def label(r, steps):
    """An arm with its variant: sqlm; sqlm --lr 1e-4; every (30 steps)."""
    extra = " ".join(r.get("extra", [])) + ("" if r["steps"] == steps else f" ({r['steps']} steps)")
    return f"{r['arm']} {extra.strip()}".strip()


def grouped(results, arms, steps):
    """[(label, [result])] in `arms` order, then by variant."""
    groups = {}
    for r in results:
        groups.setdefault(label(r, steps), []).append(r)
    return sorted(groups.items(), key=lambda kv: (list(arms).index(kv[1][0]["arm"]), kv[0]))


def keep(groups, test):
    """`groups` with only the runs that pass `test`, and without the groups left empty."""
    kept = [(name, [r for r in rs if test(r)]) for name, rs in groups]
    return [(name, rs) for name, rs in kept if rs]


def mean_mix(mixes):
    """{shape: mean share} over several {shape: share} problem mixes (a shape absent counts 0)."""
    mean = {}
    for mix in mixes:
        for shape, share in mix.items():
            mean[shape] = mean.get(shape, 0.0) + share / len(mixes)
    return mean


def cell(values, digits=3):
    """mean, and over several values ± its standard error (range): 0.754 ± 0.003 (0.749-0.758)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    se = (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5
    low, high = min(values), max(values)
    return f"{mean:.{digits}f} ± {se:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def runs_cell(rs):
    """How many runs, and over how many base models: 6 (3 bases)."""
    bases = len({r.get("base_seed", 0) for r in rs})
    return f"{len(rs)}" + (f" ({bases} bases)" if bases > 1 else "")


def maj_ok_cell(rs, last=10):
    """How often the vote was the true product over the last steps, weighted by the proposals it
    covers, with how many problems that is per run: 0.35 (621)."""
    ok = [(o, c) for r in rs for o, c in zip(r["maj_ok"][-last:], r["maj_ok_checked"][-last:]) if c]
    if not ok:
        return "-"
    checked = sum(c for _, c in ok)
    return f"{sum(o * c for o, c in ok) / checked:.2f} ({checked / len(rs):.0f})"


def base_cells(bases, split):
    """The base model's row cells (greedy, sampled, maj@8, pass@8) over one or several bases."""
    return [cell([b[split][k] for b in bases])
            for k in ("greedy", "sampled", "maj_at_8", "pass_at_8")]


def world_tables(worlds, arms, steps, window):
    """table.md: `world_lines` of each (world, {seed: base.json}, [result]) in `worlds`."""
    return "\n".join(line for world, bases, results in worlds
                     for line in world_lines(world, bases, results, arms, steps, window))


def world_lines(world, bases, results, arms, steps, window):
    """One world's tables: the reported runs (mean ± standard error (range) over bases and seeds
    at the last eval), each base apart when there are several, each shape, the training signal,
    the proposer's mix over time and each arm's proposals by shape; then shorter runs and
    variants, then dev-split runs."""
    seeds = ", ".join(map(str, sorted({r["base_seed"] for r in results} | set(bases))))
    lines = [f"## {world} world (base seeds {seeds})", ""]
    reported = [r for r in results if is_reported(r, steps)]
    groups, base_list = grouped(reported, arms, steps), [bases[s] for s in sorted(bases)]
    lines += table_lines(groups, base_list, "heldout")
    if len({r["base_seed"] for r in reported} | set(bases)) > 1:
        lines += ["", *per_base_lines(groups, bases)]
    parts = [by_shape_lines(groups, base_list), signal_lines(groups),
             mix_lines(groups, base_list, window),
             *(shape_lines(name, rs, window) for name, rs in groups)]
    for part in parts:
        if part:
            lines += ["", *part]
    shorter = [r for r in results if r["split"] == "heldout" and not is_reported(r, steps)]
    dev = [r for r in results if r["split"] == "dev"]
    if shorter:
        lines += ["", "Shorter runs (--quick) and variants, held-out:", ""]
        lines += table_lines(grouped(shorter, arms, steps), base_list, "heldout")
    if dev:
        lines += ["", "Dev-split runs (choosing settings; the held-out split is never used for "
                      "this):", ""]
        lines += table_lines(grouped(dev, arms, steps), base_list, "dev")
    return lines + [""]


def table_lines(groups, bases, split):
    """Markdown rows: the base model (mean over `bases`), then one row per (arm, variant) group:
    mean ± standard error (range) over every run of it, all bases and seeds together, at the
    last eval; valid rate, `maj_ok` (with the proposals it covers) and the problem mix over the
    last ten steps."""
    lines = [f"| {'held-out' if split == 'heldout' else split} | runs | greedy | sampled (T=1) | "
             f"maj@8 | pass@8 | valid | maj_ok (checked) | mix, last 10 steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if bases:
        lines.append(f"| base model | {len(bases)} | " + " | ".join(base_cells(bases, split))
                     + " | - | - | - |")
    for name, rs in groups:
        mix = mean_mix([r["proposal_mix_last10"] for r in rs])
        top = ", ".join(f"{s} {v:.2f}" for s, v in sorted(mix.items(), key=lambda kv: -kv[1])[:4])
        f = [r["final"] for r in rs]
        lines.append(f"| {name} | {runs_cell(rs)} | {cell([x['eval_accuracy'] for x in f])} | "
                     f"{cell([x['eval_sampled_accuracy'] for x in f])} | "
                     f"{cell([x['eval_sampled_maj_at_k'] for x in f])} | "
                     f"{cell([x['eval_sampled_pass_at_k'] for x in f])} | "
                     f"{cell([r['valid_rate'] for r in rs])} | {maj_ok_cell(rs)} | {top} |")
    return lines


def per_base_lines(groups, bases):
    """Markdown: each base model's held-out figures and, under it, each arm's mean over run seeds
    on that base, so a change that holds on one base and not another is visible."""
    lines = ["| held-out, by base | runs | greedy | sampled (T=1) | maj@8 |",
             "| --- | --- | --- | --- | --- |"]
    for seed in sorted({r.get("base_seed", 0) for _, rs in groups for r in rs} | set(bases)):
        if seed in bases:
            b = bases[seed]["heldout"]
            lines.append(f"| base {seed} | - | {b['greedy']:.3f} | {b['sampled']:.3f} | "
                         f"{b['maj_at_8']:.3f} |")
        for name, rs in keep(groups, lambda r: r.get("base_seed", 0) == seed):
            f = [r["final"] for r in rs]
            lines.append(f"| base {seed}: {name} | {len(rs)} | "
                         f"{cell([x['eval_accuracy'] for x in f])} | "
                         f"{cell([x['eval_sampled_accuracy'] for x in f])} | "
                         f"{cell([x['eval_sampled_maj_at_k'] for x in f])} |")
    return lines


def by_shape_lines(groups, bases):
    """Markdown: held-out greedy / sampled / maj@8 of the final weights on each operand shape."""
    shapes = sorted({s for _, rs in groups for r in rs for s in r.get("by_shape", {})}
                    | {s for b in bases for s in b["heldout"].get("by_shape", {})})
    if not shapes:
        return []
    lines = ["| held-out by shape | runs | "
             + " | ".join(f"{s} greedy | {s} sampled | {s} maj@8" for s in shapes) + " |",
             "| --- | --- |" + " --- |" * 3 * len(shapes)]
    rows = [("base model", [b["heldout"] for b in bases if "by_shape" in b["heldout"]], None)]
    rows += [(name, rs, runs_cell(rs)) for name, rs in keep(groups, lambda r: "by_shape" in r)]
    for name, rs, runs in rows:
        if rs:
            cells = [cell([r["by_shape"][s][k] for r in rs if s in r["by_shape"]])
                     for s in shapes for k in ("greedy", "sampled", "maj_at_8")]
            lines.append(f"| {name} | {runs or len(rs)} | " + " | ".join(cells) + " |")
    return lines


def signal_lines(groups):
    """Markdown: per arm, the share of solver groups with no signal (all rewards equal) over the
    first and last ten steps and over the run, and how often the vote was the true product."""
    lines = ["| training signal | runs | zero-signal groups, first 10 steps | last 10 | "
             "all steps | maj_ok, first 10 | maj_ok, last 10 (checked) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rs in keep(groups, lambda r: "zero_signal" in r):
        def mean(xs):
            return sum(xs) / len(xs)
        zero = [[mean(r["zero_signal"][:10]) for r in rs],
                [mean(r["zero_signal"][-10:]) for r in rs], [mean(r["zero_signal"]) for r in rs]]
        first = [dict(r, maj_ok=r["maj_ok"][:10], maj_ok_checked=r["maj_ok_checked"][:10])
                 for r in rs]
        lines.append(f"| {name} | {runs_cell(rs)} | " + " | ".join(cell(z, 2) for z in zero) +
                     f" | {maj_ok_cell(first)} | {maj_ok_cell(rs)} |")
    return lines


def mix_lines(groups, bases, window):
    """Markdown: the proposer's mix (share of valid proposals by shape) in each `window`-step
    window, mean over runs, after the base proposer's own mix (512 samples, in base.json)."""
    groups = keep(groups, lambda r: "mix_by_window" in r)
    if not groups:
        return []
    windows = min(len(r["mix_by_window"]) for _, rs in groups for r in rs)
    lines = ["| proposer's mix | shape | base | "
             + " | ".join(f"steps {i * window}-{i * window + window - 1}" for i in range(windows))
             + " |", "| --- | --- | --- |" + " --- |" * windows]
    base_mix = mean_mix([b["proposer_mix"] for b in bases if "proposer_mix" in b])
    for name, rs in groups:
        per_window = [mean_mix([r["mix_by_window"][i] for r in rs]) for i in range(windows)]
        shapes = sorted({s for w in per_window for s in w} | set(base_mix),
                        key=lambda s: (-per_window[0].get(s, 0), s))
        for shape in shapes:
            if max([base_mix.get(shape, 0)] + [w.get(shape, 0) for w in per_window]) >= 0.005:
                lines.append(f"| {name} ({len(rs)}) | {shape} | {base_mix.get(shape, 0):.2f} | "
                             + " | ".join(f"{w.get(shape, 0):.2f}" for w in per_window) + " |")
    return lines


def shape_lines(name, rs, window):
    """Markdown: one group's solved proposals by shape in its first and last `window` steps (mean
    over runs): share, proposer reward, and how often the vote was the true product."""
    stats = [r["shape_stats"] for r in rs if "shape_stats" in r]
    if not stats:
        return []
    shapes = sorted({shape for s in stats for w in s.values() for shape in w})
    lines = [f"| {name} ({len(stats)}): shape | share, first {window} steps | "
             f"share, last {window} | proposer reward, first | last | majority = truth, first | "
             f"last |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for shape in shapes:
        cells = []
        for i in range(3):
            for window_ in ("first", "last"):
                values = [s[window_][shape][i] for s in stats if shape in s[window_]]
                cells.append(f"{sum(values) / len(values):.2f}" if values else "-")
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return lines


def world_figure(worlds, arms, steps, out):
    """tiny_world.png at `out`: per world with reported runs, held-out greedy and sampled accuracy
    against step, every run a line coloured by its arm, the bases' mean maj@8 dashed. False, and
    nothing written, when no world has a reported run."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    shown = [(world, bases, [r for r in results if is_reported(r, steps)])
             for world, bases, results in worlds]
    shown = [(world, bases, reported) for world, bases, reported in shown if reported]
    if not shown:
        return False
    fig, axes = plt.subplots(len(shown), 2, figsize=(10, 4 * len(shown)), sharey=True,
                             squeeze=False)
    for row, (world, bases, reported) in zip(axes, shown):
        for ax, key, title in ((row[0], "eval_accuracy", "held-out greedy"),
                               (row[1], "eval_sampled_accuracy", "held-out sampled (T=1)")):
            for i, arm in enumerate(arms):
                for j, r in enumerate(r for r in reported if r["arm"] == arm):
                    ax.plot([c["step"] for c in r["curve"]], [c[key] for c in r["curve"]],
                            color=f"C{i}", alpha=0.7, label=arm if j == 0 else None)
            if bases:
                ax.axhline(sum(b["heldout"]["maj_at_8"] for b in bases.values()) / len(bases),
                           color="grey", linestyle="--", label="base maj@8")
            ax.set_title(f"{world} world: {title}")
            ax.set_xlabel("step")
        row[0].set_ylabel("accuracy")
        row[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Plot the standard curves of training runs (metrics.jsonl) into a PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories (each with a metrics.jsonl)")
    p.add_argument("--out", help="PNG file to write (default: the first RUN's curves.png)")
    p.error = fail
    args = p.parse_args(argv)
    try:
        runs = [(os.path.basename(os.path.normpath(run)), curves(run)) for run in args.runs]
    except ValueError as e:
        fail(str(e))
    out = args.out or os.path.join(args.runs[0], "curves.png")
    if os.path.isdir(out):
        fail(f"--out {out} is a directory")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail("matplotlib is not installed (an optional extra for plots): pip install matplotlib")
    try:
        draw(runs, out)
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror}")
    print(f"plot: {out}")
    return out


if __name__ == "__main__":
    main()
