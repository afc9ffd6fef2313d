"""tiny.py: the offline model every other test stands on."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import rollout
import tiny
from conftest import interrupted_pretraining_keeps_out


@pytest.mark.slow
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
    for text in ["<answer>-3/4</answer>", "naïve ünïcödé ✓ 漢字", "```python\nprint(1)\n```",
                 "  \t\n"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


@pytest.mark.slow
def test_format_pretraining_lowers_the_loss(tmp_path):
    """A few steps on synthetic transcripts must reduce the reply cross-entropy and save the
    weights."""
    out = tiny.make(str(tmp_path / "m"), init_std=0.02)
    before = load_file(f"{out}/model.safetensors")
    losses = tiny.pretrain(out, steps=30, batch=4, log_every=0)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    after = load_file(f"{out}/model.safetensors")
    assert not all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("argv, message", [
    (["--layers", "0"], "--layers must be at least 1"),
    (["--hidden", "-4"], "--hidden must be at least 1"),
    (["--kv-heads", "0"], "--kv-heads must be at least 1"),
    (["--pretrain", "-5"], "--pretrain must be >= 0"),
    (["--seed", "99999999999"], "--seed must be in [0, 2**32)"),
    (["--heads", "3"], "--hidden must be divisible by --heads"),
])
def test_bad_tiny_flags_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    """A size or step count no model can have, or a seed out of range, is refused before the
    model constructor sees it: one line on stderr, exit code 2, nothing written."""
    out = tmp_path / "model"
    with pytest.raises(SystemExit) as e:
        tiny.main(["--out", str(out), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_tiny_refuses_to_overwrite_a_model_unless_asked(tmp_path, capsys):
    out = tmp_path / "model"
    tiny.main(["--out", str(out)])
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as e:
        tiny.main(["--out", str(out), "--seed", "1"])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    tiny.main(["--out", str(out), "--seed", "1", "--overwrite"])
    assert (out / "model.safetensors").read_bytes() != before


@pytest.mark.slow
def test_a_failed_or_interrupted_write_leaves_out_as_it_was(tmp_path, monkeypatch):
    """The model is built beside --out and moved there only once complete: Ctrl-C during
    pre-training leaves no half-written model, and over an existing one (--overwrite) keeps it."""
    interrupted_pretraining_keeps_out(tiny.main, ["--pretrain", "3"], tmp_path, monkeypatch)
