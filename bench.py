"""Throughput benchmarks; each prints one JSON line (machine included) to stdout.

    python bench.py rollout [--model tiny|qwen2.5-0.5b|qwen2.5-3b|DIR] [--prompts 8 --n 4 --new 128]
    python bench.py update  [--model ...] [--seqs 32 --len 512]
    python bench.py sandbox [--programs 40 --tests 5]

Goals (not asserted in tests): `generate` no slower than Hugging Face `generate` on the
same job, and faster when `n > 1` shares a prompt or rows finish at different times.
"""
import argparse
import json
import platform
import sys
import tempfile
import time

import torch

import rollout
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
        return rollout.load(tiny.make(tempfile.mkdtemp()), device=device, dtype=dtype)
    if name in tiny.QWEN25_SHAPES:
        return tiny.random_real(name, device=device, dtype=dtype)
    return rollout.load(name, device=device, dtype=dtype)


def make_prompts(tokenizer, count, length, seed=0):
    """`count` chat prompts of roughly `length` tokens with varied lengths (so padding is exercised)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(count):
        words = torch.randint(0, 1000, (max(1, length // 4 - i % 5),), generator=gen).tolist()
        prompts.append(rollout.chat_prompt(tokenizer, " ".join(map(str, words)))[:length])
    return prompts


# --- rollout: ours vs Hugging Face generate ------------------------------------------

def hf_generate(model, tokenizer, prompts, n, new, temperature, top_p):
    """The same job through model.generate; returns the number of generated tokens (to eos)."""
    ids, mask, _ = rollout.left_pad(prompts, tokenizer.pad_token_id, model.device)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature else dict(do_sample=False)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, num_return_sequences=n,
                         pad_token_id=tokenizer.pad_token_id, **sampling)[:, ids.shape[1]:]
    stops = torch.tensor(rollout.stop_token_ids(model, tokenizer), device=out.device)
    is_stop = torch.isin(out, stops).int()
    # tokens up to and including the first stop token (HF pads finished rows after it)
    return int(((is_stop.cumsum(1) - is_stop) == 0).sum()), out


def bench_rollout(a):
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer = get_model(a.model, device, dtype)
    prompts = make_prompts(tokenizer, a.prompts, a.prompt_len)

    # correctness first: greedy must agree token for token
    ours = rollout.generate(model, tokenizer, prompts[:4], max_new_tokens=min(32, a.new), temperature=0)
    _, ref = hf_generate(model, tokenizer, prompts[:4], 1, min(32, a.new), 0, 1.0)
    agree = all(s.completion_ids == ref[i, :len(s.completion_ids)].tolist() for i, s in enumerate(ours))

    def timed(fn):
        fn()  # warm-up
        sync(device)
        t0 = time.perf_counter()
        tokens = fn()
        sync(device)
        return tokens, time.perf_counter() - t0

    ours_tok, ours_s = timed(lambda: sum(len(s.completion_ids) for s in rollout.generate(
        model, tokenizer, prompts, n=a.n, max_new_tokens=a.new, temperature=a.temperature, top_p=a.top_p, seed=0)))
    hf_tok, hf_s = timed(lambda: hf_generate(model, tokenizer, prompts, a.n, a.new, a.temperature, a.top_p)[0])
    return {"bench": "rollout", "model": a.model, "device": machine(), "dtype": str(dtype).split(".")[-1],
            "prompts": a.prompts, "n": a.n, "prompt_len": a.prompt_len, "max_new_tokens": a.new,
            "greedy_agrees_with_hf": agree,
            "ours_tokens_per_s": round(ours_tok / ours_s, 1), "hf_tokens_per_s": round(hf_tok / hf_s, 1),
            "speedup": round((ours_tok / ours_s) / (hf_tok / hf_s), 2),
            "ours_tokens": ours_tok, "hf_tokens": hf_tok}


# --- CLI -----------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="which", required=True)
    r = sub.add_parser("rollout", help="our generate vs Hugging Face generate on the same job")
    r.add_argument("--model", default="tiny", help="tiny, a Qwen2.5 shape with random weights "
                   f"({', '.join(tiny.QWEN25_SHAPES)}), or a model directory")
    r.add_argument("--device", default=None)
    r.add_argument("--prompts", type=int, default=8)
    r.add_argument("--n", type=int, default=4)
    r.add_argument("--prompt-len", type=int, default=64)
    r.add_argument("--new", type=int, default=128, help="max new tokens")
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--top-p", type=float, default=1.0)
    a = p.parse_args(argv)
    try:
        result = {"rollout": bench_rollout}[a.which](a)
    except rollout.LoadError as e:
        print(f"bench.py: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
