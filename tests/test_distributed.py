"""The log-probs under torch.distributed (gloo, 2 processes on CPU): wrapped by DDP, the policy's
gradient is the one-process gradient of the whole batch. This is what a multi-process update rests
on; reading the decoder and lm-head from outside the wrapper skipped DDP's all-reduce silently."""
import os
import socket
import subprocess
import sys
import textwrap

import torch

import rollout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent('''
    import os, sys
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    sys.path.insert(0, {repo!r})
    import rollout

    def work(rank, model_dir, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        torch.set_num_threads(1)
        model, _ = rollout.load(model_dir, device="cpu")
        ids, attn, comp = torch.load(os.path.join(out, "batch.pt"))
        half = slice(2 * rank, 2 * rank + 2)
        tokens = comp[:, 1:].sum()
        grads = {{}}
        ddp = DistributedDataParallel(rollout.TokenLogprobs(model))
        for name, net in (("wrapped", ddp), ("bypassed", ddp.module.model)):
            model.zero_grad()
            logp = rollout.token_logprobs(net, ids[half], attn[half], comp[half])
            (logp.sum() / tokens * 2).backward()  # DDP averages the two ranks' gradients
            grads[name] = [p.grad.clone() for p in model.parameters()]
        if rank == 0:
            torch.save(grads, os.path.join(out, "grads.pt"))
        dist.destroy_process_group()

    if __name__ == "__main__":
        torch.multiprocessing.spawn(work, args=(sys.argv[1], int(sys.argv[2]), sys.argv[3]), nprocs=2)
''')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_wrapped_log_probs_give_the_one_process_gradient(tiny_dir, tmp_path):
    """Two ranks, two rows each, DDP around rollout.TokenLogprobs: rank 0's gradient equals the
    one-process gradient of all four rows. The same computation on the unwrapped model (what
    reading the weights from outside a wrapper amounts to) leaves each rank with its own half."""
    model, _ = rollout.load(tiny_dir, device="cpu")
    ids = torch.randint(5, 1000, (4, 24), generator=torch.Generator().manual_seed(0))
    attn, comp = torch.ones_like(ids), torch.zeros_like(ids)
    comp[:, 10:] = 1
    comp[1, 18:] = 0  # rows score different numbers of tokens
    torch.save((ids, attn, comp), tmp_path / "batch.pt")
    (tmp_path / "worker.py").write_text(WORKER.format(repo=REPO))
    done = subprocess.run([sys.executable, str(tmp_path / "worker.py"), tiny_dir, str(free_port()), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    grads = torch.load(tmp_path / "grads.pt")
    model.zero_grad()
    (rollout.token_logprobs(model, ids, attn, comp).sum() / comp[:, 1:].sum()).backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters()])
    wrapped, bypassed = (torch.cat([g.flatten() for g in grads[k]]) for k in ("wrapped", "bypassed"))
    scale = want.abs().max()
    assert (wrapped - want).abs().max() <= 1e-5 * scale, (wrapped - want).abs().max() / scale  # summation order only
    assert (bypassed - want).abs().max() > 1e-2 * scale
