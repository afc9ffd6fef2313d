"""Throughput benchmarks; each prints one JSON line (machine included) to stdout, but `memory`,
which prints a table (`--json`: its JSON line).

    python bench.py rollout  [--model tiny|qwen2.5-3b|DIR --prompts 8 --n 4 --new 128 --repeat 3]
    python bench.py update   [--model tiny|qwen2.5-3b|DIR --seqs 16 --prompt 64 --len 256]
    python bench.py decode   [--model tiny|qwen2.5-3b|DIR --batches 64,256,1024 --new 256]
    python bench.py memory   [--model qwen2.5-0.5b,qwen2.5-7b --cards 24,40,80,141 --gpus 1,2,4,8]
    python bench.py sandbox  [--programs 40 --tests 5 --repeat 3]
    python bench.py parallel [--model tiny|DIR --processes 2 --steps 4 --repeat 3]
    python bench.py gpu      [--out runs/gpu-check --budget-s 360 --parts env,step,decode]

`gpu` is the one-call check of the CUDA path (docs/gpu.md): a JSON line per part, appended to
OUT/results.jsonl as each finishes; `gpu --device cpu --model tiny` is its dry run (a test).

Goals (not asserted in tests): `generate` no slower than Hugging Face `generate` on the
same job, and faster when `n > 1` shares a prompt or rows finish at different times;
chunked `token_logprobs` equal to the full-vocabulary reference and no slower, with far
less peak memory at a real vocabulary (151,936). On a GPU (`decode`, 3B shape, batch 256): at
least 3x Hugging Face `generate` and half the memory-bandwidth roofline. `memory` prints
`memory.memory_plan`'s predictions (arithmetic, nothing is run).
"""
import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from xml.etree import ElementTree

if __name__ == "__main__":  # Ctrl-C or SIGTERM while torch loads: one line, no traceback
    import cli
    cli.exit_on_signals("bench.py: interrupted while starting; nothing was written")

import torch
import torch.nn.functional as F
from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                   register_optimizer_step_pre_hook)

import cli
import memory
import parallel
import prompts
import rollout
import sandbox
import sqlm
import tiny


def machine():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} cpu x{torch.get_num_threads()} threads"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def get_model(name, device, dtype):
    """A local directory, the tiny model, or random weights in a real Qwen2.5 shape."""
    if name == "tiny":
        with tempfile.TemporaryDirectory() as scratch:  # loaded into memory: nothing left on disk
            return rollout.load(tiny.make(scratch), device=device, dtype=dtype)
    if name in tiny.QWEN25_SHAPES:
        return tiny.random_real(name, device=device, dtype=dtype)
    return rollout.load(name, device=device, dtype=dtype)


def make_prompts(tokenizer, count):
    """`count` real SQLM solver prompts (arith products), the workload the sampler serves most."""
    rng = random.Random(0)
    return [rollout.chat_prompt(tokenizer, prompts.solver_prompt(
        "arith", f"What is {rng.randint(1, 999)} * {rng.randint(1, 999)}?")) for _ in range(count)]


def interleaved(jobs, repeat, device):
    """Median tokens/s of each job over `repeat` runs after one warm-up each, and its total tokens.

    The jobs take turns (ours, theirs, theirs, ours, ...), so a load change on a shared machine
    hits both sides alike instead of whichever happened to run second.
    """
    for fn in jobs.values():
        fn()
    runs = {name: [] for name in jobs}
    for r in range(repeat):
        for name in (list(jobs) if r % 2 == 0 else list(jobs)[::-1]):
            sync(device)
            start = time.perf_counter()
            count = jobs[name]()
            sync(device)
            runs[name].append((count, time.perf_counter() - start))
    rates = {name: round(statistics.median(c / s for c, s in v), 1) for name, v in runs.items()}
    return rates, {name: sum(c for c, _ in v) for name, v in runs.items()}


# --- rollout: ours vs Hugging Face generate ------------------------------------------

def hf_generate(model, tokenizer, prompt_ids, n, new, temperature, top_p):
    """The same job through model.generate; returns the number of generated tokens (to eos)."""
    ids, mask, _ = rollout.left_pad(prompt_ids, tokenizer.pad_token_id, model.device)
    sampling = (dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature
                else dict(do_sample=False))
    stop_ids = rollout.stop_token_ids(model, tokenizer)
    # the identical job: our stop tokens, and none of the processors that a model's
    # generation_config.json may switch on (Qwen2.5-Instruct's: repetition_penalty 1.05, top_k 20,
    # top_p 0.8)
    neutral = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, min_p=None, typical_p=1.0,
                   min_new_tokens=0)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                         num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=stop_ids, **neutral, **sampling)[:, ids.shape[1]:]
    stops = torch.tensor(stop_ids, device=out.device)
    is_stop = torch.isin(out, stops).int()
    # tokens up to and including the first stop token (HF pads finished rows after it)
    return int(((is_stop.cumsum(1) - is_stop) == 0).sum()), out


def greedy_agreement(model, tokenizer, prompt_ids, new):
    """Ours and Hugging Face `generate`, greedy, on the same rows: whether every row agrees token
    for token, and the share of tokens before each row's first difference (under bf16 a near-tie
    can part them)."""
    ours = rollout.generate(model, tokenizer, prompt_ids, max_new_tokens=new, temperature=0)
    _, ref = hf_generate(model, tokenizer, prompt_ids, 1, new, 0, 1.0)
    agreed = []
    for s, theirs in zip(ours, ref.tolist()):
        same = [a == b for a, b in zip(s.completion_ids, theirs)] + [False]
        agreed.append(same.index(False))
    total = sum(len(s.completion_ids) for s in ours)
    return {"greedy_agrees_with_hf": all(n == len(s.completion_ids) for n, s in zip(agreed, ours)),
            "greedy_tokens_agreeing": round(sum(agreed) / total, 3)}


def bench_rollout(a):
    device = cli.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = get_model(a.model, device, dtype)
    prompt_ids = make_prompts(tokenizer, a.prompts)

    agreement = greedy_agreement(model, tokenizer, prompt_ids[:4], min(32, a.new))  # correct first
    try:
        rollout.check_plain_head(model)
        trains = True
    except ValueError as e:  # served, but not trained: why, in the row
        trains = str(e)

    def ours():
        return sum(len(s.completion_ids) for s in rollout.generate(
            model, tokenizer, prompt_ids, n=a.n, max_new_tokens=a.new, temperature=a.temperature,
            top_p=a.top_p, seed=0))

    def hf():
        return hf_generate(model, tokenizer, prompt_ids, a.n, a.new, a.temperature, a.top_p)[0]

    rates, tokens = interleaved({"ours": ours, "hf": hf}, a.repeat, device)
    return {"bench": "rollout", "model": a.model, "device": machine(),
            "dtype": str(dtype).split(".")[-1], "prompts": a.prompts, "n": a.n, "repeat": a.repeat,
            "prompt_tokens": len(prompt_ids[0]), "max_new_tokens": a.new, **agreement,
            "trains": trains,
            "ours_tokens_per_s": rates["ours"], "hf_tokens_per_s": rates["hf"],
            "speedup": round(rates["ours"] / rates["hf"], 2), "ours_tokens": tokens["ours"],
            "hf_tokens": tokens["hf"]}


# --- update: chunked log-probs vs full-vocabulary logits, then one policy update ----------

def full_vocab_logprobs(model, ids, attn, comp):
    """The plain reference: (B, T, V) fp32 logits (lm-head in fp32, as ours), log_softmax over the
    whole vocabulary, gather."""
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    hidden = decoder(input_ids=ids, attention_mask=attn, position_ids=positions).last_hidden_state
    with torch.autocast(ids.device.type, enabled=False):
        logits = F.linear(hidden.float(), head.weight.float())
        logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return F.pad(logp, (1, 0)) * comp


def bench_update(a):
    """Training-side throughput: the loss's log-probs (ours vs full vocabulary) and one update step.

    Random token sequences (the cost does not depend on the text): `seqs` rows of `prompt`
    prompt and `len` completion tokens. fp32 weights; on GPU under bf16 autocast, as sqlm.py trains.
    """
    device = cli.device(a.device)
    model, tokenizer = get_model(a.model, device, torch.float32)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    pairs = [(torch.randint(vocab, (a.prompt,), generator=gen).tolist(),
              torch.randint(vocab, (a.len,), generator=gen).tolist()) for _ in range(a.seqs)]
    ids, attn, comp = rollout.pack(pairs, tokenizer.pad_token_id, device)
    tokens = int(comp.sum())
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        with rollout.autocast(device):
            logp = fn(model, ids, attn, comp)
        (-(logp.sum() / tokens)).backward()
        return logp.detach(), torch.cat([p.grad.flatten() for p in params])

    return {"bench": "update", "model": a.model, "device": machine(), "vocab": vocab,
            "weights": "fp32" + (" + bf16 autocast" if device.type == "cuda" else ""),
            "seqs": a.seqs, "prompt_tokens": a.prompt, "completion_tokens": a.len,
            "repeat": a.repeat, **compare_logprobs(model, loss_and_grads, tokens, a.repeat, device),
            **time_policy_update(model, params, pairs, tokens, a, device, gen)}


def compare_logprobs(model, loss_and_grads, tokens, repeat, device):
    """Ours (chunked `token_logprobs`) against the full-vocabulary reference on one batch: the
    largest log-prob and relative gradient differences, checked before anything is timed; then
    tokens/s of each one's forward + backward (`loss_and_grads(fn)`), interleaved, and its peak
    GPU memory."""
    ours_logp, ours_grad = loss_and_grads(rollout.token_logprobs)
    full_logp, full_grad = loss_and_grads(full_vocab_logprobs)
    logp_err = (ours_logp - full_logp).abs().max().item()
    grad_err = ((ours_grad - full_grad).abs().max() / full_grad.abs().max()).item()
    del ours_grad, full_grad

    def peak_gib(fn):
        """Peak GPU memory of one forward + backward, in GiB (None on CPU)."""
        if device.type != "cuda":
            return None
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        loss_and_grads(fn)
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)

    fns = {"ours": rollout.token_logprobs, "full": full_vocab_logprobs}
    jobs = {name: lambda fn=fn: loss_and_grads(fn) and tokens for name, fn in fns.items()}
    rates, _ = interleaved(jobs, repeat, device)
    peaks = {name: peak_gib(fn) for name, fn in fns.items()}
    model.zero_grad(set_to_none=True)
    return {"max_abs_logp_diff": logp_err, "max_rel_grad_diff": grad_err,
            "ours_tokens_per_s": rates["ours"], "full_vocab_tokens_per_s": rates["full"],
            "speedup": round(rates["ours"] / rates["full"], 2), "ours_peak_gib": peaks["ours"],
            "full_vocab_peak_gib": peaks["full"]}


def time_policy_update(model, params, pairs, tokens, a, device, gen):
    """One whole policy update as sqlm.py runs it, timed: old and reference log-probs (prepare),
    then one mini-batch of all rows in micro-batches of --microbatch, clipped loss + k3 KL, grad
    clip, AdamW; random advantages drawn from `gen`."""
    cfg = sqlm.Config(minibatch=a.seqs, microbatch=a.microbatch, n=1)
    ref = copy.deepcopy(model).requires_grad_(False)  # fp32, as sqlm.py keeps the KL reference
    adv = torch.randn(a.seqs, generator=gen).tolist()
    seqs = [sqlm.Seq(p, c, adv[i], group=0) for i, (p, c) in enumerate(pairs)]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    world = parallel.World(device=device)  # this process alone
    sync(device)
    t0 = time.perf_counter()
    sqlm.prepare(model, ref, seqs, cfg, device, world)
    sync(device)
    t1 = time.perf_counter()
    sqlm.policy_update(model, ref, optimizer, seqs, cfg, device, world)
    sync(device)
    t2 = time.perf_counter()
    return {"update_microbatch": a.microbatch, "prepare_s": round(t1 - t0, 2),
            "update_s": round(t2 - t1, 2), "update_tokens_per_s": round(tokens / (t2 - t0), 1)}


# --- decode: tokens per second and achieved bandwidth at large batches ------------------

def copy_bandwidth(device, gib):
    """Bytes read + written per second by one large tensor copy: the card's practical bandwidth."""
    src = torch.empty(int(gib * 2**30) // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    sync(device)
    return 2 * 5 * src.numel() * src.element_size() / (time.perf_counter() - start)


def bench_decode(a, result=None):
    """Ours vs Hugging Face generate at each batch size (one prompt per row, n=1, temperature 1),
    and our decode's achieved bandwidth: (weight bytes + KV bytes read) per decode step / step time,
    against the measured copy bandwidth. Rows of random weights rarely stop, so every row is
    assumed to run all steps. `result` (a dict) is filled as each figure is measured, so a caller
    cut short keeps what was done."""
    result = {} if result is None else result
    device = cli.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = get_model(a.model, device, dtype)
    config = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_width = memory.attention_widths(config)[1]
    kv_bytes_per_token = config.num_hidden_layers * 2 * kv_width * torch.finfo(dtype).bits // 8
    vocab = config.vocab_size
    prompt = lambda batch: [[(7 * i + j) % (vocab - 10) + 5 for j in range(a.prompt)]
                            for i in range(batch)]
    rows = []
    result.update({"bench": "decode", "model": a.model, "device": machine(),
                   "dtype": str(dtype).split(".")[-1], "prompt_tokens": a.prompt,
                   "max_new_tokens": a.new, "repeat": a.repeat,
                   **greedy_agreement(model, tokenizer, prompt(4), min(16, a.new)),
                   "weight_gb": float(f"{weight_bytes / 1e9:.3g}"), "rows": rows})
    bandwidth = copy_bandwidth(device, gib=1.0 if device.type == "cuda" else 0.125)
    result["copy_gb_per_s"] = round(bandwidth / 1e9, 1)
    for batch in a.batches:
        prompts_ = prompt(batch)
        jobs = {"ours": lambda: sum(len(s.completion_ids) for s in rollout.generate(
                    model, tokenizer, prompts_, max_new_tokens=a.new, seed=0)),
                "hf": lambda: hf_generate(model, tokenizer, prompts_, 1, a.new, 1.0, 1.0)[0]}
        rates, _ = interleaved(jobs, a.repeat, device)
        step_s = batch / rates["ours"]  # seconds per decode step of the whole batch
        kv_read = batch * (a.prompt + a.new / 2) * kv_bytes_per_token  # mean over the steps
        achieved = (weight_bytes + kv_read) / step_s
        rows.append({"batch": batch, "ours_tokens_per_s": rates["ours"],
                     "hf_tokens_per_s": rates["hf"],
                     "speedup": round(rates["ours"] / rates["hf"], 2),
                     "ours_step_ms": round(1e3 * step_s, 2),
                     "achieved_gb_per_s": float(f"{achieved / 1e9:.3g}"),
                     "share_of_copy_bandwidth": float(f"{achieved / bandwidth:.3g}")})
    result["load"] = round(os.getloadavg()[0], 1)
    return result


# --- memory: the predicted plan per model and card ----------------------------------------

def model_config(name):
    if name in tiny.QWEN25_SHAPES:
        return tiny.shape_config(name)
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(tiny.make(tempfile.mkdtemp()) if name == "tiny" else name)


def bench_memory(a):
    """For each model, number of GPUs and card: the largest rollout rows and micro-batch per GPU
    that fit, without and with gradient checkpointing, and the planned peak per phase (GB) at those
    sizes; as a run does (harness.fit_to_memory), the KL reference in bf16 only where an fp32 one
    fits nothing. Predictions, not measurements. The step is the paper's: 64 x 4 proposals, 1,024
    solver rows, 32-group mini-batches."""
    settings = dict(max_prompt=a.max_prompt, max_response=a.max_response, n=a.n, kl=a.kl > 0,
                    fused_adamw=a.fused_adamw, chunk_tokens=a.chunk_tokens)
    rows = []
    for name in a.model.split(","):
        config = model_config(name)
        missing = [f for f in ("hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "num_key_value_heads", "vocab_size")
                   if not hasattr(config, f)]
        if missing:  # memory.py counts a Qwen2/Llama-style decoder from these
            raise BenchError(f"cannot plan {name}: memory.py reads a Qwen2/Llama-style config and "
                             f"its {config.model_type} config has no {', '.join(missing)}")
        for gpus in a.gpus:
            sizes = dict(max_rows=-(-64 * a.n * a.n // gpus), max_microbatch=-(-32 * a.n // gpus),
                         world=gpus)
            for card in a.cards:
                row = {"model": name, "gpus": gpus, "card_gb": card,
                       "params_b": round(memory.parameter_count(config) / 1e9, 2)}
                for checkpointing in (False, True):
                    row["checkpointing" if checkpointing else "plain"] = fitted_plan(
                        config, card, sizes, settings, checkpointing)
                rows.append(row)
    return {"bench": "memory", "predicted_not_measured": True, **settings, "rows": rows}


def memory_table(result):
    """bench_memory's result as a table: a row per model, GPU count and card; each plan as rollout
    rows / micro-batch per GPU and its largest planned peak, without and with checkpointing."""
    def plan(p):
        if p is None:
            return "no", "-"
        peak = max((k for k in p if k.endswith("_peak")), key=p.get)
        ref = " (bf16 ref)" if p.get("kl_reference") == "bf16" else ""
        return f"{p['rollout_rows']}/{p['microbatch']}{ref}", f"{p[peak]} {peak[:-5]}"
    header = ("model", "params", "GPUs", "card GB", "rows/micro", "peak GB (phase)",
              "checkpointing: rows/micro", "peak GB (phase)")
    lines = [header] + [(r["model"], f"{r['params_b']}B", str(r["gpus"]), f"{r['card_gb']:g}",
                         *plan(r["plain"]), *plan(r["checkpointing"])) for r in result["rows"]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    on = {True: "on", False: "off"}
    settings = (f"prompt {result['max_prompt']} + response {result['max_response']}, "
                f"n {result['n']}, KL reference {on[result['kl']]}, "
                f"chunk {result['chunk_tokens']}, fused AdamW {on[result['fused_adamw']]}")
    return "\n".join([f"predicted, not measured ({settings}); per GPU; no: nothing fits"] +
                     ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                                for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
                      for line in lines])


def fitted_plan(config, card, sizes, settings, checkpointing):
    """The rollout rows and micro-batch fit_memory picks for a card of `card` GB, and the planned
    peaks (GB) at those sizes; the KL reference in bf16 only where an fp32 one fits nothing (as
    harness.fit_to_memory does), said in the row. None where nothing fits."""
    for kl_bytes in (4, 2) if settings["kl"] else (4,):
        fit = memory.fit_memory(config, card * 1e9, grad_checkpointing=checkpointing,
                                kl_bytes=kl_bytes, **sizes, **settings)
        if fit:
            break
    if not fit:
        return None
    plan = memory.memory_plan(config, rollout_rows=fit[0], microbatch=fit[1], world=sizes["world"],
                              grad_checkpointing=checkpointing, kl_bytes=kl_bytes, **settings)
    return {"rollout_rows": fit[0], "microbatch": fit[1],
            **({"kl_reference": "bf16"} if kl_bytes == 2 else {}),
            **{k: round(v / 1e9, 1) for k, v in plan.items() if k.endswith("_peak")}}


# --- parallel: one training run on one process and on N (torchrun) ------------------------

class BenchError(Exception):
    """A benchmark whose job failed or whose correctness check did not hold: one line, exit 2."""


def sqlm_run(args, processes, out):
    """`python sqlm.py ARGS` or its torchrun launch on `processes`; (wall seconds, per-step seconds
    after the first, from metrics.jsonl, samples.jsonl's records)."""
    here = os.path.dirname(os.path.abspath(__file__))
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             str(processes), os.path.join(here, "sqlm.py"), "--"] if processes > 1
            else [sys.executable, os.path.join(here, "sqlm.py")])
    started = time.perf_counter()
    done = subprocess.run(head + args + ["--out", out], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise BenchError(f"sqlm.py on {processes} process(es) failed: "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        steps = [m for m in map(json.loads, f) if "t_update" in m][1:]
    with open(os.path.join(out, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    phases = ("t_propose", "t_solve", "t_rewards", "t_update")
    return wall, statistics.mean(sum(m[k] for k in phases) for m in steps), samples


def bench_parallel(a):
    """The same training run on one process and on --processes under torchrun (gloo on CPU, NCCL on
    GPUs): seconds per step after the first, and the whole command's wall time, interleaved --repeat
    times. Checked: both runs sample the same first step (every record of step 0 equal; later steps
    draw from weights that agree to float rounding, so a near-tie token can flip and the share of
    equal records is reported). On CPU the processes share the cores, so the one-process run is
    timed at --threads 1 (the same per-process setting) and at --threads P (all the cores)."""
    processes, cpu = a.processes, cli.device(a.device).type == "cpu"
    with tempfile.TemporaryDirectory() as scratch:
        model = a.model
        if model == "tiny":  # format-pre-trained, so proposals are valid and answers parse
            model = tiny.make(os.path.join(scratch, "tiny"), seed=0)
            tiny.pretrain(model, steps=a.pretrain, log_every=0)
        job = ["--task", "arith", "--model", model, "--steps", str(a.steps),
               "--batch", str(a.batch), "--n", str(a.n), "--minibatch", str(a.minibatch),
               "--microbatch", str(a.microbatch), "--max-response", str(a.max_response),
               "--proposer-every", "1", "--eval-every", "0", "--save-every", "0",
               *(["--device", a.device] if a.device else [])]
        ways = ([("1 process, 1 thread", 1, 1), (f"1 process, {processes} threads", 1, processes),
                 (f"{processes} processes, 1 thread each", processes, 1)] if cpu else
                [("1 process", 1, 0), (f"{processes} processes", processes, 0)])
        times = {name: [] for name, _, _ in ways}
        samples = {}
        for r in range(a.repeat):
            for name, count, threads in ways:
                out = os.path.join(scratch, f"run-{r}-{len(times[name])}-{count}-{threads}")
                wall, step, samples[name] = sqlm_run(job + ["--threads", str(threads)], count, out)
                times[name].append((step, wall))
        first, last = ways[0][0], ways[-1][0]
        pairs = list(zip(samples[first], samples[last]))
        if len(samples[first]) != len(samples[last]) or any(a != b for a, b in pairs
                                                            if a["step"] == 0):
            raise BenchError(f"{last} sampled another first step than {first}: not the same run")
        later = [a == b for a, b in pairs if a["step"] > 0]
        rows = [{"way": name, "step_s": round(statistics.median(s for s, _ in t), 3),
                 "step_s_range": [round(min(s for s, _ in t), 3), round(max(s for s, _ in t), 3)],
                 "wall_s": round(statistics.median(w for _, w in t), 1)}
                for name, t in times.items()]
    return {"bench": "parallel", "machine": machine(), "load": os.getloadavg(),
            "same_first_step": True,
            "later_records_equal": round(sum(later) / len(later), 3) if later else None,
            "job": job[:2] + job[4:], "rows": rows}


# --- sandbox: the pool vs one plain subprocess at a time ----------------------------

# (program, reference answer for an input of integers); each reads one line of integers
KINDS = [
    ("print(sum(map(int, input().split())))", lambda xs: str(sum(xs))),
    ("print(*sorted(map(int, input().split())))", lambda xs: " ".join(map(str, sorted(xs)))),
    ("xs = list(map(int, input().split()))\nprint(max(xs) - min(xs))",
     lambda xs: str(max(xs) - min(xs))),
    ("from collections import Counter\nprint(Counter(input().split()).most_common(1)[0][1])",
     lambda xs: str(max(xs.count(x) for x in xs))),
]


def make_jobs(programs, tests):
    """`programs` x `tests` (code, stdin, expected) triples; every fifth program is wrong."""
    rng = random.Random(0)
    jobs = []
    for p in range(programs):
        code, answer = KINDS[p % len(KINDS)]
        if p % 5 == 4:
            code += "\nprint(0)"  # a wrong program: extra output fails every test
        for _ in range(tests):
            xs = [rng.randint(-50, 50) for _ in range(rng.randint(1, 20))]
            jobs.append((code, " ".join(map(str, xs)), answer(xs)))
    return jobs


def plain_subprocess(python, code, stdin, timeout):
    """The fair baseline: the sandbox's own interpreter with the same flags (-I -S), unsandboxed."""
    try:
        r = subprocess.run([python, "-I", "-S", "-c", code], input=stdin, capture_output=True,
                           text=True, timeout=timeout, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return False, ""
    return r.returncode == 0, r.stdout


def bench_sandbox(args):
    """Tests/s of four ways to run the same jobs, taking turns `--repeat` times after a warm-up:
    the sandbox and plain subprocess.run of the same interpreter and flags, each as a pool of one
    thread per core and one at a time. Medians and ranges; the per-test isolation cost from the
    serial pair."""
    jobs = make_jobs(args.programs, args.tests)
    timeout = 5.0
    iso = sandbox.isolation()  # probe before timing
    workers = os.cpu_count()
    expected = [p % 5 != 4 for p in range(args.programs) for _ in range(args.tests)]

    def passed(job, result):
        return result.status == "ok" and sandbox.same_output(result.stdout, job[2])

    def through_sandbox(workers):
        return sandbox.run_many(jobs, timeout=timeout, workers=workers, judge=passed)

    def plain(workers):
        def one(job):
            ok, out = plain_subprocess(iso.python, job[0], job[1], timeout)
            return ok and sandbox.same_output(out, job[2])
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, jobs))

    ways = {"sandbox_pool": lambda: through_sandbox(workers), "plain_pool": lambda: plain(workers),
            "sandbox_serial": lambda: through_sandbox(1), "plain_serial": lambda: plain(1)}
    load_before = os.getloadavg()[0]
    correct = all(fn() == expected for fn in ways.values())  # warm-up, and correctness first
    rates = {name: [] for name in ways}
    for r in range(args.repeat):
        for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            start = time.perf_counter()
            fn = ways[name]()
            rates[name].append(len(jobs) / (time.perf_counter() - start))
            correct = correct and fn == expected
    med = {name: statistics.median(v) for name, v in rates.items()}
    serial_cost = 1000 / med["sandbox_serial"] - 1000 / med["plain_serial"]  # ms per test
    return {"bench": "sandbox", "jobs": len(jobs), "programs": args.programs,
            "tests_per_program": args.tests, "repeat": args.repeat, "verdicts_correct": correct,
            **{f"{name}_tests_per_s": round(m, 1) for name, m in med.items()},
            **{f"{name}_range": [round(min(v), 1), round(max(v), 1)] for name, v in rates.items()},
            "pool_vs_plain_pool": round(med["sandbox_pool"] / med["plain_pool"], 2),
            "serial_cost_ms_per_test": round(serial_cost, 1),
            "workers": workers, "layers": list(iso.layers), "python": iso.python,
            "machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()} cpus, "
                       f"{platform.system()} {platform.release()}",
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


# --- gpu: the one-call check of the CUDA path (docs/gpu.md) ------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
GPU_PARTS = ("env", "cuda_tests", "step", "decode", "torchrun")  # step before decode (main use)
PART_CAP_S = {"cuda_tests": 120, "step": 240, "decode": 120}  # seconds a part may take at most
PART_MIN_S = {"cuda_tests": 20, "step": 60, "decode": 30}  # with less left a part is skipped
# Each part's sizes: on a GPU the (random weights in Qwen2.5-3B's shape); with
# `--model tiny` the dry run's.
GPU_SIZES = {"gpu": dict(batches=[64, 256], prompt=128, new=128, repeat=3,
                         step_batch=64, step_n=4, step_response=128, step_steps=1),
             "tiny": dict(batches=[2, 3], prompt=6, new=4, repeat=1,
                          step_batch=2, step_n=2, step_response=8, step_steps=1)}


class PartTimeout(BaseException):
    """A part ran past its share of --budget-s (raised by SIGALRM; a BaseException, so that no
    `except Exception` inside the part swallows it)."""


@contextlib.contextmanager
def time_limit(seconds):
    def expire(signum, frame):
        raise PartTimeout()
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def gb(nbytes):
    return round(nbytes / 1e9, 2)


def bench_gpu(a):
    """Each part of --parts in turn, one JSON line each, printed and appended to OUT/results.jsonl
    as it finishes. A part gets at most PART_CAP_S of what is left of --budget-s (SIGALRM cuts it;
    what it had measured stays in its line) and is skipped with less than PART_MIN_S left; a part
    that fails records its one-line error and the next one runs. Returns 0 if every part ran and
    held, else 1."""
    device = cli.device(a.device)
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot make --out {a.out}: {cli.os_reason(e)}") from None
    deadline = time.monotonic() + a.budget_s
    run = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # tells a rerun's lines apart
    # Where torch sees no GPU a real-shape check would grind on the CPU until the budget is spent:
    # only the environment is reported then (--device cpu asks for the CPU on purpose).
    no_gpu = a.device is None and device.type != "cuda"
    held = True
    for name in a.parts:
        left = deadline - time.monotonic()
        row = {"part": name, "run": run}
        print(f"bench.py gpu: {name} ({left:.0f} s of --budget-s left)", file=sys.stderr,
              flush=True)
        if no_gpu and name not in ("env", "torchrun"):
            row.update(ok=False, skipped="torch sees no CUDA device (the env line says why): "
                       "nothing to check; the dry run is --device cpu --model tiny")
        elif left <= PART_MIN_S.get(name, 0):
            row.update(ok=False, skipped=f"--budget-s: {max(left, 0):.0f} s left, the part needs "
                                         f"{PART_MIN_S.get(name, 0)} s")
        else:
            run_part(name, a, device, row, min(left, PART_CAP_S.get(name, left)))
        held = held and row["ok"]
        append_line(os.path.join(a.out, "results.jsonl"), json.dumps(row, default=str))
    return 0 if held else 1


def run_part(name, a, device, row, limit):
    """Part `name` of the GPU check, filling `row`, cut after `limit` seconds: ok, or its one-line
    error (a cut part keeps the fields it had measured), and the seconds it took."""
    parts = {"env": gpu_env, "cuda_tests": gpu_cuda_tests, "decode": gpu_decode, "step": gpu_step,
             "torchrun": gpu_torchrun}
    started = time.monotonic()
    try:
        with time_limit(limit):
            parts[name](a, device, row, limit)
        row["ok"] = row.get("ok", True)
    except PartTimeout:
        row.update(ok=False, error=f"cut by the time limit after {limit:.0f} s (the fields before "
                                   f"this one are what it had measured)")
    except Exception as e:  # the next part still runs
        row.update(ok=False, error=f"{type(e).__name__}: {cli.first_line(e, 300)}")
    row["seconds"] = round(time.monotonic() - started, 1)
    gc.collect()  # a part's models, before the next part allocates
    if device.type == "cuda":
        torch.cuda.empty_cache()


def append_line(path, line):
    """Print `line` and append it to `path`, synced: no line is lost if the process dies later."""
    print(line, flush=True)
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def gpu_env(a, device, row, limit):
    """What ran: Python, torch and its CUDA, the card, and each pin of requirements.txt against the
    version imported (the device machine may carry others)."""
    import transformers
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    try:
        torch.cuda.init()  # no GPU: why (no driver, a driver too old for this CUDA, ...)
        cuda_error = None
    except Exception as e:
        cuda_error = cli.first_line(e, 300)
    pins = pinned_versions()
    capability = ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None
    driver = command_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    row.update(device=machine() if not cuda else props.name,
               memory_gb=gb(props.total_memory) if cuda else None, capability=capability,
               multiprocessors=props.multi_processor_count if cuda else None,
               gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0, driver=driver,
               cuda_error=cuda_error, python=platform.python_version(), torch=torch.__version__,
               cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
               transformers_from=os.path.dirname(transformers.__file__),
               commit=command_output("git", "rev-parse", "HEAD"), pins=pins,
               differ_from_pins=[n for n, p in pins.items()
                                 if (p["ran"] or "").split("+")[0] != p["pinned"]])


def pinned_versions():
    """Each pin of requirements.txt against what ran: {package: {"pinned": version, "ran": the
    version imported or installed, or None}}."""
    import importlib.metadata
    import numpy
    import safetensors
    import tokenizers
    import transformers
    imported = {"torch": torch, "transformers": transformers, "tokenizers": tokenizers,
                "safetensors": safetensors, "numpy": numpy, "pytest": None}
    pins = {}
    with open(os.path.join(HERE, "requirements.txt")) as f:
        for line in f:
            name, sep, version = line.split("#")[0].strip().partition("==")
            if not sep:
                continue
            try:
                module = imported.get(name)
                ran = module.__version__ if module else importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                ran = None
            pins[name] = {"pinned": version, "ran": ran}
    return pins


def command_output(*command):
    """A command's stripped stdout, run in the repository; None if missing, silent or hanging."""
    try:
        return subprocess.run(command, cwd=HERE, capture_output=True, text=True,
                              timeout=20).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def junit_outcomes(path):
    """{test name: "passed" | "failed: first line" | "skipped: reason"} from pytest's JUnit XML."""
    outcomes = {}
    for case in ElementTree.parse(path).iter("testcase"):
        verdict = "passed"
        for child in case:
            text = (child.get("message") or child.text or "").strip()
            if child.tag in ("failure", "error"):
                verdict = "failed: " + ((text.splitlines() or [child.tag])[0])[:300]
                break
            if child.tag == "skipped":
                verdict = "skipped: " + text
        outcomes[case.get("name")] = verdict
    return outcomes


def gpu_cuda_tests(a, device, row, limit):
    """pytest on tests/test_cuda.py (`-m cuda`), in its own process: pass, fail or skip per test;
    the JUnit XML and pytest's output (tracebacks) beside the results. Off a GPU (the dry run) CUDA
    is hidden from it, so every test is skipped with its reason, whatever the machine has."""
    xml, log = (os.path.join(a.out, f"cuda_tests.{ext}") for ext in ("xml", "log"))
    env = dict(os.environ, **({} if device.type == "cuda" else {"CUDA_VISIBLE_DEVICES": ""}))
    command = [sys.executable, "-m", "pytest", os.path.join("tests", "test_cuda.py"), "-m", "cuda",
               "-rA", f"--junitxml={xml}"]
    try:
        done = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True,
                              timeout=max(limit - 5, 1))
    except subprocess.TimeoutExpired as e:  # keep what pytest printed: the tests that ran, in order
        with open(log, "wb") as f:
            f.write(b"".join(s.encode() if isinstance(s, str) else s or b""
                             for s in (e.stdout, e.stderr)))
        raise RuntimeError(f"pytest still running after {e.timeout:.0f} s; its output so far is "
                           f"in {log}") from None
    with open(log, "w") as f:
        f.write(done.stdout + done.stderr)
    tests = junit_outcomes(xml) if os.path.exists(xml) else {}
    counts = {kind: sum(v.startswith(kind) for v in tests.values())
              for kind in ("passed", "failed", "skipped")}
    row.update(pytest_exit=done.returncode, **counts, tests=tests, log=os.path.basename(log))
    if done.returncode or not tests:
        last = ((done.stdout + done.stderr).strip().splitlines() or ["no output"])[-1]
        row.update(ok=False, error=f"pytest exit {done.returncode}: {last[:300]}")


def gpu_decode(a, device, row, limit):
    """`bench_decode` at --batches (on a GPU: 64 and 256, 128 new tokens, bf16, 3B shape): greedy
    agreement with Hugging Face first, then tokens/s of both and our achieved bandwidth against a
    measured copy."""
    bench_decode(argparse.Namespace(model=a.model, device=str(device), batches=a.batches,
                                    prompt=a.prompt, new=a.new, repeat=a.repeat), result=row)
    row.pop("bench", None)


class PhaseMeter:
    """Seconds and peak allocated GPU memory of each phase of each step, measured around sqlm.py's
    own functions, wrapped from outside (nothing in sqlm.py or harness.py is changed), and around
    each AdamW step (PyTorch's global optimizer hooks). A phase's peak counts everything allocated
    then, resident weights included, as memory.memory_plan's `*_peak` do."""

    def __init__(self, device):
        self.device, self.cuda = device, device.type == "cuda"
        self.steps, self.roles, self.current = [], {}, None
        self.lengths = {"prompt": 0, "response": 0}  # the longest met, over all steps
        self.reserved = 0  # the most the caching allocator held from the card at any phase

    def peak(self):
        """Bytes allocated at most since the last call (None on CPU); the count then restarts."""
        if not self.cuda:
            return None
        torch.cuda.synchronize(self.device)
        top = torch.cuda.max_memory_allocated(self.device)
        self.reserved = max(self.reserved, torch.cuda.max_memory_reserved(self.device))
        torch.cuda.reset_peak_memory_stats(self.device)
        return top

    def add(self, phase, seconds, peak):
        entry = self.steps[-1].setdefault(phase, {"s": 0.0, "peak_gb": None})
        entry["s"] = round(entry["s"] + seconds, 2)
        if peak is not None:
            entry["peak_gb"] = max(entry["peak_gb"] or 0, gb(peak))

    def wrap(self, fn, phase):
        """fn measured as `phase` (a name, or a function of fn's arguments giving one)."""
        def measured(*args, **kwargs):
            name = phase(*args, **kwargs) if callable(phase) else phase
            if name == "propose":  # train_step's first call: a new step
                resident = gb(torch.cuda.memory_allocated(self.device)) if self.cuda else None
                self.steps.append({"resident_gb": resident})
            self.peak()  # what came before is not this phase's
            self.current, start = name, time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start, self.peak())
        return measured

    def before_optimizer(self, optimizer, args, kwargs):
        self.add(self.current, 0.0, self.peak())  # the forward and backward of the mini-batch
        self.optimizer_started = time.perf_counter()

    def after_optimizer(self, optimizer, args, kwargs):
        self.add("optimizer", time.perf_counter() - self.optimizer_started, self.peak())

    def released(self, fn):
        """release_sampler, with the bytes it gave back (the bf16 copy's weights, on a GPU)."""
        def release(*args, **kwargs):
            before = torch.cuda.memory_allocated(self.device) if self.cuda else None
            fn(*args, **kwargs)
            if self.cuda:
                after = torch.cuda.memory_allocated(self.device)
                self.steps[-1]["sampler_released_gb"] = gb(before - after)
        return release

    def role(self, model, ref_model, optimizer, seqs, *rest, **kwargs):
        return self.roles.get(id(seqs), "update")

    def prepared(self, model, ref_model, seqs, *rest, **kwargs):
        for s in seqs:
            self.lengths["prompt"] = max(self.lengths["prompt"], len(s.prompt_ids))
            self.lengths["response"] = max(self.lengths["response"], len(s.completion_ids))
        return "prepare"

    def to_sequences(self, fn):
        def split(*args, **kwargs):
            solver, proposer = fn(*args, **kwargs)
            self.roles = {id(solver): "solver_update", id(proposer): "proposer_update"}
            return solver, proposer
        return split


@contextlib.contextmanager
def patched(*changes):
    """Set (object, attribute, value) for the block; the old values come back after it."""
    old = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        for obj, name, value in changes:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(old):
            setattr(obj, name, value)


def gpu_step(a, device, row, limit):
    """sqlm.py's training run (harness.train, in this process) for --step-steps steps at the paper's
    batch shape (--step-batch prompts x --step-n proposals, --step-n answers each, mini-batch 32
    groups, a proposer update every step) with responses capped at --step-response tokens; random
    weights in the model's shape (no checkpoint is written: 3B with AdamW state is ~37 GB;
    tests/test_cuda.py writes a tiny one). Per step and phase: seconds and measured peak memory;
    what --fit-memory chose; memory_plan's prediction at the run's settings and at the longest
    prompt and response the step met; the last step's peaks against the latter (AdamW allocates
    its moments, 8 bytes per weight, at the run's first optimizer step, so the first step's rollout
    and log-prob phases are compared with the plan less them)."""
    import harness
    cuda = device.type == "cuda"
    meter, seen = PhaseMeter(device), {}
    with tempfile.TemporaryDirectory() as scratch:
        model = tiny.make(os.path.join(scratch, "tiny"), seed=0) if a.model == "tiny" else a.model
        cfg = sqlm.Config(task="arith", model=model, device=str(device), steps=a.step_steps,
                          batch=a.step_batch, n=a.step_n, minibatch=min(32, a.step_batch),
                          max_response=a.step_response, proposer_every=1, eval_every=0,
                          save_every=0, out=os.path.join(scratch, "run"))
        row.update(model=a.model, batch=cfg.batch, n=cfg.n, proposals=cfg.batch * cfg.n,
                   solver_samples=cfg.batch * cfg.n * cfg.n, minibatch=cfg.minibatch,
                   proposer_every=1, kl=cfg.kl, max_response=cfg.max_response,
                   response_cap=f"{cfg.max_response} tokens for both roles (the paper's arith "
                                f"limit is {prompts.MAX_RESPONSE['arith']}): a step that fits "
                                f"the time", ran=False)
        hooks = [register_optimizer_step_pre_hook(meter.before_optimizer),
                 register_optimizer_step_post_hook(meter.after_optimizer)]
        changes = step_patches(a.model, meter, seen)
        if a.model in tiny.QWEN25_SHAPES:
            row["text"] = ("a sampled id's text is that of id mod the byte tokenizer's size: the "
                           "shape's other ids have none, and empty proposals would be invalid, "
                           "leaving nothing to solve or train")
        row["steps"] = meter.steps  # filled as the steps run: a cut keeps the steps done
        try:
            with patched(*changes), contextlib.redirect_stdout(sys.stderr):  # run's lines: stderr
                harness.train(cfg)
        finally:
            for hook in hooks:
                hook.remove()
            add_step_metrics(os.path.join(scratch, "run", "metrics.jsonl"), meter.steps)
            if "config" in seen:  # also where the step failed: what was chosen and predicted
                row["fit_memory"] = fit_memory_choice(cfg, seen, device)
                row.update(predictions(cfg, seen, meter.lengths, cuda))
    if "solver_update" not in meter.steps[-1]:
        raise BenchError(f"the step trained nothing (valid_rate "
                         f"{meter.steps[-1].get('valid_rate')}): no update to measure")
    row["ran"] = True
    if not cuda:
        row["measured_gb"] = "not measured: no CUDA allocator on CPU"
        return
    row.update(measured_against_plan(meter.steps, row["plan_at_step_lengths_gb"]),
               reserved_gb=gb(meter.reserved))


def step_patches(model_name, meter, seen):
    """The (object, attribute, value) changes `patched` makes for the step: sqlm.py's phases wrapped
    by `meter`, no checkpoint written, harness.fit_to_memory recording into `seen` the model config
    and the KL reference's bytes it chose, and for a Qwen2.5 shape random weights instead of a
    checkpoint."""
    import harness
    real_fit = harness.fit_to_memory

    def fit_to_memory(cfg, model_config, device, world=1):
        kl_dtype = real_fit(cfg, model_config, device, world)
        seen.update(config=model_config, kl_bytes=torch.finfo(kl_dtype).bits // 8)
        return kl_dtype

    def load(name, device=None, dtype=None):  # a shape's random weights, not a checkpoint on disk
        model, tokenizer = tiny.random_real(model_name, device=device, dtype=dtype or torch.float32)
        # the shape's ids above the byte tokenizer's have no text: id mod its size
        byte_decode, known = tokenizer.decode, len(tokenizer)
        tokenizer.decode = lambda ids, **kw: byte_decode([i % known for i in ids], **kw)
        return model, tokenizer

    changes = [(harness, "fit_to_memory", fit_to_memory),
               (harness, "save_checkpoint", lambda *args, **kw: None),
               (sqlm, "propose", meter.wrap(sqlm.propose, "propose")),
               (sqlm, "solve", meter.wrap(sqlm.solve, "solve")),
               (sqlm, "to_sequences", meter.to_sequences(sqlm.to_sequences)),
               (sqlm, "release_sampler", meter.released(sqlm.release_sampler)),
               (sqlm, "prepare", meter.wrap(sqlm.prepare, meter.prepared)),
               (sqlm, "policy_update", meter.wrap(sqlm.policy_update, meter.role)),
               (sqlm, "refresh_sampler", meter.wrap(sqlm.refresh_sampler, "refresh"))]
    return changes + ([(rollout, "load", load)] if model_name in tiny.QWEN25_SHAPES else [])


def add_step_metrics(path, steps):
    """Each step's timings and figures from the run's metrics.jsonl (if written) into its phases."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        for m, phases in zip(map(json.loads, f), steps):
            times = {k: round(m[k], 2) for k in ("t_propose", "t_solve", "t_rewards", "t_update")}
            figures = {k: m.get(k) for k in ("valid_rate", "response_len", "solver_kl")}
            phases.update(times, **figures)


def fit_memory_choice(cfg, seen, device):
    """What --fit-memory chose on the card (rows, micro-batch, the KL reference's dtype), or why
    it chose nothing."""
    if device.type != "cuda" or not cfg.fit_memory:
        return "not applied: --fit-memory acts on a GPU only"
    return {"rollout_rows": cfg.rollout_rows, "microbatch": cfg.microbatch,
            "kl_reference": "bf16" if seen["kl_bytes"] == 2 else "fp32",
            "card_gb": gb(torch.cuda.get_device_properties(device).total_memory)}


def predictions(cfg, seen, lengths, gpu):
    """memory_plan's phases (GB) at the run's settings (what --fit-memory sized against) and, once
    the step has met its sequences, at the longest prompt and response it met."""
    plan = dict(rollout_rows=cfg.rollout_rows, microbatch=cfg.microbatch, n=cfg.n,
                kl=bool(cfg.kl_coef), grad_checkpointing=cfg.grad_checkpointing, gpu=gpu,
                kl_bytes=seen["kl_bytes"])
    out = {}
    at_step = dict(max_prompt=lengths["prompt"], max_response=lengths["response"])
    for key, sizes in (("plan_gb", dict(max_prompt=cfg.max_prompt, max_response=cfg.max_response)),
                       ("plan_at_step_lengths_gb", at_step)):
        if sizes["max_response"]:
            predicted = memory.memory_plan(seen["config"], **sizes, **plan)
            phases = ("rollout", "logprobs", "update", "optimizer")
            parts = ("resident", "adamw", "sampler_copy", "kv_cache", "activations")
            out[key] = ({p: gb(predicted[f"{p}_peak"]) for p in phases}
                        | {k: gb(predicted[k]) for k in parts} | sizes)
    return out


def measured_against_plan(steps, plan):
    """The last step's measured peak per memory_plan phase (GB), the plan's figure it is compared
    with, and their ratio. AdamW allocates its moments at the run's first optimizer step: in the
    first step the rollouts and log-probs run before it, so they are compared with the plan less
    the moments."""
    last = steps[-1]
    peak = lambda *names: max((last[n]["peak_gb"] for n in names
                               if last.get(n, {}).get("peak_gb") is not None), default=None)
    measured = {"rollout": peak("propose", "solve"), "logprobs": peak("prepare"),
                "update": peak("solver_update", "proposer_update"), "optimizer": peak("optimizer")}
    early = {"rollout", "logprobs"} if len(steps) == 1 else set()
    compared = {p: round(plan[p] - plan["adamw"], 2) if p in early else plan[p] for p in measured}
    return {"measured_gb": measured, "compared_with_gb": compared,
            "measured_over_plan": {p: round(m / compared[p], 2) for p, m in measured.items()
                                   if m and compared[p]},
            "adamw_moments_in": "the update and optimizer phases only" if early else "every phase"}


def gpu_torchrun(a, device, row, limit):
    """Said, not run: a 2-process torchrun step needs two GPUs."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    row.update(ran=False, gpus=gpus, reason=(
        "a 2-process torchrun step needs two GPUs: NCCL gives each process a device of its own, "
        "and two processes on one GPU would measure neither FSDP2's communication nor its memory "
        "per GPU; not run, nothing faked" if gpus < 2 else
        "this check runs on one GPU; for 2 processes run python bench.py parallel --processes 2"))


# --- CLI -----------------------------------------------------------------------------

def main(argv=None):
    p = parser()
    a = p.parse_args(cli.negative_values_joined(sys.argv[1:] if argv is None else argv))
    check_flags(p, a)
    try:
        if a.which == "gpu":  # prints its own lines, one per part
            return bench_gpu(a)
        benches = {"rollout": bench_rollout, "update": bench_update, "decode": bench_decode,
                   "memory": bench_memory, "parallel": bench_parallel, "sandbox": bench_sandbox}
        result = benches[a.which](a)
    except (rollout.LoadError, BenchError) as e:
        print(f"bench.py: {e}", file=sys.stderr)
        return 2
    print(memory_table(result) if a.which == "memory" and not a.json else json.dumps(result))
    if result.get("greedy_agrees_with_hf") is False:  # figures printed, then the verdict
        print(f"bench.py: our greedy tokens differ from Hugging Face generate's on the same rows "
              f"({result['greedy_tokens_agreeing']:.0%} of tokens before each row's first "
              f"difference; in bf16 a near-tie can part them, in fp32 (--device cpu) they must "
              f"agree): this model is not served exactly", file=sys.stderr)
        return 1
    return 0


def parser():
    """bench.py's flags: one sub-command per benchmark; a usage error is one line and exit 2."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="which", required=True)
    commands = [add(sub) for add in (rollout_flags, update_flags, decode_flags, memory_flags,
                                     parallel_flags, sandbox_flags, gpu_flags)]
    def usage_error(message):  # usage errors too: one line, exit code 2
        print(f"bench.py: error: {message}", file=sys.stderr)
        sys.exit(2)

    for command in [p, *commands]:
        command.error = usage_error
    return p


def rollout_flags(sub):
    r = sub.add_parser("rollout", help="our generate vs Hugging Face generate on the same job")
    r.add_argument("--model", default="tiny", help="tiny, a Qwen2.5 shape with random weights "
                   f"({', '.join(tiny.QWEN25_SHAPES)}), or a model directory")
    r.add_argument("--device", default=None)
    r.add_argument("--prompts", type=int, default=8)
    r.add_argument("--n", type=int, default=4)
    r.add_argument("--new", type=int, default=128, help="max new tokens")
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--repeat", type=int, default=3,
                   help="timed runs of each side, interleaved, after a warm-up; medians reported")
    return r


def update_flags(sub):
    u = sub.add_parser("update", help="chunked log-probs vs full-vocabulary logits (fwd+bwd), "
                                      "and one policy update")
    u.add_argument("--model", default="tiny", help="as for rollout")
    u.add_argument("--device", default=None)
    u.add_argument("--seqs", type=int, default=16, help="sequences in the mini-batch")
    u.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence")
    u.add_argument("--len", type=int, default=256, help="completion tokens per sequence")
    u.add_argument("--microbatch", type=int, default=8)
    u.add_argument("--repeat", type=int, default=3, help="as for rollout")
    return u


def decode_flags(sub):
    d = sub.add_parser("decode", help="decode throughput (ours vs Hugging Face generate) and "
                                      "achieved bandwidth")
    d.add_argument("--model", default="tiny", help="as for rollout")
    d.add_argument("--device", default=None)
    d.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")],
                   default=[64, 256, 1024])
    d.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    d.add_argument("--new", type=int, default=256, help="new tokens per row")
    d.add_argument("--repeat", type=int, default=3, help="as for rollout")
    return d


def memory_flags(sub):
    m = sub.add_parser("memory", help="predicted peak memory per phase and the sizes that fit "
                                      "each card")
    m.add_argument("--model", default=",".join(tiny.QWEN25_SHAPES),
                   help="comma-separated shapes, tiny, or directories")
    m.add_argument("--cards", type=lambda s: [float(x) for x in s.split(",")],
                   default=[24, 40, 80, 141], help="GB")
    m.add_argument("--gpus", type=lambda s: [int(x) for x in s.split(",")], default=[1],
                   help="GPUs per run (torchrun, FSDP2): plans per GPU, e.g. 1,2,4,8")
    m.add_argument("--max-prompt", type=int, default=512)
    m.add_argument("--max-response", type=int, default=1024)
    m.add_argument("--n", type=int, default=4)
    m.add_argument("--kl", type=float, default=0.001, help="0: no reference model")
    m.add_argument("--fused-adamw", action=argparse.BooleanOptionalAction, default=False)
    m.add_argument("--chunk-tokens", type=int, default=4096)
    m.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    return m


def parallel_flags(sub):
    q = sub.add_parser("parallel", help="one training run on one process vs N under torchrun "
                                        "(same samples checked)")
    q.add_argument("--model", default="tiny", help="tiny (format-pre-trained here) or a directory")
    q.add_argument("--pretrain", type=int, default=100,
                   help="format pre-training steps of the tiny model")
    q.add_argument("--device", default="")
    q.add_argument("--processes", type=int, default=2)
    q.add_argument("--steps", type=int, default=4)
    q.add_argument("--batch", type=int, default=8)
    q.add_argument("--n", type=int, default=4)
    q.add_argument("--minibatch", type=int, default=4)
    q.add_argument("--microbatch", type=int, default=8)
    q.add_argument("--max-response", type=int, default=64)
    q.add_argument("--repeat", type=int, default=3)
    return q


def sandbox_flags(sub):
    s = sub.add_parser("sandbox", help="sandboxed tests per second vs plain subprocess.run of the "
                                       "same interpreter")
    s.add_argument("--programs", type=int, default=40)
    s.add_argument("--tests", type=int, default=5)
    s.add_argument("--repeat", type=int, default=3,
                   help="timed runs of each way, interleaved, after a warm-up")
    return s


def gpu_flags(sub):
    g = sub.add_parser("gpu", help="the one-call GPU check: CUDA tests, decode vs Hugging Face, "
                                   "one sqlm.py step in Qwen2.5-3B's shape, the environment "
                                   "(docs/gpu.md); --device cpu --model tiny: the dry run")
    g.add_argument("--out", default=os.path.join("runs", "gpu-check"),
                   help="results folder: results.jsonl (a JSON line per part, appended as each "
                        "finishes), cuda_tests.xml and cuda_tests.log")
    g.add_argument("--device", default=None)
    g.add_argument("--model", default="qwen2.5-3b",
                   help="a Qwen2.5 shape with random weights, tiny (the dry run: tiny sizes "
                        "throughout), or a model directory")
    g.add_argument("--budget-s", type=float, default=360,
                   help="seconds for all parts; each takes at most its cap of what is left and "
                        "is skipped when too little is left")
    g.add_argument("--parts", type=lambda s: s.split(","), default=list(GPU_PARTS),
                   help=",".join(GPU_PARTS))
    g.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="decode batches (GPU: 64,256; tiny: 2,3)")
    g.add_argument("--prompt", type=int, default=None, help="decode prompt tokens (GPU: 128)")
    g.add_argument("--new", type=int, default=None, help="decode new tokens (GPU: 128)")
    g.add_argument("--repeat", type=int, default=None, help="decode timed runs per side (GPU: 3)")
    g.add_argument("--step-batch", type=int, default=None,
                   help="proposer prompts of the step (GPU: 64)")
    g.add_argument("--step-n", type=int, default=None,
                   help="proposals per prompt and answers per problem (GPU: 4)")
    g.add_argument("--step-response", type=int, default=None,
                   help="response cap of the step, both roles (GPU: 128)")
    g.add_argument("--step-steps", type=int, default=None,
                   help="steps run; the last one is compared with the plan (GPU: 1)")
    return g


# flags that must be at least 1, where a command has them
COUNTS = ("repeat", "prompts", "n", "new", "seqs", "prompt", "len", "microbatch", "programs",
          "tests", "max_prompt", "max_response", "chunk_tokens", "processes", "steps", "batch",
          "minibatch", "step_batch", "step_response", "step_steps")


def check_flags(p, a):
    """The values argparse cannot check, each a one-line usage error (p.error); `gpu`'s sizes given
    no flag take the GPU's (or with --model tiny the dry run's) from GPU_SIZES."""
    if a.which == "gpu":
        for key, value in GPU_SIZES["tiny" if a.model == "tiny" else "gpu"].items():
            setattr(a, key, value if getattr(a, key) is None else getattr(a, key))
        if not a.budget_s > 0:
            p.error(f"--budget-s must be positive (got {a.budget_s})")
        if set(a.parts) - set(GPU_PARTS):
            p.error(f"--parts: unknown {', '.join(sorted(set(a.parts) - set(GPU_PARTS)))} "
                    f"(parts: {', '.join(GPU_PARTS)})")
        if a.step_n < 2:
            p.error(f"--step-n must be at least 2, not {a.step_n} (groups of one carry no signal)")
    temperature, top_p = getattr(a, "temperature", 1.0), getattr(a, "top_p", 1.0)
    kl = getattr(a, "kl", 0.0)
    if not (temperature >= 0 and math.isfinite(temperature)):  # nan fails >= too
        p.error(f"--temperature must be a finite number >= 0 (got {temperature})")
    if not 0 < top_p <= 1:
        p.error(f"--top-p must be in (0, 1] (got {top_p})")
    if not (kl >= 0 and math.isfinite(kl)):
        p.error(f"--kl must be a finite number >= 0 (got {kl})")
    try:
        cli.device(getattr(a, "device", None))
    except ValueError as e:
        p.error(str(e))
    lists = getattr(a, "batches", [1]) + getattr(a, "cards", [1]) + getattr(a, "gpus", [1])
    if min(getattr(a, name, 1) for name in COUNTS) < 1 or min(lists) <= 0:
        p.error("counts (--repeat, --prompts, --n, --new, --seqs, ...) must be at least 1")


if __name__ == "__main__":
    sys.exit(cli.exit_on_interrupt(main, "bench.py: interrupted; no result"))
