"""A tiny offline model: Qwen2 architecture, its own byte-level tokenizer, a Qwen chat template.

Nothing here downloads anything. `make(out_dir)` writes a randomly initialised
`Qwen2ForCausalLM` and a `PreTrainedTokenizerFast` with `save_pretrained`
(safetensors), so `rollout.load(out_dir)` and `AutoModelForCausalLM.from_pretrained(out_dir)`
both load it. The same call with the same seed writes the same weights.

The tokenizer is a byte-level BPE (1,024 ids) whose merges are learnt, in a second, from
the task prompts; it carries the chat special tokens `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>`. Its chat template is Qwen's ChatML layout, so prompts look exactly as they do
for Qwen2.5-Instruct.

`pretrain(out_dir, steps)` (`--pretrain STEPS`) then teaches it, on CPU in a minute or
two, the *format* of the three tasks: synthetic transcripts of the real proposer and
solver prompts answered in the contracted layouts (a product question; a `Selected
Question:` line; a problem with `Test Cases:`; `<think>`/`<answer>`; a ```python block).
It learns the layout, not arithmetic, so an offline SQLM run has valid proposals,
parseable answers and rewards that are not all zero. `pretrain` takes any transcript
function: the tiny world's base model, which does multiply, is this loop on that world's
corpus (`python experiments.py pretrain`; corpus, splits and command live in experiments.py).

What it is not: a model that knows anything. Random weights emit random bytes; the
tiny model exists to test plumbing and measure speed, not to reproduce the paper.

    python tiny.py --out /tmp/tiny [--layers 2 --hidden 64 --heads 4 --kv-heads 2]
    python tiny.py --out /tmp/tiny-fmt --pretrain 200   # then taught the tasks' formats
"""
import argparse
import contextlib
import os
import random
import shutil
import sys

if __name__ == "__main__":  # Ctrl-C or SIGTERM while torch loads: one line, no traceback
    import cli
    cli.exit_on_signals("tiny.py: interrupted while starting; nothing was written")

import cli
import torch
from safetensors import SafetensorError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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


def tokenizer_corpus(seed=0, transcripts=2000):
    """Text the BPE merges are learnt from: the task prompts and synthetic transcripts."""
    rng = random.Random(seed)
    for _ in range(transcripts):
        yield from transcript(rng)


def make_tokenizer(vocab_size=1024, single_digits=False,
                   corpus=None) -> PreTrainedTokenizerFast:
    """Byte-level BPE (every byte sequence encodes) + the three chat special tokens.

    The merges are learnt from the task prompts, so a solver prompt is a few hundred tokens
    rather than a thousand bytes: that is what makes CPU pre-training and runs quick.
    single_digits: split every digit into its own token before the merges (Qwen2.5 does the
    same), so "376" is three ids, 3 7 6, and a product is written digit by digit; the
    default BPE learns multi-digit tokens such as "37", which a tiny model cannot multiply
    with. corpus: the texts the merges are learnt from (default: `tokenizer_corpus()`).
    """
    core = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    digits = pre_tokenizers.Digits(individual_digits=True)
    core.pre_tokenizer = (pre_tokenizers.Sequence([digits, byte_level])
                          if single_digits else byte_level)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(tokenizer_corpus() if corpus is None else corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",  # end of an assistant turn, as in Qwen2.5-Instruct
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def make(out_dir, layers=2, hidden=64, heads=4, kv_heads=2, intermediate=None,
         max_positions=8192, init_std=0.3, seed=0, tokenizer=None):
    """Write a seeded random Qwen2 model and its tokenizer (default: `make_tokenizer()`) to
    `out_dir`; return `out_dir`."""
    tokenizer = tokenizer or make_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]),
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
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       vocab_size=152064, num_attention_heads=28, num_key_value_heads=4,
                       tie_word_embeddings=False),
}


def shape_config(shape):
    """The Qwen2Config of a real Qwen2.5 shape (vocabulary 151,936 unless the shape says
    otherwise)."""
    return Qwen2Config(**{"vocab_size": 151936, "max_position_embeddings": 32768,
                          "rope_theta": 1e6, **QWEN25_SHAPES[shape]})


def random_real(shape, device="cpu", dtype=torch.float32, seed=0):
    """(model, tokenizer): random weights in a real Qwen2.5 shape with the byte tokenizer."""
    tokenizer = make_tokenizer()
    config = shape_config(shape)
    config.eos_token_id = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval(), tokenizer


# --- format pre-training on synthetic transcripts --------------------------------------

CODE_FAMILIES = [  # (statement, program body on `nums`, reference function)
    ("the sum of the integers", "print(sum(nums))", lambda xs: str(sum(xs))),
    ("the largest integer", "print(max(nums))", lambda xs: str(max(xs))),
    ("the smallest integer", "print(min(nums))", lambda xs: str(min(xs))),
    ("the integers in increasing order", "print(*sorted(nums))",
     lambda xs: " ".join(map(str, sorted(xs)))),
    ("the integers in reverse order", "print(*nums[::-1])",
     lambda xs: " ".join(map(str, xs[::-1]))),
    ("how many integers are even", "print(sum(x % 2 == 0 for x in nums))",
     lambda xs: str(sum(x % 2 == 0 for x in xs))),
]


def transcript(rng):
    """One (user prompt, assistant reply) pair in a task's contracted layout, picked at random."""
    import prompts  # the real prompt texts, so the tiny model sees what SQLM will show it
    kind = rng.choice(["arith_p", "arith_s", "algebra_p", "algebra_s", "code_p", "code_s"])
    if kind.startswith("arith"):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        question = f"What is {a} * {b}?"
        if kind == "arith_p":
            return prompts.proposer_prompt("arith"), question
        working = f"<think>\n{a} * {b} = {a * b}\n</think>\n<answer>{a * b}</answer>"
        return prompts.solver_prompt("arith", question), working
    if kind.startswith("algebra"):
        x, k, c = rng.randint(-20, 20), rng.randint(2, 9), rng.randint(1, 50)
        question = f"{k} times a number, plus {c}, equals {k * x + c}. What is the number?"
        if kind == "algebra_p":
            return (prompts.proposer_prompt("algebra"),
                    f"<think>\nOne unknown, unique.\n</think>\nSelected Question: {question}")
        return (prompts.solver_prompt("algebra", question),
                f"<think>\n{k}x + {c} = {k * x + c}, so x = {x}\n</think>\n<answer>{x}</answer>")
    statement, body, ref = rng.choice(CODE_FAMILIES)
    problem = f"Read a line of integers and print {statement}."
    if kind == "code_p":
        tests = []
        for _ in range(5):
            xs = [rng.randint(-50, 50) for _ in range(rng.randint(1, 6))]
            tests.append(f"{' '.join(map(str, xs))} ||| {ref(xs)}")
        return prompts.proposer_prompt("code"), problem + "\nTest Cases:\n" + "\n".join(tests)
    program = f"nums = list(map(int, input().split()))\n{body}"
    return (prompts.solver_prompt("code", problem),
            f"<think>\nRead, compute, print.\n</think>\n```python\n{program}\n```")


def pretrain(out_dir, steps=200, batch=8, lr=3e-3, seed=0, log_every=25, transcripts=transcript):
    """Train the saved model by cross-entropy on the assistant replies only, then save it.

    transcripts(rng) -> (user prompt, reply): default `transcript` (the three tasks' formats);
    `experiments.arith_transcripts(...)` for the tiny world. Linear warm-up, linear decay to 0.
    """
    import rollout
    model, tokenizer = rollout.load(out_dir, device="cpu")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, min(20, steps // 10))  # linear warm-up, then linear decay to 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * (1 - i / steps))
    model.train()
    losses = []
    for step in range(steps):
        pairs = []
        for _ in range(batch):
            user, reply = transcripts(rng)
            reply_ids = tokenizer.encode(reply, add_special_tokens=False) + [end]
            pairs.append((rollout.chat_prompt(tokenizer, user), reply_ids))
        ids, attn, comp = rollout.pack(pairs, tokenizer.pad_token_id, "cpu")
        logp = rollout.token_logprobs(model, ids, attn, comp)
        loss = -(logp.sum() / comp.sum())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"pretrain {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    model.eval().save_pretrained(out_dir)
    return losses


def check_shape(p, a):
    """One line and exit 2 for a shape no model can have, an --out that holds something, a bad
    seed."""
    for flag in ("layers", "hidden", "heads", "kv_heads"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(a, flag)})")
    if not 0 <= a.seed < 2**32:
        p.error(f"--seed must be in [0, 2**32) (got {a.seed})")
    if os.path.isfile(a.out):
        p.error(f"--out {a.out} is a file, not a directory")
    if os.path.isdir(a.out) and os.listdir(a.out) and not a.overwrite:
        p.error(f"--out {a.out} already holds files; pass --overwrite to replace the model there")
    parent = os.path.dirname(os.path.abspath(a.out))
    try:  # the model is built next to --out and renamed onto it: the parent must be writable
        cli.check_creatable(parent, "--out")
    except ValueError as e:
        p.error(str(e).replace(f"--out {parent}", f"--out {a.out}", 1))
    if a.hidden % a.heads or a.heads % a.kv_heads or (a.hidden // a.heads) % 2:
        p.error("--hidden must be divisible by --heads into an even head size (rotary embeddings), "
                "and --heads by --kv-heads")


def add_shape_args(p, layers=2, hidden=64):
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="write over a model already in --out")
    p.error = lambda message: (print(f"{p.prog}: error: {message}", file=sys.stderr), sys.exit(2))


@contextlib.contextmanager
def staged(out, prog="tiny.py"):
    """Build a model in a sibling directory and move it onto `out` only once it is complete, so a
    failed or interrupted run leaves `out` as it was (absent, or the model --overwrite would
    replace). A failing disk (no space, read-only, permissions) is one line, `prog: error: ...`,
    and exit code 2."""
    work = f"{os.path.abspath(out)}.partial-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(work), exist_ok=True)
        yield work
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(work, out)
    except (OSError, SafetensorError) as e:
        reason = cli.os_reason(e, os.path.dirname(work))  # before the clean-up frees the space
        shutil.rmtree(work, ignore_errors=True)
        print(f"{prog}: error: cannot write --out {out} ({reason}); it is as it was before",
              file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="tiny.py", description=(
        "Write a tiny random Qwen2 model + tokenizer (offline). `experiments.py pretrain --help`: "
        "the tiny world's base model, which multiplies."))
    add_shape_args(p)
    p.add_argument("--pretrain", type=int, default=0, metavar="STEPS",
                   help="then teach it the tasks' formats on synthetic transcripts (CPU; try 200)")
    a = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    check_shape(p, a)
    if a.pretrain < 0:
        p.error(f"--pretrain must be >= 0 steps (got {a.pretrain})")
    with staged(a.out) as out:
        make(out, layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, seed=a.seed,
             init_std=0.02 if a.pretrain else 0.3)  # Qwen's own init when it is going to be trained
        if a.pretrain:
            pretrain(out, steps=a.pretrain, seed=a.seed)
    print(f"wrote tiny Qwen2 model to {a.out}"
          + (f", pre-trained on task formats for {a.pretrain} steps" if a.pretrain else ""))


if __name__ == "__main__":
    # `staged` has removed the half-written model by the time the line is printed
    cli.exit_on_interrupt(main, "tiny.py: interrupted; --out is as it was before")
