"""What every command line of the project shares: negative numbers as flag values, the device
flag, the check that an output path can be created, one-line reasons for a failing disk, and
Ctrl-C / SIGTERM handling. Errors are ValueError with one line that names the flag; each entry
point prints it and exits with code 2. An interrupt exits with 130 (Ctrl-C) or 143 (SIGTERM)."""
import contextlib
import errno
import os
import re
import signal
import sys

NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-(inf|infinity|nan)",
                             re.IGNORECASE)


# The entry points' --help epilog: the one setting that is not a flag (sandbox.ALLOW_MISSING).
SANDBOX_HELP = ("environment: SQLM_SANDBOX_ALLOW_MISSING=LAYERS (comma-separated: bwrap, uid, "
                "cgroup, seccomp) lets code programs run without those sandbox layers where the "
                "machine lacks them; by default a missing layer stops a code run with one line "
                "saying how to get it.")


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
    """torch.device for --device: '' or None = cuda if available, else cpu; cpu; cuda[:N] on a GPU
    machine."""
    import torch
    unknown = f"unknown or unavailable --device '{name}' (cpu, or cuda[:N] on a GPU machine)"
    kind = (name or "").split(":")[0] or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda") or (kind == "cuda" and not torch.cuda.is_available()):
        raise ValueError(unknown)
    try:
        return torch.device(name or kind)
    except RuntimeError:  # "cuda:x"
        raise ValueError(unknown) from None


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


def first_line(e, limit=160):
    """An exception's message cut to its first line (its type's name if it has none), for one-line
    errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def os_reason(e, path=None):
    """One line for an error of the machine (no space, read-only, permission) as a write meets it:
    an OSError's strerror and file, or what safetensors or torch.save raise around one (they wrap
    the OS error in their own exceptions; torch.save's says only "unexpected pos", so a full or
    read-only file system under `path` is looked up)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = first_line(e, limit=None)
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        if os.strerror(code) in text or f"code: {code}," in text:
            return os.strerror(code)
    try:
        fs = os.statvfs(path) if path else None
    except OSError:
        fs = None
    if fs and fs.f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if fs and fs.f_bavail * fs.f_frsize < 2**20:  # under 1 MiB left
        return os.strerror(errno.ENOSPC)
    return text[:160]


def write_atomic(path, text):
    """Write a file under a temporary name and rename it into place: a full disk or a kill mid-write
    leaves the old file whole (an emptied config.json, log or result would be lost)."""
    tmp = str(path) + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# --- interrupts ------------------------------------------------------------------------

class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, a job scheduler, a container stop), raised where Ctrl-C raises
    KeyboardInterrupt so that one handler serves both."""


def interrupt_code(e):
    """The exit code of an interrupt: 130 for Ctrl-C, 143 for SIGTERM (128 + the signal number)."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def exit_on_signals(line):
    """Until a program sets its own handling (`interrupts`): SIGINT or SIGTERM prints `line` and
    exits at once. Called at the top of an entry point, before torch is imported, so a Ctrl-C while
    the program starts gives one line, not a traceback from inside an import."""
    def exit_now(signum, frame):
        os.write(2, (line + "\n").encode())
        os._exit(128 + signum)
    _set_handlers(exit_now)


@contextlib.contextmanager
def interrupts():
    """Inside: SIGINT raises KeyboardInterrupt and SIGTERM raises Terminated, once. Later signals
    are ignored while the first is handled, so a second Ctrl-C cannot cut the handling short with a
    traceback. On the way out the previous handlers come back, unless they were `exit_on_signals`'
    (the program is ending: it keeps ignoring them, so a last Ctrl-C cannot print a second line)."""
    def raise_once(signum, frame):
        _set_handlers(signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = _set_handlers(raise_once)
    try:
        yield
    finally:
        if previous is not None:
            quiet = getattr(previous[0], "__name__", "") == "exit_now"
            for signum, handler in zip((signal.SIGINT, signal.SIGTERM), previous):
                signal.signal(signum, signal.SIG_IGN if quiet else handler)


def exit_on_interrupt(main, line):
    """`main()` under `interrupts()`: its result, or on Ctrl-C or SIGTERM `line` on stderr and exit
    130 or 143 (an entry point's last word: no traceback)."""
    with interrupts():
        try:
            return main()
        except KeyboardInterrupt as e:
            print(line, file=sys.stderr)
            sys.exit(interrupt_code(e))


def _set_handlers(handler):
    """Set `handler` for SIGINT and SIGTERM; the previous pair, or None off the main thread (where
    Python allows no handlers: a library call from a thread keeps the caller's handling)."""
    try:
        return [signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)]
    except ValueError:
        return None
