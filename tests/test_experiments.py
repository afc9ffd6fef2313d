"""experiments.py: the tiny world's table is assembled from whatever runs have finished."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import experiments  # noqa: E402


def fake_result(out, arm, seed, greedy, sampled, split="heldout", extra=(), steps=experiments.STEPS):
    run = os.path.join(out, experiments.run_name(arm, seed, split, list(extra), steps))
    os.makedirs(run)
    final = {"step": 60, "eval_accuracy": greedy, "eval_sampled_accuracy": sampled,
             "eval_sampled_maj_at_k": 0.9, "eval_sampled_pass_at_k": 0.95}
    with open(os.path.join(run, "result.json"), "w") as f:
        json.dump({"arm": arm, "seed": seed, "steps": steps, "split": split, "extra": list(extra),
                   "curve": [dict(final, step=0), final], "final": final, "valid_rate": 1.0,
                   "maj_ok": [0.5, 1.0], "maj_ok_checked": [2, 6], "proposal_mix_last10": {"2x1": 0.75, "1x1": 0.25}}, f)


def test_report_gives_mean_and_range_over_seeds_and_keeps_dev_variants_apart(tmp_path, capsys):
    out = str(tmp_path)
    with open(os.path.join(out, "base.json"), "w") as f:
        json.dump({s: {"greedy": 0.9, "sampled": 0.6, "maj_at_8": 0.88, "pass_at_8": 0.97} for s in ("dev", "heldout")}, f)
    fake_result(out, "sqlm", 0, 0.90, 0.70)
    fake_result(out, "sqlm", 1, 0.94, 0.80)
    fake_result(out, "format", 0, 0.50, 0.40)
    fake_result(out, "sqlm", 0, 0.10, 0.10, split="dev", extra=["--lr", "1e-4"])
    fake_result(out, "never", 0, 0.20, 0.20, split="dev")
    fake_result(out, "every", 0, 0.30, 0.30, steps=30)  # --quick: shorter, not in the main table
    experiments.report(out)
    table = open(os.path.join(out, "table.md")).read()
    held_out, rest = table.split("Shorter runs")
    shorter, dev = rest.split("Dev-split runs")
    assert "| every (30 steps) | 1 | 0.300 | 0.300 |" in shorter and "every" not in held_out + dev
    # mean ± standard error (range): se = sd / sqrt(n) = 0.0283 / 1.414
    assert "| sqlm | 2 | 0.920 ± 0.020 (0.900-0.940) | 0.750 ± 0.050 (0.700-0.800) |" in held_out
    assert "| format | 1 | 0.500 | 0.400 |" in held_out
    assert "0.100" not in held_out and "| sqlm --lr 1e-4 | 1 | 0.100 | 0.100 |" in dev
    assert "never" not in held_out and "| never | 1 | 0.200 | 0.200 |" in dev
    # maj_ok over the last steps, weighted by the proposals it covers: (0.5 * 2 + 1.0 * 6) / 8
    assert "| 0.88 (8) | 2x1 0.75, 1x1 0.25 |" in held_out


@pytest.mark.parametrize("argv, message", [
    (["tiny-world", "--jobs", "0"], "--jobs and --steps must be at least 1"),
    (["tiny-world", "--seeds", "0,x"], "--seeds takes comma-separated integers"), (["report"], "holds no runs yet"),
    (["tiny-world", "--", "--lr", "1e-4"], "add --split dev"),
    (["tiny-world", "--arms", "sqlm,nope"], "unknown arm"),
    (["tiny-world", "--split", "dev", "--", "--lr", "-1"], "after -- (sqlm.py flags, with arm sqlm): --lr must be positive"),
    (["tiny-world", "--split", "dev", "--", "--bogus"], "unrecognized arguments: --bogus"),
    (["tiny-world", "--split", "dev", "--arms", "format", "--", "--solver-reward", "tests"],
     "with arm format): --solver-reward tests does not fit --task arith"),
    (["tiny-world", "--split", "dev", "--", "--seed", "3"], "--seed is set by experiments.py for each run"),
    (["tiny-world", "--base-seed", "-1"], "--base-seed must be in [0, 2**32)"),
    (["tiny-world", "--world", "flat"], "argument --world: invalid choice"),
    (["export"], "holds no runs yet"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    """A bad sqlm.py flag after -- used to be found by the first run, after the base model had been
    built (about twenty minutes), and exited 1: it is checked before anything is built now."""
    monkeypatch.setattr(experiments, "base_model", lambda *a: pytest.fail("built the base model before the flags"))
    with pytest.raises(SystemExit) as e:
        experiments.main([*argv, "--out", str(tmp_path / "w")] if "--" not in argv else
                         [argv[0], "--out", str(tmp_path / "w"), *argv[1:]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()  # nothing written before the flags were checked


def test_shape_stats_read_where_the_proposer_went_and_whether_the_vote_was_right(tmp_path):
    """Per operand shape, over the first and last steps: share of solved proposals, proposer
    reward, and how often the majority answer was the true product."""
    def rec(step, problem, majority, truth, reward):
        return {"step": step, "problem": problem, "answers": [majority], "majority": majority, "truth": truth,
                "proposer_reward": reward}
    rows = [rec(0, "What is 12 * 3?", "36", "36", 1.0), rec(0, "What is 7 * 8?", "56", "56", 0.0),
            rec(1, "What is 123 * 4?", "482", "492", 1.0), rec(1, "What is 12 * 3?", "36", "36", 0.0),
            {"step": 1, "proposal": "nonsense", "valid": False}]  # not solved: not counted
    with open(tmp_path / "samples.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    stats = experiments.shape_stats(str(tmp_path), 1, 1)
    assert stats["first"] == {"2x1": (0.5, 1.0, 1.0), "1x1": (0.5, 0.0, 1.0)}
    assert stats["last"] == {"3x1": (0.5, 1.0, 0.0), "2x1": (0.5, 0.0, 1.0)}


def test_each_base_seed_and_world_has_its_own_base_and_runs(tmp_path, monkeypatch):
    """--base-seed and --world route the base model's pre-training flags and every run into one
    directory per (world, base seed); the tiny world's seed-0 base keeps --out itself."""
    calls = []

    def base_model(out, world, base_seed, threads):
        calls.append(("base", os.path.relpath(out, tmp_path), experiments.base_flags(world, base_seed, threads)))
        return os.path.join(out, "base"), {}

    def run_arm(out, base, arm, seed, steps, split, threads, extra, world, base_seed):
        calls.append(("run", os.path.relpath(out, tmp_path), os.path.relpath(base, tmp_path), arm, seed, world, base_seed))
        return {"final": {}, "minutes": 0}
    monkeypatch.setattr(experiments, "base_model", base_model)
    monkeypatch.setattr(experiments, "run_arm", run_arm)
    monkeypatch.setattr(experiments, "report", lambda out: None)
    for argv in (["--base-seed", "1"], ["--world", "curriculum"], []):
        experiments.main(["tiny-world", "--out", str(tmp_path), "--arms", "sqlm", "--seeds", "0", *argv])
    (_, d1, flags1), run1, (_, d2, flags2), run2, (_, d0, flags0), run0 = calls
    assert (d1, d2, d0) == ("tiny-base1", "curriculum-base0", ".")
    assert run1[1:] == ("tiny-base1", "tiny-base1/base", "sqlm", 0, "tiny", 1)
    assert run2[1:] == ("curriculum-base0", "curriculum-base0/base", "sqlm", 0, "curriculum", 0)
    assert run0[1:] == (".", "base", "sqlm", 0, "tiny", 0)
    assert flags0 == [*experiments.BASE_ARGS, *experiments.BASE_FLAGS]  # the published base's command
    assert flags1[flags1.index("--seed") + 1] == "1" and "--proposer-mix" not in flags1
    assert flags2[flags2.index("--seed") + 1] == "0" and flags2[-2:] == ["--proposer-mix", "curriculum"]
    assert all(os.path.exists(tmp_path / d / "heldout.jsonl") for d in ("tiny-base1", "curriculum-base0", "."))


def full_result(out, arm, seed, sampled, zero, mix):
    """A result.json with everything run_arm records, in `out` (a world directory)."""
    fake_result(out, arm, seed, 0.9, sampled)
    path = os.path.join(out, experiments.run_name(arm, seed, "heldout", []), "result.json")
    with open(path) as f:
        r = json.load(f)
    r.update(zero_signal=[zero] * 20, proposal_mix=[mix] * 20, mix_by_window=[mix, mix],
             shape_stats={"first": {"1x1": [1.0, 0.5, 1.0]}, "last": {"1x1": [1.0, 0.25, 1.0]}},
             by_shape={"1x1": {"greedy": 1.0, "sampled": sampled, "maj_at_8": 1.0, "pass_at_8": 1.0}})
    with open(path, "w") as f:
        json.dump(r, f)


def test_report_pools_bases_shows_each_apart_and_rebuilds_from_the_exported_results(tmp_path):
    """Runs on two base models: the table pools them (mean ± se (range), and how many bases),
    a second table keeps each base apart, and `export` copies only result.json and base.json,
    from which `report` writes the same table."""
    runs = tmp_path / "runs"
    for seed, d in ((0, runs), (1, runs / "tiny-base1")):
        os.makedirs(d, exist_ok=True)
        with open(d / "base.json", "w") as f:
            json.dump({"heldout": {"greedy": 0.9, "sampled": 0.6 + seed / 10, "maj_at_8": 0.88, "pass_at_8": 0.97,
                                   "by_shape": {"1x1": {"greedy": 1.0, "sampled": 0.7, "maj_at_8": 1.0, "pass_at_8": 1.0}}},
                       "proposer_mix": {"1x1": 0.5, "2x1": 0.5}}, f)
        full_result(str(d), "sqlm", 0, 0.70 + seed / 10, 0.5, {"1x1": 0.25, "2x1": 0.75})
        full_result(str(d), "never", 0, 0.60, 0.75, {"1x1": 0.5, "2x1": 0.5})
    (runs / "sqlm-s0" / "samples.jsonl").write_text("not copied\n")
    experiments.report(str(runs))
    table = (runs / "table.md").read_text()
    assert "| base model | 2 | 0.900 ± 0.000 (0.900-0.900) | 0.650 ± 0.050 (0.600-0.700) |" in table
    assert "| sqlm | 2 (2 bases) | 0.900 ± 0.000 (0.900-0.900) | 0.750 ± 0.050 (0.700-0.800) |" in table
    assert "| base 1: sqlm | 1 | 0.900 | 0.800 |" in table and "| base 0: never | 1 | 0.900 | 0.600 |" in table
    assert "| never | 2 (2 bases) | 0.75 ± 0.00 (0.75-0.75) | 0.75 ± 0.00 (0.75-0.75) | 0.75 ± 0.00 (0.75-0.75) |" in table
    assert "| sqlm (2) | 2x1 | 0.50 | 0.75 | 0.75 |" in table  # the mix: base, then each 10-step window
    assert "| sqlm | 2 (2 bases) | 1.000 ± 0.000 (1.000-1.000) | 0.750 ± 0.050 (0.700-0.800) |" in table  # 1x1 by shape
    experiments.main(["export", "--out", str(runs), "--to", str(tmp_path / "results")])
    copied = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "results")
                    for d, _, files in os.walk(tmp_path / "results") for f in files)
    assert copied == ["base.json", "never-s0/result.json", "sqlm-s0/result.json", "tiny-base1/base.json",
                      "tiny-base1/never-s0/result.json", "tiny-base1/sqlm-s0/result.json"]
    experiments.main(["report", "--out", str(tmp_path / "results")])
    assert (tmp_path / "results" / "table.md").read_text() == table
