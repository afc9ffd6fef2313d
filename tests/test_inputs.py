"""Inputs too long for the model: a held-out line over eval.MAX_LINE_CHARS, a problem whose solver
prompt is over the limit (--max-prompt for sqlm.py, the model's context less --max-new-tokens for
eval.py), and --max-prompt + --max-response over the model's context. Each is refused in one line,
exit code 2, before any generation, with nothing written, through the real CLIs."""
import json
import time

import pytest

import eval as heldout
import harness
import prompts
import rollout
from conftest import FAST, exit_code, one_line, tree

ENTRY_POINTS = {  # main, argv with MODEL and DATA filled in (default --out: under the working dir)
    "sqlm.py": (harness.main, ["--model", "MODEL", "--steps", "1", "--eval-data", "DATA"] + FAST),
    "eval.py": (heldout.main, ["--task", "arith", "--model", "MODEL", "--data", "DATA",
                               "--max-new-tokens", "2", "--device", "cpu"]),
}


def refused(entry, tiny_dir, tmp_path, monkeypatch, capsys, extra=(), data=None):
    """Run `entry` from an empty working directory; return its one error line after checking exit
    code 2 and that nothing was written there (no run directory, no result file)."""
    main, argv = ENTRY_POINTS[entry]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if data is None:
        data = tmp_path / "ok.jsonl"
        data.write_text(json.dumps({"problem": "What is 2 * 3?", "answer": 6}) + "\n")
    argv = [{"MODEL": tiny_dir, "DATA": str(data)}.get(a, a) for a in argv] + list(extra)
    assert exit_code(main, argv) == 2
    assert tree(work) == {}
    return one_line(capsys.readouterr().err)


# --- a line over the cap ---------------------------------------------------------------------

def test_a_line_over_the_cap_is_refused_with_its_file_and_line(tmp_path):
    """A line longer than MAX_LINE_CHARS is refused by name, and one of exactly the cap is read.
    Guards: a 50 MB line parsed, tokenized and generated on for minutes, then out of memory."""
    row = json.dumps({"problem": "What is 2 * 3?", "answer": 6})
    at_cap = row[:-1] + " " * (heldout.MAX_LINE_CHARS - len(row)) + "}"
    path = tmp_path / "d.jsonl"
    path.write_text(at_cap + "\n" + at_cap + " \n")
    with pytest.raises(ValueError) as e:
        heldout.read_jsonl(path, "arith")
    assert str(e.value).startswith(f"{path}:2: line longer than {heldout.MAX_LINE_CHARS:,} ")
    path.write_text(at_cap + "\n")
    assert heldout.read_jsonl(path, "arith") == [{"problem": "What is 2 * 3?", "answer": "6"}]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_long_line_is_one_line_and_nothing_written(entry, tiny_dir, tmp_path, monkeypatch,
                                                     capsys):
    """Both CLIs refuse a data file with a line over the cap, naming file and line, before a model
    loads. Guards: a traceback after minutes, and sqlm.py's run directory left behind."""
    data = tmp_path / "long.jsonl"
    data.write_text("\n" + "7" * (heldout.MAX_LINE_CHARS + 1) + "\n")
    line = refused(entry, tiny_dir, tmp_path, monkeypatch, capsys, data=data)
    assert f"{data}:2: line longer than {heldout.MAX_LINE_CHARS:,} characters" in line


# --- a problem over the prompt limit ---------------------------------------------------------

def test_solver_prompt_ids_refuse_exactly_the_problems_over_the_limit(tiny_model):
    """A problem whose chat prompt is `limit` tokens passes and one token more is refused, with
    the count and the first one named. Guards: an off-by-one, or only the first problem checked."""
    _, tokenizer = tiny_model
    problems = [{"problem": "What is 2 * 3?"}, {"problem": "x y " * 40}, {"problem": "x y " * 41}]
    sizes = [len(rollout.chat_prompt(tokenizer, prompts.solver_prompt("arith", p["problem"])))
             for p in problems]
    assert sizes[0] < sizes[1] < sizes[2]
    ids = heldout.solver_prompt_ids(tokenizer, "arith", problems, sizes[2])
    assert [len(x) for x in ids] == sizes
    with pytest.raises(heldout.PromptTooLong) as e:
        heldout.solver_prompt_ids(tokenizer, "arith", problems, sizes[2] - 1, "LIMIT")
    assert str(e.value).startswith(f"1 of 3 problems have a solver prompt over LIMIT: the first, "
                                   f"problem 3 ('x y x y")
    assert str(e.value).endswith(f"is {sizes[2]} tokens; shorten or drop them")
    with pytest.raises(heldout.PromptTooLong, match="2 of 3 problems .* problem 2 "):
        heldout.solver_prompt_ids(tokenizer, "arith", problems, sizes[1] - 1)


def test_a_problem_too_long_to_fit_is_refused_without_tokenizing(tiny_model, monkeypatch):
    """A problem of more characters than the limit times the longest token cannot fit and is
    refused by its length alone. Guards: a 300,000-character problem handed to the tokenizer, a
    native call that can run for minutes and holds off SIGTERM."""
    _, tokenizer = tiny_model
    longest = max(map(len, tokenizer.get_vocab()))

    def no_tokenizing(*args):
        raise AssertionError("tokenized")
    monkeypatch.setattr(rollout, "chat_prompt", no_tokenizing)
    with pytest.raises(heldout.PromptTooLong, match=f"is {100 * longest + 1:,} characters"):
        heldout.solver_prompt_ids(tokenizer, "arith", [{"problem": "7" * (100 * longest + 1)}], 100)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_300k_character_problem_is_refused_quickly(entry, tiny_dir, tmp_path, monkeypatch,
                                                     capsys):
    """A 300,000-character problem is one line and exit 2 from both CLIs, nothing written, in well
    under a second (the bound, 30 s with the model's load, is generous on purpose: timing asserts
    are otherwise avoided; each took under 0.2 s on 2 busy cores). Guards: eval.py tokenizing it
    and generating on 300,000 tokens, a native call that SIGTERM cannot end, and sqlm.py taking a
    problem longer than --max-prompt without a word."""
    data = tmp_path / "huge.jsonl"
    data.write_text(json.dumps({"problem": "7" * 300_000, "answer": 1}) + "\n")
    start = time.time()
    line = refused(entry, tiny_dir, tmp_path, monkeypatch, capsys, data=data)
    assert time.time() - start < 30
    limit = "--max-prompt 512 tokens" if entry == "sqlm.py" else "the 8,190 tokens"
    assert f"{data}: 1 of 1 problems have a solver prompt over {limit}" in line
    assert "is 300,000 characters" in line


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_problem_over_the_limit_in_tokens_is_refused(entry, tiny_dir, tmp_path, monkeypatch,
                                                       capsys):
    """A problem short in characters but over the limit in tokens (--max-prompt 128; eval.py: the
    context less --max-new-tokens 8130 leaves 62) is refused before generation."""
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"problem": "x y " * 100, "answer": 1}) + "\n")
    extra = ["--max-prompt", "128"] if entry == "sqlm.py" else ["--max-new-tokens", "8130"]
    line = refused(entry, tiny_dir, tmp_path, monkeypatch, capsys, extra=extra, data=data)
    assert "1 of 1 problems have a solver prompt over" in line and " tokens; shorten" in line


# --- the model's context ---------------------------------------------------------------------

@pytest.mark.parametrize("entry, extra, message", [
    ("sqlm.py", ["--max-prompt", "8000", "--max-response", "193"],
     "--max-prompt 8000 + --max-response 193 is 8,193 tokens, more than the model's context of "
     "8,192 (max_position_embeddings"),
    ("eval.py", ["--max-new-tokens", "8192"],
     "--max-new-tokens 8192 leaves no room for a prompt in the model's context of 8,192 tokens"),
])
def test_lengths_beyond_the_context_are_refused(entry, extra, message, tiny_dir, tmp_path,
                                                monkeypatch, capsys):
    """Lengths the model's positions cannot hold are one line that says what to give instead.
    Guards: training or generating past max_position_embeddings without a word."""
    assert message in refused(entry, tiny_dir, tmp_path, monkeypatch, capsys, extra=extra)


# --- plot.py: a flat curve reads as flat -----------------------------------------------------

@pytest.mark.parametrize("keys, values, limits", [
    (["eval_accuracy"], [[0.0, 0.0, 0.0]], (-0.05, 1.05)),        # a share: [0, 1]
    (["valid_rate"], [[1.0, 1.0], [1.0]], (-0.05, 1.05)),
    (["proposer_reward"], [[0.0, 0.0]], (-0.05, 1.05)),
    (["response_len"], [[64.0, 64.0]], (0.0, 128.0)),             # from 0 to twice the value
    (["solver_kl"], [[0.0, 0.0]], (0.0, 1.0)),
    (["eval_accuracy"], [[0.2, 0.3]], None),                      # not flat: matplotlib's own
    (["response_len"], [[64.0], [65.0]], None),                   # flat per run, not together
])
def test_a_flat_panel_gets_a_fixed_range(keys, values, limits):
    """A panel whose curves are one constant gets a fixed range ([0, 1] for shares), not the
    +-0.04 band around it that makes a flat line look like noise; others keep matplotlib's."""
    import plot
    assert plot.y_limits(keys, values) == limits
