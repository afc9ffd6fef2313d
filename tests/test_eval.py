"""eval.py: the held-out sets, the JSONL reader, the scorer, `evaluate` and the CLI."""
import hashlib
import json
import os
import random
import re
from fractions import Fraction

import pytest

import eval as heldout
import prompts
import rewards
import rollout
import sandbox
import tiny


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- built-in sets ---------------------------------------------------------------------

@pytest.mark.slow
def test_arith_set_is_deterministic_sized_and_distinct():
    """The held-out set must be the same 4,096 distinct problems on every call."""
    problems = heldout.arith_set()
    assert problems == heldout.arith_set()
    assert len(problems) == 4096
    assert len({p["problem"] for p in problems}) == 4096


def test_arith_answers_are_the_exact_products():
    """Each question asks for a * b and stores str(a * b), the form extract_answer returns."""
    for p in heldout.arith_set():
        a, b = map(int, re.fullmatch(r"What is (\d+) \* (\d+)\?", p["problem"]).groups())
        assert 0 <= a <= 999 and 0 <= b <= 999
        assert p["answer"] == str(a * b)
        assert rewards.extract_answer(f"<answer>{p['answer']}</answer>") == p["answer"]


def _triples(problems):
    pattern = r"What is (\d+) \* (\d+)\?"
    return [(*map(int, re.fullmatch(pattern, p["problem"]).groups()), int(p["answer"]))
            for p in problems]


def test_arith_set_is_the_released_file():
    """The paper's eval file, as TinyZero's generator writes it (set order, the LAST 4,096).
    Reference values from running that generator itself (CPython 3.8-3.13 agree): the first five
    and last three problems and the md5 of the whole list. The first 4,096 distinct pairs in draw
    order would be an easier mix (42% against 25% of problems with a one-digit operand)."""
    triples = _triples(heldout.arith_set())
    assert triples[:5] == [(163, 856, 139528), (648, 149, 96552), (77, 29, 2233), (122, 114, 13908),
                           (305, 55, 16775)]
    assert triples[-3:] == [(282, 9, 2538), (90, 97, 8730), (18, 405, 7290)]
    assert hashlib.md5(repr(triples).encode()).hexdigest() == "173216fde6d73ba3e448d9dda6339152"
    assert sum(min(a, b) < 10 for a, b, _ in triples) == 1008


@pytest.mark.slow
def test_arith_operands_follow_tinyzero_draw():
    """Operands are drawn as TinyZero's 3-digit generator draws them (bound 9, 99 or 999 with
    probability 1/4, 1/4, 1/2, a before b), then de-duplicated through a set and the tail kept;
    a uniform bound choice, another draw order or the head of the list would fail this."""
    rng = random.Random(heldout.SEED)

    def operand():
        r = rng.randint(0, 3)
        return rng.randint(0, 10 ** (1 if r == 0 else 2 if r == 1 else 3) - 1)

    draws = [(a, b, a * b) for a, b in ((operand(), operand()) for _ in range(100_000))]
    assert _triples(heldout.arith_set()) == list(set(draws))[-4096:]


def test_algebra_set_is_deterministic_sized_and_distinct():
    problems = heldout.algebra_set()
    assert problems == heldout.algebra_set()
    assert len(problems) == 100
    assert len({p["problem"] for p in problems}) == 100
    assert {len(p["meta"]["solution"]) for p in problems} == {1, 2}  # one and two unknowns


def test_algebra_answers_solve_their_equations_uniquely():
    """Checked with exact fractions: the stored solution satisfies every equation, the system
    is non-singular (so the solution is unique), and the answer is the unknown asked for."""
    for p in heldout.algebra_set():
        meta = p["meta"]
        solution = [Fraction(v) for v in meta["solution"]]
        for *coefficients, rhs in meta["equations"]:
            assert all(isinstance(c, int) for c in coefficients + [rhs])
            assert sum(c * v for c, v in zip(coefficients, solution)) == rhs
        if len(solution) == 1:
            assert meta["equations"][0][0] != 0
        else:
            (a1, b1, _), (a2, b2, _) = meta["equations"]
            assert a1 * b2 - a2 * b1 != 0
        assert p["answer"] == str(solution[meta["asked"]])
        # the canonical form
        assert rewards.extract_answer(f"<answer>{p['answer']}</answer>") == p["answer"]


def answer_from_wording(text):
    """Solve an algebra problem from its words alone (never from its stored equations), with exact
    fractions: a template whose sentence drifted from its equations fails here."""
    num = r"(-?\d+)"
    m = re.fullmatch(rf"Multiplying a number by {num} and then (adding|subtracting) (\d+) gives "
                     rf"the same result as multiplying it by {num} and then (adding|subtracting) "
                     rf"(\d+)\. What is the number\?", text)
    if m:  # a x + b = c x + d
        a, c = int(m[1]), int(m[4])
        b, d = (int(m[k + 1]) * (1 if m[k] == "adding" else -1) for k in (2, 5))
        return [Fraction(d - b, a - c)]
    m = re.fullmatch(rf"(\d+) times a first number plus (\d+) times a second number is {num}, "
                     rf"and (\d+) times the first number minus (\d+) times the second number is "
                     rf"{num}\. What is the (first|second) number\?", text)
    if m:
        rows = [[int(m[1]), int(m[2]), int(m[3])], [int(m[4]), -int(m[5]), int(m[6])]]
        return pick(heldout.solve_linear(rows), m[7])
    m = re.fullmatch(r"A taxi charges a fixed fee of (\d+) dollars? plus (\d+) dollars? for "
                     r"every kilometre driven\. A ride cost (\d+) dollars in all\. How many "
                     r"kilometres long was the ride\?", text)
    if m:
        return [Fraction(int(m[3]) - int(m[1]), int(m[2]))]
    m = re.fullmatch(r"(\d+) (.+?)s? and (\d+) (.+?)s? cost (\d+) dollars together, while "
                     r"(\d+) .+? and (\d+) .+? cost (\d+) dollars\. What is the price of one "
                     r"(.+), in dollars\?", text)
    if m:
        rows = [[int(m[1]), int(m[3]), int(m[5])], [int(m[6]), int(m[7]), int(m[8])]]
        return pick(heldout.solve_linear(rows), "first" if m[9].startswith(m[2]) else "second")
    m = re.fullmatch(r"(\w+) is (\d+) years? older than (\w+)\. (\d+) years? ago, \1 was "
                     r"(\d+) times as old as \3 was then\. How old is (\w+) now\?", text)
    if m:  # x - y = gap; x - back = ratio (y - back)
        gap, back, ratio = int(m[2]), int(m[4]), int(m[5])
        younger = Fraction(back * (ratio - 1) + gap, ratio - 1)
        return [younger + gap if m[6] == m[1] else younger]
    m = re.fullmatch(r"A jar holds only (\d+)-cent and (\d+)-cent coins: (\d+) coins worth (\d+) "
                     r"cents in all\. How many (\d+)-cent coins are in the jar\?", text)
    if m:
        small, large, count, value = (int(m[k]) for k in range(1, 5))
        solution = heldout.solve_linear([[1, 1, count], [small, large, value]])
        return pick(solution, "first" if int(m[5]) == small else "second")
    raise AssertionError(f"no template reads: {text}")


def pick(solution, which):
    return [solution[0 if which == "first" else 1]]


def test_algebra_answers_follow_from_the_wording():
    """Each stated answer is what the sentence itself says, read without the stored equations."""
    for p in heldout.algebra_set():
        assert [str(v) for v in answer_from_wording(p["problem"])] == [p["answer"]], p["problem"]


def test_solve_linear_rejects_singular_systems():
    assert heldout.solve_linear([[0, 5]]) is None
    assert heldout.solve_linear([[1, 2, 3], [2, 4, 6]]) is None
    assert heldout.solve_linear([[2, 3]]) == [Fraction(3, 2)]
    assert heldout.solve_linear([[1, 1, 3], [1, -1, 1]]) == [2, 1]


def test_code_set_shape():
    """At least 40 distinct problems, each with at least 5 tests and a reference program."""
    problems = heldout.load_problems("code")
    assert len(problems) >= 40
    assert len({p["problem"] for p in problems}) == len(problems)
    for p in problems:
        assert len(p["inputs"]) == len(p["outputs"]) >= 5
        assert len(set(p["inputs"])) == len(p["inputs"])
        assert len(set(p["outputs"])) > 1  # a program printing a constant cannot pass
        assert p["reference"].strip()


@pytest.mark.slow
def test_code_references_pass_every_test_in_the_sandbox():
    """Every shipped reference, scored as a solver reply would be, passes all of its tests."""
    problems = heldout.load_problems("code")
    replies = [f"```python\n{p['reference']}```" for p in problems]
    records = heldout.score_responses("code", problems, replies)
    failing = [r["problem"].splitlines()[0] for r in records if not r["correct"]]
    assert failing == []


def test_a_wrong_program_fails_in_the_sandbox():
    """The tests catch a plausible bug: Kadane's maximum subarray started at 0 instead of a[0]."""
    problem = next(p for p in heldout.load_problems("code") if "contiguous part" in p["problem"])
    wrong = "a = list(map(int, input().split()))\nbest = cur = 0\nfor x in a:\n" \
            "    cur = max(x, cur + x)\n    best = max(best, cur)\nprint(best)\n"
    assert sandbox.run_tests(problem["reference"], list(zip(problem["inputs"], problem["outputs"])),
                             check=rewards.output_matches) == [True] * len(problem["inputs"])
    assert not all(sandbox.run_tests(wrong, list(zip(problem["inputs"], problem["outputs"])),
                                     check=rewards.output_matches))


def test_held_out_sets_do_not_repeat_proposer_examples():
    """No shipped test line and no algebra problem appears in what a proposer prompt shows."""
    shown = prompts.proposer_prompt("code") + prompts.proposer_prompt("code", cat=True)
    for p in heldout.load_problems("code"):
        for stdin, out in zip(p["inputs"], p["outputs"]):
            assert f"{stdin} ||| {out}" not in shown
    for p in heldout.algebra_set():
        assert p["problem"] not in prompts.proposer_prompt("algebra")


# --- JSONL files -----------------------------------------------------------------------

def test_jsonl_round_trips(tmp_path):
    """A set written as JSONL reads back unchanged, extra fields ("meta", "reference") included."""
    for task, problems in (("algebra", heldout.algebra_set()[:10]),
                           ("code", heldout.load_problems("code")[:5])):
        path = write_jsonl(tmp_path / f"{task}.jsonl", problems)
        assert heldout.read_jsonl(path, task) == problems


def test_jsonl_answers_are_made_canonical(tmp_path):
    """A file's "0.75", "6/8" or 6 must compare equal to extract_answer's "3/4" and "6"; a JSON
    number such as 1e20 (which json.loads makes a float) is read exactly as written."""
    answers = ("0.75", "6/8", 6, " -4/2 ", 1e20, 0.1)
    path = write_jsonl(tmp_path / "a.jsonl", [{"problem": "q", "answer": a} for a in answers])
    assert ([p["answer"] for p in heldout.read_jsonl(path, "algebra")]
            == ["3/4", "3/4", "6", "-2", "1" + "0" * 20, "1/10"])


@pytest.mark.parametrize("task, lines, expected", [
    ("arith", ['{"problem": "q", "answer": "1"}', "", "{not json"], "bad.jsonl:3: not valid JSON"),
    ("arith", ['{"problem": "q"}'], "bad.jsonl:1: \"answer\" must be"),
    ("algebra", ['{"problem": "q", "answer": "three"}'], "bad.jsonl:1: \"answer\" must be"),
    ("arith", ['["q", "1"]'], "bad.jsonl:1: expected an object"),
    ("code", ['{"problem": "q", "inputs": ["1"], "outputs": []}'],
     "bad.jsonl:1: \"inputs\" and \"outputs\""),
    ("code", ['{"problem": "q", "inputs": [1], "outputs": [1]}'],
     "bad.jsonl:1: \"inputs\" and \"outputs\""),
    ("code", [""], "bad.jsonl: no problems"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, task, lines, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError) as error:
        heldout.read_jsonl(path, task)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_missing_data_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read data file"):
        heldout.read_jsonl(tmp_path / "nope.jsonl", "arith")


# --- scoring ---------------------------------------------------------------------------

ARITH = [{"problem": "What is 2 * 3?", "answer": "6"},
         {"problem": "What is 3 * 4?", "answer": "12"},
         {"problem": "What is 5 * 5?", "answer": "25"}]


def test_greedy_figures_on_handcrafted_responses():
    """Correct, formatted-but-wrong and unformatted: accuracy 1/3, official (1 + 0.1 + 0)/3,
    format 2/3."""
    records = heldout.score_responses("arith", ARITH, ["<think>2*3</think><answer>6</answer>",
                                                       "<answer>13</answer>", "the answer is 25"])
    assert [r["correct"] for r in records] == [True, False, False]
    assert [r["answer"] for r in records] == ["6", "13", None]
    figures = heldout.summarize(records)
    assert figures["accuracy"] == pytest.approx(1 / 3)
    assert figures["official_score"] == pytest.approx(1.1 / 3)
    assert figures["format_rate"] == pytest.approx(2 / 3)
    assert "pass_at_k" not in figures


def test_exact_fraction_answers_count_as_correct():
    """An algebra answer given as 0.75 or 6/8 matches the truth 3/4; 0.7 does not."""
    problems = [{"problem": "q", "answer": "3/4"}]
    replies = ["<answer>0.75</answer>", "<answer>6/8</answer>", "<answer>0.7</answer>"]
    records = heldout.score_responses("algebra", problems * 3, replies)
    assert [r["correct"] for r in records] == [True, True, False]


def test_pass_and_majority_at_k():
    """k = 3 samples per problem, grouped as rollout.generate lays them out. Problem 1: 6, 7, 7
    (pass, majority wrong); problem 2: none, 12, 12 (pass, majority right); problem 3: all wrong."""
    responses = ["<answer>6</answer>", "<answer>7</answer>", "<answer>7</answer>",
                 "no answer", "<answer>12</answer>", "<answer>12</answer>",
                 "<answer>1</answer>", "<answer>2</answer>", "x"]
    figures = heldout.summarize(heldout.score_responses("arith", ARITH, responses), samples=3)
    assert figures["accuracy"] == pytest.approx(3 / 9)
    assert figures["pass_at_k"] == pytest.approx(2 / 3)
    assert figures["maj_at_k"] == pytest.approx(1 / 3)
    assert figures["format_rate"] == pytest.approx(7 / 9)


def test_majority_ignores_samples_without_an_answer():
    """One answer and two unformatted replies: the vote is over the one answer, so maj@3 is 1."""
    records = heldout.score_responses("arith", ARITH[:1], ["<answer>6</answer>", "?", "?"])
    figures = heldout.summarize(records, samples=3)
    assert figures["maj_at_k"] == 1.0


def test_code_figures_on_handcrafted_programs():
    """Right program, one that fails one test in three, one that crashes, and no program."""
    problems = [{"problem": "Print the double of n.", "inputs": ["1", "2", "0"],
                 "outputs": ["2", "4", "0"]}]
    responses = ["```python\nprint(2 * int(input()))\n```",
                 "```python\nn = int(input())\nprint(n + n if n else 1)\n```",
                 "```python\nraise SystemExit(3)\n```",
                 "I would print twice n."]
    records = heldout.score_responses("code", problems, responses)
    assert [r["tests_passed"] for r in records] == pytest.approx([1, 2 / 3, 0, 0])
    assert [r["correct"] for r in records] == [True, False, False, False]
    figures = heldout.summarize(records, samples=4)
    assert figures["accuracy"] == pytest.approx(1 / 4)
    assert figures["tests_passed"] == pytest.approx(5 / 12)
    assert figures["official_score"] == figures["tests_passed"]
    assert figures["format_rate"] == pytest.approx(3 / 4)
    assert figures["pass_at_k"] == 1.0 and "maj_at_k" not in figures


def test_eval_runs_every_test_of_a_problem():
    """Training grades at most 10 tests; eval must grade all of them (a Codeforces export may
    carry dozens)."""
    inputs = [str(i) for i in range(12)]
    problems = [{"problem": "Print n, but 0 for n >= 10.", "inputs": inputs,
                 "outputs": inputs[:10] + ["0", "0"]}]
    records = heldout.score_responses("code", problems, ["```python\nprint(input())\n```"])
    assert records[0]["tests_passed"] == pytest.approx(10 / 12) and not records[0]["correct"]


# --- evaluate, with a scripted generator ------------------------------------------------

@pytest.fixture
def scripted(monkeypatch):
    """rollout.generate replaced by one that answers 6 and records its arguments."""
    calls = []

    def generate(model, tokenizer, prompts_, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0,
                 seed=None):
        calls.append({"prompts": len(prompts_), "n": n, "max_new_tokens": max_new_tokens,
                      "temperature": temperature})
        ids = tokenizer.encode("<answer>6</answer>", add_special_tokens=False)
        return [rollout.Sample(list(p), ids, "<answer>6</answer>", False)
                for p in prompts_ for _ in range(n)]

    monkeypatch.setattr(rollout, "generate", generate)
    return calls


def test_evaluate_defaults_greedy_and_task_length(scripted):
    """Greedy (temperature 0) with one sample, the task's response limit, problem order kept."""
    tokenizer = tiny.make_tokenizer()
    result = heldout.evaluate(None, tokenizer, "arith", problems=ARITH)
    assert scripted == [{"prompts": 3, "n": 1, "max_new_tokens": 1024, "temperature": 0.0}]
    assert [r["correct"] for r in result["records"]] == [True, False, False]
    length = len(tokenizer.encode("<answer>6</answer>", add_special_tokens=False))
    assert result["mean_length"] == length
    heldout.evaluate(None, tokenizer, "algebra", problems=ARITH)
    assert scripted[-1]["max_new_tokens"] == 3072


def test_evaluate_samples_at_temperature_one_in_batches(scripted):
    """samples=k samples at 1.0, batch_size counts sequences (2 prompts x 2 samples per call),
    and progress sees the running count of problems done."""
    seen = []
    result = heldout.evaluate(None, tiny.make_tokenizer(), "arith", problems=ARITH, samples=2,
                              batch_size=4,
                              progress=lambda done, total, figures: seen.append((done, total)))
    assert [c["prompts"] for c in scripted] == [2, 1]
    assert {c["temperature"] for c in scripted} == {1.0}
    assert seen == [(2, 3), (3, 3)]
    assert len(result["records"]) == 6 and result["pass_at_k"] == pytest.approx(1 / 3)


# --- evaluate and the CLI on the tiny model ---------------------------------------------

@pytest.mark.slow
def test_evaluate_tiny_model_plumbing(tiny_model):
    """Random weights: figures are garbage but must be in range, one record per sample."""
    model, tokenizer = tiny_model
    for samples in (1, 2):
        result = heldout.evaluate(model, tokenizer, "arith", limit=3, samples=samples,
                                  max_new_tokens=8)
        assert len(result["records"]) == 3 * samples
        assert all(0 <= result[k] <= 1 for k in ("accuracy", "official_score", "format_rate"))
        assert all(1 <= r["length"] <= 8 for r in result["records"])
    greedy = [heldout.evaluate(model, tokenizer, "algebra", limit=2, max_new_tokens=8)["records"]
              for _ in range(2)]
    assert greedy[0] == greedy[1]


@pytest.mark.slow
def test_sampled_evaluation_repeats(tiny_model):
    """pass@k and maj@k must be reproducible: sampled batches are seeded, so two runs give the
    same responses."""
    model, tokenizer = tiny_model
    runs = [heldout.evaluate(model, tokenizer, "arith", limit=3, samples=3, max_new_tokens=8,
                             batch_size=4)["records"] for _ in range(2)]
    assert runs[0] == runs[1]
    assert len({r["response"] for r in runs[0]}) > 1  # samples, not one greedy reply repeated


def test_cli_writes_results_and_prints_progress(tiny_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    heldout.main(["--task", "arith", "--model", tiny_dir, "--limit", "3", "--max-new-tokens", "8",
                  "--batch-size", "2", "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert re.search(r"eval arith\s+2/3 rows .* acc", captured.err) and "3/3 rows" in captured.err
    assert "accuracy" in captured.out and "official_score" in captured.out
    result = json.loads(out.read_text())
    assert result["n_problems"] == 3 and len(result["records"]) == 3


def test_cli_data_file_round_trips(tiny_dir, tmp_path):
    """--data replaces the built-in set: the records carry the file's problems and truths."""
    rows = [{"problem": "What is 1 + 1?", "answer": "2"},
            {"problem": "Half of 3?", "answer": "1.5"}]
    out = tmp_path / "r.json"
    heldout.main(["--task", "algebra", "--model", tiny_dir,
                  "--data", write_jsonl(tmp_path / "d.jsonl", rows),
                  "--max-new-tokens", "4", "--out", str(out)])
    records = json.loads(out.read_text())["records"]
    assert ([(r["problem"], r["truth"]) for r in records]
            == [("What is 1 + 1?", "2"), ("Half of 3?", "3/2")])


@pytest.mark.parametrize("args, message", [
    (["--task", "poetry", "--model", "MODEL"], "unknown task 'poetry'"),
    (["--task", "arith", "--model", "/no/such/model"], "model directory not found"),
    (["--task", "arith", "--model", "MODEL", "--data", "BAD"], "bad.jsonl:1: not valid JSON"),
    (["--task", "arith", "--model", "MODEL", "--samples", "0"], "must be at least 1"),
    (["--task", "arith", "--model", "MODEL", "--max-new-tokens", "0"], "must be at least 1"),
    (["--task", "arith", "--model", "MODEL", "--temperature", "-1"],
     "--temperature must be finite and >= 0"),
    (["--task", "arith", "--model", "MODEL", "--out", "OUTDIR"], "is a directory"),
    (["--task", "arith"], "required: --model"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tiny_dir, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    args = [{"MODEL": tiny_dir, "BAD": str(bad), "OUTDIR": str(tmp_path)}.get(a, a) for a in args]
    with pytest.raises(SystemExit) as exit_:
        heldout.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_sampled_eval_streams_are_per_problem(tiny_model):
    """Sampled eval: problem i draws from its own stream (seed i), so the samples do not depend on
    the batch size, and two copies of one problem draw differently. Guards: one seed per call."""
    model, tok = tiny_model
    problems = [{"problem": "What is 2 * 3?", "answer": "6"}] * 2 + [{"problem": "What is 4 * 5?", "answer": "20"}]
    runs = [[r["response"] for r in heldout.evaluate(model, tok, "arith", problems, samples=2, temperature=1.0,
                                                     max_new_tokens=6, batch_size=rows)["records"]]
            for rows in (2, 6)]
    assert runs[0] == runs[1] and runs[0][:2] != runs[0][2:4]


def test_default_out_is_named_after_task_and_model(tmp_path):
    """eval.py's default result file is eval/TASK-MODEL.json: a directory's name (a checkpoint's
    with its run's name), a hub id with / as --. Guards: every model's result landing on the same
    runs/eval-TASK.json among the run directories."""
    run = tmp_path / "arith-1" / "step-000100"
    run.mkdir(parents=True)
    assert heldout.default_out("arith", str(tmp_path / "arith-1")).as_posix() == \
        "eval/arith-arith-1.json"
    assert heldout.default_out("code", str(run) + "/").as_posix() == \
        "eval/code-arith-1-step-000100.json"
    assert heldout.default_out("algebra", "Qwen/Qwen2.5-3B-Instruct").as_posix() == \
        "eval/algebra-Qwen--Qwen2.5-3B-Instruct.json"


def test_cli_writes_to_the_default_out(tiny_dir, tmp_path, monkeypatch):
    """Without --out the result is written to eval/TASK-MODEL.json under the working directory,
    and nothing else is made there."""
    monkeypatch.chdir(tmp_path)
    heldout.main(["--task", "arith", "--model", tiny_dir, "--limit", "1", "--max-new-tokens", "2",
                  "--device", "cpu"])
    name = f"arith-{os.path.basename(tiny_dir.rstrip('/'))}.json"
    assert os.listdir(tmp_path) == ["eval"] and os.listdir(tmp_path / "eval") == [name]
    assert json.loads((tmp_path / "eval" / name).read_text())["n_problems"] == 1
