"""Data parallelism on torch.distributed: the same SQLM step on N processes, equal to one process.

    torchrun --nproc-per-node N sqlm.py -- --task arith ...

(the `--` keeps torchrun's own parser off sqlm.py's flags: it would take --n for an abbreviation
of its --nnodes). One GPU per process with NCCL, or CPU processes with gloo. Each process:

  - samples a contiguous share of the step's prompts, then of its problems, from an unsharded copy
    of the weights (generation has no collectives: processes decode different numbers of tokens);
    each prompt's sampling stream is keyed by its global index, so the samples are one process's;
  - gathers every record, so every process builds the same groups, advantages and mini-batches;
  - trains on the sequences each mini-batch deals it (balanced by tokens, the same number of
    forward and backward calls everywhere), with weights, gradients and AdamW state sharded by
    FSDP2 (`fully_shard` per decoder layer, and a root around the log-prob forward); the loss
    divides by the mini-batch's global token count, and statistics are summed over processes;
  - evaluates a contiguous share of the held-out set on its copy (a problem's samples are keyed by
    its index in the set), and every record is gathered, so the figures are one process's;
  - rank 0 writes the logs and the Hugging Face checkpoint; the AdamW state is saved sharded
    (torch.distributed.checkpoint), one file per process.

A single process uses `ONE`, a World whose methods return their input: it pays nothing for this.
Multi-node is torchrun's own flags (--nnodes, --rdzv-endpoint) and a shared run directory; nothing
here assumes one node, and more than one is not tested.
"""
import datetime
import os

import torch
import torch.distributed as dist

import cli
import rollout


class World:
    """This process among the run's processes: `rank` of `size`, on `device`. For one process
    (rank 0 of 1) every collective returns its input unchanged and nothing is communicated."""

    def __init__(self, rank=0, size=1, device=None):
        self.rank, self.size, self.device = rank, size, device

    @property
    def main(self):
        """The process that prints and writes."""
        return self.rank == 0

    def share(self, items):
        """This process's contiguous share of `items` (shares differ in size by at most one)."""
        return items[self.rank * len(items) // self.size:(self.rank + 1) * len(items) // self.size]

    def gather(self, items):
        """Every process's `items`, concatenated in rank order, on every process:
        gather(share(x)) == x."""
        if self.size == 1:
            return list(items)
        parts = [None] * self.size
        dist.all_gather_object(parts, list(items))
        return [x for part in parts for x in part]

    def sum(self, values):
        """A dict of floats summed over processes, in rank order (a key a process lacks
        counts 0)."""
        if self.size == 1:
            return values
        total = {}
        for part in self.gather([values]):
            for key, value in part.items():
                total[key] = total.get(key, 0.0) + value
        return total

    def merge(self, batch, mine):
        """`batch` (every record, on every process) with the records each process worked on (`mine`,
        its share) in place of its own copies, matched by `index`: every process then holds every
        record as worked on. One process worked on its records in place: `batch` as it is."""
        if self.size == 1:
            return batch
        done = {p.index: p for p in self.gather(mine)}
        return [done.get(p.index, p) for p in batch]

    def deal(self, lengths):
        """A rank for each of a mini-batch's sequences, balanced by tokens: longest first, each to
        the process with the fewest tokens so far (ties: the fewest sequences, then the lowest
        rank). The same on every process, from the same gathered records."""
        if self.size == 1:
            return [0] * len(lengths)
        tokens, counts, ranks = [0] * self.size, [0] * self.size, [0] * len(lengths)
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            ranks[i] = min(range(self.size), key=lambda r: (tokens[r], counts[r], r))
            tokens[ranks[i]] += lengths[i]
            counts[ranks[i]] += 1
        return ranks

    def micro_batches(self, minibatch, size):
        """This process's micro-batches of one mini-batch's sequences (at most `size` each),
        in order.

        One process: consecutive slices. N processes: the mini-batch is dealt across them by tokens
        (`deal`) and each slices its own; one with fewer slices than the busiest pads with empty
        micro-batches, because with sharded weights every forward and backward is a collective that
        every process must join (the update runs an empty one as a pass that changes nothing). The
        same call gives the log-probs taken before the update and the update the same layout."""
        ranks = self.deal([len(s.prompt_ids) + len(s.completion_ids) for s in minibatch])
        mine = [s for s, rank in zip(minibatch, ranks) if rank == self.rank]
        micros = [mine[start:start + size] for start in range(0, len(mine), size)]
        busiest = max(-(-ranks.count(rank) // size) for rank in range(self.size))
        return micros + [[]] * (busiest - len(micros))

    def count_micro_batches(self, minibatch, size):
        """How many non-empty micro-batches of `minibatch` all processes together run."""
        ranks = self.deal([len(s.prompt_ids) + len(s.completion_ids) for s in minibatch])
        return sum(-(-ranks.count(rank) // size) for rank in range(self.size))

    def barrier(self):
        if self.size > 1:
            dist.barrier()


ONE = World()


def launched():
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_from_env():
    """This process's rank before the process group exists (0 without torchrun): for who prints an
    error."""
    return int(os.environ.get("RANK", "0"))


def setup(device_flag):
    """(World, device): torchrun's processes joined in a process group (NCCL on GPUs, gloo on CPU),
    each GPU process on cuda:LOCAL_RANK; one process: (ONE, the --device). The timeout bounds a wait
    at a collective: for another process's longer share of a sampling phase or of the eval, or for
    rank 0's checkpoint write. None of these has been timed on GPUs, hence 2 hours (a hang takes as
    long)."""
    device = cli.device(device_flag)
    if not launched():
        return ONE, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(hours=2))
    return World(dist.get_rank(), dist.get_world_size(), device), device


def teardown(world):
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def shard(model, world, root=None):
    """FSDP2 over the processes: `fully_shard` each decoder layer, then a `rollout.TokenLogprobs`
    around the model as the root, returned (`root`: the module to use instead, e.g. the critic,
    whose forward is its values). The root holds the embedding, final norm and lm-head (the
    critic's scalar head), unsharded around its forward: what the update calls (calling the decoder
    from outside a sharded root would meet sharded weights, and leave them without gradients).

    Weights are gathered in fp32 and computed under the same bf16 autocast as on one GPU (no FSDP2
    mixed-precision policy), so N processes compute what one does, up to summation order; the cost
    is autocast's bf16 casts of the whole model on every GPU during the update (memory.memory_plan).

    A frozen model (no weight requires grad: the KL reference) has its root sharded again after each
    forward. FSDP2 keeps a root's weights gathered from its forward to the backward that follows,
    and it has none, so its embedding and lm-head would otherwise stay whole on every process."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(world.device.type, (world.size,))
    root = rollout.TokenLogprobs(model) if root is None else root  # it checks the head: unsharded
    for layer in model.get_decoder().layers:
        fully_shard(layer, mesh=mesh)
    root = fully_shard(root, mesh=mesh)
    if not any(p.requires_grad for p in model.parameters()):
        root.register_forward_hook(lambda module, args, output: module.reshard())
    return root


def full_tensor(p):
    """A parameter's whole value: a sharded one is all-gathered (a collective: every process calls
    it)."""
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def whole_state_dict(module):
    """A sharded module's (the critic's) whole state dict on rank 0, on CPU ({} elsewhere). A
    collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))


def full_state_dict(policy):
    """The sharded policy's weights as one Hugging Face state dict on rank 0, on CPU ({} elsewhere).
    A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True,
                                                                  cpu_offload=True))
    state = {key.removeprefix("model."): value
             for key, value in state.items()}  # TokenLogprobs.model
    # a tied lm-head comes back as a second copy of the embedding: keep what save_pretrained keeps
    own = ({name for name, _ in policy.model.named_parameters()}
           | {name for name, _ in policy.model.named_buffers()})
    return {key: value for key, value in state.items() if key in own}


def cause(e):
    """What a torch.distributed.checkpoint failure wraps (an OSError for a full disk,
    KeyboardInterrupt for a signal mid-write), an interrupt first, from any process; any other
    exception as it is."""
    from torch.distributed.checkpoint.api import CheckpointException
    if not isinstance(e, CheckpointException):
        return e
    wrapped = [exc for exc, _ in e.failures.values()]
    return next((x for x in wrapped if isinstance(x, KeyboardInterrupt)),
                wrapped[0] if wrapped else e)


def save_optimizer(policy, optimizer, path):
    """The sharded AdamW state under `path`, one file per process plus metadata. A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    dcp.save({"optimizer": get_optimizer_state_dict(policy, optimizer)}, checkpoint_id=path)


def load_optimizer(policy, optimizer, path):
    """`save_optimizer`'s state back into `optimizer` (the same number of processes). A
    collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    state = {"optimizer": get_optimizer_state_dict(policy, optimizer)}
    dcp.load(state, checkpoint_id=path)
    set_optimizer_state_dict(policy, optimizer, state["optimizer"])
