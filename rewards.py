"""Parsing proposals and answers; solver and proposer rewards for every task.

SQLM (arXiv 2508.03682, Sec. 3) needs no labels: a solver is rewarded for agreeing with
the majority of its own samples (arith, algebra) or for passing the proposer's unit tests
(code), and the proposer for a problem that is neither trivial nor impossible. Every rule
below is one function. Where the paper's released code reads an answer or a test line
differently, `released=True` reproduces it (the trainer's `--as-released`).

Covered: integer, decimal and fraction answers in one exact canonical form (Fraction),
common wrappers (`$`, `\\boxed{}`, `\\(...\\)`, `\\frac{}{}`, `x = ...`), the sqlm/azr/rzero
proposer rules, test rewards run in parallel through `sandbox.run_many` with one output
judge, the Code-as-Task filter, and a safe exact reader of arithmetic problems (`arith_value`,
+ - * / and parentheses) for the arith validity rule and the label-quality diagnostic.
Left out on purpose: symbolic answers (expressions, sets, intervals, units), float
tolerance, scientific notation, powers, and any `eval` of model output.
"""
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

import prompts
import sandbox

MAX_ANSWER_CHARS = 100  # longer answers are no numbers we vote on; keeps 10**10**9 cheap
MAX_TESTS = 10          # tests per problem, as in the released code
TEST_TIMEOUT = 5.0      # seconds per test run
TEST_MEMORY_MB = 512
PYTHON_FENCES = ("", "python", "python3", "py")

_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_RATIONAL = re.compile(rf"({_DECIMAL})(?:/({_DECIMAL}))?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?", re.ASCII)
_FRAC = re.compile(r"([+-]?)\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"[A-Za-z]\w*\s*=\s*(.+)", re.ASCII | re.DOTALL)
_WRAPPERS = (("\\boxed{", "}"), ("\\(", "\\)"), ("\\[", "\\]"), ("$", "$"))
_RELEASED_ANSWER = re.compile(r"<answer>(.*?)</answer>")  # one line only (no DOTALL), as released
_SELECTED = re.compile(r"selected question\s*:", re.IGNORECASE)
# "Read T test cases:" is prose
_TEST_HEADER = re.compile(r"^[ \t*#]*test cases[ \t*]*:", re.IGNORECASE | re.MULTILINE)
_SOLUTION_HEADER = re.compile(r"^[ \t*#]*(reference|wrong) solution[^\n:]*:",
                              re.IGNORECASE | re.MULTILINE)
_INPUT_LINE = re.compile(r"[+-]?\d+(?:[ \t]+[+-]?\d+)*", re.ASCII)


# --- proposals -------------------------------------------------------------------------

@dataclass
class Problem:
    """A parsed proposal: what the solver sees, plus the code task's tests and CaT programs."""
    text: str
    tests: list[tuple[str, str]] = field(default_factory=list)  # (stdin line, expected stdout)
    reference: str | None = None                                # --cat: passes every test
    wrong: list[str] = field(default_factory=list)              # --cat: each fails some test


def strip_think(text):
    """The reply after its last `</think>`; a `<think>` never closed leaves what came before it."""
    end = text.rfind("</think>")
    if end >= 0:
        return text[end + len("</think>"):].strip()
    start = text.find("<think>")
    return (text if start < 0 else text[:start]).strip()


def parse_proposal(task, text, cat=False, released=False, arith_check=False):
    """(Problem, "ok") or (None, reason) for one proposer reply (Sec. 3, "proposal parsing").

    arith: the whole reply is the problem (never invalid in the released code); with
    `arith_check`, it must also hold exactly one well-formed arithmetic expression
    (`arith_value`), so a malformed problem that splits the vote is no problem at all.
    algebra: the text after the last `Selected Question:`. code: the text before
    `Test Cases:`, then up to 10 valid `INPUT ||| OUTPUT` lines (malformed lines ignored,
    none valid: invalid); with `cat` also a `Reference Solution:` and at least one
    `Wrong Solution:` python block. released: every `|||` line is a test, unchecked, and a
    problem with none is still valid (the released reward manager reads them so). A task of
    prompts.TASKS with no branch here is a ValueError, never read as code.
    """
    prompts.check_task(task, cat)
    body = strip_think(text)
    if task == "arith":
        if not body:
            return None, "empty"
        if arith_check and arith_value(body) is None:
            return None, "no single well-formed arithmetic expression"
        return Problem(body), "ok"
    if task == "algebra":
        marks = list(_SELECTED.finditer(body))
        if not marks:
            return None, "no 'Selected Question:'"
        # "**Selected Question:** ..." in markdown
        question = body[marks[-1].end():].strip(" \t\r\n*")
        return (Problem(question), "ok") if question else (None, "empty")
    if task == "code":
        return _parse_code(body, cat, released)
    raise ValueError(f"no proposal parser for task {task!r}: add one to rewards.parse_proposal")


def _parse_code(body, cat, released):
    header = _TEST_HEADER.search(body)
    if header is None:
        return None, "no 'Test Cases:'"
    statement, rest = body[:header.start()].strip(), body[header.end():]
    if not statement:
        return None, "empty"
    sections = _headers_outside_code(rest)
    test_lines = rest[:sections[0].start()] if sections else rest  # solutions never hold tests
    read = _released_test_line if released else _parse_test_line
    tests = [t for t in map(read, test_lines.splitlines()) if t][:MAX_TESTS]
    if not tests and not released:
        return None, "no tests"
    problem = Problem(statement, tests)
    if not cat:
        return problem, "ok"
    for i, head in enumerate(sections):
        end = sections[i + 1].start() if i + 1 < len(sections) else len(rest)
        programs = _python_blocks(rest[head.end():end])
        if not programs:
            continue
        program = programs[0]  # the block right under the header, not a later aside
        if head.group(1).lower() == "wrong":
            problem.wrong.append(program)
        elif problem.reference is None:
            problem.reference = program
    if problem.reference is None:
        return None, "no reference solution"
    if not problem.wrong:
        return None, "no wrong solution"
    return problem, "ok"


def _headers_outside_code(text):
    """`Reference/Wrong Solution:` header matches not inside a ``` block (a `# Wrong solution: ...`
    comment in a program is no header). Outside a block, a line with an odd number of ``` opens
    one (`Reference Solution: ```python` too); inside, a line ending in ``` closes it."""
    headers, inside, offset = [], False, 0
    for line in text.splitlines(keepends=True):
        if inside:
            inside = not line.strip().endswith("```")
        else:
            header = _SOLUTION_HEADER.match(text, offset)
            headers += [header] if header else []
            inside = line.count("```") % 2 == 1
        offset += len(line)
    return headers


def _released_test_line(line):
    """(stdin, expected) from any line holding `|||`, both sides stripped and unchecked."""
    return tuple(part.strip() for part in line.split("|||", 1)) if "|||" in line else None


def _parse_test_line(line):
    """(stdin, expected) from `INPUT ||| OUTPUT`: a line of integers, then an integer or a list;
    else None."""
    if "|||" not in line:
        return None
    stdin, expected = (part.strip().strip("`").strip() for part in line.split("|||", 1))
    if not _INPUT_LINE.fullmatch(stdin) or not expected:
        return None
    if not all(_INTEGER.fullmatch(tok) for tok in _output_tokens(expected)):
        return None
    return stdin, expected


# --- answers ---------------------------------------------------------------------------

def normalize_answer(answer):
    """The canonical exact form of a numeric answer ("7", "-3/4"), or None if it is not one.

    Integers, decimals and fractions become one Fraction printed as "p" or "p/q" (lowest
    terms, sign on p), so `0.5`, `1/2`, `2/4` and `$\\boxed{1/2}$` vote together. Also
    unwraps `$..$`, `\\boxed{}`, `\\(..\\)`, `\\[..\\]`, `\\frac{p}{q}`, `x = 5` (the right-hand
    side), drops thousands separators (`1,234`), spaces around `/`, a trailing period.
    """
    s = answer.strip().replace("\u2212", "-")  # unicode minus
    if len(s) > MAX_ANSWER_CHARS:
        return None
    previous = None
    while s != previous:  # peel wrappers in any order: "$\boxed{x = 1/2}$."
        previous = s
        s = s.strip().rstrip(".").strip()
        for opening, closing in _WRAPPERS:
            fits = len(s) >= len(opening) + len(closing)
            if fits and s.startswith(opening) and s.endswith(closing):
                s = s[len(opening):-len(closing)]
        assignment = _ASSIGNMENT.fullmatch(s)
        if assignment:
            s = assignment.group(1)
        s = _FRAC.sub(r"\1\2/\3", s)
    s = re.sub(r"\s*/\s*", "/", re.sub(r"^([+-])\s+", r"\1", s))
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    match = _RATIONAL.fullmatch(s)
    if not match:
        return None
    numerator, denominator = Fraction(match.group(1)), Fraction(match.group(2) or 1)
    return None if denominator == 0 else str(numerator / denominator)


def extract_answer(text, released=False):
    """The answer a solver reply votes with: the content of its last `<answer>...</answer>`.

    Ours: its canonical exact form (`normalize_answer`), so `1/2` and `0.5` agree.
    released: the last one-line `<answer>` only, stripped, and only if Python's int() reads
    it (so `56,088`, `3/4`, `x = 3` are no answer); the vote then compares these strings as
    they are (`007` and `7` differ), as the released reward function does.
    """
    if released:
        found = _RELEASED_ANSWER.findall(text)
        answer = found[-1].strip() if found else ""
        if not answer or len(answer) > MAX_ANSWER_CHARS:
            return None
        try:
            int(answer)
        except ValueError:
            return None
        return answer
    close = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, close) if close >= 0 else -1
    return None if start < 0 else normalize_answer(text[start + len("<answer>"):close])


# --- majority rewards (arith, algebra) -------------------------------------------------

def majority_vote(answers):
    """(most common answer, its count) among the n answers, None included; ties go to the
    first seen, as Counter.most_common does in the released code. Empty: (None, 0)."""
    return Counter(answers).most_common(1)[0] if answers else (None, 0)


def majority_solver_rewards(answers, vote=None):
    """Solver reward (Sec. 3): 1 if the answer is the majority and the majority is not None, else 0.
    vote: `majority_vote(answers)` where the caller has taken it already."""
    majority, _ = vote or majority_vote(answers)
    return [1.0 if majority is not None and a == majority else 0.0 for a in answers]


def proposer_reward(scores, rule="sqlm", kind="majority"):
    """Proposer reward from the solver rewards of one problem's n >= 2 answers.

    sqlm (the paper, Sec. 3): majority: 1 if 1 < m < n, m = #scores equal to 1 (so 0 when
    the majority is None); tests: 1 if 0 < mean < 1. azr (arXiv 2505.03335): 1 - mean,
    but 0 when mean is 0 or 1. rzero (arXiv 2508.05004): 1 - 2|p - 1/2|, p = m/n (majority)
    or the mean score (tests).
    """
    if kind not in ("majority", "tests"):
        raise ValueError(f"unknown reward kind {kind!r}")
    n = len(scores)
    m = sum(1 for s in scores if s == 1)
    share = m / n if kind == "majority" else sum(scores) / n
    if rule == "sqlm":
        return float(1 < m < n) if kind == "majority" else float(0 < share < 1)
    if rule == "azr":
        return 0.0 if share in (0.0, 1.0) else 1.0 - share
    if rule == "rzero":
        return 1.0 - 2.0 * abs(share - 0.5)
    raise ValueError(f"unknown proposer reward rule {rule!r}")


def format_solver_rewards(texts, task, released=False):
    """The paper's format-only baseline: 1 for a parseable answer (code: a python block), else 0."""
    if task == "code":
        return [float(extract_program(t) is not None) for t in texts]
    return [float(extract_answer(t, released) is not None) for t in texts]  # arith, algebra


# --- test rewards (code) ---------------------------------------------------------------

def extract_program(text):
    """The body of the last fenced ```python (or bare ```) block, or None."""
    programs = _python_blocks(text)
    return programs[-1] if programs else None


def _python_blocks(text):
    """Non-empty ```python / ``` blocks in order. Read line by line so the closing fence of a
    ```bash block is never taken for an opening one; a block left open (the reply hit its
    length limit) does not count."""
    programs, block, language = [], None, ""
    for line in text.splitlines():
        fence = line.strip()
        if block is None:
            if fence.startswith("```"):
                block, language = [], fence[3:].strip().lower()
        elif fence.endswith("```"):
            if fence != "```":
                block.append(line.rstrip()[:-3])  # "print(x)```": the fence closes on a code line
            if language in PYTHON_FENCES and "".join(block).strip():
                programs.append("\n".join(block))
            block = None
        else:
            block.append(line)
    return programs


def _output_tokens(text):
    """Tokens of a printed integer or list: split at whitespace, outer brackets, commas dropped."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return text.replace(",", " ").split()


def _same_token(got, want):
    if _INTEGER.fullmatch(got) and _INTEGER.fullmatch(want):
        return _int_value(got) == _int_value(want)
    return got == want


def _int_value(token):
    """An integer token's canonical form without int()'s digit limit: "+007" -> "7", "-0" -> "0"."""
    digits = token.lstrip("+-").lstrip("0") or "0"
    return "-" + digits if token.startswith("-") and digits != "0" else digits


def output_matches(stdout, expected, lenient=False):
    """The one output judge of training, eval, `sandbox.run_tests` and the bench.

    Default, as released: `sandbox.same_output`, the exact string after stripping trailing
    newlines. lenient (an option, `--judge lenient`): whitespace-normalised, a list may be
    printed bracketed, comma- or space-separated (`[1, 2, 3]` == `1,2,3` == `1 2 3`), and
    integers compare by exact value (leading zeros and a `+` ignored).
    """
    if not lenient:
        return sandbox.same_output(stdout, expected)
    got, want = _output_tokens(stdout), _output_tokens(expected)
    return len(got) == len(want) and all(map(_same_token, got, want))


def run_test_sets(programs, test_sets, timeout, memory_mb, lenient):
    """passes[i][j]: program i printed the expected output (`output_matches`) of test j of
    test_sets[i].

    Every run of every program goes through ONE sandbox.run_many call, so a whole batch
    keeps all cores busy; a None program fails all its tests without running. The verdict is
    taken outside the program: status ok and output accepted by the judge.
    """
    jobs = [(code, stdin + "\n", expected) for code, tests in zip(programs, test_sets)
            if code is not None for stdin, expected in tests]

    def passed(job, result):
        return result.status == "ok" and output_matches(result.stdout, job[2], lenient)

    verdicts = iter(sandbox.run_many(jobs, timeout=timeout, memory_mb=memory_mb, judge=passed)
                    if jobs else [])
    return [[next(verdicts) if code is not None else False for _ in tests]
            for code, tests in zip(programs, test_sets)]


def test_pass_rates(programs, test_sets, cap=MAX_TESTS, timeout=TEST_TIMEOUT,
                    memory_mb=TEST_MEMORY_MB, lenient=False):
    """Share of its own tests (the first `cap`; None: all) that each program passes; no program or
    no tests: 0. The code solver's reward (Sec. 3: a step's programs x their problem's at most 10
    tests in one sandbox call), and eval's pass rate (cap=None)."""
    test_sets = [tests[:cap] for tests in test_sets]
    passes = run_test_sets(programs, test_sets, timeout, memory_mb, lenient)
    return [sum(p) / len(p) if p else 0.0 for p in passes]


def cat_filter(problems, timeout=TEST_TIMEOUT, memory_mb=TEST_MEMORY_MB, lenient=False):
    """Code-as-Task (arXiv 2506.01716): a problem is valid only if its reference passes every
    test and each wrong solution fails at least one. One (valid, reason) per problem; every
    program of every problem runs in one sandbox call."""
    ready = [p.reference is not None and bool(p.wrong) and bool(p.tests) for p in problems]
    programs = [code for p, ok in zip(problems, ready) if ok for code in (p.reference, *p.wrong)]
    test_sets = [p.tests[:MAX_TESTS] for p, ok in zip(problems, ready) if ok
                 for _ in range(1 + len(p.wrong))]
    passes = iter(run_test_sets(programs, test_sets, timeout, memory_mb, lenient))
    verdicts = []
    for p, ok in zip(problems, ready):
        if not ok:
            verdicts.append((False, "no reference or wrong solution" if p.tests else "no tests"))
            continue
        reference, wrong = next(passes), [next(passes) for _ in p.wrong]
        verdicts.append((False, "reference fails a test") if not all(reference) else
                        (False, "a wrong solution passes every test") if any(all(w) for w in wrong)
                        else (True, "ok"))
    return verdicts


# --- evaluation helpers ----------------------------------------------------------------

def official_score(text, truth):
    """The released code's eval scorer, reproduced: 1.0 correct, 0.1 formatted but wrong, 0.0 none.

    "Formatted" there means the last one-line `<answer>...</answer>`, stripped, parses with
    Python's int(); correct means int(answer) == int(truth). So `56,088`, `288.0`, `$288$`
    and any fraction score 0 here (an algebra truth like 3/4 can never score 1), while
    `accuracy` (extract_answer) counts them: report both, and compare this one to published figures.
    """
    answer = extract_answer(text, released=True)
    if answer is None:
        return 0.0
    try:
        return 1.0 if int(answer) == int(str(truth)) else 0.1
    except ValueError:
        return 0.1


def arith_truth(problem_text):
    """The exact value of the problem's one arithmetic expression in canonical form ("56088",
    "-3/4"), or None. A diagnostic only (how often the majority is right), never a reward:
    SQLM uses no labels."""
    value = arith_value(problem_text)
    return None if value is None else str(value)


def arith_shape(problem_text):
    """The problem's kind for the proposer's mix: "AxB" (digits of each operand) for a plain
    product of two integers, "other" for any other well-formed expression, "malformed" else."""
    if arith_value(problem_text) is None:
        return "malformed"
    tokens = [tok for _, tok in _expression(problem_text)]
    if len(tokens) == 3 and tokens[1] == "*":
        return f"{len(tokens[0])}x{len(tokens[2])}"
    return "other"


# --- a safe exact reader of arithmetic problems ----------------------------------------

_ARITH_TOKEN = re.compile(r"""
    (?P<num>\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?)          # 12, 56,088, 3.5
  | (?P<op>[+*/()×÷·\-\u2212]|\\times|\\cdot|\\div
      |(?<=[\d\s)])[xX](?=[\s\d(]))                       # x only between operands
  | (?P<space>\s+)
  | (?P<other>.)""", re.VERBOSE | re.DOTALL)
_OPS = {"×": "*", "·": "*", "\\times": "*", "\\cdot": "*", "x": "*", "X": "*", "÷": "/",
        "\\div": "/", "\u2212": "-"}
MAX_PROBLEM_CHARS = 500  # longer problems are not read (keeps the parser cheap on any text)


def _expression(problem_text):
    """The (kind, token) list of the text's one run of numbers, operators and parentheses that
    holds a number and an operator; [] if there is none or more than one, or if the text is
    longer than MAX_PROBLEM_CHARS."""
    if len(problem_text) > MAX_PROBLEM_CHARS:
        return []
    runs, current = [], []
    for m in _ARITH_TOKEN.finditer(problem_text):
        if m.lastgroup == "other":
            runs.append(current)
            current = []
        elif m.lastgroup != "space":
            current.append((m.lastgroup, _OPS.get(m.group(), m.group()).replace(",", "")))
    runs = [r for r in runs + [current] if any(kind == "num" for kind, _ in r)]
    if len(runs) != 1 or not any(kind == "op" and tok not in "()" for kind, tok in runs[0]):
        return []
    return runs[0]


def arith_value(problem_text):
    """The exact value (a Fraction) of the one arithmetic expression in a problem, or None.

    The text is cut into numbers, operators (+ - * / and x, ×, ·, ÷, \\times, \\cdot, \\div),
    parentheses and everything else. The expression is the one run of the first three that
    holds a number ("What is 12 * (3 + 4)?"); it must use at least one operator and parse
    completely with the usual precedence. None if there is no such run, or more than one
    (another number anywhere: "a three-digit problem: 123 * 4" is ambiguous), or it does
    not parse ("61 * 8*"), or divides by zero. Never `eval`: a recursive-descent parser
    over at most MAX_PROBLEM_CHARS characters, so no input can make it slow.
    """
    tokens, pos = _expression(problem_text), 0
    if not tokens:
        return None

    def peek():
        return tokens[pos][1] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expression(depth):
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take()[1] == "+" else value - term(depth)
        return value

    def term(depth):
        value = factor(depth)
        while peek() in ("*", "/"):
            op, right = take()[1], factor(depth)
            if op == "/" and right == 0:
                raise ValueError("division by zero")
            value = value * right if op == "*" else value / right
        return value

    def factor(depth):
        if depth > 20 or pos >= len(tokens):
            raise ValueError("too deep or cut short")
        kind, tok = take()
        if tok in ("+", "-"):
            value = factor(depth + 1)
            return value if tok == "+" else -value
        if kind == "num":
            return Fraction(tok)
        if tok == "(":
            value = expression(depth + 1)
            if take()[1] != ")":
                raise ValueError("unclosed parenthesis")
            return value
        raise ValueError(f"unexpected {tok!r}")

    try:
        value = expression(0)
    except (ValueError, IndexError):
        return None
    return value if pos == len(tokens) else None
