"""The standard curves of one or more training runs, read from their metrics.jsonl, in one PNG.

    python plot.py RUN [RUN ...] [--out FILE]      # default FILE: the first RUN's curves.png

Panels against step (`PANELS`): held-out accuracy (greedy, solid; sampled, dashed, when logged),
solver and proposer reward, the solver's KL to the initial model, solver entropy, solver
response length and the valid-proposal rate. Runs are overlaid, one colour each.

matplotlib is an optional extra (`pip install matplotlib`): without it the command says so in
one line. Reading the curves (`curves`) needs only the standard library.
"""
import argparse
import json
import os
import sys

PANELS = [  # (title, [(metrics.jsonl key, line style)])
    ("held-out accuracy (greedy -, sampled --)", [("eval_accuracy", "-"), ("eval_sampled_accuracy", "--")]),
    ("reward (solver -, proposer --)", [("solver_reward", "-"), ("proposer_reward", "--")]),
    ("solver KL to the initial model", [("solver_kl", "-")]),
    ("solver entropy (nats/token)", [("solver_entropy", "-")]),
    ("solver response length (tokens)", [("response_len", "-")]),
    ("valid proposals", [("valid_rate", "-")]),
]


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
                    ax.plot(steps, values, style, color=f"C{i}", marker="." if len(steps) < 30 else None,
                            label=name if (key, style) == keys[0] else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot the standard curves of training runs (metrics.jsonl) into a PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each with a metrics.jsonl)")
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
