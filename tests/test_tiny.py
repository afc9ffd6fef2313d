"""tiny.py: the offline model every other test stands on."""
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import rollout
import tiny


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    """`make` is seeded: a rebuilt test model must be the same model."""
    a, b, c = (load_file(f"{tiny.make(str(tmp_path / d), seed=s)}/model.safetensors")
               for d, s in (("a", 0), ("b", 0), ("c", 1)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_loads_with_from_pretrained_and_chatml_template(tiny_dir):
    """Plain Hugging Face loading works, and prompts use Qwen's ChatML layout."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    text = tok.decode(rollout.chat_prompt(tok, "What is 12 * 34?"))
    assert text == "<|im_start|>user\nWhat is 12 * 34?<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_round_trips_any_text(tiny_dir):
    """Byte-level BPE: any string, including unseen unicode, encodes and decodes back unchanged."""
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    for text in ["<answer>-3/4</answer>", "naïve ünïcödé ✓ 漢字", "```python\nprint(1)\n```", "  \t\n"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_format_pretraining_lowers_the_loss(tmp_path):
    """A few steps on synthetic transcripts must reduce the reply cross-entropy and save the weights."""
    out = tiny.make(str(tmp_path / "m"), init_std=0.02)
    before = load_file(f"{out}/model.safetensors")
    losses = tiny.pretrain(out, steps=30, batch=4, log_every=0)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    after = load_file(f"{out}/model.safetensors")
    assert not all(torch.equal(before[k], after[k]) for k in before)
