"""bench.py runs end to end and its correctness checks hold (timings are reported, never asserted).

On CPU in fp32, also where a GPU is present: there the bench runs bf16 and agrees only to bf16
precision.
"""
import json
import os
import sys
import time

import pytest
import torch

import bench
import sqlm
from conftest import jsonl


def run_bench(argv, capsys):
    assert bench.main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_rollout_bench_checks_greedy_agreement_first(capsys):
    """The rollout row means something only if our greedy tokens equal Hugging Face's on a job."""
    row = run_bench(["rollout", "--device", "cpu", "--prompts", "2", "--n", "2", "--new", "8",
                     "--repeat", "1"], capsys)
    assert row["greedy_agrees_with_hf"] is True and row["trains"] is True
    assert row["ours_tokens"] > 0 and row["hf_tokens"] > 0


@pytest.mark.slow
def test_a_model_served_wrongly_is_one_line_and_exit_1_after_its_figures(capsys, monkeypatch):
    """Greedy tokens that differ from Hugging Face's: the row is printed, then one line saying the
    model is not served exactly, and exit code 1 (not 0, which a script would read as a pass)."""
    real = bench.rollout.generate

    def one_token_off(*args, **kwargs):  # greedy row 0 decodes a different third token
        samples = real(*args, **kwargs)
        if kwargs.get("temperature") == 0 and len(samples[0].completion_ids) > 2:
            samples[0].completion_ids[2] = (samples[0].completion_ids[2] + 1) % 1024
        return samples
    monkeypatch.setattr(bench.rollout, "generate", one_token_off)
    assert bench.main(["rollout", "--device", "cpu", "--prompts", "2", "--n", "2", "--new", "8",
                       "--repeat", "1"]) == 1
    out, err = capsys.readouterr()
    row = json.loads(out.strip().splitlines()[-1])
    assert row["greedy_agrees_with_hf"] is False and row["ours_tokens_per_s"] > 0
    assert len(err.strip().splitlines()) == 1 and "not served exactly" in err


@pytest.mark.slow
def test_update_bench_matches_the_full_vocabulary_reference(capsys):
    """The update row times chunked log-probs against full-vocabulary logits: values and
    gradients must agree."""
    row = run_bench(["update", "--device", "cpu", "--seqs", "3", "--prompt", "5", "--len", "7",
                     "--microbatch", "2", "--repeat", "1"], capsys)
    assert row["max_abs_logp_diff"] < 1e-4 and row["max_rel_grad_diff"] < 1e-4
    assert row["update_tokens_per_s"] > 0


@pytest.mark.slow
def test_decode_bench_checks_greedy_agreement_and_reports_bandwidth(capsys):
    """The decode row (ours vs Hugging Face per batch, achieved bandwidth) runs on CPU, small."""
    row = run_bench(["decode", "--device", "cpu", "--batches", "2,3", "--prompt", "6", "--new", "5",
                     "--repeat", "1"], capsys)
    assert row["greedy_agrees_with_hf"] is True and row["copy_gb_per_s"] > 0
    assert [r["batch"] for r in row["rows"]] == [2, 3]
    assert all(r["ours_tokens_per_s"] > 0 and r["hf_tokens_per_s"] > 0
               and r["achieved_gb_per_s"] > 0 for r in row["rows"])


def test_memory_bench_prints_the_plan_that_fit_memory_chose(capsys):
    """Each row's sizes are fit_memory's, its peaks memory_plan's at those sizes, said predicted."""
    row = run_bench(["memory", "--model", "qwen2.5-0.5b,qwen2.5-7b", "--cards", "24,141",
                     "--json"], capsys)
    assert row["predicted_not_measured"] is True and len(row["rows"]) == 4
    small, big = row["rows"][1], row["rows"][2]  # 0.5B on 141 GB; 7B on 24 GB
    assert small["checkpointing"]["rollout_rows"] == 1024
    assert big["plain"] is None and big["checkpointing"] is None
    assert max(v for k, v in small["plain"].items() if k.endswith("_peak")) <= 0.9 * 141


def test_memory_bench_plans_per_gpu_and_falls_back_to_a_bf16_reference_as_a_run_does(capsys):
    """--gpus: the plan per GPU of an FSDP2 run. The paper's 3B step fits one 80 GB card only with
    its KL reference in bf16 (said in the row), and two cards with the fp32 one; each row's sizes
    fit 90% of its card."""
    row = run_bench(["memory", "--model", "qwen2.5-3b", "--cards", "80", "--gpus", "1,2",
                     "--json"], capsys)
    one, two = row["rows"]
    assert (one["gpus"], two["gpus"]) == (1, 2)
    assert one["plain"]["kl_reference"] == "bf16" and "kl_reference" not in two["plain"]
    assert two["plain"]["microbatch"] > one["plain"]["microbatch"]
    assert all(v <= 0.9 * 80 for r in (one, two) for k, v in r["plain"].items()
               if k.endswith("_peak"))


def test_memory_bench_prints_a_table_a_reader_can_scan(capsys):
    """Without --json, `memory` prints one line of settings, a header and one row per model and
    card, in aligned columns, with the figures of the JSON row. Guards: the plan as one long JSON
    line."""
    assert bench.main(["memory", "--model", "qwen2.5-0.5b,qwen2.5-7b", "--cards", "24,141"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + 4 and "predicted, not measured" in lines[0]
    header, rows = lines[1], lines[2:]
    assert header.split()[:4] == ["model", "params", "GPUs", "card"]
    assert len({len(line) for line in rows}) == 1  # aligned: every row ends at the same column
    small, big = rows[1].split(), rows[2].split()  # 0.5B on 141 GB; 7B on 24 GB
    assert small[:4] == ["qwen2.5-0.5b", "0.49B", "1", "141"] and small[7] == "1024/128"
    assert big[4] == "no" and big[6] == "no"


def test_memory_bench_refuses_a_config_it_cannot_count_in_one_line(tmp_path, capsys):
    """A GPT-2 config has no intermediate_size (its n_inner) and no num_key_value_heads: the plan
    is refused in one line naming the missing fields (exit 2), not an AttributeError traceback."""
    from transformers import AutoConfig
    AutoConfig.for_model("gpt2").save_pretrained(tmp_path)
    assert bench.main(["memory", "--model", str(tmp_path), "--cards", "24"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "gpt2 config has no intermediate_size, num_key_value_heads" in err


@pytest.mark.parametrize("argv, message", [
    (["memory", "--gpus", "0"], "must be at least 1"),
    (["parallel", "--processes", "0"], "must be at least 1"),
    (["rollout", "--temperature", "nan"], "--temperature must be a finite number"),
    (["rollout", "--temperature", "-1"], "--temperature must be a finite number"),
    (["rollout", "--temperature", "-1e-3"], "--temperature must be a finite number"),
    (["rollout", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["update", "--device", "cuda:0" if not torch.cuda.is_available() else "tpu"],
     "unknown or unavailable --device"),
    (["memory", "--kl", "-1"], "--kl must be a finite number"),
    (["rollout", "--n", "0"], "must be at least 1"),
    (["decode", "--batches", "64,x"], "argument --batches"),
    (["nonsense"], "invalid choice"),
])
def test_bad_bench_flags_are_one_line_and_exit_2(argv, message, capsys):
    """A NaN or negative temperature, a top-p outside (0, 1], an unavailable device or a zero count
    is one line on stderr and exit code 2: no traceback, and no run."""
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_leaves_no_temporary_model_behind(monkeypatch, tmp_path):
    """Loading the tiny model writes it to a temporary directory, removed once it is loaded."""
    monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))
    bench.get_model("tiny", torch.device("cpu"), torch.float32)
    assert list(tmp_path.iterdir()) == []


# --- bench.py gpu: the one-call GPU check, its dry run and its bookkeeping ---------------------

def gpu_lines(out, capsys):
    """The JSON lines printed, after checking they are exactly the lines appended to
    OUT/results.jsonl."""
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == jsonl(out / "results.jsonl")
    return {row["part"]: row for row in printed}


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_parts_line(tmp_path, capsys):
    """`bench.py gpu --device cpu --model tiny` runs every part with tiny shapes, each one JSON line
    printed and appended to the results file, none failed. Guards: a part dropped, renamed or
    raising on the CPU path, a results file not written, a field a GPU run's report reads
    (docs/gpu.md) gone missing."""
    assert bench.main(["gpu", "--device", "cpu", "--model", "tiny", "--out", str(tmp_path)]) == 0
    rows = gpu_lines(tmp_path, capsys)
    assert list(rows) == ["env", "cuda_tests", "step", "decode", "torchrun"]
    assert all(row["ok"] is True and "error" not in row and row["seconds"] >= 0
               for row in rows.values())
    env = rows["env"]
    with open(os.path.join(bench.HERE, "requirements.txt")) as f:
        pinned = {line.split("==")[0] for line in f if "==" in line}
    assert set(env["pins"]) == pinned and env["torch"] == torch.__version__
    assert env["differ_from_pins"] is not None
    # off a GPU every CUDA test is listed, skipped with its reason
    tests = rows["cuda_tests"]["tests"]
    assert len(tests) >= 5 and all(v.startswith("skipped: needs a CUDA device")
                                   for v in tests.values())
    assert (tmp_path / "cuda_tests.xml").exists() and (tmp_path / "cuda_tests.log").exists()
    step = rows["step"]
    assert step["ran"] is True and step["solver_samples"] == 2 * 2 * 2 and len(step["steps"]) == 1
    assert {"propose", "solve", "prepare", "solver_update", "proposer_update", "optimizer",
            "refresh"} <= set(step["steps"][0])
    assert all(step["steps"][0][k] > 0 for k in ("t_propose", "t_solve", "t_update"))
    assert step["plan_at_step_lengths_gb"]["max_response"] == 8
    assert step["plan_gb"]["max_prompt"] == 512
    decode = rows["decode"]
    assert decode["greedy_agrees_with_hf"] is True
    assert [r["batch"] for r in decode["rows"]] == [2, 3]
    assert decode["copy_gb_per_s"] > 0 and all(r["achieved_gb_per_s"] > 0 for r in decode["rows"])
    assert rows["torchrun"]["ran"] is False and "two GPUs" in rows["torchrun"]["reason"]


@pytest.mark.slow
def test_a_failing_part_is_its_one_line_error_and_the_next_part_runs(tmp_path, capsys, monkeypatch):
    """A part that raises records its one-line error; the parts after it still run and the exit code
    says one failed. Guards: one broken part losing the whole GPU call."""
    def broken(a, device, row, limit):
        row["measured_before_failing"] = 1
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nsecond line")
    monkeypatch.setattr(bench, "gpu_step", broken)
    assert bench.main(["gpu", "--device", "cpu", "--model", "tiny", "--out", str(tmp_path),
                       "--parts", "env,step,torchrun"]) == 1
    rows = gpu_lines(tmp_path, capsys)
    assert list(rows) == ["env", "step", "torchrun"]
    assert rows["env"]["ok"] and rows["torchrun"]["ok"]
    assert rows["step"]["ok"] is False and rows["step"]["measured_before_failing"] == 1
    assert rows["step"]["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.mark.slow
def test_the_budget_cuts_a_part_that_runs_over_and_skips_parts_with_too_little_left(
        tmp_path, capsys, monkeypatch):
    """--budget-s: a part still running when its share is spent is cut, keeping what it had
    measured; a part with less left than it needs is skipped, said in its line. Guards: a slow part
    eating the others' time and the call's time limit then losing every line."""
    def slow(a, device, row, limit):
        row["first_batch"] = "measured"
        time.sleep(30)
    monkeypatch.setattr(bench, "gpu_decode", slow)
    monkeypatch.setitem(bench.PART_MIN_S, "decode", 0)
    started = time.monotonic()
    assert bench.main(["gpu", "--device", "cpu", "--model", "tiny", "--out", str(tmp_path),
                       "--budget-s", "1", "--parts", "decode,step"]) == 1
    assert time.monotonic() - started < 10
    rows = gpu_lines(tmp_path, capsys)
    assert rows["decode"]["first_batch"] == "measured"
    assert rows["decode"]["error"].startswith("cut by the time limit")
    assert rows["step"]["ok"] is False
    assert rows["step"]["skipped"].startswith("--budget-s: 0 s left")


def test_phase_meter_reads_the_cuda_allocators_peak_per_phase(monkeypatch):
    """On a GPU each phase's peak is CUDA's max_memory_allocated since the phase began, the AdamW
    step's apart from the forward and backward before it. Faked counters (no GPU here). Guards: the
    counter not reset between phases (every phase reporting the step's peak), the optimizer's peak
    booked to the update."""
    allocated = {"now": 0, "peak": 0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocated["peak"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved",
                        lambda device=None: allocated["peak"] + int(1e9))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: allocated.update(peak=allocated["now"]))

    def use(gbytes):
        allocated["peak"] = max(allocated["peak"], allocated["now"] + int(gbytes * 1e9))

    meter = bench.PhaseMeter(torch.device("cuda"))
    allocated.update(now=int(50e9), peak=int(60e9))  # the set-up's peak is no phase's
    meter.wrap(lambda: use(20), "propose")()
    meter.wrap(lambda: use(12), "solve")()

    def update():
        use(15)
        meter.before_optimizer(None, (), {})
        use(25)
        meter.after_optimizer(None, (), {})
        use(1)
    meter.wrap(update, "solver_update")()

    def release():
        allocated["now"] -= int(6e9)
    meter.released(release)()
    step = meter.steps[0]
    assert step["sampler_released_gb"] == 6.0 and meter.reserved == 76e9
    assert step["resident_gb"] == 50.0
    assert (step["propose"]["peak_gb"], step["solve"]["peak_gb"]) == (70.0, 62.0)
    assert (step["solver_update"]["peak_gb"], step["optimizer"]["peak_gb"]) == (65.0, 75.0)


def test_measured_peaks_are_set_against_the_plan_less_adamw_before_its_first_step():
    """The first step's rollouts and log-probs run before AdamW allocates its moments: they are
    compared with the plan less the moments, the update and optimizer phases with the plan; a later
    step with the plan. Guards: a first-step rollout reported as 30% under the plan when the plan is
    right."""
    plan = {"rollout": 70.0, "logprobs": 56.0, "update": 75.0, "optimizer": 74.0, "adamw": 24.7}
    phases = {"propose": {"peak_gb": 40.0}, "solve": {"peak_gb": 45.3},
              "prepare": {"peak_gb": 31.3}, "solver_update": {"peak_gb": 60.0},
              "proposer_update": {"peak_gb": 50.0}, "optimizer": {"peak_gb": 74.0}}
    first = bench.measured_against_plan([phases], plan)
    assert first["compared_with_gb"] == {"rollout": 45.3, "logprobs": 31.3, "update": 75.0,
                                         "optimizer": 74.0}
    assert first["measured_over_plan"] == {"rollout": 1.0, "logprobs": 1.0, "update": 0.8,
                                           "optimizer": 1.0}
    later = bench.measured_against_plan([{}, phases], plan)
    assert later["compared_with_gb"]["rollout"] == 70.0
    assert later["measured_over_plan"]["rollout"] == 0.65


def test_junit_outcomes_reads_pass_fail_skip_and_error(tmp_path):
    """The CUDA tests' line gives each test's verdict from pytest's JUnit XML, a failure by its
    first line. Guards: a failing or erroring CUDA test reported as passed."""
    (tmp_path / "r.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_ok" time="0.1"/>'
        '<testcase classname="tests.test_cuda" name="test_bad" time="0.1">'
        '<failure message="assert 0.0042 == 0.0&#10;more">trace</failure></testcase>'
        '<testcase classname="tests.test_cuda" name="test_setup" time="0.1">'
        '<error message="failed on setup with &quot;OSError&quot;">trace</error></testcase>'
        '<testcase classname="tests.test_cuda" name="test_off" time="0">'
        '<skipped type="pytest.skip" message="needs a CUDA device">why</skipped></testcase>'
        '</testsuite></testsuites>')
    assert bench.junit_outcomes(tmp_path / "r.xml") == {
        "test_ok": "passed", "test_bad": "failed: assert 0.0042 == 0.0",
        "test_setup": 'failed: failed on setup with "OSError"',
        "test_off": "skipped: needs a CUDA device"}


@pytest.mark.slow
def test_cuda_tests_still_running_at_their_limit_leave_their_output_and_one_line(
        tmp_path, monkeypatch):
    """The CUDA tests' pytest is stopped at the part's limit; its output so far is kept in the log
    and the part's error is one line. Guards: a hung CUDA test leaving no trace of which test
    hung."""
    real_run = bench.subprocess.run
    monkeypatch.setattr(bench.subprocess, "run", lambda command, **kw: real_run(
        [sys.executable, "-c",
         "print('tests/test_cuda.py::test_one PASSED', flush=True); import time; time.sleep(30)"],
        **{**kw, "timeout": 1}))
    a = type("Args", (), {"out": str(tmp_path)})
    with pytest.raises(RuntimeError, match="pytest still running after 1 s"):
        bench.gpu_cuda_tests(a, torch.device("cpu"), {}, 60)
    assert "test_one PASSED" in (tmp_path / "cuda_tests.log").read_text()


@pytest.mark.slow
def test_a_step_that_trains_nothing_is_a_failed_part(tmp_path, capsys, monkeypatch):
    """A step whose proposals are all invalid samples and stops: it measured no update, so its line
    says so and fails. Guards: random weights whose ids have no text (every proposal empty, so
    invalid) passing as a measured step."""
    monkeypatch.setattr(sqlm, "parse", lambda cfg, samples, first=0: [
        sqlm.Proposal(first + i, s, None, "empty") for i, s in enumerate(samples)])
    assert bench.main(["gpu", "--device", "cpu", "--model", "tiny", "--out", str(tmp_path),
                       "--parts", "step"]) == 1
    step = gpu_lines(tmp_path, capsys)["step"]
    assert step["ok"] is False and "the step trained nothing (valid_rate 0.0)" in step["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine whose torch sees no GPU")
def test_without_a_gpu_only_the_environment_is_checked(tmp_path, capsys):
    """Where torch sees no CUDA device and --device is not given, the env line says why and the
    other parts are skipped at once. Guards: a GPU machine whose CUDA does not load grinding the 3B
    check on its CPU until the call's time is spent."""
    started = time.monotonic()
    assert bench.main(["gpu", "--out", str(tmp_path), "--parts", "env,step,decode"]) == 1
    rows = gpu_lines(tmp_path, capsys)
    assert time.monotonic() - started < 5 and rows["env"]["ok"] and rows["env"]["cuda_error"]
    assert all(rows[p]["skipped"].startswith("torch sees no CUDA device")
               for p in ("step", "decode"))
