"""memory.memory_plan against allocations measured on CPU, and fit_memory's choice.

torch's profiler reports every CPU tensor allocation and free with the allocator's running total;
its maximum over a region, less the total at the start, is the region's peak. That is measured here
for the phases a CPU can run: generate (KV cache, sampling buffers), the no-grad log-prob pass and
the update's forward + backward, in fp32 (sqlm's CPU path) and under CPU bf16 autocast (the GPU
path's dtypes). What a CPU cannot show: CUDA kernels' workspaces, the CUDA context, fragmentation.
"""
import json
import tempfile

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen2Config, Qwen2ForCausalLM

import memory
import rollout
import tiny


def peak_allocated(fn):
    """Peak bytes of CPU tensors allocated by fn() beyond what was allocated when it started."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))["traceEvents"]
    memory = [e["args"] for e in trace if e.get("name") == "[memory]"]
    start = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(m["Total Allocated"] for m in memory) - start


def small_model(hidden=64, inter=256, layers=2, kv_heads=2, vocab=1024):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=kv_heads, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).train()


def test_peak_allocated_measures_a_known_peak():
    """The instrument first: 4 MB, then 8 MB more, then 4 MB freed and 2 MB allocated: the peak
    is 12 MB."""
    def job():
        a = torch.ones(1000, 1000)
        b = torch.ones(2000, 1000)
        del a
        c = torch.ones(500, 1000)
        return b, c
    assert peak_allocated(job) == 12_000_000


def test_parameter_count_is_the_models():
    """Tied and untied heads, and Qwen2.5-3B's published sizes: 3.09B, 2.77B without embeddings."""
    for tied in (True, False):
        config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=80,
                             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=tied)
        weights = sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())
        assert memory.parameter_count(config) == weights
    config = tiny.shape_config("qwen2.5-3b")
    total = memory.parameter_count(config)
    embeddings = config.vocab_size * config.hidden_size
    assert round(total / 1e9, 2) == 3.09 and round((total - embeddings) / 1e9, 2) == 2.77


def training_peak(model, microbatch, prompt, completion, grad, autocast):
    """Measured peak of token_logprobs on a random micro-batch: forward + backward, or forward."""
    vocab = model.config.vocab_size
    ids = torch.randint(vocab, (microbatch, prompt + completion),
                        generator=torch.Generator().manual_seed(0))
    attn, comp = torch.ones_like(ids), torch.zeros_like(ids)
    comp[:, prompt:] = 1

    def job():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
                torch.set_grad_enabled(grad):
            logp = rollout.token_logprobs(model, ids, attn, comp)
        if grad:
            logp.sum().backward()
    job()  # warm-up: lazily built buffers (RoPE tables) are not part of a step
    peak = peak_allocated(job)
    model.zero_grad(set_to_none=True)
    return peak


SHAPES = [dict(), dict(layers=4), dict(inter=768), dict(hidden=128, kv_heads=4), dict(vocab=4096)]
# predicted / measured peak: never more than 10% under (fit_memory keeps 10% of the card for what
# the plan leaves out), at most 30% over (the card would be wasted). Over 10 runs on 2 x86-64 cores
# (1 and 2 threads, load 7-14) these cases measured 0.94-1.20; most repeat exactly, the update's
# peak moves by up to 0.06 with the order in which autograd frees (docs/memory.md).
BOUNDS = (0.90, 1.30)


def shape_id(shape):
    return ",".join(f"{k}={v}" for k, v in shape.items()) or "base"


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_update_and_logprob_peaks_are_predicted(shape):
    """Without checkpointing, the update's forward + backward (gradients, kept activations, lm-head
    chunk) and the no-grad log-prob pass, in fp32 and under bf16 autocast, are each predicted within
    BOUNDS."""
    model = small_model(**shape)
    for autocast in (False, True):
        plan = memory.memory_plan(model.config, rollout_rows=1, microbatch=4, max_prompt=48,
                                  max_response=80, kl=False, gpu=autocast)
        resident = plan["resident"]
        for grad, phase in ((True, "update"), (False, "logprobs")):
            measured = training_peak(model, 4, 48, 80, grad, autocast)
            ratio = (plan[f"{phase}_peak"] - resident) / measured
            assert BOUNDS[0] < ratio < BOUNDS[1], (phase, autocast, measured)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES[:3], ids=shape_id)
def test_checkpointed_update_peak_is_not_underestimated(shape):
    """With gradient checkpointing the plan errs on the safe side: never more than 10% under the
    measured peak and at most 35% over it (the recomputed layer and the lm-head chunk overlap less
    than it assumes)."""
    model = small_model(**shape)
    model.activation_checkpointing_enable()
    for autocast in (False, True):
        plan = memory.memory_plan(model.config, rollout_rows=1, microbatch=4, max_prompt=48,
                                  max_response=80, kl=False, gpu=autocast, grad_checkpointing=True)
        predicted = plan["update_peak"] - plan["resident"]
        ratio = predicted / training_peak(model, 4, 48, 80, True, autocast)
        assert 0.9 < ratio < 1.35, (autocast, ratio)


@pytest.mark.slow
@pytest.mark.parametrize("prompt_len,new,prompts,n",
                         [(300, 16, 2, 8), (200, 24, 4, 4), (16, 8, 16, 4)],
                         ids=["kv-cache", "prefill", "sampling-buffers"])  # what dominates a peak
def test_generate_peak_is_predicted(tiny_model, prompt_len, new, prompts, n):
    """generate's peak (prefill, the preallocated KV cache, the sampling buffers) is predicted
    within BOUNDS, in each of the three cases where a different one dominates. Guards: the prompt
    cache copied into the preallocated one through a repeated temporary (the KV-cache case then
    reads ~15% under)."""
    model, tok = tiny_model
    prompt_ids = [[5 + i] * prompt_len for i in range(prompts)]
    job = lambda: rollout.generate(model, tok, prompt_ids, n=n, max_new_tokens=new, seed=0,
                                   check_every=10**6)
    job()
    measured = peak_allocated(job)
    plan = memory.memory_plan(model.config, rollout_rows=prompts * n, microbatch=1,
                              max_prompt=prompt_len, max_response=new, n=n, kl=False, gpu=False)
    predicted = plan["rollout_peak"] - plan["weights"] - plan["adamw"]
    assert BOUNDS[0] < predicted / measured < BOUNDS[1]


def test_fit_memory_picks_the_largest_sizes_that_fit():
    """Each size is the largest power of two whose phases fit the card; doubling it would not;
    nothing fits a card smaller than the resident weights and optimizer state."""
    config = tiny.shape_config("qwen2.5-1.5b")
    settings = dict(max_prompt=512, max_response=1024, grad_checkpointing=True)
    card = 80e9
    rows, micro = memory.fit_memory(config, card, **settings)
    assert 1 < rows < 1024 and 1 < micro < 128

    def peak(r, m, phases):
        plan = memory.memory_plan(config, rollout_rows=r, microbatch=m, **settings)
        return max(plan[f"{p}_peak"] for p in phases)
    assert peak(rows, 1, ["rollout"]) <= 0.9 * card < peak(2 * rows, 1, ["rollout"])
    assert peak(1, micro, ["logprobs", "update", "optimizer"]) <= 0.9 * card
    assert 0.9 * card < peak(1, 2 * micro, ["update"])
    assert memory.fit_memory(config, 20e9, **settings) is None  # 18 bytes per weight alone is 28 GB


def test_the_paper_step_with_its_kl_term_fits_one_80_gb_card(monkeypatch, capsys):
    """Qwen2.5-3B at the paper's shape with KL 0.001 on one 80 GB card: the sampling copy is freed
    during the update, and where the fp32 reference still leaves no room the reference is kept in
    bf16, said in the one memory-plan line. A 141 GB card keeps the fp32 reference and says nothing
    of it. Guards: the bf16 fallback taken where fp32 fits, or never taken."""
    import harness
    import sqlm
    config = tiny.shape_config("qwen2.5-3b")
    for card, dtype in ((80e9, torch.bfloat16), (141e9, torch.float32)):
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device: type("P", (), {"total_memory": card}))
        cfg = sqlm.Config(task="arith").resolve()
        assert harness.fit_to_memory(cfg, config, torch.device("cuda")) == dtype
        line = capsys.readouterr().out
        assert line.startswith(f"memory plan: --rollout-rows {cfg.rollout_rows} --microbatch "
                               f"{cfg.microbatch}")
        assert ("kept in bf16" in line) == (dtype == torch.bfloat16)
        plan = memory.memory_plan(config, rollout_rows=cfg.rollout_rows, microbatch=cfg.microbatch,
                                  max_prompt=512, max_response=1024,
                                  kl_bytes=2 if dtype == torch.bfloat16 else 4)
        assert plan["peak"] <= 0.9 * card
    kept = memory.memory_plan(config, rollout_rows=256, microbatch=1, max_prompt=512,
                              max_response=1024)
    assert kept["update_peak"] > 0.9 * 80e9 or kept["optimizer_peak"] > 0.9 * 80e9  # fp32: no fit


def test_the_sharded_plan_divides_what_fsdp_shards():
    """Per process on N: weights, AdamW moments and the KL reference divided by N, the sampling copy
    whole; one process's plan is unchanged by the world argument."""
    config = tiny.shape_config("qwen2.5-3b")
    settings = dict(rollout_rows=64, microbatch=2, max_prompt=512, max_response=1024)
    one = memory.memory_plan(config, **settings)
    four = memory.memory_plan(config, world=4, **settings)
    assert one == memory.memory_plan(config, world=1, **settings)
    for key in ("weights", "adamw", "kl_reference", "grads"):
        assert four[key] == pytest.approx(one[key] / 4)
    assert four["sampler_copy"] == one["sampler_copy"] == 2 * memory.parameter_count(config)
    assert four["update_peak"] < one["update_peak"]
    assert four["optimizer_peak"] < one["optimizer_peak"]
