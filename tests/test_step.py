"""The glue of one step, on hand-built records: score, to_sequences, the on-policy pass,
the released behaviours behind --as-released, and the CLI's config surface.

Each test names the wiring mutation it guards; tools/mutate.py applies them one at a time."""
import dataclasses

import pytest
import torch

import harness
import memory
import parallel
import rewards
import rollout
import sqlm

CPU = torch.device("cpu")


def sample(text, prompt=(1, 2), completion=(3, 4)):
    return rollout.Sample(list(prompt), list(completion), text, True)


def proposal(index, problem="What is 2 * 3?", answers=(), reason="ok"):
    """A record as propose + solve leave it: a problem (or None with a reason) and its answers' texts."""
    p = sqlm.Proposal(index, sample(problem, completion=(5, 6, index + 7)),
                      rewards.Problem(problem) if reason == "ok" else None, reason)
    p.answers = [sample(text, completion=(8, k + 9)) for k, text in enumerate(answers)]
    return p


def answered(*values):
    return [f"<think>.</think><answer>{v}</answer>" if v is not None else "no answer" for v in values]


def cfg_for(**kw):
    return sqlm.Config(**{"task": "arith", "batch": 2, "n": 4, "minibatch": 1, **kw}).resolve()


# --- score -------------------------------------------------------------------------------

def test_score_majority_rewards_and_the_majority_rule_for_the_proposer():
    """Each record is scored from its own answers: a split vote pays the proposer, unanimity and a
    four-way split do not. Guards: the proposer scored with the tests rule (0 < mean < 1 pays the
    four-way split), the proposer reward read from another record's slice."""
    batch = [proposal(0, answers=answered(6, 6, 7, None)), proposal(1, answers=answered(1, 2, 3, 4)),
             proposal(2, answers=answered(5, 5, 5, 5)), proposal(3, answers=answered(None, None, 8, 9))]
    sqlm.score(cfg_for(), batch, parallel.ONE)
    assert [p.solver_rewards for p in batch] == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert [p.proposer_reward for p in batch] == [1.0, 0.0, 0.0, 0.0]
    assert [(p.majority, p.majority_count) for p in batch] == [("6", 2), ("1", 1), ("5", 4), (None, 2)]
    assert [p.truth for p in batch] == ["6"] * 4


def test_score_code_runs_the_proposers_tests():
    """Code: each answer's program is run on its own record's tests; the proposer is paid for
    0 < mean < 1. Guards: an exception or a wrong test set in score's code branch (no test reached
    it with a valid problem before)."""
    cfg = cfg_for(task="code")
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
    cfg = cfg_for(task="code")
    half = "x = int(input())\nprint(4 if x == 2 else 0)"
    batch = [proposal(0, "Double it.", [f"```python\n{half}\n```"] * 4),
             proposal(1, "Double it.", ["```python\nprint(int(input()) * 2)\n```"] + ["no program"] * 3)]
    for p in batch:
        p.problem.tests = [("2", "4"), ("5", "10")]
    sqlm.score(cfg, batch, parallel.ONE)
    assert [p.task_rewards for p in batch] == [[0.5] * 4, [1.0, 0.0, 0.0, 0.0]]
    assert [p.proposer_reward for p in batch] == [1.0, 1.0]


def test_format_baseline_trains_on_format_and_pays_the_proposer_by_the_vote():
    """--solver-reward format: the solver's reward is 1 per parseable answer, while the proposer
    reward still reads the majority vote (a 2-2 split pays, though every format reward is 1)."""
    batch = [proposal(0, answers=answered(6, 6, 7, 7)), proposal(1, answers=answered(6, None, 6, 6))]
    sqlm.score(cfg_for(solver_reward="format"), batch, parallel.ONE)
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
        sqlm.score(cfg_for(solver_reward="format", as_released=released), batch, parallel.ONE)
        assert batch[0].solver_rewards == want
        assert rewards.format_solver_rewards(texts, "arith", released) == want


def test_format_baseline_leaves_its_mark_on_the_logs():
    """With --solver-reward format the solver's and the task's rewards differ, and each log field reads
    its own: samples.jsonl keeps both, zero_signal counts the groups whose *solver* rewards are all
    equal (here 1 of 2: every answer parses in the first group, the vote splits it 2-2). Guards: a
    field reading the other list, which the default configuration (the same list) cannot see."""
    cfg = cfg_for(solver_reward="format")
    batch = [proposal(0, answers=answered(6, 6, 7, 7)), proposal(1, answers=answered(6, None, 6, 6))]
    sqlm.score(cfg, batch, parallel.ONE)
    rec = harness.record(3, batch[0])
    assert rec["solver_rewards"] == [1.0] * 4 and rec["task_rewards"] == [1, 1, 0, 0]
    metrics = sqlm.step_metrics(batch, cfg)
    assert metrics["zero_signal"] == 0.5
    assert metrics["solver_reward"] == 7 / 8


# --- groups and advantages -----------------------------------------------------------------

def scored_batch():
    """Two prompts x n=4 proposals; proposals 1 and 6 invalid (not solved)."""
    values = {0: (6, 6, 7, 7), 2: (1, 1, 1, 1), 3: (2, 2, 2, 3), 4: (4, 4, 4, 4), 5: (5, 5, 9, 9), 7: (1, 2, 3, 4)}
    batch = [proposal(i, answers=answered(*values[i])) if i in values else proposal(i, reason="no 'x'")
             for i in range(8)]
    return batch


def test_solver_groups_are_numbered_by_proposal_not_by_surviving_row():
    """Solver group = the proposal's index in the batch, so mini-batch k holds proposals
    [k*minibatch, ...) whatever was dropped. Guard: groups numbered 0, 1, 2... over solved rows."""
    cfg = cfg_for()
    batch = scored_batch()
    sqlm.score(cfg, batch, parallel.ONE)
    solver, _ = sqlm.to_sequences(batch, cfg, update_proposer=False)
    assert [s.group for s in solver] == [i for i in (0, 2, 3, 4, 5, 7) for _ in range(4)]
    expected = sqlm.grpo_advantages([r for p in batch if p.answers for r in p.solver_rewards], 4)
    assert [s.advantage for s in solver] == pytest.approx(expected.tolist())


def test_invalid_proposals_count_zero_in_their_group_and_are_not_trained():
    """An invalid proposal is reward 0 in its prompt's group, then masked out of the proposer
    update. Guards: counting it 0.5 (or its group's mean), training it."""
    cfg = cfg_for()
    batch = scored_batch()
    sqlm.score(cfg, batch, parallel.ONE)
    _, proposer = sqlm.to_sequences(batch, cfg, update_proposer=True)
    rewards_ = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]  # 1 < m < n, invalid 1 and 6 count 0
    assert [p.proposer_reward for p in batch] == rewards_
    adv = sqlm.grpo_advantages(rewards_, 4).tolist()
    assert [(s.group, s.advantage) for s in proposer] == [(i // 4, pytest.approx(adv[i])) for i in (0, 2, 3, 4, 5, 7)]
    assert [s.completion_ids for s in proposer] == [batch[i].sample.completion_ids for i in (0, 2, 3, 4, 5, 7)]


def test_as_released_trains_invalid_proposals_too():
    """--as-released: no mask, every proposal of the group is trained (the released actor applies
    its loss mask only in multi-turn mode)."""
    cfg = cfg_for(as_released=True)
    batch = scored_batch()
    sqlm.score(cfg, batch, parallel.ONE)
    _, proposer = sqlm.to_sequences(batch, cfg, update_proposer=True)
    assert [s.group for s in proposer] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_step_records_and_metrics_read_the_same_proposals():
    """samples.jsonl and the metrics come from the records: the valid rate counts records, maj_ok
    says on how many problems it rests."""
    cfg = cfg_for()
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


# --- released behaviours -------------------------------------------------------------------

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
    texts = answered("007", 7, 7, "007")
    assert rewards.majority_solver_rewards([rewards.extract_answer(t) for t in texts]) == [1, 1, 1, 1]
    assert rewards.majority_solver_rewards([rewards.extract_answer(t, True) for t in texts]) == [1, 0, 0, 1]


def test_released_code_proposals_take_every_test_line_and_none_is_valid():
    assert rewards.parse_proposal("code", "Echo.\nTest Cases:\nab ||| ab\n")[0] is None
    problem, reason = rewards.parse_proposal("code", "Echo.\nTest Cases:\nab ||| ab\n", released=True)
    assert reason == "ok" and problem.tests == [("ab", "ab")]
    assert rewards.parse_proposal("code", "Echo.\nTest Cases:\nnone\n", released=True)[0].tests == []


def test_parse_reads_code_proposals_as_released_under_the_flag():
    """--as-released reaches parse: a test line the released parser takes (any text around `|||`) makes
    a valid code problem there and leaves ours without tests. Guards: parse not passing the flag on."""
    samples = [sample("Echo.\nTest Cases:\nab ||| ab\n")]
    ours = sqlm.parse(cfg_for(task="code"), samples)[0]
    released = sqlm.parse(cfg_for(task="code", as_released=True), samples)[0]
    assert (ours.valid, ours.reason) == (False, "no tests")
    assert released.valid and released.problem.tests == [("ab", "ab")]


def test_propose_asks_for_solutions_only_under_cat(monkeypatch):
    """--cat changes the proposer's prompt: it must ask for the reference and wrong solutions the filter
    runs, or every proposal fails the filter. Guards: propose building the prompt without the flag."""
    seen = []
    monkeypatch.setattr(rollout, "chat_prompt", lambda tok, text: seen.append(text) or [0])
    monkeypatch.setattr(sqlm, "sample", lambda *a: [sample("no tests here")] * 2)
    for cat in (False, True):
        sqlm.propose(None, None, sqlm.Config(task="code", cat=cat, batch=1, n=2).resolve(), seed=(0,), world=parallel.ONE)
    assert ["Reference Solution:" in text and "Wrong Solution:" in text for text in seen] == [False, True]


def test_arith_check_rejects_malformed_problems():
    """--arith-check: "What is 61 * 8*?" splits the vote by being ambiguous; it is not a problem."""
    assert rewards.parse_proposal("arith", "What is 61 * 8*?")[1] == "ok"
    assert rewards.parse_proposal("arith", "What is 61 * 8*?", arith_check=True)[0] is None
    assert rewards.parse_proposal("arith", "What is 61 * 8?", arith_check=True)[1] == "ok"


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


def test_released_loss_is_a_mean_of_micro_batch_token_means(tiny_dir):
    """As released, each micro-batch's token mean is divided by the number of micro-batches; ours
    divides every token by the mini-batch's count. Checked against both formulas computed directly."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    prompts = [rollout.chat_prompt(tok, "go")]
    outs = rollout.generate(model, tok, prompts, n=4, max_new_tokens=9, seed=3)
    seqs = [sqlm.Seq(s.prompt_ids, s.completion_ids[:2 + 3 * i], a, group=0)
            for i, (s, a) in enumerate(zip(outs, [1.0, -0.5, 0.25, -1.0]))]
    cfg = sqlm.Config(kl=0, microbatch=2)
    sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)
    for as_released in (False, True):
        stats = sqlm.accumulate_gradients(model, None, seqs, dataclasses.replace(cfg, as_released=as_released), CPU, parallel.ONE)
        # ratio 1 everywhere: the per-token loss is -A, so the two aggregations are simple sums
        lengths = [len(s.completion_ids) for s in seqs]
        if as_released:
            want = sum((-seqs[i].advantage * lengths[i] - seqs[i + 1].advantage * lengths[i + 1])
                       / (lengths[i] + lengths[i + 1]) for i in (0, 2)) / 2
        else:
            want = sum(-s.advantage * n for s, n in zip(seqs, lengths)) / sum(lengths)
        assert stats["pg_loss"] == pytest.approx(want, rel=1e-5)
        model.zero_grad()


def test_deal_gives_the_longest_sequence_first_to_the_process_with_fewest_tokens():
    """Sequences of 5, 1, 1, 1, 1 tokens on two processes, by hand: the 5 to process 0, then each 1 to
    the process with fewer tokens, all four to process 1: 5 and 4 tokens. Shortest first would deal
    the 1s to 0, 1, 0, 1 and the 5 to 0 (a tie, the lower rank): 7 and 2. Guards: the order of the
    deal changed (the bound "within the longest sequence" holds for both)."""
    assert parallel.World(0, 2).deal([5, 1, 1, 1, 1]) == [0, 1, 1, 1, 1]


class RankZeroOfTwo(parallel.World):
    """Rank 0 of two processes, standing alone: its sums are its own values (no process group)."""

    def __init__(self):
        super().__init__(rank=0, size=2, device=CPU)

    def sum(self, values):
        return values


@pytest.mark.parametrize("as_released", [False, True])
def test_normaliser_counts_every_processs_micro_batches(tiny_dir, as_released):
    """Two processes, micro-batches of 2: rank 0 is dealt the long sequence (one micro-batch, then an
    idle one), rank 1 the three short ones (two micro-batches). At ratio 1 the per-token loss is -A, so
    rank 0's share of the loss is -A * its tokens / all four sequences' tokens (ours), or its
    micro-batch's token mean -A divided by the 3 micro-batches of both processes (released; its own
    2 calls would give -A/2). Guards: a normaliser counted on one process, a count rounded down."""
    model, _ = rollout.load(tiny_dir, device="cpu")
    seqs = [sqlm.Seq([1], [7] * n, 0.5, group=0, on_policy=True) for n in (20, 3, 3, 3)]
    assert RankZeroOfTwo().deal([1 + n for n in (20, 3, 3, 3)]) == [0, 1, 1, 1]  # the deal this test needs
    cfg = sqlm.Config(kl=0, microbatch=2, as_released=as_released)
    stats = sqlm.accumulate_gradients(model, None, seqs, cfg, CPU, RankZeroOfTwo())
    tokens = [len(s.completion_ids) for s in seqs]
    want = -0.5 / 3 if as_released else -0.5 * tokens[0] / sum(tokens)
    assert stats["pg_loss"] == pytest.approx(want, rel=1e-6)


def test_released_code_config_has_no_kl():
    assert sqlm.Config(task="code", as_released=True).resolve().kl_coef == 0.0
    assert sqlm.Config(task="code").resolve().kl_coef == 0.001
    assert sqlm.Config(task="arith", as_released=True).resolve().kl_coef == 0.001



# --- the on-policy first mini-batch ----------------------------------------------------------

def test_first_solver_minibatch_skips_the_old_log_prob_pass(tiny_dir, monkeypatch):
    """The first mini-batch's old log-probs are its current ones: prepare runs no forward for it,
    and its ratio is exactly 1. The other mini-batches still get theirs before any update."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    outs = rollout.generate(model, tok, [rollout.chat_prompt(tok, "go")], n=8, max_new_tokens=6, seed=0)
    seqs = [sqlm.Seq(s.prompt_ids, s.completion_ids, 1.0 - (i % 2), group=i // 2, on_policy=i < 4)
            for i, s in enumerate(outs)]
    cfg = sqlm.Config(kl=0, minibatch=2, microbatch=8, lr=1e-2)
    rows = []
    real = sqlm.micro_logprobs
    monkeypatch.setattr(sqlm, "micro_logprobs", lambda m, micro, *a: rows.append(len(micro)) or real(m, micro, *a))
    sqlm.prepare(model, None, seqs, cfg, CPU, parallel.ONE)
    assert rows == [4]  # only the second mini-batch's rows
    assert all(s.old_logp is None for s in seqs[:4]) and all(s.old_logp is not None for s in seqs[4:])
    stats = sqlm.accumulate_gradients(model, None, seqs[:4], cfg, CPU, parallel.ONE)
    assert stats["ratio"] == 1.0 and stats["clip_frac"] == 0.0


@pytest.mark.parametrize("groups, on_policy", [
    (range(8), {0, 1}),        # mini-batch 0 holds groups 0 and 1 (grouping by n = 4 would mark 0-3)
    ((3, 4, 5, 6, 7), {3}),    # groups 0-2 dropped: the first mini-batch left is 1, groups 2 and 3
])
def test_on_policy_marks_the_first_minibatch_of_groups_not_of_n(groups, on_policy):
    """minibatch 2 != n 4, so grouping by either tells them apart: the first mini-batch present is the
    one whose old log-probs are skipped. Guards: marking by n, or always mini-batch 0."""
    cfg = cfg_for(n=4, minibatch=2)
    seqs = [sqlm.Seq([1], [2], 0.0, group=g) for g in groups for _ in range(4)]
    sqlm.mark_on_policy(seqs, cfg)
    assert [s.on_policy for s in seqs] == [s.group in on_policy for s in seqs]


def test_train_step_marks_only_the_solvers_first_minibatch_on_policy(tiny_dir, monkeypatch):
    """The proposer's old log-probs predate the solver update: none of its sequences may skip them."""
    marks = []
    real = sqlm.prepare
    monkeypatch.setattr(sqlm, "prepare", lambda m, r, seqs, *a: marks.append([s.on_policy for s in seqs])
                        or real(m, r, seqs, *a))
    cfg = sqlm.Config(task="arith", batch=4, n=2, minibatch=2, max_response=4, kl=0, proposer_every=1).resolve()
    model, tok = rollout.load(tiny_dir, device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sqlm.train_step(0, sqlm.Models(model, model, model, None, optimizer), tok, cfg, CPU, parallel.ONE)
    assert marks == [[True] * 4 + [False] * 12, [False] * 8]  # 8 solver groups of 2, 2 a mini-batch; proposer 8


# --- config surface -------------------------------------------------------------------------

def test_help_shows_each_fields_comment_and_choices(capsys):
    with pytest.raises(SystemExit):
        harness.parse_args(["--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(sqlm.Config):
        assert "--" + f.name.replace("_", "-") in out
    assert "Code-as-Task filter" in out and "{std,none}" in out and "--no-cat" in out


def test_a_resumed_run_can_switch_a_flag_off(tmp_path):
    """--no-cat on resume overrides the saved config's cat=True (store_true flags could not)."""
    run = tmp_path / "run"
    (run / "step-000001").mkdir(parents=True)
    (run / "step-000001" / "trainer_state.pt").write_bytes(b"")
    saved = dataclasses.asdict(sqlm.Config(task="code", cat=True).resolve())
    (run / "config.json").write_text(__import__("json").dumps(saved))
    assert harness.parse_args(["--resume", str(run)]).cat is True
    assert harness.parse_args(["--resume", str(run), "--no-cat"]).cat is False


@pytest.mark.parametrize("text,shape", [
    ("What is 47 * 8?", "2x1"), ("What is 123 × 45?", "3x2"), ("7 x 8", "1x1"), ("What is 1,234 * 5?", "4x1"),
    ("What is 12 + 3?", "other"), ("What is 2 * 3 * 4?", "other"), ("What is 12 - 3 * 4?", "other"),
    ("What is 61 * 8*?", "malformed"), ("Think of a number.", "malformed"),
])
def test_arith_shape_names_the_proposers_problem_kind(text, shape):
    """The proposer's problem mix: digits of a plain product's operands, else other or malformed."""
    assert rewards.arith_shape(text) == shape


def test_eval_data_and_sampled_eval_reach_the_held_out_run(monkeypatch, tmp_path):
    """--eval-data replaces the built-in set; --eval-samples k adds a run of k samples at the
    training temperature whose figures are logged as eval_sampled_*."""
    import eval as heldout
    data = tmp_path / "dev.jsonl"
    data.write_text('{"problem": "What is 2 * 3?", "answer": 6}\n')
    calls = []

    def evaluate(model, tok, task, problems=None, **kw):
        calls.append((problems, kw["samples"], kw["temperature"]))
        return {"accuracy": 0.25 * kw["samples"]}
    monkeypatch.setattr(heldout, "evaluate", evaluate)
    cfg = sqlm.Config(task="arith", eval_data=str(data), eval_samples=4, temperature=0.7).resolve()
    assert harness.run_eval(None, None, cfg, parallel.ONE) == {"eval_accuracy": 0.25, "eval_sampled_accuracy": 1.0}
    assert [(p[0]["problem"], k, t) for p, k, t in calls] == [("What is 2 * 3?", 1, 0.0), ("What is 2 * 3?", 4, 0.7)]


def test_samples_do_not_depend_on_rollout_rows(tiny_dir):
    """--rollout-rows splits a phase into generate calls; each prompt draws from its own stream,
    so the samples are identical however they are split (the seed used to be per chunk)."""
    model, tok = rollout.load(tiny_dir, device="cpu")
    prompts = [rollout.chat_prompt(tok, text) for text in ("a", "bb", "a", "ccc", "dd")]
    texts = []
    for rows in (4, 8, 64):
        cfg = sqlm.Config(max_response=12, rollout_rows=rows, n=2).resolve()
        texts.append([s.completion_ids for s in sqlm.sample(model, tok, prompts, range(5), cfg, seed=(0, 1, 1), world=parallel.ONE)])
    assert texts[0] == texts[1] == texts[2]
    assert texts[0][0] != texts[0][4]  # two identical prompts still draw different samples


def test_memory_plan_sets_the_memory_knobs_on_a_gpu(monkeypatch):
    """On a GPU with --fit-memory the plan's choice replaces both knobs; --no-fit-memory keeps them."""
    monkeypatch.setattr(memory, "fit_memory", lambda config, total, **kw: (kw["max_rows"] // 8, 3))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"total_memory": 80 * 2**30}))
    for fit, expected in ((True, (16 * 4 * 4 // 8, 3)), (False, (256, 8))):
        cfg = sqlm.Config(batch=16, fit_memory=fit)
        harness.fit_to_memory(cfg, None, torch.device("cuda"))
        assert (cfg.rollout_rows, cfg.microbatch) == expected
    cpu = sqlm.Config()
    harness.fit_to_memory(cpu, None, CPU)
    assert (cpu.rollout_rows, cpu.microbatch) == (256, 8)


def test_a_long_rollout_phase_shows_progress(monkeypatch, capsys):
    """A 3B rollout phase takes minutes and printed nothing: past 10 s it reports rows, tokens/s and
    ETA after each generate call (a short phase stays silent)."""
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
