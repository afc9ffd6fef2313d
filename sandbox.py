"""Run untrusted Python programs (the solver's code) in subprocesses with limits, and score
them on stdin/stdout tests in parallel.

This is NOT a container or a VM. It is a set of cheap, standard Linux layers that stop
the accidents and the common attacks of generated code during RL training:

Covered, on every machine:
- each run is a fresh `python -I -S` process in a new session, in a new temporary working
  directory that is removed afterwards, with an environment of PATH and LANG only (no
  inherited tokens); the code goes in a file, the input in through stdin
- a wall-clock timeout; at the end of every run its whole process group is killed
- resource limits set in the child before the program starts: CPU time, address space
  (`memory_mb`), file size (stdout, stderr and every file written are capped at
  `output_limit` bytes, so a flood of output never reaches the parent's memory), open
  files, no core dumps, and the kernel's OOM killer picks sandboxed processes first
- the verdict of a test is taken outside the program: exit codes and printed text
  cannot fake a pass; a batch keeps only each run's verdict, not its output
Covered where the machine allows (probed once, see `isolation()`; a missing layer is
logged once as a warning):
- "net": a network namespace with no interfaces but a down loopback: no network at all
- "pid": a PID namespace with its own /proc: every descendant dies with the run, even
  one that called setsid, and host processes are invisible
- "tmp": a mount namespace with a fresh 32 MB tmpfs on /tmp, /var/tmp and /dev/shm: what a
  program writes there reaches neither this machine's disk nor a later run
- "uid" (the trainer runs as root): the program runs as its own unprivileged uid, so it
  cannot touch root's files or processes, nor move or replace its working directory (which
  sits in a root-owned one), and RLIMIT_NPROC (which root ignores) caps a fork bomb; each
  run gets a different uid (from a range of 2**24 entered at a random point per trainer
  process) so one run's fork bomb cannot starve another.
  That uid must reach the interpreter: where it cannot reach sys.executable (a pyenv under
  /root), the system's python3 runs the programs, and the warning says so
Not covered:
- reading files that are world-readable (a program could read data/code.jsonl's expected
  outputs), and filling the disk with many capped files in its own working directory for
  the length of the timeout (no filesystem jail, no quota)
- total memory of a program that forks (each process has its own `memory_mb`)
- seccomp system-call filtering; CPU-time fairness between concurrent runs: a program
  that forks CPU-spinning children can slow a correct program running beside it past its
  wall-clock timeout (a per-run cgroup would be needed)
- programs needing third-party packages: `-S` leaves site-packages off the path
  (it also makes startup several times faster)
- without the "pid" layer, a descendant that calls setsid survives the run; without
  "uid" as root, the program runs as root
- with "pid", the program is PID 1 of its namespace: like any init it ignores signals it
  has no handler for (its own kill(), RLIMIT_CPU's SIGXCPU: the hard limit a second later
  kills it), and orphans wait as zombies until the run ends
"""
import functools
import itertools
import logging
import math
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # nothing else is inherited
UID_BASE = 2_000_000_000  # runs take uids UID_BASE.. +2**24 in turn: far above login, system, container ranges
UID_RANGE = 2**24
MAX_PROCS = 64  # RLIMIT_NPROC per run (threads count too); only with a uid of its own
MAX_FILES = 64  # RLIMIT_NOFILE

# Runs first in the run's mount namespace: a fresh small /tmp, /var/tmp and /dev/shm of its own.
PRIVATE_TMP = ("sh", "-c", "for d in /tmp /var/tmp /dev/shm; do [ ! -d $d ] || "
               "mount -t tmpfs -o size=32m,mode=1777,nosuid,nodev tmpfs $d || exit 1; done; exec \"$@\"", "sh")

# Runs in the child before the program: set the limits, then run main.py as __main__.
PRELUDE = """\
import resource, sys
cpu, mem, fsize, nproc = map(int, sys.argv[1:])
limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
          (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_NOFILE, %d, %d),
          (resource.RLIMIT_CORE, 0, 0)] + [(resource.RLIMIT_NPROC, nproc, nproc)] * (nproc > 0)
for res, soft, hard in limits:
    resource.setrlimit(res, (soft, hard))
try:
    with open("/proc/self/oom_score_adj", "w") as f:  # the OOM killer takes sandboxed processes first
        f.write("1000")
except OSError:
    pass
sys.argv = ["main.py"]
with open("main.py", "rb") as f:
    program = compile(f.read(), "main.py", "exec")
del cpu, mem, fsize, nproc, limits, res, soft, hard, f
exec(program, {"__name__": "__main__", "__file__": "main.py"})
""" % (MAX_FILES, MAX_FILES)


@dataclass
class Result:
    status: str  # "ok", "error", "timeout", "memory", "output_limit" or "killed"
    stdout: str
    stderr: str
    returncode: int  # negative: killed by that signal
    seconds: float


# --- isolation layers, probed once ----------------------------------------------------

@dataclass(frozen=True)
class Isolation:
    layers: tuple  # the subset of ("net", "pid", "uid") in force
    python: str  # the interpreter that runs programs
    prefix: tuple  # command run before it; "{uid}" stands for the run's uid


def _starts(prefix, python):
    """Whether `prefix + python` starts, as the first and the last uid of the range where a prefix
    takes one; sys.executable must also be itself (as another uid, a pyenv binary under /root can
    start but load the system's libpython and stdlib)."""
    uids = [UID_BASE, UID_BASE + UID_RANGE - 1] if any("{uid}" in a for a in prefix) else [UID_BASE]
    for uid in uids:
        argv = [a.format(uid=uid) for a in prefix] + [python, "-I", "-S", "-c", "import sys; print(sys.version)"]
        try:
            r = subprocess.run(argv, cwd="/", env=ENV, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if r.returncode != 0 or (python == sys.executable and r.stdout.strip() != sys.version):
            return False
    return True


@functools.cache
def isolation():
    """The strongest set of layers that works on this machine (first working candidate);
    logs one warning naming what is missing."""
    ns = ("--net", "--pid", "--fork", "--kill-child", "--mount-proc")  # --mount-proc: a mount namespace too
    # unshare's --kill-child is cleared by a uid change, so setpriv sets the parent-death signal
    drop = ("setpriv", "--reuid={uid}", "--regid={uid}", "--clear-groups", "--pdeathsig=KILL", "--")
    system_python = shutil.which("python3", path=ENV["PATH"])
    if os.geteuid() == 0:  # a uid of its own; a pyenv under /root is out of that uid's reach
        pythons = [p for p in dict.fromkeys([sys.executable, system_python]) if p]
        candidates = [(("unshare", *ns, "--", *PRIVATE_TMP, *drop), py, ("net", "pid", "tmp", "uid")) for py in pythons]
        candidates += [(("unshare", *ns, "--", *drop), py, ("net", "pid", "uid")) for py in pythons]
        candidates += [(drop, py, ("uid",)) for py in pythons]
    else:  # a user namespace lets a normal user make the other namespaces
        user_ns = ("unshare", "--user", "--map-root-user", *ns, "--")
        candidates = [((*user_ns, *PRIVATE_TMP), sys.executable, ("net", "pid", "tmp")),
                      (user_ns, sys.executable, ("net", "pid"))]
    found = next((Isolation(layers, py, prefix) for prefix, py, layers in candidates if _starts(prefix, py)),
                 Isolation((), sys.executable, ()))
    missing = {"net": "programs can reach the network",
               "pid": "a descendant that calls setsid can outlive its run",
               "tmp": "files a program leaves in /tmp stay on this machine's disk, readable by later runs",
               "uid": "programs run as root" if os.geteuid() == 0 else
                      "programs run as this user and the number of processes is not capped"}
    notes = [f"no {layer} layer: {why}" for layer, why in missing.items() if layer not in found.layers]
    if found.python != sys.executable:
        notes.append(f"uid {UID_BASE} cannot run {sys.executable}, programs run with {found.python}")
    if notes:
        log.warning("sandbox: %s", "; ".join(notes))
    return found


# --- one run --------------------------------------------------------------------------

# next() is atomic under the GIL; a random start keeps two trainer processes (eval beside training,
# several ranks) off each other's uids, so their fork limits stay separate
_uid_counter = itertools.count(random.SystemRandom().randrange(UID_RANGE))


def run(code, stdin="", timeout=5.0, memory_mb=512, output_limit=1_000_000):
    """Run `code` as a Python program fed `stdin`; never raises for anything the program does."""
    iso = isolation()
    uid = UID_BASE + next(_uid_counter) % UID_RANGE
    tmp = tempfile.mkdtemp(prefix="sandbox-")  # ours: the program cannot rename or replace what it is in
    work = os.path.join(tmp, "work")  # the program's: its cwd, main.py, whatever it writes
    try:
        os.chmod(tmp, 0o711)
        os.mkdir(work)
        with open(os.path.join(work, "main.py"), "wb") as f:
            f.write(code.encode("utf-8", "replace"))
        if "uid" in iso.layers:
            os.chown(work, uid, uid)
        # unnamed files (O_TMPFILE): the program sees only its own stdin/stdout/stderr
        with tempfile.TemporaryFile(dir=tmp) as fin, tempfile.TemporaryFile(dir=tmp) as fout, \
                tempfile.TemporaryFile(dir=tmp) as ferr:
            fin.write(stdin.encode("utf-8", "replace"))
            fin.seek(0)
            limits = [math.ceil(timeout) + 1, memory_mb * 2**20, output_limit,
                      MAX_PROCS if "uid" in iso.layers else 0]
            argv = [a.format(uid=uid) for a in iso.prefix] + [iso.python, "-I", "-S", "-c", PRELUDE, *map(str, limits)]
            start = time.monotonic()
            proc = subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=ferr, cwd=work, env=ENV,
                                    start_new_session=True)  # no preexec_fn: keeps vfork, fast from a big trainer
            timed_out = not _wait(proc.pid, timeout)
            try:  # also after a normal exit: children it left behind in its group
                os.killpg(proc.pid, signal.SIGKILL)  # the PID namespace takes the rest
            except ProcessLookupError:
                pass
            proc.wait()
            seconds = time.monotonic() - start
            (stdout, out_full), (stderr, err_full) = _read(fout, output_limit), _read(ferr, output_limit)
    finally:
        _remove(tmp)
    status = _status(proc.returncode, timed_out, out_full or err_full, stderr)
    return Result(status, stdout, stderr, proc.returncode, seconds)


def _wait(pid, timeout):
    """True if child `pid` exits within `timeout` s. It is left unreaped, so its pid (the group id)
    cannot be reused before the group is killed. A pidfd wakes us at the exit; Popen.wait polls."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3, some sandboxed kernels): poll
        deadline = time.monotonic() + timeout
        while not os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def _read(f, limit):
    """(text, whether the file reached `limit` bytes, where RLIMIT_FSIZE stopped it)."""
    f.seek(0)
    return f.read(limit).decode("utf-8", "replace"), os.fstat(f.fileno()).st_size >= limit


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
    """Delete a run's directory whatever the program left in it; never raises.

    shutil.rmtree fails on a tree thousands of directories deep (RecursionError) and, without
    root, on directories the program made unreadable; then coreutils take over: `chmod -R`
    and `rm -rf` walk any depth and never follow a symbolic link.
    """
    try:
        shutil.rmtree(path)
        return
    except Exception:
        pass
    try:
        if os.path.islink(path):  # only possible without the uid layer: drop the link, not its target
            os.unlink(path)
            return
        for argv in (["chmod", "-R", "u+rwx", "--", path], ["rm", "-rf", "--", path]):
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    except OSError as e:  # no coreutils on PATH, say: leave the directory, keep the trainer running
        log.warning("sandbox: could not remove %s: %s", path, e)


# --- many runs, and tests -------------------------------------------------------------

def run_many(jobs, timeout=5.0, memory_mb=512, output_limit=1_000_000, workers=None, judge=None):
    """Run (code, stdin, ...) jobs concurrently, one thread per core by default; results in order.

    judge(job, result), if given, turns each run into what is kept (a verdict) as soon as it
    ends, so a batch of thousands of runs never holds every run's output at once.
    """
    isolation()  # probe here, not in every thread at once

    def one(job):
        result = run(job[0], job[1], timeout, memory_mb, output_limit)
        return judge(job, result) if judge else result

    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return list(pool.map(one, jobs))


def same_output(stdout, expected):
    """Default test check, as the paper's released judge: the exact text after stripping trailing
    newlines (`rewards.output_matches` adds the lenient option)."""
    return stdout.rstrip("\n") == expected.rstrip("\n")


def run_tests(code, tests, check=None, timeout=5.0, memory_mb=512, workers=None):
    """One bool per (stdin, expected_stdout) test: the program exited 0 and `check` accepts its
    output. Each test is its own process, so a program cannot carry state or a verdict across."""
    check = check or same_output
    return run_many([(code, stdin, expected) for stdin, expected in tests], timeout, memory_mb, workers=workers,
                    judge=lambda job, r: r.status == "ok" and check(r.stdout, job[2]))
