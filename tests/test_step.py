"""One step's records, propose -> parse -> solve -> score -> to_sequences, and every flag that
changes them, through the real glue on hand-built records (the tiny model where sampling is the
point): each test fails when its flag is ignored or miswired, not only when the pure function under
it is wrong. What the update does with the sequences is in tests/test_update.py.

Each docstring names the wiring mistake it guards; tools/mutate.py applies such mistakes one at a
time."""
import pytest
import torch

import harness
import parallel
import rewards
import rollout
import sqlm
from conftest import CPU, alternating_rewards, answered, proposal, sample, step_config


# --- propose and parse ------------------------------------------------------------------------

def test_propose_asks_for_solutions_only_under_cat(monkeypatch):
    """--cat changes the proposer's prompt: it must ask for the reference and wrong solutions the
    filter runs, or every proposal fails the filter. Guards: propose building the prompt without the
    flag."""
    seen = []
    monkeypatch.setattr(rollout, "chat_prompt", lambda tok, text: seen.append(text) or [0])
    monkeypatch.setattr(sqlm, "sample", lambda *a: [sample("no tests here")] * 2)
    for cat in (False, True):
        sqlm.propose(None, None, sqlm.Config(task="code", cat=cat, batch=1, n=2).resolve(), seed=(0,), world=parallel.ONE)
    assert ["Reference Solution:" in text and "Wrong Solution:" in text for text in seen] == [False, True]


def cat_reply(reference, tests="1 2 ||| 3\n5 ||| 5"):
    """A Code-as-Task proposal: a problem, its tests, a reference solution and a wrong one."""
    return (f"Print the sum.\nTest Cases:\n{tests}\n"
            f"Reference Solution:\n```python\n{reference}\n```\n"
            "Wrong Solution:\n```python\nprint(0)\n```\n")


def test_propose_applies_the_cat_filter_to_each_proposal(monkeypatch):
    """--cat: a proposal whose reference fails its own tests is dropped with that reason; a verified
    one is kept."""
    replies = [cat_reply("print(sum(map(int, input().split())))"),
               cat_reply("print(max(map(int, input().split())))"), "no tests here"]
    monkeypatch.setattr(rollout, "chat_prompt", lambda tok, text: [0])
    monkeypatch.setattr(sqlm, "sample", lambda *a: [rollout.Sample([0], [], text, True) for text in replies])
    cfg = sqlm.Config(task="code", cat=True).resolve()
    batch = sqlm.propose(None, None, cfg, seed=(0,), world=parallel.ONE)
    assert [p.problem is not None for p in batch] == [True, False, False]
    assert [p.reason for p in batch] == ["ok", "reference fails a test", "no 'Test Cases:'"]


@pytest.mark.parametrize("judge, valid", [("exact", False), ("lenient", True)])
def test_cat_verdicts_use_the_runs_judge(judge, valid):
    """--cat with --judge lenient: a reference whose output differs only in spacing verifies its
    problem. Guards: cat_filter called without the judge, or its verdict not applied to the
    record."""
    reply = cat_reply("a, b = map(int, input().split())\nprint(a + b, '', 0)", tests="1 2 ||| 3 0")
    cfg = step_config(task="code", cat=True, judge=judge, n=2, batch=1)
    batch = sqlm.parse(cfg, [sample(reply)])
    assert batch[0].valid is valid and (batch[0].problem is not None) is valid


def test_arith_check_reaches_parse():
    """--arith-check: a malformed arith proposal is invalid in the step's records. Guards: the flag
    not passed to rewards.parse_proposal."""
    samples = [sample("What is 61 * 8*?"), sample("What is 61 * 8?")]
    assert [p.reason for p in sqlm.parse(step_config(), samples)] == ["ok", "ok"]
    assert [p.valid for p in sqlm.parse(step_config(arith_check=True), samples)] == [False, True]


def test_parse_reads_code_proposals_as_released_under_the_flag():
    """--as-released reaches parse: a test line the released parser takes (any text around `|||`)
    makes a valid code problem there and leaves ours without tests. Guards: parse not passing the
    flag on."""
    samples = [sample("Echo.\nTest Cases:\nab ||| ab\n")]
    ours = sqlm.parse(step_config(task="code"), samples)[0]
    released = sqlm.parse(step_config(task="code", as_released=True), samples)[0]
    assert (ours.valid, ours.reason) == (False, "no tests")
    assert released.valid and released.problem.tests == [("ab", "ab")]


def fake_rollouts(monkeypatch, texts):
    """rollout.generate replaced: every sequence gets the next text; prompts are recorded."""
    seen = []

    def generate(model, tok, prompt_ids, n=1, **kw):
        seen.extend(prompt_ids)
        return [sample(next(texts), prompt=ids) for ids in prompt_ids for _ in range(n)]
    monkeypatch.setattr(rollout, "generate", generate)
    monkeypatch.setattr(rollout, "chat_prompt", lambda tok, text: list(range(len(text))))
    return seen


def test_released_solves_invalid_proposals_as_raw_text_and_cuts_long_prompts_from_the_left(monkeypatch):
    """Ours: an algebra proposal without `Selected Question:` is not solved and a solver prompt over
    max_prompt invalidates its proposal. Released: the raw reply is solved, and a long prompt is cut
    to its last max_prompt tokens."""
    replies = ["no marker here", "Selected Question: " + "long " * 200, "Selected Question: x + 1 = 2", "none"]
    for as_released in (False, True):
        cfg = sqlm.Config(task="algebra", batch=2, n=2, max_prompt=300, as_released=as_released).resolve()
        seen = fake_rollouts(monkeypatch, iter(replies + ["<answer>1</answer>"] * 8))
        batch = sqlm.propose(None, None, cfg, seed=(0,), world=parallel.ONE)
        sqlm.solve(None, None, cfg, batch, seed=(1,), world=parallel.ONE)
        solver_prompts = seen[2:]  # the proposer's two prompts first
        if not as_released:
            assert [p.reason for p in batch][:3] == ["no 'Selected Question:'", "prompt too long", "ok"]
            assert [len(p.answers) for p in batch] == [0, 0, 2, 0]
        else:
            assert [len(p.answers) for p in batch] == [2, 2, 2, 2]
            assert batch[0].problem.text == "no marker here"
            assert max(map(len, solver_prompts)) == 300 and solver_prompts[1][-1] > 300  # the tail is kept


# --- score: which rule pays which role --------------------------------------------------------

def test_score_majority_rewards_and_the_majority_rule_for_the_proposer():
    """Each record is scored from its own answers: a split vote pays the proposer, unanimity and a
    four-way split do not. Guards: the proposer scored with the tests rule (0 < mean < 1 pays the
    four-way split), the proposer reward read from another record's slice."""
    batch = [proposal(0, answers=answered(6, 6, 7, None)), proposal(1, answers=answered(1, 2, 3, 4)),
             proposal(2, answers=answered(5, 5, 5, 5)), proposal(3, answers=answered(None, None, 8, 9))]
    sqlm.score(step_config(), batch, parallel.ONE)
    assert [p.solver_rewards for p in batch] == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert [p.proposer_reward for p in batch] == [1.0, 0.0, 0.0, 0.0]
    assert [(p.majority, p.majority_count) for p in batch] == [("6", 2), ("1", 1), ("5", 4), (None, 2)]
    assert [p.truth for p in batch] == ["6"] * 4


def test_score_code_runs_the_proposers_tests():
    """Code: each answer's program is run on its own record's tests; the proposer is paid for
    0 < mean < 1. Guards: an exception or a wrong test set in score's code branch (no test reached
    it with a valid problem before)."""
    cfg = step_config(task="code")
    double = [("2", "4"), ("5", "10")]
    right, wrong, half = "print(int(input()) * 2)", "print(0)", "x = int(input())\nprint(4 if x == 2 else 0)"
    batch = [proposal(0, "Double it.", [f"```python\n{c}\n```" for c in (right, right, wrong, half)]),
             proposal(1, "Double it.", [f"```python\n{c}\n```" for c in (right,) * 4])]
    for p in batch:
        p.problem.tests = double
    batch[1].problem.tests = [("3", "6")]
    sqlm.score(cfg, batch, parallel.ONE)
    assert [p.solver_rewards for p in batch] == [[1.0, 1.0, 0.0, 0.5], [1.0] * 4]
    assert [p.proposer_reward for p in batch] == [1.0, 0.0]


def test_score_pays_a_code_proposer_by_the_mean_not_by_perfect_programs():
    """Four programs passing half the tests each: mean 1/2, so the tests rule pays 1, where the
    majority rule (two to three perfect scores) would pay 0; one perfect program of four: the tests
    rule pays 1, the majority rule 0. Guards: the code task scored with the majority kind."""
    cfg = step_config(task="code")
    half = "x = int(input())\nprint(4 if x == 2 else 0)"
    batch = [proposal(0, "Double it.", [f"```python\n{half}\n```"] * 4),
             proposal(1, "Double it.", ["```python\nprint(int(input()) * 2)\n```"] + ["no program"] * 3)]
    for p in batch:
        p.problem.tests = [("2", "4"), ("5", "10")]
    sqlm.score(cfg, batch, parallel.ONE)
    assert [p.task_rewards for p in batch] == [[0.5] * 4, [1.0, 0.0, 0.0, 0.0]]
    assert [p.proposer_reward for p in batch] == [1.0, 1.0]


@pytest.mark.parametrize("rule, want", [("sqlm", 1.0), ("azr", 0.25), ("rzero", 0.5)])
def test_proposer_reward_rule_reaches_score(rule, want):
    """--proposer-reward: three of four agree, so sqlm pays 1, azr 1 - 3/4, rzero 1 - 2|3/4 - 1/2|.
    Guards: the rule flag not passed to rewards.proposer_reward."""
    batch = [proposal(0, answers=answered(6, 6, 6, 7))]
    sqlm.score(step_config(proposer_reward=rule), batch, parallel.ONE)
    assert batch[0].proposer_reward == pytest.approx(want)


@pytest.mark.parametrize("judge, want", [("exact", [1.0, 0.0]), ("lenient", [1.0, 1.0])])
def test_judge_reaches_the_code_rewards(judge, want):
    """--judge lenient forgives spacing in score's sandbox call. Guards: the judge not passed to
    test_pass_rates."""
    cfg = step_config(task="code", judge=judge, n=2, batch=1)
    p = proposal(0, "Print 3 4.", ["```python\nprint(3, 4)\n```", "```python\nprint('3  4')\n```"])
    p.problem.tests = [("", "3 4")]
    sqlm.score(cfg, [p], parallel.ONE)
    assert p.task_rewards == want


def test_released_answers_are_parsed_as_released_in_score():
    """--as-released: votes compare int()-parseable raw strings, so `007` and `7` split. Guards:
    score calling extract_answer without the released flag."""
    for released, want in ((False, [1, 1, 1, 1]), (True, [1, 0, 0, 1])):
        batch = [proposal(0, answers=answered("007", 7, 7, "007"))]
        sqlm.score(step_config(as_released=released), batch, parallel.ONE)
        assert batch[0].task_rewards == want


def test_format_baseline_trains_on_format_and_pays_the_proposer_by_the_vote():
    """--solver-reward format: the solver's reward is 1 per parseable answer, while the proposer
    reward still reads the majority vote (a 2-2 split pays, though every format reward is 1)."""
    batch = [proposal(0, answers=answered(6, 6, 7, 7)), proposal(1, answers=answered(6, None, 6, 6))]
    sqlm.score(step_config(solver_reward="format"), batch, parallel.ONE)
    assert [p.solver_rewards for p in batch] == [[1.0] * 4, [1.0, 0.0, 1.0, 1.0]]
    assert [p.task_rewards for p in batch] == [[1, 1, 0, 0], [1, 0, 1, 1]]
    assert [p.proposer_reward for p in batch] == [1.0, 1.0]


def test_format_baseline_as_released_pays_only_what_int_reads():
    """--solver-reward format with --as-released: `56,088` and `3/4` are answers in ours, not in the
    released parser, so they earn the format reward only without --as-released. Guards: score or
    format_solver_rewards dropping the released flag."""
    texts = ["<answer>56,088</answer>", "<answer>3/4</answer>", "<answer>12</answer>", "no answer"]
    for released, want in ((False, [1.0, 1.0, 1.0, 0.0]), (True, [0.0, 0.0, 1.0, 0.0])):
        batch = [proposal(0, answers=texts)]
        sqlm.score(step_config(solver_reward="format", as_released=released), batch, parallel.ONE)
        assert batch[0].solver_rewards == want
        assert rewards.format_solver_rewards(texts, "arith", released) == want


def test_format_baseline_leaves_its_mark_on_the_logs():
    """With --solver-reward format the solver's and the task's rewards differ, and each log field
    reads its own: samples.jsonl keeps both, zero_signal counts the groups whose *solver* rewards
    are all equal (here 1 of 2: every answer parses in the first group, the vote splits it 2-2).
    Guards: a field reading the other list, which the default configuration (the same list) cannot
    see."""
    cfg = step_config(solver_reward="format")
    batch = [proposal(0, answers=answered(6, 6, 7, 7)), proposal(1, answers=answered(6, None, 6, 6))]
    sqlm.score(cfg, batch, parallel.ONE)
    rec = harness.record(3, batch[0])
    assert rec["solver_rewards"] == [1.0] * 4 and rec["task_rewards"] == [1, 1, 0, 0]
    metrics = sqlm.step_metrics(batch, cfg)
    assert metrics["zero_signal"] == 0.5
    assert metrics["solver_reward"] == 7 / 8


# --- groups and advantages: to_sequences ------------------------------------------------------

def scored_batch():
    """Two prompts x n=4 proposals; proposals 1 and 6 invalid (not solved)."""
    values = {0: (6, 6, 7, 7), 2: (1, 1, 1, 1), 3: (2, 2, 2, 3), 4: (4, 4, 4, 4), 5: (5, 5, 9, 9), 7: (1, 2, 3, 4)}
    batch = [proposal(i, answers=answered(*values[i])) if i in values else proposal(i, reason="no 'x'")
             for i in range(8)]
    return batch


def test_solver_groups_are_numbered_by_proposal_not_by_surviving_row():
    """Solver group = the proposal's index in the batch, so mini-batch k holds proposals
    [k*minibatch, ...) whatever was dropped. Guard: groups numbered 0, 1, 2... over solved rows."""
    cfg = step_config()
    batch = scored_batch()
    sqlm.score(cfg, batch, parallel.ONE)
    solver, _ = sqlm.to_sequences(batch, cfg, proposer_too=False)
    assert [s.group for s in solver] == [i for i in (0, 2, 3, 4, 5, 7) for _ in range(4)]
    expected = sqlm.grpo_advantages([r for p in batch if p.answers for r in p.solver_rewards], 4)
    assert [s.advantage for s in solver] == pytest.approx(expected.tolist())


def test_invalid_proposals_count_zero_in_their_group_and_are_not_trained():
    """An invalid proposal is reward 0 in its prompt's group, then masked out of the proposer
    update. Guards: counting it 0.5 (or its group's mean), training it."""
    cfg = step_config()
    batch = scored_batch()
    sqlm.score(cfg, batch, parallel.ONE)
    _, proposer = sqlm.to_sequences(batch, cfg, proposer_too=True)
    rewards_ = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]  # 1 < m < n, invalid 1 and 6 count 0
    assert [p.proposer_reward for p in batch] == rewards_
    adv = sqlm.grpo_advantages(rewards_, 4).tolist()
    assert [(s.group, s.advantage) for s in proposer] == [(i // 4, pytest.approx(adv[i])) for i in (0, 2, 3, 4, 5, 7)]
    assert [s.completion_ids for s in proposer] == [batch[i].sample.completion_ids for i in (0, 2, 3, 4, 5, 7)]


def test_as_released_trains_invalid_proposals_too():
    """--as-released: no mask, every proposal of the group is trained (the released actor applies
    its loss mask only in multi-turn mode)."""
    cfg = step_config(as_released=True)
    batch = scored_batch()
    sqlm.score(cfg, batch, parallel.ONE)
    _, proposer = sqlm.to_sequences(batch, cfg, proposer_too=True)
    assert [s.group for s in proposer] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_solver_trains_on_its_own_rewards_and_the_proposer_on_its_own():
    """--solver-reward format: the solver's advantages are the format rewards' (not the vote's), the
    proposer's are its own rewards' per prompt group. Guards: to_sequences reading task_rewards for
    the solver, or the solver's rewards for the proposer."""
    cfg = step_config(solver_reward="format")
    batch = [proposal(0, answers=answered(6, None, 6, 7)), proposal(1, answers=answered(5, 5, 5, 5)),
             proposal(2, answers=answered(1, 1, 2, 2)), proposal(3, answers=answered(None, 3, 3, 3))]
    sqlm.score(cfg, batch, parallel.ONE)
    solver, proposer = sqlm.to_sequences(batch, cfg, proposer_too=True)
    format_rewards = [1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    assert [s.advantage for s in solver] == pytest.approx(sqlm.grpo_advantages(format_rewards, 4).tolist())
    assert [p.proposer_reward for p in batch] == [1.0, 0.0, 1.0, 1.0]  # read off the vote, 1 < m < n
    assert [s.advantage for s in proposer] == pytest.approx(sqlm.grpo_advantages([1, 0, 1, 1], 4).tolist())


@pytest.mark.parametrize("norm", ["std", "none"])
def test_adv_norm_reaches_both_roles(norm):
    """--adv-norm none (Dr. GRPO) drops the division by the group std for the solver and the
    proposer alike; checked against the formula in float64. Guards: either role's call left at
    std."""
    cfg = step_config(adv_norm=norm)
    batch = [proposal(0, answers=answered(6, 6, 7, 8)), proposal(1, answers=answered(1, 1, 1, 2)),
             proposal(2, answers=answered(4, 4, 4, 4)), proposal(3, answers=answered(1, 2, 3, 4))]
    sqlm.score(cfg, batch, parallel.ONE)
    solver, proposer = sqlm.to_sequences(batch, cfg, proposer_too=True)

    def formula(r):
        r = torch.tensor(r, dtype=torch.float64).view(-1, 4)
        centred = r - r.mean(1, keepdim=True)
        return (centred / (r.std(1, keepdim=True) + 1e-6) if norm == "std" else centred).flatten().tolist()

    assert [s.advantage for s in solver] == pytest.approx(formula([r for p in batch for r in p.solver_rewards]))
    assert [s.advantage for s in proposer] == pytest.approx(formula([1.0, 1.0, 0.0, 0.0]))


def test_step_records_and_metrics_read_the_same_proposals():
    """samples.jsonl and the metrics come from the records: the valid rate counts records, maj_ok
    says on how many problems it rests."""
    cfg = step_config()
    batch = scored_batch()
    batch[3].problem = rewards.Problem("Write any problem.")  # no arithmetic expression: no truth
    sqlm.score(cfg, batch, parallel.ONE)
    metrics = sqlm.step_metrics(batch, cfg)
    assert metrics["valid_rate"] == 6 / 8
    assert metrics["majority_checked"] == 5
    assert metrics["majority_correct"] == pytest.approx(1 / 5)  # truth 6: majorities 6, 1, 4, 5, 1
    assert metrics["proposer_reward"] == 0.5  # over the 6 solved: 1, 0, 1, 0, 1, 0 (not 3/8 over all 8)
    assert metrics["solver_reward"] == pytest.approx(16 / 24)  # majorities of 2, 4, 3, 4, 2 and 1 answers
    assert metrics["majority_share"] == pytest.approx(16 / 24)
    assert metrics["zero_signal"] == pytest.approx(2 / 6)  # 2 and 4 unanimous; 7 scores 1, 0, 0, 0
    assert metrics["zero_signal_proposer"] == 0.0  # prompt groups 1, 0, 0, 1 and 0, 1, 0, 0
    rec = harness.record(7, batch[0])
    assert rec["step"] == 7 and rec["answers"] == ["6", "6", "7", "7"] and rec["proposer_reward"] == 1.0
    assert harness.record(7, batch[1]) == {"step": 7, "index": 1, "proposal": batch[1].sample.text, "valid": False,
                                        "reason": "no 'x'"}


# --- sampling: streams, settings, progress ----------------------------------------------------

def test_each_role_and_step_samples_its_own_streams(tiny_dir, monkeypatch):
    """Prompt i of step s draws from derive_seed(seed, s, 0, i) (the proposer), and the problem of
    proposal j from derive_seed(seed, s, 1, j) (the solver), j its index in the step's batch, not
    its position among the valid ones: the key a share of the problems on another process keeps.
    Guards: the solver on the proposer's streams, a step's streams repeating another step's, solver
    streams numbered by position."""
    calls = []
    real_generate, real_parse = rollout.generate, sqlm.parse

    def generate(model, tok, prompts, seed=None, **kw):
        calls.append(list(seed))
        return real_generate(model, tok, prompts, seed=seed, **kw)

    def parse(cfg, samples, first=0):  # proposals 0 and 3 invalid, the rest valid problems
        batch = real_parse(cfg, samples, first)
        for p in batch:
            p.problem, p.reason = (None, "bad") if p.index in (0, 3) else (rewards.Problem("What is 2 * 3?"), "ok")
        return batch
    monkeypatch.setattr(rollout, "generate", generate)
    monkeypatch.setattr(sqlm, "parse", parse)
    monkeypatch.setattr(sqlm, "score", alternating_rewards)
    model, tok = rollout.load(tiny_dir, device="cpu")
    cfg = sqlm.Config(task="arith", batch=3, n=2, minibatch=1, max_response=4, kl=0, seed=7, proposer_every=0).resolve()
    sqlm.train_step(3, sqlm.Models(model, model, model, None, torch.optim.SGD(model.parameters(), lr=0.0)), tok, cfg, CPU, parallel.ONE)
    assert calls[0] == [sqlm.derive_seed(7, 3, 0, i) for i in range(3)]
    assert calls[1] == [sqlm.derive_seed(7, 3, 1, j) for j in (1, 2, 4, 5)]


def test_sample_uses_the_runs_sampling_settings_in_calls_of_any_size(tiny_dir):
    """sqlm.sample draws with --temperature, --top-p and the response limit, each prompt from its
    own stream (derive_seed(seed, key)), so its samples are those of one generate call over every
    prompt whether --rollout-rows splits the phase into calls of 2, 4 or 64 rows, and two copies of
    one prompt still draw differently. Guards: a setting not passed to generate, a seed per call
    rather than per prompt, prompts keyed by their position in a call."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    prompts = [rollout.chat_prompt(tok, text) for text in ("a", "bb", "a", "ccc", "dd")]
    seeds = [sqlm.derive_seed(1, 2, 3, i) for i in range(5)]
    want = rollout.generate(model, tok, prompts, n=2, max_new_tokens=6, temperature=0.7, top_p=0.5,
                            seed=seeds)
    for rows in (2, 4, 64):
        cfg = sqlm.Config(temperature=0.7, top_p=0.5, max_response=6, rollout_rows=rows, n=2)
        got = sqlm.sample(model, tok, prompts, range(5), cfg, seed=(1, 2, 3), world=parallel.ONE)
        assert [s.completion_ids for s in got] == [s.completion_ids for s in want], rows
    assert want[0].completion_ids != want[4].completion_ids  # prompts 0 and 2 are one text
    plain = rollout.generate(model, tok, prompts, n=2, max_new_tokens=6, seed=seeds)
    assert [s.completion_ids for s in want] != [s.completion_ids for s in plain]  # settings matter


def test_a_long_rollout_phase_shows_progress(monkeypatch, capsys):
    """A rollout phase past 10 s (minutes at 3B) reports rows, tokens/s and ETA after each generate
    call; a short phase stays silent. Guards: a long phase that prints nothing, a short one that
    floods the log."""
    fake_rollouts(monkeypatch, iter(["<answer>1</answer>"] * 16))
    clock = iter(range(0, 1000, 11))  # each reading 11 s later: a long phase
    monkeypatch.setattr(rollout.time, "time", lambda: next(clock))
    cfg = sqlm.Config(rollout_rows=4, n=2).resolve()
    sqlm.sample(None, None, [[1]] * 4, range(4), cfg, seed=(0, 3, 1), label="solve", world=parallel.ONE)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[:2] for line in lines] == [["solve", "4/8 rows"], ["solve", "8/8 rows"]]
    assert all("tok/s" in line and "eta" in line for line in lines)
    clock = iter(range(1000))
    monkeypatch.setattr(rollout.time, "time", lambda: next(clock))
    sqlm.sample(None, None, [[1]] * 4, range(4), cfg, seed=(0, 3, 0), label="propose", world=parallel.ONE)
    assert capsys.readouterr().err == ""
