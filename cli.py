"""What every command line of the project shares: negative numbers as flag values, the device
flag, and the check that an output path can be created. Errors are ValueError with one line
that names the flag; each entry point prints it and exits with code 2."""
import os
import re

NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-(inf|infinity|nan)", re.IGNORECASE)


def negative_values_joined(argv):
    """`--lr -1e-6` becomes `--lr=-1e-6`: argparse takes a token that starts with '-' for a flag
    unless it looks like -1 or -.5, so `-1e-6` or `-inf` read as "expected one argument"."""
    out = []
    for token in argv:
        if out and out[-1].startswith("--") and out[-1] != "--" and "=" not in out[-1] \
                and NEGATIVE_NUMBER.fullmatch(token):
            out[-1] += "=" + token
        else:
            out.append(token)
    return out


def device(name):
    """torch.device for --device: '' or None = cuda if available, else cpu; cpu; cuda[:N] on a GPU machine."""
    import torch
    kind = (name or "").split(":")[0] or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda") or (kind == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"unknown or unavailable --device '{name}' (cpu, or cuda[:N] on a GPU machine)")
    try:
        return torch.device(name or kind)
    except RuntimeError:  # "cuda:x"
        raise ValueError(f"unknown or unavailable --device '{name}' (cpu, or cuda[:N] on a GPU machine)") from None


def check_creatable(path, flag="--out", file=False):
    """`path` (a directory, or with file=True a file) can be created: its nearest existing ancestor
    is a directory we may write in. Nothing is created here, so a command that fails later leaves
    nothing behind."""
    parent = os.path.abspath(path)  # dirname('run') is '': the walk up needs a root to stop at
    parent = os.path.dirname(parent) if file else parent
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {parent}")
