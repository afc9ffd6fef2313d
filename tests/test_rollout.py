"""rollout.py: the sampler and the log-prob function everything else stands on."""
import contextlib
import os
import time

import pytest
import torch

import rollout

PROMPTS = ["hi", "what is 12 * 34?", "a longer prompt, so that the batch needs left padding " * 2]


def chat_ids(tokenizer):
    return [rollout.chat_prompt(tokenizer, p) for p in PROMPTS]


def pack(samples):
    return rollout.pack([(s.prompt_ids, s.completion_ids) for s in samples], pad_id=0, device="cpu")


def test_batched_greedy_equals_one_at_a_time(tiny_model):
    """Left padding, masks and position ids: a padded row must decode as if it were alone."""
    model, tok = tiny_model
    prompts = chat_ids(tok)
    batched = rollout.generate(model, tok, prompts, max_new_tokens=24, temperature=0)
    for p, b in zip(prompts, batched):
        alone = rollout.generate(model, tok, [p], max_new_tokens=24, temperature=0)[0]
        assert b.completion_ids == alone.completion_ids


def test_greedy_equals_hf_generate(tiny_model):
    """Our hand-written KV-cached loop must reproduce Hugging Face generate token for token."""
    model, tok = tiny_model
    prompts = chat_ids(tok)
    ours = rollout.generate(model, tok, prompts, max_new_tokens=24, temperature=0)
    for p, s in zip(prompts, ours):
        mask = torch.ones(1, len(p), dtype=torch.long)
        ref = model.generate(torch.tensor([p]), attention_mask=mask, max_new_tokens=24,
                             do_sample=False)[0, len(p):].tolist()
        assert s.completion_ids == ref[:len(s.completion_ids)]
        assert len(set(s.completion_ids)) > 3  # a constant output would make this test vacuous


def test_seeded_sampling_reproducible_and_rows_differ(tiny_model):
    """Same seed, same samples; the n samples of one prompt must not be copies of each other."""
    model, tok = tiny_model
    prompts = chat_ids(tok)
    a = rollout.generate(model, tok, prompts, n=4, max_new_tokens=16, seed=7)
    b = rollout.generate(model, tok, prompts, n=4, max_new_tokens=16, seed=7)
    c = rollout.generate(model, tok, prompts, n=4, max_new_tokens=16, seed=8)
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    assert [s.completion_ids for s in a] != [s.completion_ids for s in c]
    assert len(a) == 12 and all(s.prompt_ids == prompts[i // 4] for i, s in enumerate(a))
    for i in range(3):
        group = {tuple(s.completion_ids) for s in a[4 * i:4 * i + 4]}
        assert len(group) == 4


def test_sampler_logprobs_equal_token_logprobs(tiny_model):
    """What the sampler reports must be what training recomputes (temperature included)."""
    model, tok = tiny_model
    for temperature in (1.0, 0.7):
        samples = rollout.generate(model, tok, chat_ids(tok), n=2, max_new_tokens=20,
                                   temperature=temperature, seed=1)
        ids, attn, comp = pack(samples)
        logp = rollout.token_logprobs(model, ids, attn, comp, temperature=temperature)
        for i, s in enumerate(samples):
            start = len(s.prompt_ids)
            got = logp[i, start:start + len(s.completion_ids)]
            assert torch.allclose(got, torch.tensor(s.logprobs), atol=1e-4)


def test_chunked_logprobs_equal_full_log_softmax(tiny_model):
    """Chunking over tokens must not change a value, masked positions stay exactly zero."""
    model, tok = tiny_model
    samples = rollout.generate(model, tok, chat_ids(tok), n=2, max_new_tokens=12, seed=3)
    ids, attn, comp = pack(samples)
    chunked = rollout.token_logprobs(model, ids, attn, comp, temperature=0.9, chunk_tokens=5)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits.double() / 0.9
    full = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    ref = torch.zeros_like(chunked, dtype=torch.float64)
    ref[:, 1:] = full * comp[:, 1:]
    assert torch.allclose(chunked.double(), ref, atol=1e-5)
    assert (chunked[comp == 0] == 0).all()


def test_chunked_logprobs_gradient_equals_unchunked(tiny_model):
    """Recomputing chunks in backward must give the same gradient as one big chunk."""
    model, tok = tiny_model
    samples = rollout.generate(model, tok, chat_ids(tok), max_new_tokens=10, seed=4)
    ids, attn, comp = pack(samples)
    grads = []
    for chunk in (3, 10_000):
        model.zero_grad()
        rollout.token_logprobs(model, ids, attn, comp, chunk_tokens=chunk).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad()
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[1].abs().max()  # fp32 sum order only


def test_stop_token_kept_and_finished(tiny_model):
    """Generation stops on a stop token, keeps it in completion_ids, and drops it from text."""
    model, tok = tiny_model
    prompt = chat_ids(tok)[1]
    free = rollout.generate(model, tok, [prompt], max_new_tokens=12, temperature=0)[0]
    assert not free.finished and len(free.completion_ids) == 12  # hit max_new_tokens
    stop = free.completion_ids[5]
    first = free.completion_ids.index(stop)
    with stop_tokens(model, [stop]):
        s = rollout.generate(model, tok, [prompt, chat_ids(tok)[0]], max_new_tokens=12,
                             temperature=0)[0]
        last = rollout.generate(model, tok, [prompt], max_new_tokens=first + 1, temperature=0)[0]
    assert s.finished and s.completion_ids == free.completion_ids[:first + 1]
    assert s.text == tok.decode(free.completion_ids[:first])
    assert last.finished and last.completion_ids == s.completion_ids  # stopped at the last step


@contextlib.contextmanager
def stop_tokens(model, stops):
    """`stops` as the model's stop tokens inside the block."""
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = list(stops)
    try:
        yield
    finally:
        model.generation_config.eos_token_id = saved


def test_rows_left_after_others_finish_are_unchanged(tiny_model):
    """Dropping finished rows re-indexes the mask, positions and cache of the rows that remain:
    every surviving row decodes as it would alone, its log-probs those training recomputes."""
    model, tok = tiny_model
    prompts = chat_ids(tok)
    frequent = range(0, model.config.vocab_size, 7)  # rows finish at many different steps
    with stop_tokens(model, frequent):
        samples = rollout.generate(model, tok, prompts, n=3, max_new_tokens=30, seed=5)
    lengths = [len(s.completion_ids) for s in samples]
    assert len(set(lengths)) >= 4 and max(lengths) > min(lengths) + 5
    assert any(s.finished for s in samples)
    ids, attn, comp = pack(samples)
    logp = rollout.token_logprobs(model, ids, attn, comp)
    for i, s in enumerate(samples):
        start = len(s.prompt_ids)
        got = logp[i, start:start + len(s.completion_ids)]
        assert torch.allclose(got, torch.tensor(s.logprobs), atol=1e-4)
    free = rollout.generate(model, tok, prompts, max_new_tokens=30, temperature=0)
    stops = {free[0].completion_ids[4], free[2].completion_ids[12]}  # greedy rows end apart
    with stop_tokens(model, stops):
        greedy = rollout.generate(model, tok, prompts, max_new_tokens=30, temperature=0)
        alone = [rollout.generate(model, tok, [p], max_new_tokens=30, temperature=0)[0]
                 for p in prompts]
    assert len({len(s.completion_ids) for s in greedy}) > 1
    assert [s.completion_ids for s in greedy] == [s.completion_ids for s in alone]


def test_logprobs_never_build_full_vocabulary_logits(tiny_model, monkeypatch):
    """The lm-head runs only on scored positions, `chunk_tokens` rows at a time: at Qwen's
    vocabulary a (B, T, V) fp32 tensor of a 1,024 x 1,536 batch would be ~1 TB."""
    model, tok = tiny_model
    samples = rollout.generate(model, tok, chat_ids(tok), n=2, max_new_tokens=9, seed=2)
    ids, attn, comp = pack(samples)
    rows, real = [], rollout._chunk_logprobs
    rollout.check_plain_head(model)  # once per model: 8 positions through the whole head
    monkeypatch.setattr(rollout, "_chunk_logprobs",
                        lambda h, *rest: rows.append(len(h)) or real(h, *rest))
    monkeypatch.setattr(model.get_output_embeddings(), "forward",
                        lambda *a, **k: pytest.fail("full lm-head call"))
    rollout.token_logprobs(model, ids, attn, comp, chunk_tokens=5)
    assert max(rows) <= 5 and sum(rows) == int(comp[:, 1:].sum())


def test_bad_sampling_settings_raise():
    """top_p=0 is refused by generate and temperature 0 by token_logprobs, each as a ValueError that
    names the setting (not a failure deep in torch, or log-probs that are all NaN)."""
    with pytest.raises(ValueError, match="top_p"):
        rollout.generate(None, None, [[1]], top_p=0)
    with pytest.raises(ValueError, match="temperature > 0"):
        rollout.token_logprobs(None, None, None, None, temperature=0)


def test_chat_stop_tokens_are_known(tiny_model):
    """<|im_end|> and <|endoftext|> must both end a turn, whatever eos the config names."""
    model, tok = tiny_model
    ids = rollout.stop_token_ids(model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids
    assert tok.convert_tokens_to_ids("<|endoftext|>") in ids


def test_no_nan_with_padding(tiny_model):
    """Fully masked pad rows in the prefill must not turn a real row's logits into NaN."""
    model, tok = tiny_model
    samples = rollout.generate(model, tok, [[5], chat_ids(tok)[2]], max_new_tokens=4, seed=0)
    assert all(s.logprobs and all(v == v for v in s.logprobs) for s in samples)


def test_missing_model_path_is_one_clear_error(tmp_path):
    """A typo in --model must say what was asked for, not print a 40-line traceback."""
    with pytest.raises(rollout.LoadError, match="not found: .*nope"):
        rollout.load(str(tmp_path / "nope"))
    with pytest.raises(rollout.LoadError, match="cannot load model 'no-such-org/no-such-model'"):
        rollout.load("no-such-org/no-such-model")
    with pytest.raises(rollout.LoadError,
                       match="cannot load model 'no-such-model': it is not a local directory"):
        rollout.load("no-such-model")  # an id without an org (like gpt2) goes to the hub
    with pytest.raises(rollout.LoadError, match="directory holds no loadable model"):
        rollout.load(str(tmp_path))  # a directory, but empty: say so, not "not a local directory"


def test_home_relative_model_path_loads(tiny_dir, monkeypatch):
    """`--model ~/models/x` must find the directory (os.path.isdir does not expand ~ by itself)."""
    monkeypatch.setenv("HOME", os.path.dirname(tiny_dir))
    model, _ = rollout.load("~/" + os.path.basename(tiny_dir), device="cpu")
    assert model.config.model_type == "qwen2"


def test_top_p_near_zero_is_greedy(tiny_model):
    """top-p keeps the smallest set reaching p: with p -> 0 that is the argmax, sampling greedy."""
    model, tok = tiny_model
    prompts = chat_ids(tok)
    greedy = rollout.generate(model, tok, prompts, max_new_tokens=12, temperature=0)
    nucleus = rollout.generate(model, tok, prompts, max_new_tokens=12, temperature=1.0, top_p=1e-6,
                               seed=5)
    assert [s.completion_ids for s in nucleus] == [s.completion_ids for s in greedy]
    assert all(abs(v) < 1e-5 for s in nucleus for v in s.logprobs)  # renormalised: probability 1


def test_top_p_logprobs_are_of_the_renormalised_distribution():
    """Tokens outside the nucleus get no mass; kept tokens' log-probs renormalise to sum 1."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(201, 4)
    u = torch.linspace(0, 1 - 1e-12, 201, dtype=torch.float64)  # the whole unit interval
    token, logp, _ = rollout.sample_next(logits, 1.0, 0.7, u)
    assert set(token.tolist()) == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
    assert torch.allclose(logp, torch.log(torch.tensor([0.5, 0.3]) / 0.8)[token], atol=1e-6)


def test_entropy_is_that_of_the_sampling_distribution(tiny_model):
    """Sample.entropy (logged to watch for collapse) is the mean over the completion of the entropy
    of the distribution each token was drawn from: temperature applied, top-p renormalised."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.tensor([0.5, 0.3], dtype=torch.float64) / 0.8
    _, _, entropy = rollout.sample_next(logits, 1.0, 0.7, torch.zeros(1, dtype=torch.float64))
    assert abs(entropy.item() - float(-(kept * kept.log()).sum())) < 1e-6
    model, tok = tiny_model
    samples = rollout.generate(model, tok, chat_ids(tok), n=2, max_new_tokens=10, temperature=0.7,
                               seed=3)
    ids, attn, comp = pack(samples)
    with torch.no_grad():
        logp = (model(input_ids=ids, attention_mask=attn).logits.double() / 0.7).log_softmax(-1)
    per_position = -(logp.exp() * logp).sum(-1)  # (B, T): entropy of the next-token distribution
    for i, s in enumerate(samples):
        start = len(s.prompt_ids)  # completion token t is drawn at position t - 1
        expected = per_position[i, start - 1:start - 1 + len(s.completion_ids)].mean().item()
        assert abs(s.entropy - expected) < 1e-4


# --- the preallocated-cache decode loop and per-sample random streams -----------------------

def uncached_greedy(model, prompt, steps, stops):
    """The plainest reference: a full forward over the whole prefix per token, argmax, stop."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] in stops:
                break
    return ids[len(prompt):]


def test_greedy_equals_uncached_forward(tiny_model):
    """The preallocated cache (written in place, read as views, rows compacted) must decode exactly
    what a full forward over the prefix decodes, whichever check interval ends the rows."""
    model, tok = tiny_model
    prompts = chat_ids(tok)
    free = rollout.generate(model, tok, prompts, max_new_tokens=30, temperature=0)
    stops = {free[0].completion_ids[3], free[1].completion_ids[9]}  # rows end at different steps
    reference = [uncached_greedy(model, p, 30, stops) for p in prompts]
    assert len({len(r) for r in reference}) > 1 and len(set(reference[2])) > 3
    for check_every in (1, 4, 64):
        with stop_tokens(model, stops):
            greedy = rollout.generate(model, tok, prompts, max_new_tokens=30, temperature=0,
                                      check_every=check_every)
        assert [s.completion_ids for s in greedy] == reference


def test_check_interval_does_not_change_samples(tiny_model):
    """Rows that stop keep decoding until the next check: their extra tokens must leave no trace in
    the completion, its log-probs, its entropy or its finished flag."""
    model, tok = tiny_model
    frequent = range(0, model.config.vocab_size, 20)  # ~5% a token: some rows stop, some run on
    with stop_tokens(model, frequent):
        runs = [rollout.generate(model, tok, chat_ids(tok), n=4, max_new_tokens=25, seed=11,
                                 check_every=k) for k in (1, 3, 8, 25)]
    lengths = [len(s.completion_ids) for s in runs[0]]
    assert len(set(lengths)) >= 4
    assert any(s.finished for s in runs[0]) and not all(s.finished for s in runs[0])
    for s in runs[0]:  # a completion ends at its first stop token
        assert not set(s.completion_ids[:-1]) & set(frequent)
        assert s.finished == (s.completion_ids[-1] in frequent)
    for other in runs[1:]:
        assert [(s.completion_ids, s.finished, s.text) for s in other] == \
               [(s.completion_ids, s.finished, s.text) for s in runs[0]]
        for a, b in zip(other, runs[0]):
            # fp32 sums vary with batch size
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
            assert a.entropy == pytest.approx(b.entropy, abs=1e-4)


def test_samples_do_not_depend_on_how_prompts_are_split(tiny_model):
    """With per-prompt seeds a prompt's samples are the same alone or in any batch, so a memory knob
    (--rollout-rows) never changes them; an int seed equals the per-prompt seeds derived from it."""
    model, tok = tiny_model
    prompts = chat_ids(tok)
    seeds = [101, -7, 2**63 + 5]
    frequent = range(0, model.config.vocab_size, 11)  # rows leave the batch at different steps
    with stop_tokens(model, frequent):
        whole = rollout.generate(model, tok, prompts, n=3, max_new_tokens=20, seed=seeds)
        first = rollout.generate(model, tok, prompts[:1], n=3, max_new_tokens=20, seed=seeds[:1])
        rest = rollout.generate(model, tok, prompts[1:], n=3, max_new_tokens=20, seed=seeds[1:])
    assert [s.completion_ids for s in whole] == [s.completion_ids for s in first + rest]
    assert len({tuple(s.completion_ids) for s in whole}) == 9  # no two samples share a stream
    by_int = rollout.generate(model, tok, prompts, n=2, max_new_tokens=12, seed=7)  # one per prompt
    by_list = rollout.generate(model, tok, prompts, n=2, max_new_tokens=12,
                               seed=rollout.prompt_seeds(7, len(prompts), "cpu").tolist())
    assert [s.completion_ids for s in by_int] == [s.completion_ids for s in by_list]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        rollout.generate(model, tok, prompts, seed=[1, 2])


def test_mix64_is_splitmix64():
    """The int64 tensor hash must be splitmix64 bit for bit (torch's >> is arithmetic, and overflow
    must wrap): its published first output from state 0 is 0xE220A8397B1DCDAF."""
    def reference(x):  # Python ints, unsigned 64-bit
        m = 2**64 - 1
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
        return x ^ (x >> 31)
    golden = 0x9E3779B97F4A7C15
    assert reference(golden) == 0xE220A8397B1DCDAF
    words = [golden, 0, 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF, 3 * golden % 2**64]
    got = rollout.mix64(torch.tensor([rollout._int64(w) for w in words]))
    assert [v % 2**64 for v in got.tolist()] == [reference(w) for w in words]


def chi_square(tokens, probs):
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    expected = probs.double() * len(tokens)
    assert (counts[expected == 0] == 0).all()  # a token outside the support was drawn
    kept = expected > 0
    return float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum()), int(kept.sum()) - 1


def test_sampler_draws_from_the_softmax():
    """The inverse-CDF sampler on the counter-based uniforms must follow softmax(logits / T) (top-p
    renormalised), across samples at one step and along one sample's steps. Chi-square with 4-5
    degrees of freedom: 40 is far beyond its 1e-6 quantile, while a sampler off by a few percent
    scores hundreds."""
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -3.0])
    draws = 40_000
    many_keys = rollout.sample_keys(rollout.prompt_seeds(3, draws // 4, "cpu"), 4)
    across = rollout.uniforms(many_keys, step=5)
    one_key = rollout.sample_keys(rollout.prompt_seeds([42], 1, "cpu"), 1)
    along = torch.cat([rollout.uniforms(one_key, t) for t in range(draws // 8)])
    for temperature, top_p in ((1.0, 1.0), (0.7, 1.0), (1.0, 0.9)):
        probs = (logits / temperature).softmax(-1)
        if top_p < 1:
            order = probs.argsort(descending=True)
            before = probs[order].cumsum(0) - probs[order]
            probs[order[before >= top_p]] = 0
            probs = probs / probs.sum()
        assert (probs == 0).any() == (top_p < 1)
        for u in (across, along):
            token, _, _ = rollout.sample_next(logits.expand(len(u), -1), temperature, top_p, u)
            stat, dof = chi_square(token, probs)
            assert dof >= 3 and stat < 40, (temperature, top_p, stat)


def test_offline_hub_id_fails_at_once_in_one_line(monkeypatch):
    """An unknown slash-less name on an offline machine: the hub is probed once, the error comes at
    once (not after a minute of retries) and is one line saying what was tried and how to fix it."""
    tried = []
    monkeypatch.setattr(rollout, "hub_reachable", lambda: tried.append(1) or False)
    start = time.monotonic()
    with pytest.raises(rollout.LoadError, match="not a local directory, not in the Hugging Face "
                                                "cache, and the hub is unreachable") as e:
        rollout.load("qwen-misspelt")
    assert tried == [1] and time.monotonic() - start < 20 and "\n" not in str(e.value)


def test_hub_is_never_probed_offline(monkeypatch):
    """HF_HUB_OFFLINE=1 (as in these tests) means no connection attempt at all."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(rollout.socket, "create_connection",
                        lambda *a, **k: pytest.fail("probed the hub"))
    assert rollout.hub_reachable() is False


def test_chunk_logprobs_stay_fp32_under_autocast():
    """Under bf16 autocast the lm-head matmul must still run in fp32 (bf16 logits err by ~0.1)."""
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(5, 16, generator=gen) * 4, torch.randn(50, 16, generator=gen)
    targets = torch.randint(0, 50, (5,), generator=gen)
    plain = rollout._chunk_logprobs(hidden, weight, targets, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = rollout._chunk_logprobs(hidden, weight, targets, 1.0)
    assert under.dtype == torch.float32 and torch.allclose(under, plain, atol=1e-5)
