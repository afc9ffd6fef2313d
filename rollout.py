"""Loading a model, chat prompts, batched KV-cached sampling, teacher-forced log-probs.

Everything SQLM samples (proposals, answers, eval responses) goes through `generate`;
everything it trains on goes through `token_logprobs`. Both are written by hand on the
model's forward pass (no `model.generate`):

- `generate` left-pads a batch of prompts, prefills each prompt once and repeats its
  KV cache for its `n` samples, then runs one forward per new token over the
  rows that are still unfinished only (finished rows leave the batch and the cache).
- `token_logprobs` computes log pi(token | prefix) in fp32 with logits divided by the
  sampling temperature, in chunks of completion tokens, so a long batch never holds
  B x T x vocab logits at once (Qwen's vocabulary is 151,936 wide).

Left out on purpose: beam search, top-k (the sampled policy must be the trained policy),
repetition penalties, speculative decoding, paged attention. Callers chunk very large
batches themselves (`sqlm.py` does).
"""
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class LoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message is one line for the CLI."""


# --- loading -------------------------------------------------------------------------

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
    if not is_dir and (name.startswith((".", "/")) or name.count("/") > 1):  # a path, not "org/name" or "gpt2"
        raise LoadError(f"model directory not found: {name_or_path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or torch.float32)
    except Exception as e:  # hub unreachable, unknown id, broken files: one line, no traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        where = "the directory holds no loadable model" if is_dir else "not a local directory, and the hub gave"
        raise LoadError(f"cannot load model '{name_or_path}' ({where}: {first})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def chat_prompt(tokenizer, user_text, system=None):
    """Token ids of a one-turn chat with the model's template and the assistant header."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_text}]
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
    logprobs: list = field(default_factory=list)  # log-prob of each sampled token under the sampling distribution
    entropy: float = 0.0          # mean entropy (nats) of the sampling distribution over the completion


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


def sample_next(logits, temperature, top_p, generator):
    """Next token per row, its log-prob and the entropy (nats) of the distribution it was drawn from.

    logits: (B, V) fp32. temperature 0 is greedy (log-prob and entropy reported at temperature 1).
    top-p keeps the smallest set of tokens whose probability reaches `top_p` and renormalises.
    """
    if temperature == 0:
        token, logp = logits.argmax(-1), logits.log_softmax(-1)
        return token, logp.gather(-1, token[:, None]).squeeze(-1), torch.special.entr(logp.exp()).sum(-1)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    logp = logits.log_softmax(-1)  # (B, V)
    probs = logp.exp()
    token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1), torch.special.entr(probs).sum(-1)  # entr(0) = 0


@torch.no_grad()
def generate(model, tokenizer, prompts, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, seed=None):
    """Sample `n` completions for each prompt (lists of token ids); prompt i's at [i*n:(i+1)*n]."""
    from transformers import DynamicCache
    if temperature < 0 or not 0 < top_p <= 1 or not all(prompts):
        raise ValueError(f"generate needs temperature >= 0, 0 < top_p <= 1 and non-empty prompts "
                         f"(got temperature={temperature}, top_p={top_p})")
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stops = torch.tensor(stop_token_ids(model, tokenizer), device=device)
    ids, mask, positions = left_pad(prompts, tokenizer.pad_token_id, device)

    # Prefill each distinct prompt once; only the last position's logits are needed.
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].float().repeat_interleave(n, 0)  # (B*n, V)
    cache.batch_repeat_interleave(n)
    width = mask.shape[1]
    mask = torch.cat([mask.repeat_interleave(n, 0), mask.new_ones((len(prompts) * n, max_new_tokens))], dim=1)
    next_pos = positions[:, -1:].repeat_interleave(n, 0) + 1  # (B*n, 1)

    total = len(prompts) * n
    tokens = torch.zeros((total, max_new_tokens), dtype=torch.long, device=device)
    token_logp = torch.zeros((total, max_new_tokens), device=device)
    entropy = torch.zeros(total, device=device)  # summed over each row's tokens
    lengths = torch.full((total,), max_new_tokens, dtype=torch.long, device=device)
    finished = torch.zeros(total, dtype=torch.bool, device=device)
    rows = torch.arange(total, device=device)  # which sample each live batch row is
    for step in range(max_new_tokens):
        token, logp, token_entropy = sample_next(logits, temperature, top_p, generator)
        tokens[rows, step] = token
        token_logp[rows, step] = logp
        entropy[rows] += token_entropy
        stopped = torch.isin(token, stops)
        if step + 1 == max_new_tokens:
            finished[rows[stopped]] = True
            lengths[rows[stopped]] = step + 1
            break
        if stopped.any():  # drop finished rows from the batch and the cache (one sync per step)
            finished[rows[stopped]] = True
            lengths[rows[stopped]] = step + 1
            keep = (~stopped).nonzero().squeeze(-1)
            if len(keep) == 0:
                break
            rows, token, mask, next_pos = rows[keep], token[keep], mask[keep], next_pos[keep]
            cache.batch_select_indices(keep)
        # the mask is preallocated to its final width; each step uses one more column
        out = model(input_ids=token[:, None], attention_mask=mask[:, :width + step + 1], position_ids=next_pos,
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1

    entropy = entropy / lengths.clamp(min=1)
    tokens, token_logp, lengths, finished, entropy = (t.tolist() for t in (tokens, token_logp, lengths, finished, entropy))
    samples = []
    for i in range(total):
        completion = tokens[i][:lengths[i]]
        body = completion[:-1] if finished[i] else completion
        samples.append(Sample(prompt_ids=list(prompts[i // n]), completion_ids=completion,
                              text=tokenizer.decode(body, skip_special_tokens=False),
                              finished=finished[i], logprobs=token_logp[i][:lengths[i]], entropy=entropy[i]))
    return samples


# --- teacher-forced log-probs --------------------------------------------------------

def pack(pairs, pad_id, device):
    """Right-padded (ids, attention mask, completion mask), each (B, T), from (prompt, completion) id lists."""
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attn, comp = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (p, c) in enumerate(pairs):
        ids[i, :len(p) + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attn[i, :len(p) + len(c)] = 1
        comp[i, len(p):len(p) + len(c)] = 1
    return ids.to(device), attn.to(device), comp.to(device)


def _chunk_logprobs(hidden, weight, targets, temperature):
    """log_softmax(hidden @ weight.T / temperature)[targets] in fp32, for one chunk of tokens."""
    with torch.autocast(hidden.device.type, enabled=False):  # autocast would recast the fp32 matmul to bf16
        logits = F.linear(hidden.float() / temperature, weight.float())  # (chunk, V); scaling h saves a V-wide copy
        return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def token_logprobs(model, input_ids, attention_mask, completion_mask, temperature=1.0, chunk_tokens=4096):
    """Per-token log pi(x_t | x_<t) at completion positions, (B, T) fp32, zero elsewhere.

    input_ids, attention_mask, completion_mask: (B, T); completion_mask marks the tokens
    being scored (the first token of a row can never be scored: it has no prefix).
    The lm-head is applied only to the positions that predict a completion token, in
    chunks of `chunk_tokens`; with grad on, each chunk is recomputed in backward instead
    of keeping its (chunk x vocab) logits alive.
    """
    if temperature <= 0:
        raise ValueError(f"token_logprobs needs temperature > 0 (greedy samples are scored at 1.0), got {temperature}")
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=positions, use_cache=False).last_hidden_state  # (B, T, H)
    weight = model.get_output_embeddings().weight  # (V, H)
    scored = completion_mask[:, 1:].bool()  # token t is predicted by the hidden state at t-1
    h = hidden[:, :-1][scored]  # (N, H)
    targets = input_ids[:, 1:][scored]  # (N,)
    pieces = []
    for start in range(0, len(targets), chunk_tokens):
        args = (h[start:start + chunk_tokens], weight, targets[start:start + chunk_tokens], temperature)
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(*args))
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    flat = torch.cat(pieces) if pieces else out.new_zeros(0)
    out[:, 1:] = out[:, 1:].masked_scatter(scored, flat)
    return out
