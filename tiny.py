"""A tiny offline model: Qwen2 architecture, its own byte-level tokenizer, a Qwen chat template.

Nothing here downloads anything. `make(out_dir)` writes a randomly initialised
`Qwen2ForCausalLM` and a `PreTrainedTokenizerFast` with `save_pretrained`
(safetensors), so `rollout.load(out_dir)` and `AutoModelForCausalLM.from_pretrained(out_dir)`
both load it. The same call with the same seed writes the same weights.

The tokenizer is a byte-level BPE (1,024 ids) whose merges are learnt, in a second, from
the task prompts; it carries the chat special tokens `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>`. Its chat template is Qwen's
ChatML layout, so prompts look exactly as they do for Qwen2.5-Instruct.

`pretrain(out_dir, steps)` (`--pretrain STEPS`) then teaches it, on CPU in a minute or
two, the *format* of the three tasks: synthetic transcripts of the real proposer and
solver prompts answered in the contracted layouts (a product question; a `Selected
Question:` line; a problem with `Test Cases:`; `<think>`/`<answer>`; a ```python block).
It learns the layout, not arithmetic, so an offline SQLM run has valid proposals,
parseable answers and rewards that are not all zero.

What it is not: a model that knows anything. Random weights emit random bytes; the
tiny model exists to test plumbing and measure speed, not to reproduce the paper.

    python tiny.py --out /tmp/tiny [--layers 2 --hidden 64 --heads 4 --kv-heads 2] [--pretrain 200]
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


def make_tokenizer(vocab_size=1024, single_digits=False, corpus=None) -> PreTrainedTokenizerFast:
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
    core.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                          if single_digits else byte_level)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
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
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, vocab_size=152064,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}


def shape_config(shape):
    """The Qwen2Config of a real Qwen2.5 shape (vocabulary 151,936 unless the shape says otherwise)."""
    return Qwen2Config(**{"vocab_size": 151936, "max_position_embeddings": 32768, "rope_theta": 1e6, **QWEN25_SHAPES[shape]})


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
    ("the integers in increasing order", "print(*sorted(nums))", lambda xs: " ".join(map(str, sorted(xs)))),
    ("the integers in reverse order", "print(*nums[::-1])", lambda xs: " ".join(map(str, xs[::-1]))),
    ("how many integers are even", "print(sum(x % 2 == 0 for x in nums))", lambda xs: str(sum(x % 2 == 0 for x in xs))),
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
        return prompts.solver_prompt("arith", question), f"<think>\n{a} * {b} = {a * b}\n</think>\n<answer>{a * b}</answer>"
    if kind.startswith("algebra"):
        x, k, c = rng.randint(-20, 20), rng.randint(2, 9), rng.randint(1, 50)
        question = f"{k} times a number, plus {c}, equals {k * x + c}. What is the number?"
        if kind == "algebra_p":
            return prompts.proposer_prompt("algebra"), f"<think>\nOne unknown, unique.\n</think>\nSelected Question: {question}"
        return prompts.solver_prompt("algebra", question), f"<think>\n{k}x + {c} = {k * x + c}, so x = {x}\n</think>\n<answer>{x}</answer>"
    statement, body, ref = rng.choice(CODE_FAMILIES)
    problem = f"Read a line of integers and print {statement}."
    if kind == "code_p":
        tests = []
        for _ in range(5):
            xs = [rng.randint(-50, 50) for _ in range(rng.randint(1, 6))]
            tests.append(f"{' '.join(map(str, xs))} ||| {ref(xs)}")
        return prompts.proposer_prompt("code"), problem + "\nTest Cases:\n" + "\n".join(tests)
    program = f"nums = list(map(int, input().split()))\n{body}"
    return prompts.solver_prompt("code", problem), f"<think>\nRead, compute, print.\n</think>\n```python\n{program}\n```"


# --- the arith world: a base model that multiplies, unreliably --------------------------

PROPOSER_SHAPES = ((1, 1), (2, 1), (2, 2), (3, 1), (3, 2))  # what the base proposer writes, easy to hard
# The curriculum world's proposer (`--proposer-mix curriculum`): mostly problems the solver learns
# to answer unanimously within a few steps (1x1, one line of working), a quarter at the frontier it
# was taught and slips on (2x1), nothing beyond (docs/tiny_world.md, 'A world where the curriculum
# should matter').
CURRICULUM_MIX = {(1, 1): 0.75, (2, 1): 0.25}


def parse_mix(spec):
    """"curriculum" -> CURRICULUM_MIX; "1x1:3,2x1:1" -> {(1, 1): 3.0, (2, 1): 1.0}; ValueError is one line."""
    if spec == "curriculum":
        return dict(CURRICULUM_MIX)
    mix = {}
    try:
        for part in spec.split(","):
            shape, weight = part.split(":")
            a, b = (int(d) for d in shape.split("x"))
            mix[(a, b)] = float(weight)
    except ValueError:
        mix = {}
    if not mix or any(not 1 <= min(s) <= max(s) <= 4 for s in mix) or any(w < 0 for w in mix.values()) \
            or not sum(mix.values()) > 0:
        raise ValueError(f"--proposer-mix must be 'curriculum' or look like 1x1:0.75,2x1:0.25 "
                         f"(non-negative weights, 1 to 4 digits a side), not {spec!r}")
    return mix


def corrupt_one_digit(value, rng):
    """`value` with one digit, chosen at random, replaced by another (no new leading zero)."""
    digits = list(str(value))
    i = rng.randrange(len(digits))
    choices = [d for d in "0123456789" if d != digits[i] and not (d == "0" and i == 0 and len(digits) > 1)]
    digits[i] = rng.choice(choices)
    return int("".join(digits))


def column_working(a, b, bad=None, rng=None):
    """(lines, answer): a * b for a one-digit b by the column method, right to left.

    47 * 8 -> lines [("7 * 8", 56), ("4 * 8", 32), ("32 + 5", 37)], answer "376": each
    digit's product, plus the carry (the tens of the step before) when there is one; the
    answer is the last value followed by the units digits the earlier steps wrote down.
    Every line is a one-digit fact or a small sum, so a model that learns them on some pairs
    can multiply pairs it never saw (a summed partial-product line, 320 + 56 = 376, is new
    for every pair, and a tiny model learns it far more slowly). If `bad` is a line index,
    that line's value has one digit wrong (`corrupt_one_digit`) and every later line and the
    answer follow from the lines as written.
    """
    if not 0 <= b <= 9:
        raise ValueError(f"the column method here takes a one-digit b (got {b})")
    lines = []

    def write(left, value):
        lines.append((left, corrupt_one_digit(value, rng) if len(lines) == bad else value))
        return lines[-1][1]

    digits, carry, low = [int(d) for d in str(a)][::-1], 0, ""
    for i, d in enumerate(digits):
        value = write(f"{d} * {b}", d * b)
        if carry:
            value = write(f"{value} + {carry}", value + carry)
        if i < len(digits) - 1:
            low, carry = str(value % 10) + low, value // 10
    return lines, str(value) + low


def arith_reply(a, b, rng, corrupt=0.0):
    """The solver's reply to "What is a * b?": the column method in <think>, then <answer>.

    With probability `corrupt` one digit of one line's value is wrong (a line chosen
    uniformly) and everything after it follows from it, so the answer is the one the
    written working implies: a model trained on these is sometimes wrong when sampled but
    right in its majority, the regime where majority-vote RL has something to gain.
    """
    bad = rng.randrange(len(column_working(a, b)[0])) if rng.random() < corrupt else None
    lines, answer = column_working(a, b, bad, rng)
    working = "\n".join(f"{left} = {v}" for left, v in lines)
    return f"<think>\n{working}\n</think>\n<answer>{answer}</answer>"


def world_pairs(shapes):
    """{shape: [(a, b)]} of the train split only: the base never sees a dev or held-out pair."""
    import eval as world  # the split lives with the eval sets, so both sides use one hash
    return {shape: [(a, b) for a in world.operands(shape[0]) for b in world.operands(shape[1])
                    if world.world_split(a, b) == "train"] for shape in shapes}


def arith_transcripts(solver_shapes=((2, 1), (1, 1)), corrupt=0.3, proposer_share=0.15,
                      proposer_shapes=PROPOSER_SHAPES, proposer_mix=None):
    """rng -> (user prompt, reply): the arith task's real prompts, as `transcript` does.

    Solver turns (1 - proposer_share): a train-split pair of a shape in `solver_shapes`
    (shape first, uniformly, so 1x1 is not drowned by 2x1), answered by `arith_reply`.
    Proposer turns: "What is a * b?" of a shape in `proposer_shapes`, uniformly, train pairs
    only, so the proposer starts with a spread of difficulties and no answer in its reply.
    proposer_mix: {shape: weight} instead of `proposer_shapes` drawn uniformly (the
    curriculum world, `CURRICULUM_MIX`); None keeps the uniform draw and its random stream.
    """
    import prompts
    if proposer_mix is not None:
        proposer_shapes = tuple(s for s, w in proposer_mix.items() if w > 0)
        weights = [proposer_mix[s] for s in proposer_shapes]
    solver_pairs, proposer_pairs = world_pairs(solver_shapes), world_pairs(proposer_shapes)

    def proposer_shape(rng):
        return rng.choice(proposer_shapes) if proposer_mix is None else rng.choices(proposer_shapes, weights)[0]

    def draw(rng):
        if rng.random() < proposer_share:
            a, b = rng.choice(proposer_pairs[proposer_shape(rng)])
            return prompts.proposer_prompt("arith"), f"What is {a} * {b}?"
        a, b = rng.choice(solver_pairs[rng.choice(solver_shapes)])
        return prompts.solver_prompt("arith", f"What is {a} * {b}?"), arith_reply(a, b, rng, corrupt)
    return draw


def arith_tokenizer(seed=0, transcripts=2000):
    """One token per digit, merges learnt from arith transcripts (short prompts)."""
    draw, rng = arith_transcripts(((1, 1), (2, 1), (3, 1))), random.Random(seed)
    return make_tokenizer(single_digits=True, corpus=(text for _ in range(transcripts) for text in draw(rng)))


def pretrain(out_dir, steps=200, batch=8, lr=3e-3, seed=0, log_every=25, transcripts=transcript):
    """Train the saved model by cross-entropy on the assistant replies only, then save it.

    transcripts(rng) -> (user prompt, reply): default `transcript` (the three tasks' formats);
    `arith_transcripts(...)` for the arith world. Linear warm-up, linear decay to 0.
    """
    import rollout
    model, tokenizer = rollout.load(out_dir, device="cpu")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, min(20, steps // 10))  # linear warm-up, then linear decay to 0
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / warmup) * (1 - i / steps))
    model.train()
    losses = []
    for step in range(steps):
        pairs = []
        for _ in range(batch):
            user, reply = transcripts(rng)
            pairs.append((rollout.chat_prompt(tokenizer, user), tokenizer.encode(reply, add_special_tokens=False) + [end]))
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
    """One line and exit 2 for a shape no model can have, an --out that holds something, a bad seed."""
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


def main_pretrain(argv):
    """`tiny.py pretrain --task arith`: a base model for the arith world (see `arith_transcripts`)."""
    import eval as world
    p = argparse.ArgumentParser(prog="tiny.py pretrain",
                                description="Write a tiny Qwen2 model pre-trained to play both roles of a task (CPU).")
    p.add_argument("--task", required=True, choices=["arith"])
    add_shape_args(p, layers=4, hidden=128)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--digits", default="2x1,1x1", help="solver problems' shapes, digits of a x digits of b")
    p.add_argument("--corrupt", type=float, default=0.3,
                   help="share of solver replies with one wrong digit in the working (and the answer it implies)")
    p.add_argument("--proposer-share", type=float, default=0.15, help="share of proposer turns")
    p.add_argument("--proposer-mix", default=None,
                   help="proposer turns' shapes and weights, e.g. 1x1:0.75,2x1:0.25, or 'curriculum' "
                        "(default: 1x1, 2x1, 2x2, 3x1, 3x2 uniformly)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (on a shared 2-core machine one is many times faster than two)")
    a = p.parse_args(argv)
    check_shape(p, a)
    try:
        shapes = world.parse_digits(a.digits)
    except ValueError as e:
        p.error(str(e))
    try:
        mix = None if a.proposer_mix is None else parse_mix(a.proposer_mix)
    except ValueError as e:
        p.error(str(e))
    if any(b_digits != 1 for _, b_digits in shapes):
        p.error(f"--digits: the solver's working is the column method, which takes a one-digit b (got {a.digits})")
    if a.steps < 1 or a.batch < 1 or not a.lr > 0 or a.threads < 1:
        p.error("--steps, --batch and --threads must be at least 1 and --lr positive")
    if not 0 <= a.corrupt <= 1 or not 0 <= a.proposer_share <= 1:
        p.error("--corrupt and --proposer-share must lie in [0, 1]")
    torch.set_num_threads(a.threads)
    with staged(a.out) as out:
        make(out, layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, seed=a.seed,
             init_std=0.02, tokenizer=arith_tokenizer(a.seed))
        pretrain(out, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed,
                 transcripts=arith_transcripts(shapes, a.corrupt, a.proposer_share, proposer_mix=mix))
    print(f"pre-trained {a.out} on the arith world ({a.digits}, corrupt {a.corrupt}"
          + (f", proposer mix {a.proposer_mix}" if mix else "") + f") for {a.steps} steps")


@contextlib.contextmanager
def staged(out):
    """Build a model in a sibling directory and move it onto `out` only once it is complete, so a
    failed or interrupted run leaves `out` as it was (absent, or the model --overwrite would replace).
    A failing disk (no space, read-only, permissions) is one line and exit code 2."""
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
        print(f"tiny.py: error: cannot write --out {out} ({reason}); it is as it was before", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pretrain"]:
        return main_pretrain(argv[1:])
    p = argparse.ArgumentParser(prog="tiny.py", description="Write a tiny random Qwen2 model + tokenizer (offline). "
                                "`tiny.py pretrain --task arith --help`: a base model for the arith world.")
    add_shape_args(p)
    p.add_argument("--pretrain", type=int, default=0, metavar="STEPS",
                   help="then teach it the tasks' formats on synthetic transcripts (CPU; try 200)")
    a = p.parse_args(argv)
    check_shape(p, a)
    if a.pretrain < 0:
        p.error(f"--pretrain must be >= 0 steps (got {a.pretrain})")
    with staged(a.out) as out:
        make(out, layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, seed=a.seed,
             init_std=0.02 if a.pretrain else 0.3)  # Qwen's own init when it is going to be trained
        if a.pretrain:
            pretrain(out, steps=a.pretrain, seed=a.seed)
    print(f"wrote tiny Qwen2 model to {a.out}" + (f", pre-trained on task formats for {a.pretrain} steps" if a.pretrain else ""))


if __name__ == "__main__":
    # `staged` has removed the half-written model by the time the line is printed
    cli.exit_on_interrupt(main, "tiny.py: interrupted; --out is as it was before")
