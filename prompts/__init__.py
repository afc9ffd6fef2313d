"""The proposer and solver prompt texts, one plain-text file per (task, role).

Files are named `{task}_{role}.txt` (plus `code_proposer_cat.txt` for the Code-as-Task
option) so a reader can open and edit a prompt without touching code. Solver prompts hold
one `{problem}` placeholder, filled with `str.replace` because code problems contain braces.

Contracts the parsers in rewards.py rely on:
- solvers reason in `<think> </think>` and answer in `<answer> </answer>`; the code solver
  ends with one ```python block that reads stdin and prints;
- the arith proposer's whole reply is the problem (one problem, numbers of up to three
  digits, any operation, as released);
- the algebra proposer ends with `Selected Question: ...`;
- the code proposer writes the problem, a `Test Cases:` line and five `INPUT ||| OUTPUT`
  lines; with `cat`, then `Reference Solution:` and `Wrong Solution:` sections, each
  followed by a ```python block.
"""
import functools
import os

TASKS = ("arith", "algebra", "code")
ROLES = ("proposer", "solver")
MAX_RESPONSE = {"arith": 1024, "algebra": 3072, "code": 512}  # the paper's response limits (tokens), both roles and eval
PROBLEM_SLOT = "{problem}"

_DIR = os.path.dirname(os.path.abspath(__file__))


def check_task(task, cat=False):
    """ValueError (one line) for an unknown task, or for the Code-as-Task option on a task other than code."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if cat and task != "code":
        raise ValueError("--cat applies to --task code only")


@functools.cache
def load(task, role, cat=False):
    """The prompt text for `task` and `role`; `cat` picks the Code-as-Task proposer prompt.

    `cat` changes only the code proposer (the solver sees the same problem either way);
    asking for it with another task is a ValueError, as is an unknown task or role.
    """
    check_task(task, cat)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    suffix = "_cat" if cat and role == "proposer" else ""
    with open(os.path.join(_DIR, f"{task}_{role}{suffix}.txt"), encoding="utf-8") as f:
        return f.read().strip()


def proposer_prompt(task, cat=False):
    """The topic prompt the proposer answers with a new problem."""
    return load(task, "proposer", cat)


def solver_prompt(task, problem):
    """The solver prompt with `problem` in place of the `{problem}` slot."""
    return load(task, "solver").replace(PROBLEM_SLOT, problem, 1)
