"""The GPU path, on a CUDA device: bf16 sampling copy, fp32 KL reference under autocast, gradient
checkpointing, the preallocated-cache decoder in bf16, a checkpoint written from GPU memory.

Each test mirrors the CPU test named in its docstring, which checks the same property where a CPU can
show it; these check what only CUDA shows (bf16 kernels, autocast, memory given back to the card).
Marked `cuda`: skipped without a CUDA device (conftest.py); `python bench.py gpu` runs them on one.
"""
import os

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import harness
import parallel
import rollout
import sqlm
from conftest import grads, jsonl

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
PROMPTS = ["hi", "what is 12 * 34?", "a longer prompt, so that the batch needs left padding " * 2,
           "write a problem", "Selected Question: 3 + 4", "tests ||| 5"]
TIE = 0.125  # two bf16 steps at a logit of 8-16: two tokens closer than this are a tie under bf16 rounding


def bf16_sampler(tiny_dir):
    """(fp32 model, its bf16 sampling copy, tokenizer) on the GPU, as harness.train_on builds
    them."""
    model, tok = rollout.load(tiny_dir, device="cuda")
    return model, sqlm.bf16_copy(model), tok


def sampled_seqs(sampler, tok, advantages):
    """Sequences sampled by the copy (2 per prompt, up to 12 tokens) with the given advantages."""
    prompts = [rollout.chat_prompt(tok, p) for p in PROMPTS[:len(advantages) // 2]]
    samples = rollout.generate(sampler, tok, prompts, n=2, max_new_tokens=12, seed=0)
    return [sqlm.Seq(s.prompt_ids, s.completion_ids, a, group=i // 2) for i, (s, a) in enumerate(zip(samples, advantages))]


def test_greedy_equals_hf_generate_in_bf16(tiny_dir):
    """test_rollout.py::test_greedy_equals_hf_generate on the bf16 sampling copy: our
    preallocated-cache decoder and Hugging Face `generate` on the identical left-padded batch agree
    token for token; a row may part only at a tie under bf16 rounding (the two tokens' logits within
    TIE), never at a clear choice."""
    _, sampler, tok = bf16_sampler(tiny_dir)
    prompts = [rollout.chat_prompt(tok, p) for p in PROMPTS]
    ours = rollout.generate(sampler, tok, prompts, max_new_tokens=32, temperature=0)
    ids, mask, _ = rollout.left_pad(prompts, tok.pad_token_id, CUDA)
    theirs = sampler.generate(input_ids=ids, attention_mask=mask, max_new_tokens=32, do_sample=False,
                              pad_token_id=tok.pad_token_id, eos_token_id=rollout.stop_token_ids(sampler, tok))
    agreed = 0
    for p, s, ref in zip(prompts, ours, theirs[:, ids.shape[1]:].tolist()):
        same = [a == b for a, b in zip(s.completion_ids, ref)] + [False]
        k = same.index(False)
        agreed += min(k, len(s.completion_ids))
        if k < len(s.completion_ids):  # parted: only at a near-tie
            assert k < len(ref), f"Hugging Face stopped at token {k}, ours went on"
            with torch.no_grad():
                logits = sampler(input_ids=torch.tensor([p + s.completion_ids[:k]], device=CUDA)).logits[0, -1].float()
            gap = (logits[s.completion_ids[k]] - logits[ref[k]]).abs().item()
            assert gap <= TIE, f"row parted from Hugging Face at token {k} with a logit gap of {gap:.3f}"
    assert agreed >= 0.75 * sum(len(s.completion_ids) for s in ours)
    assert len({t for s in ours for t in s.completion_ids}) > 3  # a constant output would make this vacuous


def test_sampling_copy_is_bf16_keeps_fp32_rope_and_gives_its_memory_back(tiny_dir):
    """test_update.py::test_sampling_copy_keeps_fp32_rope_buffers and test_update.py::
    test_train_step_refreshes_a_separate_sampling_copy on the GPU: the copy's weights are bf16 on
    the card, its RoPE buffers fp32 and equal to the model's, its head tied; release_sampler gives
    the card back at least its weights' bytes; refresh_sampler rebuilds it from the updated weights,
    in bf16, and it then decodes as a fresh copy of those weights does."""
    model, sampler, tok = bf16_sampler(tiny_dir)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cuda" for p in sampler.parameters())
    buffers = dict(model.named_buffers())
    assert buffers and all(b.dtype == buffers[name].dtype and torch.equal(b, buffers[name])
                           for name, b in sampler.named_buffers())
    assert sampler.lm_head.weight is sampler.model.embed_tokens.weight
    weight_bytes = sum(p.numel() * p.element_size() for p in sampler.parameters())
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    sqlm.release_sampler(sampler, model)
    assert before - torch.cuda.memory_allocated() >= weight_bytes
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sqlm.refresh_sampler(sampler, model)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cuda" for p in sampler.parameters())
    assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(sampler.parameters(), model.parameters()))
    assert all(b.dtype == torch.float32 for b in sampler.buffers())
    prompts = [rollout.chat_prompt(tok, p) for p in PROMPTS[:3]]
    refreshed = rollout.generate(sampler, tok, prompts, max_new_tokens=16, temperature=0)
    fresh = rollout.generate(sqlm.bf16_copy(model), tok, prompts, max_new_tokens=16, temperature=0)
    assert [s.completion_ids for s in refreshed] == [s.completion_ids for s in fresh]


def test_kl_reference_is_fp32_and_kl_is_zero_before_the_policy_moves(tiny_dir, tmp_path, monkeypatch):
    """test_runs.py::test_kl_reference_takes_the_dtype_the_memory_plan_chose and test_equations.py::
    test_kl_zero_when_policy_is_reference_and_positive_otherwise on the GPU, with the models
    harness.train builds there (its memory plan fits the tiny model's fp32 reference): policy fp32,
    reference fp32 with fp32 RoPE buffers and frozen, sampling copy bf16; under bf16 autocast the
    reference's log-probs equal the policy's bit for bit, so the KL term and its gradient are
    exactly 0 (docs/memory.md, "Precision": the logged KL "is exactly 0 until the policy moves"; a
    bf16 reference starts near 0.006 per token)."""
    class Stop(Exception):
        pass

    def train(cfg, models, tokenizer, *rest):
        seen.update(cfg=cfg, model=models.policy, sampler=models.sampler, ref=models.reference, tok=tokenizer)
        raise Stop
    seen = {}
    monkeypatch.setattr(sqlm, "train", train)
    with pytest.raises(Stop):
        harness.train(sqlm.Config(task="arith", model=tiny_dir, device="cuda", kl=0.001, out=str(tmp_path / "run")))
    model, ref, sampler, cfg = seen["model"], seen["ref"], seen["sampler"], seen["cfg"]
    assert {(p.dtype, p.device.type) for p in model.parameters()} == {(torch.float32, "cuda")}
    assert {(p.dtype, p.device.type, p.requires_grad) for p in ref.parameters()} == {(torch.float32, "cuda", False)}
    assert {b.dtype for b in ref.buffers()} == {torch.float32}
    assert {(p.dtype, p.device.type) for p in sampler.parameters()} == {(torch.bfloat16, "cuda")}
    seqs = sampled_seqs(sampler, seen["tok"], [0.0] * 6)
    sqlm.prepare(model, ref, seqs, cfg, CUDA, parallel.ONE)
    assert all(torch.equal(s.old_logp, s.ref_logp) for s in seqs)
    model.train().zero_grad()
    stats = sqlm.accumulate_gradients(model, ref, seqs, cfg, CUDA, parallel.ONE)
    assert stats["kl"] == 0.0
    assert grads(model).abs().max().item() == 0.0


def test_gradient_checkpointing_gives_the_same_gradient_under_autocast(tiny_dir):
    """test_update.py::test_gradient_checkpointing_changes_no_gradient on the GPU under bf16
    autocast: with --grad-checkpointing the gradient is the one without, within the spread of two
    runs without it (CUDA's atomic adds order sums differently from run to run) or 1e-3 of its norm,
    whichever is larger."""
    model, sampler, tok = bf16_sampler(tiny_dir)
    seqs = sampled_seqs(sampler, tok, [1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    cfg = sqlm.Config(kl=0, microbatch=4)
    sqlm.prepare(model, None, seqs, cfg, CUDA, parallel.ONE)
    runs = []
    for checkpointing in (False, False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train().zero_grad()
        sqlm.accumulate_gradients(model, None, seqs, cfg, CUDA, parallel.ONE)
        runs.append(grads(model))
    plain, again, checkpointed = runs
    assert plain.norm() > 0
    spread = ((plain - again).norm() / plain.norm()).item()
    error = ((plain - checkpointed).norm() / plain.norm()).item()
    assert error <= max(10 * spread, 1e-3), f"checkpointing moved the gradient by {error:.2e} (spread {spread:.2e})"


def test_a_checkpoint_written_on_the_gpu_loads_with_from_pretrained_on_the_cpu(tiny_dir, tmp_path):
    """test_runs.py::test_main_writes_metrics_samples_and_loadable_checkpoint with --device cuda:
    the step's checkpoint holds the fp32 trained weights (not the bf16 sampling copy), moved by the
    update, and loads on the CPU with from_pretrained, as does its trainer state (AdamW moments
    saved from the card)."""
    run = tmp_path / "run"
    assert harness.main(["--task", "arith", "--model", tiny_dir, "--steps", "1", "--out", str(run), "--device", "cuda",
                      "--batch", "2", "--n", "2", "--minibatch", "1", "--max-response", "8", "--eval-every", "0",
                      "--proposer-every", "1", "--lr", "1e-3"]) == 0
    checkpoint = run / "step-000001"
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"F32"}
    saved = AutoModelForCausalLM.from_pretrained(checkpoint)
    initial = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert {(p.device.type, p.dtype) for p in saved.parameters()} == {("cpu", torch.float32)}
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(saved.parameters(), initial.parameters()))
    state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
    moments = [t for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    assert moments and all(t.device.type == "cpu" for t in moments)
    model, tok = rollout.load(checkpoint, device="cpu")
    assert rollout.generate(model, tok, [rollout.chat_prompt(tok, "hi")], max_new_tokens=4, temperature=0)
    assert [m["step"] for m in jsonl(run / "metrics.jsonl")] == [0]
    assert not any(name.endswith(".tmp") for name in os.listdir(run))
