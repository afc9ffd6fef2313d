"""A tiny offline model: Qwen2 architecture, its own byte-level tokenizer, a Qwen chat template.

Nothing here downloads anything. `make(out_dir)` writes a randomly initialised
`Qwen2ForCausalLM` and a `PreTrainedTokenizerFast` with `save_pretrained`
(safetensors), so `rollout.load(out_dir)` and `AutoModelForCausalLM.from_pretrained(out_dir)`
both load it. The same call with the same seed writes the same weights.

The tokenizer maps each UTF-8 byte to one token (256 ids) and adds the chat special
tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`. Its chat template is Qwen's
ChatML layout, so prompts look exactly as they do for Qwen2.5-Instruct.

What it is not: a model that knows anything. Random weights emit random bytes; the
tiny model exists to test plumbing and measure speed, not to show learning on tasks.

    python tiny.py --out /tmp/tiny [--layers 2 --hidden 64 --heads 4 --kv-heads 2]
"""
import argparse
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2.5's ChatML layout: each message framed by <|im_start|>role\n ... <|im_end|>\n
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: 256 byte tokens (no merges) + the three chat special tokens."""
    byte_chars = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",  # end of an assistant turn, as in Qwen2.5-Instruct
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def make(out_dir, layers=2, hidden=64, heads=4, kv_heads=2, intermediate=None,
         max_positions=8192, init_std=0.3, seed=0):
    """Write a seeded random Qwen2 model and its tokenizer to `out_dir`; return `out_dir`."""
    tokenizer = make_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]),
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init_std,  # wider than Qwen's 0.02 so greedy outputs vary with the prompt
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)  # safetensors by default
    tokenizer.save_pretrained(out_dir)
    return out_dir


# Real Qwen2.5 shapes, for speed and memory measurements with random weights (throughput and
# memory do not depend on the weights). Numbers from the models' published config.json files.
QWEN25_SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
}


def random_real(shape, device="cpu", dtype=torch.float32, seed=0):
    """(model, tokenizer): random weights in a real Qwen2.5 shape with the byte tokenizer."""
    tokenizer = make_tokenizer()
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                         eos_token_id=tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]),
                         pad_token_id=tokenizer.pad_token_id, **QWEN25_SHAPES[shape])
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval(), tokenizer


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a tiny random Qwen2 model + tokenizer (offline).")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.hidden % a.heads or a.heads % a.kv_heads:
        p.error("--hidden must be divisible by --heads, and --heads by --kv-heads")
    make(a.out, layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, seed=a.seed)
    print(f"wrote tiny Qwen2 model to {a.out}")


if __name__ == "__main__":
    main()
