"""Loading a model, chat prompts, batched KV-cached sampling, teacher-forced log-probs.

Everything SQLM samples (proposals, answers, eval responses) goes through `generate`;
everything it trains on goes through `token_logprobs`. Both are written by hand on the
model's forward pass (no `model.generate`):

- `generate` left-pads a batch of prompts, prefills each prompt once and copies its
  KV cache for its `n` samples into a cache allocated once for the whole call, then runs
  one forward per new token; stop tokens are checked every few steps (no host sync per
  token) and finished rows leave the batch and the cache in a few large compactions.
  Each sample draws from its own counter-based random stream (prompt seed, sample, step).
  Sliding-window attention (Mistral, Gemma2/3, Qwen2 with use_sliding_window) is exact: the
  cache keeps every position and the model's own mask applies each layer's window.
- `token_logprobs` computes log pi(token | prefix) in fp32 with logits divided by the
  sampling temperature, in chunks of completion tokens, so a long batch never holds
  B x T x vocab logits at once (Qwen's vocabulary is 151,936 wide).

Left out on purpose: beam search, top-k (the sampled policy must be the trained policy),
repetition penalties, speculative decoding, paged attention. Not built yet: CUDA graphs or
torch.compile of the decode step. `generate_many` splits a large job into calls of a bounded
number of rows (the KV cache's memory), with a progress line.
"""
import contextlib
import errno
import os
import socket
import sys
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache, CacheLayerMixin

import cli


class LoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message is one line for the CLI."""


# --- loading -------------------------------------------------------------------------

HUB = ("huggingface.co", 443)


def hub_reachable():
    """Whether the model hub answers a TCP connection within 2 s (never with HF_HUB_OFFLINE=1).
    Checked once before loading, so an offline machine gets one line at once instead of a minute
    of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(HUB, timeout=2.0).close()
        return True
    except OSError:
        return False


def load(name_or_path, device=None, dtype=None):
    """Load `(model, tokenizer)` from a local directory or a hub id, in eval mode.

    device: "cuda" if available else "cpu" by default. dtype: fp32 by default (training
    keeps fp32 master weights; see sqlm.py for the bf16 sampling copy).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = os.path.expanduser(str(name_or_path))
    is_dir = os.path.isdir(name)
    # a path, not "org/name" or "gpt2"
    if not is_dir and (name.startswith((".", "/")) or name.count("/") > 1):
        raise LoadError(f"model directory not found: {name_or_path}")
    # once, quickly: a cached hub model still loads offline
    offline = not is_dir and not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or torch.float32,
                                                     local_files_only=offline)
    except Exception as e:  # hub unreachable, unknown id, broken files: one line, no traceback
        raise load_error(name_or_path, e, is_dir, offline) from None
    problem = tokenizer_problem(tokenizer, model)
    if problem:
        hint = tokenizer_hint(name, is_dir)
        raise LoadError(f"the tokenizer of {name_or_path} {problem}: {hint}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def load_error(name_or_path, e, is_dir, offline):
    """The one-line LoadError for `e`, raised while loading: the machine short of a resource, an
    offline machine without the model cached, or what the directory or the hub said."""
    short_of = shortage(e)
    if short_of:
        return LoadError(f"cannot load model '{name_or_path}': the machine ran out of {short_of} "
                         f"while loading it ({cli.first_line(e, 200)}); the model is not at fault: "
                         f"run again with more {short_of} free (fewer processes at once)")
    if offline:
        return LoadError(f"cannot load model '{name_or_path}': it is not a local directory, not in "
                         f"the Hugging Face cache, and the hub is unreachable (offline); pass the "
                         f"directory of a downloaded model")
    where = ("the directory holds no loadable model" if is_dir
             else "not a local directory, and the hub gave")
    return LoadError(f"cannot load model '{name_or_path}' ({where}: {cli.first_line(e, 200)})")


def tokenizer_hint(name, is_dir):
    """What to check when the tokenizer of `name` is unusable: its files, or is it a chat model."""
    if not is_dir:
        return "is this a chat model?"
    if not any(os.path.exists(os.path.join(name, f)) for f in TOKENIZER_FILES):
        *others, last = TOKENIZER_FILES
        return f"the directory has no {', '.join(others)} or {last}"
    return "are its tokenizer files complete?"


def shortage(e):
    """What the machine ran out of, if `e` or an exception it wraps says so: "threads", "memory",
    "file descriptors", or None (then the model or the hub is at fault)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code, text = getattr(e, "errno", None), str(e).lower()
        if isinstance(e, MemoryError) or code == errno.ENOMEM or "out of memory" in text:
            return "memory"
        if code in (errno.EMFILE, errno.ENFILE) or "too many open files" in text:
            return "file descriptors"
        if "can't start new thread" in text or code == errno.EAGAIN and "thread" in text:
            return "threads"
        e = e.__cause__ or e.__context__
    return None


# one of them: fast, sentencepiece, BPE
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
PROBE = "What is 12 * 3?"  # a problem as the tasks write them


def tokenizer_problem(tokenizer, model):
    """Why `tokenizer` cannot serve `model` as a chat tokenizer, or None. Transformers loads a
    directory without tokenizer files (or with tokenizer_config.json but no vocabulary) as a
    tokenizer of a few special tokens, which turns every prompt into nothing or into one token:
    training then runs on empty prompts. So a chat prompt must encode to ids the model has, and
    decode back to its text."""
    try:
        ids = chat_prompt(tokenizer, PROBE)
    except Exception as e:  # no chat template, or a template that fails
        first = cli.first_line(e, 120)
        return f"cannot build a chat prompt ({first})"
    if not ids:
        return "cannot build a chat prompt (it encodes to no tokens)"
    # an unknown or dropped character, or no vocabulary at all
    if PROBE not in tokenizer.decode(ids):
        return (f"cannot build a chat prompt ({PROBE!r} does not survive encoding: "
                f"{len(tokenizer)} tokens known)")
    if max(ids) >= model.get_input_embeddings().num_embeddings:
        return f"does not fit the model (token id {max(ids)}, but the model has " \
               f"{model.get_input_embeddings().num_embeddings} embeddings)"
    return None


def chat_prompt(tokenizer, user_text):
    """Token ids of a one-turn chat with the model's template and the assistant header."""
    messages = [{"role": "user", "content": user_text}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def stop_token_ids(model, tokenizer):
    """End-of-turn / end-of-text ids: the tokenizer's eos, the generation config's, and ChatML's."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(eos if isinstance(eos, (list, tuple)) else [eos])
    for tok in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


# --- sampling ------------------------------------------------------------------------

@dataclass
class Sample:
    prompt_ids: list
    completion_ids: list          # ends with the stop token when finished
    text: str                     # decoded completion, stop token excluded
    finished: bool                # stopped on a stop token (False: hit max_new_tokens)
    logprobs: list = field(default_factory=list)  # log-prob of each token as sampled
    entropy: float = 0.0          # mean entropy (nats) of each token's sampling distribution


def left_pad(seqs, pad_id, device):
    """(B, L) ids and mask with each sequence right-aligned, and position ids that start at 0."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


# Counter-based random numbers: sample j of prompt i draws its token at step t from a uniform that
# depends only on (prompt i's seed, j, t), never on the batch it shares or the order rows finish in.
# splitmix64 (Steele, Lea, Flood 2014) in wrapping int64 arithmetic; a logical shift is emulated by
# masking the sign-extended bits of torch's arithmetic shift.
_GOLDEN, _MUL1, _MUL2 = (c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
                                             0x94D049BB133111EB))


def _int64(value):
    """A Python int as the int64 with the same low 64 bits."""
    return (int(value) + 2**63) % 2**64 - 2**63


def _shift_right(x, bits):
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x):
    """splitmix64's finaliser on an int64 tensor: a bijection of 64-bit words, all bits mixed."""
    x = (x ^ _shift_right(x, 30)) * _MUL1
    x = (x ^ _shift_right(x, 27)) * _MUL2
    return x ^ _shift_right(x, 31)


def sample_keys(prompt_seeds, n):
    """(len(prompt_seeds) * n,) int64 key of each sample's random stream:
    mix64(mix64(seed_i) + (j + 1) * golden)."""
    j = torch.arange(n, device=prompt_seeds.device).repeat(len(prompt_seeds))
    return mix64(mix64(prompt_seeds).repeat_interleave(n) + (j + 1) * _GOLDEN)


def uniforms(keys, step):
    """(B,) float64 in [0, 1): the top 53 bits of mix64(key + (step + 1) * golden)."""
    return _shift_right(mix64(keys + _int64((step + 1) * _GOLDEN)), 11).double() * 2.0 ** -53


def prompt_seeds(seed, count, device):
    """(count,) int64 seed per prompt. seed: one per prompt (a list), or an int from which prompt
    i's is mix64(seed + (i + 1) * golden), or None (drawn from torch's global generator)."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != count:
            raise ValueError(f"generate got {len(seed)} seeds for {count} prompts")
        return torch.tensor([_int64(s) for s in seed], dtype=torch.long, device=device)
    if seed is None:
        seed = int(torch.randint(2**62, (1,)))
    base = torch.tensor(_int64(seed), dtype=torch.long, device=device)
    return mix64(base + (torch.arange(count, device=device) + 1) * _GOLDEN)


def sample_next(logits, temperature, top_p, u):
    """Next token per row, its log-prob and the entropy (nats) of the distribution it came from.

    logits: (B, V) fp32; u: (B,) uniforms in [0, 1). The token is the inverse CDF at u of
    softmax(logits / temperature) (cumulative sum in float64, in token-id order): the first token
    whose cumulative probability exceeds u. A zero-probability token can never be drawn (its
    cumulative sum equals its predecessor's). temperature 0 is greedy (u unused; log-prob and
    entropy reported at temperature 1). top-p keeps the smallest set of tokens whose probability
    reaches `top_p` and renormalises.
    """
    if temperature == 0:
        token, logp = logits.argmax(-1), logits.log_softmax(-1)
        return (token, logp.gather(-1, token[:, None]).squeeze(-1),
                torch.special.entr(logp.exp()).sum(-1))
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    logp = logits.log_softmax(-1)  # (B, V)
    probs = logp.exp()
    cdf = probs.double().cumsum(-1)  # (B, V); float64: a small token's share is not lost in the sum
    target = u.to(cdf.dtype) * cdf[:, -1]  # < cdf[:, -1] for u < 1
    token = torch.searchsorted(cdf, target[:, None], right=True).squeeze(-1)
    token = token.clamp(max=logits.shape[-1] - 1)
    return (token, logp.gather(-1, token[:, None]).squeeze(-1),
            torch.special.entr(probs).sum(-1))  # entr(0) = 0


class _PreallocatedLayer(CacheLayerMixin):
    """One layer's KV cache in buffers allocated once for the whole generation,
    (B, kv_heads, max_len, head_dim).

    `update` writes the new keys/values at the current length and returns views of the filled part,
    so attention reads only what exists; `keep` compacts the batch to the rows still running. A
    sliding-window layer keeps every position too: the model's mask applies the window.
    """
    is_sliding = False
    is_compileable = False

    def __init__(self, keys, values, length):
        super().__init__()
        self.keys, self.values, self.length = keys, values, length
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states):
        raise AssertionError("a preallocated layer is built full")

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.keys[:, :, self.length:end] = key_states
        self.values[:, :, self.length:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length):
        return self.length + query_length, 0

    def get_seq_length(self):
        return self.length

    def get_max_length(self):
        return self.keys.shape[2]

    def keep(self, rows):
        self.keys, self.values = self.keys[rows], self.values[rows]  # old buffers freed per layer


def preallocated_cache(prefill, n, max_len):
    """Each prefilled prompt's keys/values, n times, in a cache of `max_len` positions per row."""
    layers = []
    for layer in prefill.layers:
        keys, values = layer.keys, layer.values  # (P, kv_heads, width, head_dim)
        width = keys.shape[2]
        shape = (keys.shape[0] * n, keys.shape[1], max_len, keys.shape[3])
        k, v = keys.new_empty(shape), values.new_empty(shape[:3] + values.shape[3:])
        # prompt p's rows are [p*n, (p+1)*n): its keys broadcast into them, no repeated copy between
        k.view(-1, n, *shape[1:])[:, :, :, :width] = keys[:, None]
        v.view(-1, n, *v.shape[1:])[:, :, :, :width] = values[:, None]
        layers.append(_PreallocatedLayer(k, v, width))
    return Cache(layers=layers)


@torch.no_grad()
def generate(model, tokenizer, prompts, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0,
             seed=None, check_every=8):
    """Sample `n` completions for each prompt (lists of token ids); prompt i's at [i*n:(i+1)*n].

    seed: an int, one int per prompt, or None. Sample j of prompt i draws step t's token from
    uniforms(sample_keys(seed_i, j), t), so it is the same whichever call, batch or chunk it runs in
    (an int seed gives prompt i the seed derived from (seed, i): pass per-prompt seeds when a
    caller splits one set of prompts into several calls).
    The loop never waits on the device for a token: rows that stop keep decoding (their tokens past
    the stop are discarded) until the next check, every `check_every` steps, which ends the loop
    when every row has stopped and drops finished rows from the batch and the cache once a quarter
    of the batch has finished.
    """
    if (temperature < 0 or not 0 < top_p <= 1 or not all(prompts) or max_new_tokens < 1
            or check_every < 1):
        raise ValueError(f"generate needs temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, "
                         f"check_every >= 1 and non-empty prompts (got temperature={temperature}, "
                         f"top_p={top_p}, max_new_tokens={max_new_tokens}, "
                         f"check_every={check_every})")
    device = next(model.parameters()).device
    keys = sample_keys(prompt_seeds(seed, len(prompts), device), n)  # (B*n,)
    stops = torch.tensor(stop_token_ids(model, tokenizer), device=device)
    padded = left_pad(prompts, tokenizer.pad_token_id, device)
    drawn = decode(model, padded, n, keys, stops, max_new_tokens, temperature, top_p, check_every)
    return to_samples(tokenizer, prompts, n, stops, *drawn)


def prefill(model, ids, mask, positions, n, max_new_tokens):
    """The decode loop's starting state from the left-padded prompts (B, width): the logits of each
    prompt's last position repeated for its n samples (B*n, V) fp32, the preallocated cache of
    width + max_new_tokens positions holding each prompt's keys/values n times, the attention mask
    at its final width (B*n, width + max_new_tokens), and each row's next position (B*n, 1).
    Each distinct prompt runs through the model once; only its last position's logits are kept."""
    from transformers import DynamicCache
    # every position of every layer, sliding-window layers too: the model's own mask hides keys
    # outside a layer's window (cache positions count the left padding, which shifts a row's
    # positions alike); a sliding cache layer would drop keys the preallocated cache still indexes
    prompt_cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                past_key_values=prompt_cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].float().repeat_interleave(n, 0)  # (B*n, V)
    width = mask.shape[1]
    cache = preallocated_cache(prompt_cache, n, width + max_new_tokens)
    del prompt_cache, out  # before the mask grows: the prompts' own cache is no longer needed
    rows = len(ids) * n
    mask = torch.cat([mask.repeat_interleave(n, 0), mask.new_ones((rows, max_new_tokens))], dim=1)
    next_pos = positions[:, -1:].repeat_interleave(n, 0) + 1  # (B*n, 1)
    return logits, cache, mask, next_pos


def decode(model, padded, n, keys, stops, max_new_tokens, temperature, top_p, check_every):
    """Draw up to max_new_tokens tokens for each of the B*n samples of the left-padded prompts
    `padded` (ids, mask, positions): (tokens, their log-probs) (B*n, max_new_tokens), and each
    sample's mean entropy and length (B*n,), its length counting its stop token. Past a row's
    length its tokens are whatever it drew before leaving the batch: `to_samples` cuts them off."""
    logits, cache, mask, next_pos = prefill(model, *padded, n, max_new_tokens)
    width, total, device = mask.shape[1] - max_new_tokens, len(keys), keys.device
    tokens = torch.zeros((total, max_new_tokens), dtype=torch.long, device=device)
    token_logp = torch.zeros((total, max_new_tokens), device=device)
    entropy = torch.zeros(total, device=device)  # summed over each row's tokens up to its stop
    lengths = torch.full((total,), max_new_tokens, dtype=torch.long, device=device)
    rows = torch.arange(total, device=device)  # which sample each batch row is
    running = torch.ones(total, dtype=torch.bool, device=device)  # per batch row: not stopped yet
    for step in range(max_new_tokens):
        token, logp, token_entropy = sample_next(logits, temperature, top_p,
                                                 uniforms(keys[rows], step))
        tokens[rows, step] = token
        token_logp[rows, step] = logp
        entropy[rows] += token_entropy * running
        stopped = running & torch.isin(token, stops)
        lengths[rows] = torch.where(stopped, step + 1, lengths[rows])
        running &= ~stopped
        if step + 1 == max_new_tokens:
            break
        if (step + 1) % check_every == 0:  # the loop's only host synchronisation
            live = int(running.sum())
            if live == 0:
                break
            if live <= 3 * len(rows) // 4:  # drop finished rows from the batch and the cache
                keep = running.nonzero().squeeze(-1)
                rows, token, mask, next_pos, running = (rows[keep], token[keep], mask[keep],
                                                        next_pos[keep], running[keep])
                for layer in cache.layers:
                    layer.keep(keep)
        # the mask is preallocated to its final width; each step uses one more column
        out = model(input_ids=token[:, None], attention_mask=mask[:, :width + step + 1],
                    position_ids=next_pos, past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    return tokens, token_logp, entropy / lengths, lengths


def to_samples(tokenizer, prompts, n, stops, tokens, token_logp, entropy, lengths):
    """One Sample per row of `decode`'s output, sample j of prompt i at i*n + j: the completion cut
    at its length, finished when it ended on a stop token (also one drawn at the last step)."""
    max_new_tokens = tokens.shape[1]
    finished = lengths < max_new_tokens
    finished |= (lengths == max_new_tokens) & torch.isin(tokens[:, -1], stops)
    tokens, token_logp, lengths, finished, entropy = (
        t.tolist() for t in (tokens, token_logp, lengths, finished, entropy))
    samples = []
    for i in range(len(tokens)):
        completion = tokens[i][:lengths[i]]
        body = completion[:-1] if finished[i] else completion
        samples.append(Sample(prompt_ids=list(prompts[i // n]), completion_ids=completion,
                              text=tokenizer.decode(body, skip_special_tokens=False),
                              finished=finished[i], logprobs=token_logp[i][:lengths[i]],
                              entropy=entropy[i]))
    return samples


def generate_many(model, tokenizer, prompts, n, seeds, rows, progress, **sampling):
    """`generate` over all `prompts` in calls of at most `rows` sequences (the KV cache's memory).

    seeds: one per prompt (the samples are then the same however the prompts are split into
    calls), or None (greedy). progress(samples so far) is called after each call. sampling:
    generate's max_new_tokens, temperature, top_p.
    """
    per_call = max(1, rows // n)
    out = []
    for start in range(0, len(prompts), per_call):
        out += generate(model, tokenizer, prompts[start:start + per_call], n=n,
                        seed=None if seeds is None else seeds[start:start + per_call], **sampling)
        progress(out)
    return out


def progress_printer(label, samples=1, stream=None, quiet_seconds=0.0):
    """A `progress(done, total, figures)` for a long sampling job (eval, sqlm's rollout phases):
    rows done, tokens/s, ETA and accuracy if known, as one line refreshed in place on a terminal, or
    a plain line at most every 10 s (and the last) in a log; nothing for a phase shorter than
    quiet_seconds."""
    stream, started, last = stream or sys.stderr, time.time(), [0.0]

    def show(done, total, figures):
        elapsed = max(time.time() - started, 1e-9)
        if elapsed < quiet_seconds and not last[0]:
            return
        tokens = figures.get("tokens", figures.get("mean_length", 0) * done * samples)
        eta = elapsed * (total - done) / done
        line = (f"{label}  {done:>{len(str(total))}}/{total} rows  {tokens / elapsed:.0f} tok/s  "
                f"eta {eta:.0f}s"
                + (f"  acc {figures['accuracy']:.3f}" if "accuracy" in figures else ""))
        if stream.isatty():
            last[0] = last[0] or time.time()
            stream.write("\r" + line + ("\n" if done == total else ""))
        elif done == total or time.time() - last[0] >= 10:
            stream.write(line + "\n")
            last[0] = time.time()
        stream.flush()
    return show


# --- teacher-forced log-probs --------------------------------------------------------

def pack(pairs, pad_id, device):
    """Right-padded (ids, attention mask, completion mask), each (B, T), from (prompt, completion)
    id lists."""
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attn, comp = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (p, c) in enumerate(pairs):
        ids[i, :len(p) + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attn[i, :len(p) + len(c)] = 1
        comp[i, len(p):len(p) + len(c)] = 1
    return ids.to(device), attn.to(device), comp.to(device)


def autocast(device):
    """bf16 autocast over fp32 master weights on GPU (sqlm.py's training precision); plain fp32 on
    CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _chunk_logprobs(hidden, weight, targets, temperature):
    """log_softmax(hidden @ weight.T / temperature)[targets] in fp32, for one chunk of tokens."""
    with torch.autocast(hidden.device.type, enabled=False):  # or autocast runs the matmul in bf16
        # (chunk, V); scaling h saves a V-wide copy
        logits = F.linear(hidden.float() / temperature, weight.float())
        return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


PROBE_TOKENS = 8  # positions the head check runs the model on
PROBE_LOGIT = 100.0  # the largest logit of the check: a soft-cap of 30 or 50 bends it by >50
_head_problems = weakref.WeakKeyDictionary()  # model -> head_problem's answer, checked once


def check_plain_head(model):
    """Raise ValueError (one line) unless the model's logits are exactly
    decoder output @ lm-head weight.T; checked once per model object (head_problem).

    token_logprobs reads those two directly (the model's own forward would build full-vocabulary
    logits); a head with a bias, a logit scale or a final-logit soft-cap would give wrong numbers.
    """
    if model not in _head_problems:
        _head_problems[model] = head_problem(model)
    if _head_problems[model]:
        raise ValueError(f"{type(model).__name__} cannot be trained here: its logits are not "
                         f"hidden @ W of its lm-head ({_head_problems[model]}), so token_logprobs "
                         f"would compute different numbers from the model's (eval.py serves it)")


@torch.no_grad()
def head_problem(model):
    """None if the model's forward gives logits == decoder output @ lm-head weight.T on a few
    tokens, else what differs, in words. A hook scales the decoder's output so that the largest
    logit is PROBE_LOGIT: a soft-cap, a logit scale or a bias then shows far above rounding (on a
    random model's small logits tanh is nearly the identity). The tolerance is rounding's: 1e-4 of
    the largest logit in fp32, 8 ulps in bf16/fp16."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        return "it has no lm-head weight"
    weight = head.weight  # (V, H)
    seen = []

    def scale(module, args, output):
        if getattr(output, "last_hidden_state", None) is None:
            return None  # not a decoder's output: nothing seen, refused below
        hidden = output["last_hidden_state"]  # (1, PROBE_TOKENS, H)
        largest = F.linear(hidden, weight).abs().max().float()
        output["last_hidden_state"] = hidden * (PROBE_LOGIT / largest.clamp(min=1e-6)).to(hidden)
        seen.append(output["last_hidden_state"])
        return output

    vocab = weight.shape[0]
    ids = torch.arange(PROBE_TOKENS, device=weight.device) * (vocab // PROBE_TOKENS)  # (T,)
    hook = decoder.register_forward_hook(scale)
    try:  # autocast off: the model's own precision, which the tolerance assumes
        with torch.autocast(weight.device.type, enabled=False):
            logits = model(input_ids=ids[None], use_cache=False).logits.float()  # (1, T, V)
    finally:
        hook.remove()
    if len(seen) != 1:
        return "its forward does not apply the lm-head to its decoder's output"
    expected = F.linear(seen[0], weight).float()
    diff = float((logits - expected).abs().max())
    tolerance = max(1e-4, 8 * torch.finfo(weight.dtype).eps) * float(expected.abs().max())
    if diff <= tolerance:
        return None
    return "; ".join(head_causes(model, head) or [f"off by up to {diff:.3g} on logits of "
                                                  f"{PROBE_LOGIT:g}"])


def head_causes(model, head):
    """What in the config or the head explains a head that is not plain: soft-cap, scale, bias."""
    config = model.config.get_text_config(decoder=True)
    said = {"final_logit_softcapping": "soft-capped at {}", "logit_scale": "multiplied by {}",
            "logits_scaling": "divided by {}"}
    causes = [text.format(getattr(config, name)) for name, text in said.items()
              if getattr(config, name, None) not in (None, 1, 1.0)]
    if getattr(head, "bias", None) is not None and bool(head.bias.any()):
        causes.append("its lm-head adds a bias")
    return causes


def token_logprobs(model, input_ids, attention_mask, completion_mask, temperature=1.0,
                   chunk_tokens=4096):
    """Per-token log pi(x_t | x_<t) at completion positions, (B, T) fp32, zero elsewhere.

    input_ids, attention_mask, completion_mask: (B, T); completion_mask marks the tokens
    being scored (the first token of a row can never be scored: it has no prefix).
    The lm-head is applied only to the positions that predict a completion token, in
    chunks of `chunk_tokens`; with grad on, each chunk is recomputed in backward instead
    of keeping its (chunk x vocab) logits alive. model: a causal LM, or a `TokenLogprobs`
    (which a distributed wrapper such as DDP may hold): either way the computation runs as a
    module's forward.
    """
    if temperature <= 0:
        raise ValueError(f"token_logprobs needs temperature > 0 (greedy samples are scored at "
                         f"1.0), got {temperature}")
    net = TokenLogprobs(model) if hasattr(model, "get_decoder") else model
    return net(input_ids, attention_mask, completion_mask, temperature, chunk_tokens)


def last_hidden(decoder, input_ids, attention_mask):
    """(B, T, H) the decoder's last hidden states, positions counted over the attention mask (a
    padded row's tokens at the positions they would have alone), no cache."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   use_cache=False).last_hidden_state


class TokenLogprobs(torch.nn.Module):
    """A causal LM whose forward is `token_logprobs`. It reads the decoder and the lm-head weight
    directly, which a wrapper never sees from outside its forward: DDP would skip its gradient
    all-reduce and FSDP2 its unsharding. Wrapping this module instead keeps them in the path."""

    def __init__(self, model):
        super().__init__()
        check_plain_head(model)
        self.model = model

    def forward(self, input_ids, attention_mask, completion_mask, temperature, chunk_tokens):
        hidden = last_hidden(self.model.get_decoder(), input_ids, attention_mask)  # (B, T, H)
        weight = self.model.get_output_embeddings().weight  # (V, H)
        scored = completion_mask[:, 1:].bool()  # token t is predicted by the hidden state at t-1
        h = hidden[:, :-1][scored]  # (N, H)
        targets = input_ids[:, 1:][scored]  # (N,)
        pieces = []
        for start in range(0, len(targets), chunk_tokens):
            span = slice(start, start + chunk_tokens)
            args = (h[span], weight, targets[span], temperature)
            if torch.is_grad_enabled():
                pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
            else:
                pieces.append(_chunk_logprobs(*args))
        out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        flat = torch.cat(pieces) if pieces else out.new_zeros(0)
        out[:, 1:] = out[:, 1:].masked_scatter(scored, flat)
        return out
