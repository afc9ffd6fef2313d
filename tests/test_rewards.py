"""rewards.py and prompts/: the parsers, the reward rules and the prompt contracts."""
import re
import time

import pytest

import prompts
import rewards
import sandbox

# --- prompts ---------------------------------------------------------------------------

PROMPT_KEYS = ([(t, r, False) for t in prompts.TASKS for r in prompts.ROLES]
               + [("code", "proposer", True)])


@pytest.mark.parametrize("task,role,cat", PROMPT_KEYS)
def test_every_prompt_loads_and_is_not_empty(task, role, cat):
    """A missing or misnamed prompt file must fail here, not in the middle of a training run."""
    assert len(prompts.load(task, role, cat)) > 50


@pytest.mark.parametrize("task", prompts.TASKS)
def test_solver_prompts_state_the_answer_contract(task):
    """The parsers read <think>/<answer> (code: a python block); the prompt asks for just that."""
    text = prompts.load(task, "solver")
    assert text.count("{problem}") == 1 and "<think>" in text
    assert "```python" in text if task == "code" else "<answer>" in text


def test_proposer_prompts_state_the_parse_markers():
    """parse_proposal looks for `Selected Question:`, `Test Cases:`, `|||` and the CaT sections."""
    assert "Selected Question:" in prompts.proposer_prompt("algebra")
    assert "up to three digits" in prompts.proposer_prompt("arith")  # any operation, as released
    for cat in (False, True):
        assert "Test Cases:" in prompts.proposer_prompt("code", cat)
        assert "INPUT ||| OUTPUT" in prompts.proposer_prompt("code", cat)
    cat_text = prompts.proposer_prompt("code", cat=True)
    assert "Reference Solution:" in cat_text and "Wrong Solution:" in cat_text
    assert "```python" in cat_text


@pytest.mark.parametrize("task,role,cat", PROMPT_KEYS)
def test_prompts_show_no_concrete_problem(task, role, cat):
    """Prompts hold placeholders only: no number, so no example can overlap a held-out problem."""
    assert not re.search(r"\d", prompts.load(task, role, cat))


def test_solver_prompt_keeps_braces_in_the_problem():
    """Code problems contain braces: str.format would raise or mangle them."""
    problem = "Print {x} for d = {'a': 1}"
    text = prompts.solver_prompt("code", problem)
    assert problem in text and "{problem}" not in text


def test_unknown_prompt_keys_raise():
    """A typo in --task must be a clear ValueError, and --cat only exists for code."""
    for args in [("chess", "solver"), ("arith", "judge"), ("arith", "proposer", True)]:
        with pytest.raises(ValueError):
            prompts.load(*args)


# --- proposals -------------------------------------------------------------------------

def test_arith_proposal_is_the_whole_reply_without_thinking():
    """The arith problem is the stripped reply; a reasoning block must not reach the solver."""
    reply = "<think>pick numbers</think>\n  What is A times B?  \n"
    problem, why = rewards.parse_proposal("arith", reply)
    assert why == "ok" and problem.text == "What is A times B?"


@pytest.mark.parametrize("reply", ["", "   \n", "<think>still thinking and ran out of tokens"])
def test_empty_arith_proposal_is_invalid(reply):
    """An empty problem (or one cut off while thinking) must be dropped, not sent to the solver."""
    assert rewards.parse_proposal("arith", reply) == (None, "empty")


def test_algebra_proposal_takes_text_after_the_last_marker():
    """Drafts before the final `Selected Question:` must not leak into the problem."""
    reply = "Selected Question: draft one\nbetter:\n**Selected Question:** Find N if N + N = M."
    problem, why = rewards.parse_proposal("algebra", reply)
    assert why == "ok" and problem.text == "Find N if N + N = M."


@pytest.mark.parametrize("reply,why", [("Find N if N + N = M.", "no 'Selected Question:'"),
                                       ("Selected Question:   ", "empty")])
def test_malformed_algebra_proposal_is_invalid(reply, why):
    """No marker, or nothing after it, makes the proposal invalid."""
    assert rewards.parse_proposal("algebra", reply) == (None, why)


CODE_REPLY = """Read integers and print them sorted.
Test Cases:
3 1 2 ||| 1 2 3
5 ||| 5
2 -2 ||| [-2, 2]
not a test line
1 2 ||| three
1.5 2 ||| 1
7 ||| 7
"""


def test_code_proposal_keeps_valid_tests_and_ignores_malformed_lines():
    """Lines that are not `integers ||| integer-or-list` are skipped, not fatal."""
    problem, why = rewards.parse_proposal("code", CODE_REPLY)
    assert why == "ok" and problem.text == "Read integers and print them sorted."
    assert problem.tests == [("3 1 2", "1 2 3"), ("5", "5"), ("2 -2", "[-2, 2]"), ("7", "7")]


def test_code_proposal_keeps_at_most_ten_tests():
    """The released code runs at most 10 tests per problem."""
    reply = "P\nTest Cases:\n" + "".join(f"{i} ||| {i}\n" for i in range(15))
    assert len(rewards.parse_proposal("code", reply)[0].tests) == 10


@pytest.mark.parametrize("reply,why", [("Problem only", "no 'Test Cases:'"),
                                       ("P\nTest Cases:\nx ||| y\n", "no tests"),
                                       ("Test Cases:\n1 ||| 1\n", "empty")])
def test_malformed_code_proposal_is_invalid(reply, why):
    """No header, no valid test or no statement: the proposal is dropped from both updates."""
    assert rewards.parse_proposal("code", reply) == (None, why)


CAT_REPLY = """Print the sum of the integers.
Test Cases:
1 2 ||| 3
5 ||| 5
-4 4 ||| 0
Reference Solution:
```python
print(sum(map(int, input().split())))
```
Wrong Solution:
```python
print(max(map(int, input().split())))
```
Wrong Solution 2:
```python
print(sum(abs(int(x)) for x in input().split()))
```
"""
REFERENCE = "print(sum(map(int, input().split())))"  # CAT_REPLY's reference solution


def test_cat_proposal_parses_reference_and_wrong_solutions():
    """--cat needs the reference and every wrong program, and solution lines are not tests."""
    problem, why = rewards.parse_proposal("code", CAT_REPLY, cat=True)
    assert why == "ok" and len(problem.tests) == 3
    assert problem.reference == "print(sum(map(int, input().split())))"
    assert len(problem.wrong) == 2 and problem.wrong[0].startswith("print(max")


@pytest.mark.parametrize("reply,why", [
    (CAT_REPLY.replace("Reference Solution:", "Notes:"), "no reference solution"),
    (CAT_REPLY[:CAT_REPLY.index("Wrong Solution:")], "no wrong solution"),
])
def test_cat_proposal_without_a_solution_is_invalid(reply, why):
    """A CaT proposal missing its reference or all of its wrong solutions is invalid."""
    assert rewards.parse_proposal("code", reply, cat=True) == (None, why)


def test_cat_solution_is_the_block_under_its_header():
    """A second block inside the reference section (an aside) must not replace the reference."""
    reply = CAT_REPLY.replace("Wrong Solution:\n", "Notes:\n", 1)
    problem, why = rewards.parse_proposal("code", reply, cat=True)
    assert why == "ok" and problem.reference.startswith("print(sum(map")


def test_comment_inside_a_program_is_not_a_section_header():
    """`# Wrong solution: ...` as a comment inside the reference block neither cuts the reference
    off nor starts a wrong solution."""
    reply = CAT_REPLY.replace(REFERENCE, "# Wrong solution: would take the max\n" + REFERENCE, 1)
    problem, why = rewards.parse_proposal("code", reply, cat=True)
    assert why == "ok" and problem.reference.endswith("print(sum(map(int, input().split())))")
    assert len(problem.wrong) == 2


@pytest.mark.parametrize("layout", [
    lambda r: (r.replace("Reference Solution:\n```", "Reference Solution: ```")
               .replace("Wrong Solution:\n```", "Wrong Solution: ```")),
    lambda r: r.replace("\n```\nWrong", "```\nWrong"),  # a fence closed at the end of a code line
])
def test_cat_fences_on_header_or_code_lines_still_parse(layout):
    """Skipping headers inside code uses the block rules of the extractor: a fence opened on the
    header line, or closed at the end of a code line, hides no later header."""
    problem, why = rewards.parse_proposal("code", layout(CAT_REPLY), cat=True)
    assert why == "ok" and problem.reference == REFERENCE and len(problem.wrong) == 2


def test_test_cases_marker_must_start_a_line():
    """"Read T test cases: ..." in the statement is prose; the statement ends at the marker line."""
    reply = ("Read T test cases: each is a line of integers. Print their sum.\n"
             "**Test Cases:**\n1 2 ||| 3\n")
    problem, why = rewards.parse_proposal("code", reply)
    assert why == "ok" and problem.text.startswith("Read T test cases")
    assert problem.tests == [("1 2", "3")]


def test_parse_proposal_rejects_unknown_task_and_cat_outside_code():
    """Silent fallbacks would train on garbage; bad arguments must raise."""
    with pytest.raises(ValueError):
        rewards.parse_proposal("chess", "x")
    with pytest.raises(ValueError):
        rewards.parse_proposal("arith", "x", cat=True)


# --- answers ---------------------------------------------------------------------------

SAME_VOTE = [  # every spelling in a row must normalise to the row's canonical form
    ("7", ["7", "7.0", " 7 ", "+7", "007", "7.", "$7$", "\\boxed{7}", "$\\boxed{7}$", "\\(7\\)",
           "x = 7", "7.00."]),
    ("1/2", ["1/2", "0.5", ".5", "2/4", " $\\boxed{1/2}$ ", "\\frac{1}{2}", "\\dfrac{2}{4}",
             "1 / 2", "0.50"]),
    ("-3/4", ["-3/4", "-0.75", "3/-4", "- 3/4", "-\\frac{3}{4}", "\u22123/4", "y = -0.75"]),
    ("1234", ["1234", "1,234", "1,234.0", "$1,234$"]),
    ("0", ["0", "-0", "0/5", "0.0"]),
]


@pytest.mark.parametrize("canonical,spellings", SAME_VOTE)
def test_equal_answers_vote_together(canonical, spellings):
    """Spellings of one number must collapse to one exact form, or majority votes split."""
    assert {rewards.extract_answer(f"<answer>{s}</answer>") for s in spellings} == {canonical}


@pytest.mark.parametrize("left,right", [("1/3", "0.33"), ("7", "-7"), ("12", "1,2"), ("1/2", "2"),
                                        ("100", "1,00")])
def test_different_answers_do_not_vote_together(left, right):
    """Rounding, lost signs and misread separators must not merge distinct answers."""
    left_answer, right_answer = (rewards.extract_answer(f"<answer>{s}</answer>")
                                 for s in (left, right))
    assert left_answer != right_answer


@pytest.mark.parametrize("text", ["no tags at all 7", "<answer>7", "<answer></answer>",
                                  "<answer>seven</answer>", "<answer>2+3</answer>",
                                  "<answer>1/0</answer>", "<answer>1e3</answer>",
                                  "<answer>x = y + 1</answer>", "<answer>1, 2</answer>",
                                  "<answer>50%</answer>"])
def test_malformed_answers_are_none(text):
    """Only exact numbers count; words, expressions and division by zero are no answer."""
    assert rewards.extract_answer(text) is None


def test_the_last_answer_tag_wins():
    """The solver may draft answers while thinking; only the final one is graded."""
    assert rewards.extract_answer("<think><answer>1</answer></think><answer>2</answer>") == "2"


def test_huge_answers_return_quickly():
    """A `10**10**9` or a million digits must neither hang nor hit int()'s digit limit."""
    start = time.perf_counter()
    assert rewards.extract_answer("<answer>10**10**9</answer>") is None
    assert rewards.extract_answer("<answer>" + "9" * 1_000_000 + "</answer>") is None
    assert rewards.extract_answer("<answer>" * 100_000 + "</answer>") is None
    assert time.perf_counter() - start < 1.0


# --- majority rewards ------------------------------------------------------------------

def test_majority_tie_goes_to_first_seen():
    """Counter.most_common order, as in the released code: a 2-2 tie picks the earlier answer."""
    assert rewards.majority_vote(["5", "6", "6", "5"]) == ("5", 2)
    assert rewards.majority_vote(["6", "5", "5", "6"]) == ("6", 2)


def test_all_none_majority_rewards_nothing():
    """Four unparseable answers agree on None, which must never be rewarded."""
    answers = [None] * 4
    assert rewards.majority_vote(answers) == (None, 4)
    assert rewards.majority_solver_rewards(answers) == [0.0] * 4
    assert rewards.proposer_reward(rewards.majority_solver_rewards(answers)) == 0.0


def test_none_majority_beats_a_minority_answer():
    """None counts as a vote: with None the majority, the lone numeric answers get 0."""
    assert rewards.majority_solver_rewards([None, "3", None, "4"]) == [0.0] * 4


def test_one_of_four_majority():
    """Four different answers: the first is the majority of one, and the proposer gets 0 (m=1)."""
    scores = rewards.majority_solver_rewards(["1", "2", "3", "4"])
    assert scores == [1.0, 0.0, 0.0, 0.0] and rewards.proposer_reward(scores) == 0.0


def test_two_of_four_majority():
    """Two agree: both are rewarded and the proposer gets 1 (1 < m=2 < 4)."""
    scores = rewards.majority_solver_rewards(["9", None, "9", "8"])
    assert scores == [1.0, 0.0, 1.0, 0.0] and rewards.proposer_reward(scores) == 1.0


def test_majority_of_nothing():
    """No valid samples for a problem: no majority and no reward, not an IndexError."""
    assert rewards.majority_vote([]) == (None, 0) and rewards.majority_solver_rewards([]) == []


# --- proposer rewards ------------------------------------------------------------------

def scores_with(m, n=4):
    return [1.0] * m + [0.0] * (n - m)


@pytest.mark.parametrize("m,expected", [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0), (4, 0.0)])
def test_sqlm_majority_proposer_reward(m, expected):
    """SQLM: reward 1 exactly when two or three of four agree (1 < m < n)."""
    assert rewards.proposer_reward(scores_with(m)) == expected


@pytest.mark.parametrize("scores,expected", [([0, 0, 0, 0], 0.0), ([1, 1, 1, 1], 0.0),
                                             ([1, 0, 0, 0], 1.0), ([0.2, 0, 0, 0], 1.0),
                                             ([1, 1, 1, 0.8], 1.0)])
def test_sqlm_tests_proposer_reward(scores, expected):
    """SQLM code: reward 1 when the mean test score is strictly between 0 and 1."""
    assert rewards.proposer_reward(scores, kind="tests") == expected


@pytest.mark.parametrize("m,expected", [(0, 0.0), (1, 0.75), (2, 0.5), (3, 0.25), (4, 0.0)])
def test_azr_proposer_reward(m, expected):
    """AZR: 1 - solve rate, but 0 for a problem nobody or everybody solves."""
    assert rewards.proposer_reward(scores_with(m), rule="azr") == pytest.approx(expected)


@pytest.mark.parametrize("m,expected", [(0, 0.0), (1, 0.5), (2, 1.0), (3, 0.5), (4, 0.0)])
def test_rzero_proposer_reward(m, expected):
    """R-Zero: 1 - 2|p - 1/2|, peaked at a 50% majority share."""
    assert rewards.proposer_reward(scores_with(m), rule="rzero") == pytest.approx(expected)


def test_rzero_tests_kind_uses_the_mean_score():
    """For code, p is the mean test score, not a count of perfect programs."""
    assert rewards.proposer_reward([0.2] * 4, rule="rzero", kind="tests") == pytest.approx(0.4)


def test_unknown_proposer_rule_raises():
    """A typo in --proposer-reward must not silently train with some default."""
    with pytest.raises(ValueError):
        rewards.proposer_reward([1, 0], rule="entropy")
    with pytest.raises(ValueError):
        rewards.proposer_reward([1, 0], kind="vibes")


def test_format_rewards_only_check_parseability():
    """The format baseline pays for a parseable answer, right or wrong, and nothing else."""
    texts = ["<answer>12</answer>", "<answer>twelve</answer>", "12"]
    assert rewards.format_solver_rewards(texts, "arith") == [1.0, 0.0, 0.0]
    programs = ["```python\nprint(1)\n```", "print(1)"]
    assert rewards.format_solver_rewards(programs, "code") == [1.0, 0.0]


# --- programs and outputs --------------------------------------------------------------

def test_extract_program_takes_the_last_python_block():
    """The solver may sketch code while thinking; the final block is the submission."""
    text = "```python\nprint(1)\n```\nbetter:\n```python\nx = 2\nprint(x)\n```\n"
    assert rewards.extract_program(text) == "x = 2\nprint(x)"


def test_extract_program_ignores_other_languages_and_their_fences():
    """A ```bash block's closing fence must not open a block of prose."""
    text = "```python\nprint(1)\n```\nrun it:\n```bash\npython a.py\n```\nthat's all"
    assert rewards.extract_program(text) == "print(1)"


@pytest.mark.parametrize("text", ["no code", "```python\nprint(1)", "```python\n\n```"])
def test_missing_unclosed_or_empty_program_is_none(text):
    """A reply cut off inside its code block (or without one) has no program."""
    assert rewards.extract_program(text) is None


@pytest.mark.parametrize("stdout,expected,same", [
    ("3\n", "3", True), ("  3  ", "3", True), ("007", "7", True), ("-0", "0", True),
    ("1 2 3\n", "[1, 2, 3]", True), ("[1,2,3]", "1 2 3", True), ("1,2,3", "1 2 3", True),
    ("1\n2\n3\n", "1 2 3", True), ("", "[]", True),
    ("3.0", "3", False), ("1 2", "[1, 2, 3]", False), ("3 2 1", "1 2 3", False), ("-3", "3", False),
    ("", "0", False), ("12", "1 2", False),
])
def test_output_matches_lenient(stdout, expected, same):
    """--judge lenient: whitespace and list spelling are free; values, order and length are not."""
    assert rewards.output_matches(stdout, expected, lenient=True) is same


@pytest.mark.parametrize("stdout,expected,same", [
    ("3\n", "3", True), ("3\n\n", "3\n", True), ("1 2\n3\n", "1 2\n3", True),
    ("  3  ", "3", False), ("007", "7", False), ("1 2 3", "[1, 2, 3]", False), ("3 \n", "3", False),
    ("3\r\n", "3", False), ("", "0", False),
])
def test_output_judge_is_exact_by_default(stdout, expected, same):
    """The default judge is the released one: exact text after stripping trailing newlines; spacing,
    brackets and commas count. rewards.output_matches and sandbox.same_output are one rule."""
    assert rewards.output_matches(stdout, expected) is same
    assert sandbox.same_output(stdout, expected) is same
    assert sandbox.run_tests("print(input().strip())", [("3", "3")]) == [True]


# --- test rewards and Code-as-Task (real sandbox) --------------------------------------

SORT_TESTS = [("3 1 2", "1 2 3"), ("5", "5"), ("2 2 1", "1 2 2")]
READ = "a = list(map(int, input().split()))\n"


def test_test_rewards_score_the_share_of_passed_tests():
    """Correct 1, partly right 1/3, crashing 0, missing program 0."""
    programs = [READ + "print(*sorted(a))", READ + "print(*a)", "raise SystemExit(1)", None]
    scores = rewards.test_pass_rates(programs, [SORT_TESTS] * 4)  # n answers to one problem
    assert scores == pytest.approx([1.0, 1 / 3, 0.0, 0.0])


def test_test_rewards_score_each_program_on_its_own_tests():
    """A step's programs answer different problems: each is scored on its own problem's tests."""
    programs = [READ + "print(*sorted(a))", READ + "print(*sorted(a))", READ + "print(*a)"]
    reversed_tests = [(stdin, " ".join(reversed(out.split()))) for stdin, out in SORT_TESTS]
    scores = rewards.test_pass_rates(programs, [SORT_TESTS, reversed_tests, SORT_TESTS[1:2]])
    assert scores == pytest.approx([1.0, 1 / 3, 1.0])


@pytest.mark.slow
def test_right_output_from_a_failed_run_scores_zero():
    """Only status "ok" passes: printing the answer and then crashing or hanging earns nothing."""
    crash = READ + "print(*sorted(a))\nraise ValueError"
    hang = READ + "print(*sorted(a), flush=True)\nwhile True: pass"
    assert rewards.test_pass_rates([crash, hang], [SORT_TESTS[:1]] * 2, timeout=0.5) == [0.0, 0.0]


def test_test_rewards_use_one_sandbox_call(monkeypatch):
    """All programs x tests go to sandbox.run_many at once, so they run in parallel."""
    calls = []
    real = sandbox.run_many
    monkeypatch.setattr(sandbox, "run_many",
                        lambda jobs, **kw: calls.append(len(jobs)) or real(jobs, **kw))
    rewards.test_pass_rates([READ + "print(*a)"] * 3 + [None], [SORT_TESTS] * 4)
    assert calls == [9]


def test_test_rewards_grade_at_most_ten_tests():
    """Tests beyond the tenth are never run, so they can neither help nor hurt (eval's cap=None:
    all run)."""
    tests = [(str(i), str(i)) for i in range(10)] + [("1", "999")] * 3
    assert rewards.test_pass_rates([READ + "print(*a)"], [tests]) == [1.0]
    assert rewards.test_pass_rates([READ + "print(*a)"], [tests], cap=None) == [10 / 13]


def test_test_rewards_without_tests_are_zero():
    """No tests means nothing was verified: no reward, and no sandbox call."""
    assert rewards.test_pass_rates(["print(1)", None], [[], []]) == [0.0, 0.0]


def test_lenient_judge_is_an_option_through_the_rewards():
    """--judge lenient reaches the sandbox verdicts: a list printed in brackets passes only then."""
    programs = [READ + "print(sorted(a))"]
    assert rewards.test_pass_rates(programs, [SORT_TESTS]) == [0.0]
    assert rewards.test_pass_rates(programs, [SORT_TESTS], lenient=True) == [1.0]


def cat_problem(reference, wrong):
    return rewards.Problem("sort", SORT_TESTS, reference=reference, wrong=wrong)


def test_cat_filter_accepts_a_verified_task():
    """Reference passes every test and each wrong program fails one: keep the task."""
    problem = cat_problem(READ + "print(*sorted(a))",
                          [READ + "print(*a)", READ + "print(*sorted(a)[::-1])"])
    assert rewards.cat_filter([problem]) == [(True, "ok")]


def test_cat_filter_rejects_a_failing_reference():
    """Tests the proposer's own solution fails are probably wrong tests."""
    problem = cat_problem(READ + "print(*a)", [READ + "print(0)"])
    assert rewards.cat_filter([problem]) == [(False, "reference fails a test")]


def test_cat_filter_rejects_a_wrong_solution_that_passes():
    """Tests that a known-wrong program passes are too weak to verify anything."""
    problem = cat_problem(READ + "print(*sorted(a))",
                          [READ + "print(0)", READ + "print(' '.join(map(str, sorted(a))))"])
    assert rewards.cat_filter([problem]) == [(False, "a wrong solution passes every test")]


def test_cat_filter_judges_a_batch_in_one_sandbox_call(monkeypatch):
    """A step's CaT checks run together (all cores busy), with each problem's verdict its own."""
    good = cat_problem(READ + "print(*sorted(a))", [READ + "print(0)"])
    bad_reference = cat_problem(READ + "print(*a)", [READ + "print(0)"])
    weak = cat_problem(READ + "print(*sorted(a))", [READ + "print(' '.join(map(str, sorted(a))))"])
    no_wrong = cat_problem(READ + "print(*sorted(a))", [])
    calls, real = [], sandbox.run_many
    monkeypatch.setattr(sandbox, "run_many",
                        lambda jobs, **kw: calls.append(len(jobs)) or real(jobs, **kw))
    verdicts = rewards.cat_filter([good, bad_reference, weak, no_wrong])
    assert verdicts == [(True, "ok"), (False, "reference fails a test"),
                        (False, "a wrong solution passes every test"),
                        (False, "no reference or wrong solution")]
    assert len(calls) == 1


def test_parsed_cat_proposal_passes_the_filter():
    """The CaT layout the prompt asks for parses into a task the filter accepts."""
    problem, _ = rewards.parse_proposal("code", CAT_REPLY, cat=True)
    assert rewards.cat_filter([problem]) == [(True, "ok")]


# --- evaluation helpers ----------------------------------------------------------------

@pytest.mark.parametrize("text,truth,score", [
    ("<think>..</think><answer>56088</answer>", "56088", 1.0),
    ("<answer> +56088 </answer>", 56088, 1.0),
    ("<answer>1</answer> then <answer>56088</answer>", "56088", 1.0),
    ("<answer>56087</answer>", "56088", 0.1), ("<answer>3</answer>", "3/4", 0.1),
    ("<answer>56,088</answer>", "56088", 0.0), ("<answer>56088.0</answer>", "56088", 0.0),
    ("<answer>$56088$</answer>", "56088", 0.0), ("<answer>3/4</answer>", "3/4", 0.0),
    ("<answer>56\n088</answer>", "56088", 0.0), ("<answer>about 56088</answer>", "56088", 0.0),
    ("56088", "56088", 0.0), ("<answer>" + "9" * 5000 + "</answer>", "9", 0.0),
])
def test_official_score(text, truth, score):
    """The released scorer exactly: int() of the last one-line answer; 1 equal, 0.1 parsed but
    wrong, else 0. No normalisation as in extract_answer: `56,088` or `$288$` score 0, as in the
    paper's code."""
    assert rewards.official_score(text, truth) == score


@pytest.mark.parametrize("text,value", [
    ("What is 123 * 456?", "56088"), ("Compute 12 x 34.", "408"), ("$1,234 \\times 5$", "6170"),
    ("Find the product 321 × 654", "209934"), ("What is -12 * 3?", "-36"),
    ("What is 12 * 3 + 4?", "40"), ("What is 12 + 3 * 4?", "24"), ("(12 + 3) * 4 =", "60"),
    ("What is 100 - 7 - 3?", "90"), ("What is 7 / 2?", "7/2"), ("What is 1.5 * 2?", "3"),
    ("What is 840 ÷ 12?", "70"), ("Compute 2 \\cdot (3 - 5).", "-4"),
    ("What is - (4 - 9) * 2?", "10"),
    ("Multiply 12 by 34", None), ("12 * 34 and 5 * 6", None), ("What is 61 * 8*?", None),
    ("What is 5 / (3 - 3)?", None), ("What is (2 + 3?", None), ("What is 2 ** 3?", None),
    ("Use 3-digit numbers: 321 × 654", None), ("What is 345?", None), ("x * 3", None),
    ("What is " + "(" * 50 + "1" + ")" * 50 + " + 1?", None), ("1 + " * 200 + "1", None),
])
def test_arith_truth(text, value):
    """The one well-formed expression of + - * / and parentheses, read exactly with the usual
    precedence. None when there is no operator, the expression does not parse, another number
    stands elsewhere in the text, or it is too deep or too long to read cheaply. Any operation is
    read, not plain products only."""
    assert rewards.arith_truth(text) == value


# --- the released parser, --arith-check, the proposer's problem shapes --------------------

@pytest.mark.parametrize("text,ours,released", [
    ("<answer>56088</answer>", "56088", "56088"), ("<answer> 007 </answer>", "7", "007"),
    ("<answer>56,088</answer>", "56088", None), ("<answer>3/4</answer>", "3/4", None),
    ("<answer>x = 3</answer>", "3", None), ("<answer>\n12\n</answer>", "12", None),
    ("<answer>1</answer> then <answer>2</answer>", "2", "2"),
])
def test_released_answers_are_what_int_reads(text, ours, released):
    """Released votes are int()-parseable stripped strings from a one-line tag, compared as strings."""
    assert rewards.extract_answer(text) == ours
    assert rewards.extract_answer(text, released=True) == released


def test_released_votes_compare_raw_strings():
    """`007` and `7` are different votes as released, the same vote in ours."""
    texts = [f"<think>.</think><answer>{v}</answer>" for v in ("007", 7, 7, "007")]
    assert rewards.majority_solver_rewards([rewards.extract_answer(t) for t in texts]) == [1, 1, 1, 1]
    assert rewards.majority_solver_rewards([rewards.extract_answer(t, True) for t in texts]) == [1, 0, 0, 1]


def test_released_code_proposals_take_every_test_line_and_none_is_valid():
    """As released, any line holding `|||` is a test, unchecked (ours takes a line of integers, then
    an integer or a list, so `ab ||| ab` leaves it without tests), and a proposal with no test line
    is still a problem, with no tests."""
    assert rewards.parse_proposal("code", "Echo.\nTest Cases:\nab ||| ab\n")[0] is None
    problem, reason = rewards.parse_proposal("code", "Echo.\nTest Cases:\nab ||| ab\n", released=True)
    assert reason == "ok" and problem.tests == [("ab", "ab")]
    assert rewards.parse_proposal("code", "Echo.\nTest Cases:\nnone\n", released=True)[0].tests == []


def test_arith_check_rejects_malformed_problems():
    """--arith-check: "What is 61 * 8*?" splits the vote by being ambiguous; it is not a problem."""
    assert rewards.parse_proposal("arith", "What is 61 * 8*?")[1] == "ok"
    assert rewards.parse_proposal("arith", "What is 61 * 8*?", arith_check=True)[0] is None
    assert rewards.parse_proposal("arith", "What is 61 * 8?", arith_check=True)[1] == "ok"


@pytest.mark.parametrize("text,shape", [
    ("What is 47 * 8?", "2x1"), ("What is 123 × 45?", "3x2"), ("7 x 8", "1x1"), ("What is 1,234 * 5?", "4x1"),
    ("What is 12 + 3?", "other"), ("What is 2 * 3 * 4?", "other"), ("What is 12 - 3 * 4?", "other"),
    ("What is 61 * 8*?", "malformed"), ("Think of a number.", "malformed"),
])
def test_arith_shape_names_the_proposers_problem_kind(text, shape):
    """The proposer's problem mix: digits of a plain product's operands, else other or malformed."""
    assert rewards.arith_shape(text) == shape
