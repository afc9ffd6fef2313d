"""Held-out sets and scoring for arith, algebra and code; used by the CLI and by sqlm.py.

Built-in sets, deterministic from SEED (a JSONL file given with --data replaces them):
arith, the released 4,096 "What is a * b?" (`arith_set`); algebra, 100 linear-equation word
problems with exact rational answers (`algebra_set`); code, data/code.jsonl, problems this
project wrote with stdin/stdout tests and a reference program (formats: data/README.md).

`evaluate` answers each problem with the task's solver prompt in the chat template, greedily
by default, and reports strict accuracy next to the released code's own figure
(`official_score`), the answer-format rate, mean response length and, with k samples,
pass@k and maj@k (definitions in `summarize`).

Left out: few-shot prompts, answer checking by a model, third-party benchmark files
(export one to JSONL and pass --data), and the tiny world's multiplication splits, which live
with the rest of that experiment in experiments.py.

    python eval.py --task arith --model DIR [--data F] [--limit N] [--samples K] [--out F]

A problem whose solver prompt does not fit the model's context beside --max-new-tokens, or a data
line over MAX_LINE_CHARS, is refused in one line before any generation.
"""
import argparse
import json
import random
import sys
import time
from fractions import Fraction
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C or SIGTERM while torch loads: one line, no traceback
    import cli
    cli.exit_on_signals("eval.py: interrupted while starting; nothing was written")

import cli
import parallel
import prompts
import rewards
import rollout
import sandbox

SEED = 1               # TinyZero seeds its multiplication set with 1
ARITH_SIZE = 4096      # TinyZero's multiplication test-set size
ARITH_DRAWS = 100_000  # draws before de-duplication, as TinyZero
ALGEBRA_SIZE = 100
CODE_FILE = Path(__file__).resolve().parent / "data" / "code.jsonl"
# The longest JSONL line read, in characters: a problem's prompt plus its answer (code: its tests).
# No prompt is longer than a model's context (32,768 tokens for Qwen2.5) and text runs a few
# characters a token, so a real problem is some 100,000 characters at most; the rest is room for
# code tests. A longer line (a whole file on one line) is refused before it is parsed or tokenized.
MAX_LINE_CHARS = 1_000_000


# --- arith ---------------------------------------------------------------------------

def arith_set(size=ARITH_SIZE, seed=SEED, draws=ARITH_DRAWS):
    """The released arith held-out set, reproduced exactly: `size` questions "What is a * b?".

    The paper's eval file is TinyZero's multiplication test split, whose generator does:
    random.seed(1); 100,000 times draw a then b, each as r = randint(0, 3), then
    randint(0, 9 / 99 / 999 / 999 for r = 0 / 1 / 2 / 3), and keep (a, b, a * b);
    de-duplicate through a Python set (`list(set(...))`, whose order CPython 3.8+ fixes for
    tuples of ints, whatever PYTHONHASHSEED); the first 32,768 are its training split and the
    LAST 4,096 the test split. The numbers are that file's; the question is in our words.
    """
    rng = random.Random(seed)
    triples = []
    for _ in range(draws):
        a, b = (rng.randint(0, (9, 99, 999, 999)[rng.randint(0, 3)]) for _ in range(2))
        triples.append((a, b, a * b))
    unique = list(set(triples))  # the set's iteration order is part of the released file
    return [{"problem": f"What is {a} * {b}?", "answer": str(c)} for a, b, c in unique[-size:]]


# --- algebra -------------------------------------------------------------------------

NAMES = ["Ana", "Ben", "Carla", "Dev", "Elif", "Farid", "Grace", "Hugo"]
ITEMS = [("adult ticket", "child ticket"), ("pen", "notebook"), ("coffee", "muffin"),
         ("apple", "melon")]


def solve_linear(equations):
    """The unique solution, as Fractions, of rows [c_1, (c_2,) rhs] meaning sum_j c_j v_j = rhs;
    None if not unique.

    One unknown: v = rhs / c, unique iff c != 0. Two unknowns (Cramer): det = a1 b2 - a2 b1,
    x = (c1 b2 - c2 b1) / det, y = (a1 c2 - a2 c1) / det, unique iff det != 0.
    """
    if len(equations) == 1:
        (c, rhs), = equations
        return [Fraction(rhs, c)] if c else None
    (a1, b1, c1), (a2, b2, c2) = equations
    det = a1 * b2 - a2 * b1
    return [Fraction(c1 * b2 - c2 * b1, det), Fraction(a1 * c2 - a2 * c1, det)] if det else None


def _many(k, noun):
    return f"{k} {noun}" + ("" if k == 1 else "s")


def _change(k):
    return f"adding {k}" if k >= 0 else f"subtracting {-k}"


# Each template: rng -> (text, equations, index of the unknown asked). Word problems about
# prices, ages and coins draw the solution first, so it is positive (and whole); the two
# abstract ones draw the equations, so their answers are often fractions.
def _number(rng):
    a, c = rng.sample([k for k in range(-9, 10) if k], 2)
    b, d = rng.randint(-30, 30), rng.randint(-30, 30)
    return (f"Multiplying a number by {a} and then {_change(b)} gives the same result as "
            f"multiplying it by {c} and then {_change(d)}. What is the number?",
            [[a - c, d - b]], 0)


def _two_numbers(rng):
    a1, b1, a2, b2 = (rng.randint(1, 9) for _ in range(4))
    c1, c2, ask = rng.randint(-60, 60), rng.randint(-60, 60), rng.randint(0, 1)
    return (f"{a1} times a first number plus {b1} times a second number is {c1}, and {a2} times "
            f"the first number minus {b2} times the second number is {c2}. What is the "
            f"{('first', 'second')[ask]} number?",
            [[a1, b1, c1], [a2, -b2, c2]], ask)


def _taxi(rng):
    fee, rate, km = rng.randint(2, 9), rng.randint(1, 4), rng.randint(1, 30)
    return (f"A taxi charges a fixed fee of {_many(fee, 'dollar')} plus {_many(rate, 'dollar')} "
            f"for every kilometre driven. A ride cost {fee + rate * km} dollars in all. How many "
            f"kilometres long was the ride?",
            [[rate, rate * km]], 0)  # rate * km = total - fee


def _shopping(rng):
    (first, second), ask = rng.choice(ITEMS), rng.randint(0, 1)
    a1, b1, a2, b2, p, q = (rng.randint(1, 9) for _ in range(6))
    return (f"{_many(a1, first)} and {_many(b1, second)} cost {a1 * p + b1 * q} dollars "
            f"together, while {_many(a2, first)} and {_many(b2, second)} cost {a2 * p + b2 * q} "
            f"dollars. What is the price of one {(first, second)[ask]}, in dollars?",
            [[a1, b1, a1 * p + b1 * q], [a2, b2, a2 * p + b2 * q]], ask)


def _ages(rng):
    older, younger = rng.sample(NAMES, 2)
    ratio, back, ask = rng.randint(2, 5), rng.randint(1, 10), rng.randint(0, 1)
    gap = (ratio - 1) * rng.randint(1, 10)  # whole ages: younger = back + gap / (ratio - 1)
    return (f"{older} is {_many(gap, 'year')} older than {younger}. {_many(back, 'year')} ago, "
            f"{older} was {ratio} times as old as {younger} was then. How old is "
            f"{(older, younger)[ask]} now?",
            [[1, -1, gap], [1, -ratio, back * (1 - ratio)]], ask)  # x - back = ratio (y - back)


def _coins(rng):
    small, large = sorted(rng.sample([1, 2, 5, 10, 20, 25, 50], 2))
    x, y = rng.randint(1, 30), rng.randint(1, 30)  # "holds only" both kinds: at least one each
    ask = rng.randint(0, 1)
    return (f"A jar holds only {small}-cent and {large}-cent coins: {x + y} coins worth "
            f"{small * x + large * y} cents in all. How many {(small, large)[ask]}-cent coins are "
            f"in the jar?",
            [[1, 1, x + y], [small, large, small * x + large * y]], ask)


TEMPLATES = [_number, _two_numbers, _taxi, _shopping, _ages, _coins]


def algebra_set(size=ALGEBRA_SIZE, seed=SEED):
    """`size` distinct word problems {"problem", "answer", "meta"}; meta holds "equations" (rows
    [c_1, (c_2,) rhs]: sum_j c_j v_j = rhs), "solution" (every unknown) and "asked" (its index).
    A draw is kept only if `solve_linear` finds a unique solution.
    """
    rng = random.Random(seed)
    problems = {}
    while len(problems) < size:
        text, equations, asked = rng.choice(TEMPLATES)(rng)
        solution = solve_linear(equations)
        if solution is not None and text not in problems:
            meta = {"equations": equations, "solution": [str(v) for v in solution], "asked": asked}
            problems[text] = {"problem": text, "answer": str(solution[asked]),  # "7", "-3/4"
                              "meta": meta}
    return list(problems.values())


# --- JSONL sets ----------------------------------------------------------------------

def read_jsonl(path, task):
    """Problems from a JSONL file, one object a line (blank lines skipped).

    arith/algebra: {"problem": str, "answer": str | int}; the answer (integer, decimal or
    fraction) is stored in canonical form (`rewards.normalize_answer`). code: {"problem": str,
    "inputs": [str], "outputs": [str], "reference": str (optional)}. Other fields are kept.
    Raises ValueError "PATH:LINE: what is wrong" on the first bad line, and on a line longer than
    MAX_LINE_CHARS before it is read whole.
    """
    problems = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = iter(lambda: f.readline(MAX_LINE_CHARS + 1), "")  # never more than the cap
            for number, line in enumerate(lines, 1):
                if len(line.rstrip("\r\n")) > MAX_LINE_CHARS:
                    raise ValueError(f"{path}:{number}: line longer than {MAX_LINE_CHARS:,} "
                                     f"characters (the most a held-out problem takes: eval.py, "
                                     f"MAX_LINE_CHARS)")
                if line.strip():
                    problems.append(_parsed(line, task, f"{path}:{number}"))
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise ValueError(f"cannot read data file {path}: {reason}") from None
    if not problems:
        raise ValueError(f"{path}: no problems in file")
    return problems


def _parsed(line, task, where):
    try:
        return _checked(json.loads(line), task)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _checked(row, task):
    problem = row.get("problem") if isinstance(row, dict) else None
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError('expected an object with a non-empty string "problem"')
    if task == "code":
        inputs, outputs = row.get("inputs"), row.get("outputs")
        if not (isinstance(inputs, list) and isinstance(outputs, list) and inputs
                and len(inputs) == len(outputs)
                and all(isinstance(s, str) for s in inputs + outputs)):
            raise ValueError('"inputs" and "outputs" must be non-empty lists of strings of equal '
                             'length')
        return row
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(Fraction(str(answer)))  # a JSON number: 1e20 and 0.75 exactly as written
    answer = rewards.normalize_answer(str(answer))  # the form extract_answer gives: "7", "-3/4"
    if answer is None:
        raise ValueError(f'"answer" must be an integer, decimal or fraction, '
                         f'got {row.get("answer")!r}')
    return {**row, "answer": answer}


def load_problems(task, data=None):
    """The built-in held-out set of `task`, or the problems in the JSONL file `data`."""
    if data is not None:
        return read_jsonl(data, task)
    built_in = {"arith": arith_set, "algebra": algebra_set,
                "code": lambda: read_jsonl(CODE_FILE, "code")}
    return built_in[task]()


# --- scoring -------------------------------------------------------------------------

def score_responses(task, problems, responses):
    """One record per response; problem i's k = len(responses) // len(problems) responses are at
    [i*k:(i+1)*k].

    arith/algebra record: problem, response, answer (rewards.extract_answer), truth, correct, score
    (official). code record: problem, response, answer (the program), tests_passed (fraction),
    correct (all passed), score (= tests_passed). Programs run in the sandbox, all at once.
    """
    k = len(responses) // len(problems)
    owners = [problems[i // k] for i in range(len(responses))]
    if task != "code":
        answers = [rewards.extract_answer(text) for text in responses]
        return [{"problem": p["problem"], "response": text, "answer": answer, "truth": p["answer"],
                 "correct": answer == p["answer"],
                 "score": rewards.official_score(text, p["answer"])}
                for p, text, answer in zip(owners, responses, answers)]
    programs = [rewards.extract_program(text) for text in responses]
    tests = [list(zip(p["inputs"], p["outputs"])) for p in owners]
    shares = rewards.test_pass_rates(programs, tests, cap=None)
    records = [{"problem": p["problem"], "response": text, "answer": code, "tests_passed": share,
                "correct": share == 1.0, "score": share}
               for p, text, code, share in zip(owners, responses, programs, shares)]
    return records


def _mean(values):
    values = list(values)
    return sum(values) / len(values)


def summarize(records, samples=1):
    """Figures over records in `score_responses` order, each a mean over all samples unless said:

    accuracy: the answer equals the truth exactly (code: the program passes every test).
    official_score: arith/algebra, the released code's integer scorer reproduced: 1 correct,
      0.1 formatted but wrong, 0 unformatted, where only what int() parses is formatted
      (`rewards.official_score`); code: the share of tests passed (equal to tests_passed).
    format_rate: an answer (code: a program) could be extracted. mean_length: tokens.
    samples = k > 1, per problem: pass_at_k, at least one sample correct (the unbiased
      estimator 1 - C(n-c, k) / C(n, k) with n = k reduces to this); maj_at_k (arith, algebra),
      the majority answer (`rewards.majority_vote` over samples that gave one) is the truth.
    """
    groups = [records[i:i + samples] for i in range(0, len(records), samples)]
    figures = {"accuracy": _mean(r["correct"] for r in records),
               "official_score": _mean(r["score"] for r in records),
               "format_rate": _mean(r["answer"] is not None for r in records)}
    if "tests_passed" in records[0]:
        figures["tests_passed"] = _mean(r["tests_passed"] for r in records)
    if "length" in records[0]:
        figures["mean_length"] = _mean(r["length"] for r in records)
    if samples > 1:
        figures["pass_at_k"] = _mean(any(r["correct"] for r in g) for g in groups)
        if "truth" in records[0]:
            voted = [[r["answer"] for r in g if r["answer"] is not None] for g in groups]
            figures["maj_at_k"] = _mean(rewards.majority_vote(a)[0] == g[0]["truth"]
                                        for a, g in zip(voted, groups))
    return figures


# --- evaluation ----------------------------------------------------------------------

class PromptTooLong(ValueError):
    """A problem whose solver prompt is over the token limit (`solver_prompt_ids`)."""


def solver_prompt_ids(tokenizer, task, problems, max_tokens, limit=None):
    """Each problem's solver prompt in the chat template, as token ids; PromptTooLong, one line
    naming how many problems are over `max_tokens` tokens and the first of them (`limit` says
    what the limit is), so that none is generated on.

    A problem of more characters than max_tokens x the longest vocabulary entry cannot fit and is
    refused untokenized: a native tokenizer call on 300,000 characters can run for minutes, deaf
    to SIGTERM. The bound holds where every byte of the text is in some token (byte-level BPE, as
    Qwen's; SentencePiece), not where a normalizer drops characters.
    """
    longest = max(map(len, tokenizer.get_vocab()), default=1)  # characters of one token, at most
    ids, over = [], []
    for i, p in enumerate(problems):
        if len(p["problem"]) > max_tokens * longest:
            over.append((i, f"{len(p['problem']):,} characters"))
            continue
        ids.append(rollout.chat_prompt(tokenizer, prompts.solver_prompt(task, p["problem"])))
        if len(ids[-1]) > max_tokens:
            over.append((i, f"{len(ids[-1]):,} tokens"))
    if over:
        first, size = over[0]
        raise PromptTooLong(f"{len(over)} of {len(problems)} problems have a solver prompt over "
                            f"{limit or f'{max_tokens:,} tokens'}: the first, problem {first + 1} "
                            f"({problems[first]['problem'][:20]!r}...), is {size}; shorten or "
                            f"drop them")
    return ids


def evaluate(model, tokenizer, task, problems=None, limit=None, samples=1, temperature=None,
             max_new_tokens=None, batch_size=64, progress=None, world=parallel.ONE,
             max_prompt=None):
    """Answer `problems` (default: the built-in set) `samples` times each and score them.

    temperature: 0 (greedy) for one sample, 1.0 for several, unless given; each problem's samples
    draw from a stream seeded by its index in the set, so a run repeats whatever the batch size.
    batch_size: sequences per `rollout.generate` call. progress(done, total, figures) is called
    after each call (done and total: problems of this process's share). world (parallel.World):
    each process answers and scores a contiguous share of the problems, and every process returns
    the records and figures of all of them, those of one process. max_prompt: the longest solver
    prompt, in tokens (default: what the model's context leaves beside max_new_tokens); a longer
    one is refused before any generation (PromptTooLong).
    Returns the figures, the settings and "records" (see `score_responses`, plus "length").
    """
    problems = (load_problems(task) if problems is None else problems)[:limit]
    if not problems:
        raise ValueError("no problems to evaluate")
    temperature = (0.0 if samples == 1 else 1.0) if temperature is None else temperature
    max_new_tokens = max_new_tokens or prompts.MAX_RESPONSE[task]
    mine = world.share(range(len(problems)))  # indices in the whole set: they seed the samples
    share, records, start_time = [problems[i] for i in mine], [], time.time()

    def scored(outs):  # each generate call's samples scored as they come, for the running figures
        new, owners = outs[len(records):], share[len(records) // samples:len(outs) // samples]
        for record, sample in zip(score_responses(task, owners, [s.text for s in new]), new):
            records.append({**record, "length": len(sample.completion_ids)})
        if progress:
            progress(len(outs) // samples, len(share), summarize(records, samples))

    context, limit = getattr(getattr(model, "config", None), "max_position_embeddings", None), None
    if max_prompt is None and context:
        max_prompt = context - max_new_tokens
        limit = (f"the {max_prompt:,} tokens the model's context ({context:,}) leaves beside "
                 f"{max_new_tokens:,} new tokens")
    prompt_ids = solver_prompt_ids(tokenizer, task, share, max_prompt or float("inf"), limit)
    rollout.generate_many(model, tokenizer, prompt_ids, samples,
                          list(mine) if temperature > 0 else None, batch_size, progress=scored,
                          max_new_tokens=max_new_tokens, temperature=temperature)
    records = world.gather(records)  # every process's records, in the set's order
    return {"task": task, "n_problems": len(records) // samples, "samples": samples,
            "temperature": temperature, "max_new_tokens": max_new_tokens,
            "seconds": round(time.time() - start_time, 2),
            **summarize(records, samples), "records": records}


# --- command line --------------------------------------------------------------------

def fail(message):
    print(f"eval.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_out(out, overwrite):
    """The result file: not a directory, not an earlier result unless --overwrite, in a writable
    place. Nothing is created here, so a failed evaluation leaves no file behind."""
    if out.is_dir():
        fail(f"--out {out} is a directory")
    if out.exists() and not overwrite:
        fail(f"--out {out} already exists: give --overwrite to replace it, or choose another --out")
    try:
        cli.check_creatable(out, "--out", file=True)
    except ValueError as e:
        fail(str(e))


def write_result(out, result):
    """Write the result JSON atomically: a temporary file renamed into place, so a kill or a full
    disk leaves no partial file (and an earlier result under --overwrite whole)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        cli.write_atomic(out, json.dumps(result, indent=1))
    except OSError as e:
        fail(f"cannot write {out}: {cli.os_reason(e)}")


def main(argv=None):
    """CLI entry: bad input or a failing disk is one line on stderr and exit code 2; Ctrl-C or
    SIGTERM one line and exit code 130 or 143."""
    return cli.exit_on_interrupt(lambda: run_cli(argv),
                                 "eval.py: interrupted; no result was written")


def parse_cli(argv):
    """The command line's flags, checked: a bad one is one line and exit code 2."""
    parser = argparse.ArgumentParser(description="Score a model on a held-out set.",
                                     epilog=cli.SANDBOX_HELP)
    parser.add_argument("--task", required=True, help="arith, algebra or code")
    parser.add_argument("--model", required=True, help="local directory or hub id")
    parser.add_argument("--data", help="JSONL file replacing the built-in set")
    parser.add_argument("--limit", type=int, help="first N problems only")
    parser.add_argument("--samples", type=int, default=1, help="k > 1 adds pass@k and maj@k")
    parser.add_argument("--temperature", type=float,
                        help="default: 0 for one sample, 1.0 for several")
    parser.add_argument("--max-new-tokens", type=int,
                        help="default: 1024 arith, 3072 algebra, 512 code")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    parser.add_argument("--device", help="cpu, or cuda[:N] on a GPU machine "
                                         "(default: cuda if available, else cpu)")
    parser.add_argument("--out", help="result JSON with per-problem records (default: "
                                      "eval/TASK-MODEL.json, MODEL the model directory's name "
                                      "or the hub id with / as --)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.error = fail  # usage errors too: one line, exit code 2
    args = parser.parse_args(cli.negative_values_joined(sys.argv[1:] if argv is None else argv))
    if args.task not in prompts.TASKS:
        fail(f"unknown task '{args.task}' (choose from {', '.join(prompts.TASKS)})")
    for flag in ("samples", "limit", "batch_size", "max_new_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            fail(f"--{flag.replace('_', '-')} must be at least 1, not {value}")
    if args.temperature is not None and not 0 <= args.temperature < float("inf"):  # nan too
        fail(f"--temperature must be finite and >= 0 (0 is greedy), not {args.temperature}")
    if args.device is not None:
        try:
            cli.device(args.device)
        except ValueError as e:
            fail(str(e))
    return args


def default_out(task, model):
    """eval/TASK-NAME.json, NAME the model's last path component (a checkpoint step-NNNNNN: its
    run's name before it) or its hub id with / as --: eval/arith-Qwen--Qwen2.5-3B-Instruct.json."""
    if Path(model).expanduser().is_dir():
        path = Path(model).expanduser().resolve()
        name = (f"{path.parent.name}-{path.name}" if path.name.startswith("step-") else path.name)
    else:
        name = model.strip("/").replace("/", "--")
    return Path("eval") / f"{task}-{name}.json"


def run_cli(argv):
    args = parse_cli(argv)
    out = Path(args.out or default_out(args.task, args.model))
    check_out(out, args.overwrite)
    try:
        if args.task == "code":  # a sandbox that cannot isolate refuses here, before a model loads
            sandbox.isolation()
    except sandbox.Unavailable as e:
        fail(str(e))
    try:
        problems = load_problems(args.task, args.data)[:args.limit]
        model, tokenizer = rollout.load(args.model, device=args.device)
    except (ValueError, OSError, rollout.LoadError) as e:
        fail(str(e))
    context = getattr(model.config, "max_position_embeddings", None)
    max_new_tokens = args.max_new_tokens or prompts.MAX_RESPONSE[args.task]
    if context and max_new_tokens >= context:
        fail(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's "
             f"context of {context:,} tokens (max_position_embeddings): give at most "
             f"{context - 1}")
    try:
        result = evaluate(model, tokenizer, args.task, problems, samples=args.samples,
                          temperature=args.temperature, max_new_tokens=max_new_tokens,
                          batch_size=args.batch_size,
                          progress=rollout.progress_printer(f"eval {args.task}", args.samples))
    except PromptTooLong as e:  # found before any generation
        fail(f"{args.data or f'the built-in {args.task} set'}: {e}")
    write_result(out, result)
    for key, value in result.items():
        if key != "records":
            print(f"{key:<16}{value:.4f}" if isinstance(value, float) else f"{key:<16}{value}")
    print(f"{'written':<16}{out}")
    return result


if __name__ == "__main__":
    main()
