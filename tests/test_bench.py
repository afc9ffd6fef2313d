"""bench.py runs end to end and its correctness checks hold (timings are reported, never asserted).

On CPU in fp32, also where a GPU is present: there the bench runs bf16 and agrees only to bf16 precision.
"""
import json

import pytest
import torch

import bench


def run_bench(argv, capsys):
    assert bench.main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_rollout_bench_checks_greedy_agreement_first(capsys):
    """The rollout row is only meaningful if our greedy tokens equal Hugging Face's on the same job."""
    row = run_bench(["rollout", "--device", "cpu", "--prompts", "2", "--n", "2", "--new", "8", "--repeat", "1"], capsys)
    assert row["greedy_agrees_with_hf"] is True
    assert row["ours_tokens"] > 0 and row["hf_tokens"] > 0


def test_update_bench_matches_the_full_vocabulary_reference(capsys):
    """The update row times chunked log-probs against full-vocabulary logits: values and gradients must agree."""
    row = run_bench(["update", "--device", "cpu", "--seqs", "3", "--prompt", "5", "--len", "7", "--microbatch", "2", "--repeat", "1"],
                    capsys)
    assert row["max_abs_logp_diff"] < 1e-4 and row["max_rel_grad_diff"] < 1e-4
    assert row["update_tokens_per_s"] > 0


def test_decode_bench_checks_greedy_agreement_and_reports_bandwidth(capsys):
    """The decode row (ours vs Hugging Face at each batch, achieved bandwidth) runs on CPU at small sizes."""
    row = run_bench(["decode", "--device", "cpu", "--batches", "2,3", "--prompt", "6", "--new", "5", "--repeat", "1"], capsys)
    assert row["greedy_agrees_with_hf"] is True and row["copy_gb_per_s"] > 0
    assert [r["batch"] for r in row["rows"]] == [2, 3]
    assert all(r["ours_tokens_per_s"] > 0 and r["hf_tokens_per_s"] > 0 and r["achieved_gb_per_s"] > 0 for r in row["rows"])


def test_memory_bench_prints_the_plan_that_fit_memory_chose(capsys):
    """Each row's sizes are fit_memory's and its peaks memory_plan's at those sizes, labelled as predictions."""
    row = run_bench(["memory", "--model", "qwen2.5-0.5b,qwen2.5-7b", "--cards", "24,141"], capsys)
    assert row["predicted_not_measured"] is True and len(row["rows"]) == 4
    small, big = row["rows"][1], row["rows"][2]  # 0.5B on 141 GB; 7B on 24 GB
    assert small["checkpointing"]["rollout_rows"] == 1024 and big["plain"] is None and big["checkpointing"] is None
    assert max(v for k, v in small["plain"].items() if k.endswith("_peak")) <= 0.9 * 141


def test_memory_bench_plans_per_gpu_and_falls_back_to_a_bf16_reference_as_a_run_does(capsys):
    """--gpus: the plan per GPU of an FSDP2 run. The paper's 3B step fits one 80 GB card only with its KL
    reference in bf16 (said in the row), and two cards with the fp32 one; each row's sizes fit 90% of its card."""
    row = run_bench(["memory", "--model", "qwen2.5-3b", "--cards", "80", "--gpus", "1,2"], capsys)
    one, two = row["rows"]
    assert (one["gpus"], two["gpus"]) == (1, 2)
    assert one["plain"]["kl_reference"] == "bf16" and "kl_reference" not in two["plain"]
    assert two["plain"]["microbatch"] > one["plain"]["microbatch"]
    assert all(v <= 0.9 * 80 for r in (one, two) for k, v in r["plain"].items() if k.endswith("_peak"))


@pytest.mark.parametrize("argv, message", [
    (["memory", "--gpus", "0"], "must be at least 1"),
    (["parallel", "--processes", "0"], "must be at least 1"),
    (["rollout", "--temperature", "nan"], "--temperature must be a finite number"),
    (["rollout", "--temperature", "-1"], "--temperature must be a finite number"),
    (["rollout", "--temperature", "-1e-3"], "--temperature must be a finite number"),
    (["rollout", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["update", "--device", "cuda:0" if not torch.cuda.is_available() else "tpu"], "unknown or unavailable --device"),
    (["memory", "--kl", "-1"], "--kl must be a finite number"),
    (["rollout", "--n", "0"], "must be at least 1"),
    (["decode", "--batches", "64,x"], "argument --batches"),
    (["nonsense"], "invalid choice"),
])
def test_bad_bench_flags_are_one_line_and_exit_2(argv, message, capsys):
    """NaN or negative temperatures and an unavailable device used to give a traceback or run anyway."""
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bench_leaves_no_temporary_model_behind(monkeypatch, tmp_path):
    """The random tiny model used to be written with mkdtemp and never removed."""
    monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))
    bench.get_model("tiny", torch.device("cpu"), torch.float32)
    assert list(tmp_path.iterdir()) == []
