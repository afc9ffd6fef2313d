"""Model families beyond Qwen2: tiny random models built from configs (no downloads), served exactly
by `rollout.generate` and trained only where their logits are hidden @ W.

Each family is the `transformers` model type of its config, 2 layers of width 64 over the tiny
tokenizer's 1,024 ids; a family with sliding-window attention gets a window of 8 tokens, shorter
than the prompts, so every row decodes past it.
"""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import rollout

WINDOW = 8
PROMPTS = ["hi", "what is 12 * 34?", "a longer prompt, so that the batch needs left padding " * 2]
SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, initializer_range=0.3)  # wide init: outputs vary by prompt

# family -> config overrides; the window where the family has one
GEMMA = dict(head_dim=16, initializer_range=0.02)  # embeddings times sqrt(64): 0.3 would saturate
WINDOWED = {
    "mistral": dict(sliding_window=WINDOW),
    "gemma2": dict(GEMMA, sliding_window=WINDOW, final_logit_softcapping=None),
    "gemma3_text": dict(GEMMA, sliding_window=WINDOW,
                        layer_types=["sliding_attention", "full_attention"]),  # its 5:1, in two
    "qwen2": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "phi3": dict(sliding_window=WINDOW),
}
PLAIN = {**WINDOWED, "qwen3": {}, "llama": {}, "mixtral": dict(sliding_window=WINDOW),
         "gemma": GEMMA, "gpt2": {}, "gpt_neox": {}, "olmo": {}, "olmo2": {},
         "stablelm": {}, "starcoder2": dict(sliding_window=WINDOW), "falcon": {}}
NOT_PLAIN = {  # family, overrides, the cause the refusal names
    # logits of ~0.1, where tanh(x / 30) * 30 is x to within 1e-5
    "gemma2 soft-capped": ("gemma2", dict(GEMMA, initializer_range=0.005), "soft-capped at 30.0"),
    "cohere logit scale": ("cohere", {}, "multiplied by 0.0625"),
    "granite logits scaling": ("granite", dict(logits_scaling=8.0), "divided by 8.0"),
}


def family_model(tokenizer, model_type, seed=0, **overrides):
    """A seeded tiny random `model_type` model for the tiny tokenizer, in eval mode."""
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=None,
                                  eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
                                  **{**SIZES, **overrides})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def chat_ids(tokenizer):
    return [rollout.chat_prompt(tokenizer, p) for p in PROMPTS]


def hf_greedy(model, tokenizer, prompts, new):
    """Hugging Face `generate`, greedy, on the same left-padded batch with the same stop tokens."""
    ids, mask, _ = rollout.left_pad(prompts, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                             eos_token_id=rollout.stop_token_ids(model, tokenizer),
                             pad_token_id=tokenizer.pad_token_id)
    return out[:, ids.shape[1]:].tolist()


def pack(samples):
    return rollout.pack([(s.prompt_ids, s.completion_ids) for s in samples], pad_id=0, device="cpu")


# --- sliding-window attention ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family", WINDOWED)
def test_sliding_window_greedy_equals_hf_generate(tiny_model, family):
    """A left-padded batch decoded past the window equals Hugging Face `generate` token for token.
    Guards: a prefill cache that kept only the window's keys (Mistral's padded rows decoded other
    tokens; Gemma2 crashed on a size mismatch). The same weights with a wide window decode
    differently, so the window is exercised."""
    _, tok = tiny_model
    prompts = chat_ids(tok)
    model = family_model(tok, family, **WINDOWED[family])
    ours = [s.completion_ids for s in rollout.generate(model, tok, prompts, max_new_tokens=24,
                                                       temperature=0)]
    theirs = hf_greedy(model, tok, prompts, 24)
    assert [t[:len(o)] for o, t in zip(ours, theirs)] == ours
    assert max(len(p) + len(o) for p, o in zip(prompts, ours)) > 3 * WINDOW
    assert len({t for o in ours for t in o}) > 5  # not one token repeated
    wide = family_model(tok, family, **{**WINDOWED[family], "sliding_window": 4096})
    assert [s.completion_ids for s in rollout.generate(wide, tok, prompts, max_new_tokens=24,
                                                       temperature=0)] != ours


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_sliding_window_samples_are_what_training_scores_however_split(tiny_model, family):
    """Past the window, sampled rows that leave the batch at different steps report the log-probs
    training recomputes, and a prompt's samples are the same in one call or split into calls
    (--rollout-rows and the process count change nothing)."""
    _, tok = tiny_model
    prompts = chat_ids(tok)
    model = family_model(tok, family, **WINDOWED[family])
    seeds = [3, 4, 5]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = list(range(0, len(tok), 13))  # rows stop apart
    try:
        whole = rollout.generate(model, tok, prompts, n=3, max_new_tokens=30, seed=seeds)
        split = [s for i in range(3) for s in rollout.generate(
            model, tok, prompts[i:i + 1], n=3, max_new_tokens=30, seed=seeds[i:i + 1])]
    finally:
        model.generation_config.eos_token_id = saved
    assert len({len(s.completion_ids) for s in whole}) >= 3
    assert [s.completion_ids for s in whole] == [s.completion_ids for s in split]
    ids, attn, comp = pack(whole)
    logp = rollout.token_logprobs(model, ids, attn, comp)
    for i, s in enumerate(whole):
        start = len(s.prompt_ids)
        assert torch.allclose(logp[i, start:start + len(s.completion_ids)],
                              torch.tensor(s.logprobs), atol=1e-4)


# --- which heads train: checked numerically ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family", PLAIN)
def test_plain_heads_load_and_logprobs_equal_the_forwards_log_softmax(tiny_model, tmp_path, family):
    """Any family whose logits are hidden @ W trains, whatever its model type: saved and loaded
    through rollout.load, its head check passes and token_logprobs equals a float64 log-softmax of
    the Hugging Face forward's full-vocabulary logits. Guards: a list of model types that refused
    GPT-2, GPT-NeoX, Phi3, OLMo, Gemma2 without a soft-cap and Gemma3."""
    _, tok = tiny_model
    family_model(tok, family, **PLAIN[family]).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok = rollout.load(str(tmp_path), device="cpu")
    rollout.check_plain_head(model)
    samples = rollout.generate(model, tok, chat_ids(tok), n=2, max_new_tokens=12, seed=1)
    ids, attn, comp = pack(samples)
    logp = rollout.token_logprobs(model, ids, attn, comp, temperature=0.8)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits.double() / 0.8
    ref = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1) * comp[:, 1:]
    assert (logp[:, 1:].double() - ref).abs().max() < 1e-5
    assert comp.sum() > 20


@pytest.mark.parametrize("case", NOT_PLAIN)
def test_a_head_that_is_not_plain_is_refused_in_one_line(tiny_model, case):
    """A soft-cap or a logit scale is one line naming it (not wrong log-probs), from the check at
    load and from token_logprobs. Guards: a check that read the logits at a random model's small
    scale, where tanh(x / 30) * 30 is x to within rounding."""
    _, tok = tiny_model
    family, overrides, cause = NOT_PLAIN[case]
    model = family_model(tok, family, **overrides)
    with pytest.raises(ValueError, match="cannot be trained") as e:
        rollout.check_plain_head(model)
    assert f"not hidden @ W of its lm-head ({cause})" in str(e.value)
    assert "\n" not in str(e.value)
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(ValueError, match=cause):
        rollout.token_logprobs(model, ids, torch.ones_like(ids), torch.ones_like(ids))


def test_a_head_bias_is_refused_and_a_zero_one_is_not(tiny_model):
    """The check is of the numbers: a Llama head given a bias is refused once the bias is nonzero;
    a zero bias adds nothing (and training never moves it: token_logprobs does not read it)."""
    _, tok = tiny_model
    model = family_model(tok, "llama")
    head = model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
    rollout.check_plain_head(model)
    biased = family_model(tok, "llama")
    head = biased.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.linspace(-1, 1, head.out_features))
    with pytest.raises(ValueError, match="its lm-head adds a bias"):
        rollout.check_plain_head(biased)
