"""Shared fixtures: one tiny random Qwen2 model written once per test session (no downloads)."""
import json
import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rollout  # noqa: E402
import tiny  # noqa: E402


def pytest_configure(config):
    """On a machine that lacks a sandbox layer (not root: no uid or cgroup layer), the sandbox refuses code runs
    unless SQLM_SANDBOX_ALLOW_MISSING accepts it. The suite accepts what this machine lacks, says so in the
    warnings summary, and the tests of those layers' properties skip with that reason (tests/test_sandbox.py);
    the refusal itself is tested with the variable unset."""
    import sandbox
    if sandbox.ALLOW_MISSING in os.environ:
        return
    try:
        sandbox.isolation()
    except sandbox.Unavailable as e:
        if not e.missing:
            raise
        os.environ[sandbox.ALLOW_MISSING] = ",".join(e.missing)
        config.issue_config_time_warning(pytest.PytestWarning(
            f"this machine lacks the sandbox layers {', '.join(e.missing)}: the tests accept running without them "
            f"({sandbox.ALLOW_MISSING}); {e}"), stacklevel=2)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped, with their reason, where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: `python bench.py gpu` runs it on one (docs/gpu.md)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tiny.make(str(tmp_path_factory.mktemp("tiny")), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """(model, tokenizer) on CPU in fp32; tests must not modify the model's weights."""
    return rollout.load(tiny_dir, device="cpu")


# The smallest real run: 2 prompts x 2 proposals, one group a mini-batch, 8 new tokens, no eval.
FAST = ["--batch", "2", "--n", "2", "--minibatch", "1", "--microbatch", "4", "--max-response", "8",
        "--eval-every", "0", "--proposer-every", "1", "--device", "cpu", "--task", "arith"]


def grads(model):
    """Every parameter's gradient, flattened into one vector (zeros where a parameter has none)."""
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(), device=p.device)
                      for p in model.parameters()])


def weights(run, step):
    """A run's checkpoint at `step`, as saved: {name: tensor}."""
    from safetensors.torch import load_file
    return load_file(os.path.join(run, f"step-{step:06d}", "model.safetensors"))


def jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def trained_run(tiny_dir, tmp_path_factory):
    """A finished 2-step arith run with checkpoints at steps 1 and 2 (copy it before changing it)."""
    import sqlm
    run = tmp_path_factory.mktemp("trained") / "run"
    assert sqlm.main(["--model", tiny_dir, "--steps", "2", "--save-every", "1", "--out", str(run)] + FAST) == 0
    return run


def interrupted_pretraining_keeps_out(main, argv, tmp_path, monkeypatch):
    """`main([*argv, "--out", OUT])` interrupted in its pre-training (`tiny.pretrain` raising
    KeyboardInterrupt) leaves no OUT and no half-built directory beside it, and with --overwrite
    over an existing model leaves that model as it was."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    out = tmp_path / "model"
    monkeypatch.setattr(tiny, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--out", str(out)])
    assert os.listdir(tmp_path) == []  # neither --out nor the directory it was being built in
    monkeypatch.undo()
    tiny.main(["--out", str(out)])
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(tiny, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--out", str(out), "--overwrite", "--seed", "1"])
    assert os.listdir(tmp_path) == ["model"] and (out / "model.safetensors").read_bytes() == before
