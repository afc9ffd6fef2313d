"""bench.py runs end to end and its correctness checks hold (timings are reported, never asserted).

On CPU in fp32, also where a GPU is present: there the bench runs bf16 and agrees only to bf16 precision.
"""
import json

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
