"""Shared fixtures: one tiny random Qwen2 model written once per test session (no downloads)."""
import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rollout  # noqa: E402
import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tiny.make(str(tmp_path_factory.mktemp("tiny")), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """(model, tokenizer) on CPU in fp32; tests must not modify the model's weights."""
    return rollout.load(tiny_dir, device="cpu")
