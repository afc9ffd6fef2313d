"""Sandbox specification: each test attacks or checks one property.

Hostile programs run with short timeouts. A test whose property needs an isolation layer this
machine lacks checks that the fallback was reported, then skips; the attacks that could hurt an
unguarded machine (fork bomb, killing the parent) are then not run at all.
"""
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import sandbox

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = sandbox.isolation().layers  # probe once, outside every timed call
MARGIN = 1.5  # seconds a contained run may take beyond its timeout (start-up, kill, cleanup)


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


def skip_reported(layer, caplog):
    """Without `layer` the attack is not run; the fallback must have been reported instead."""
    sandbox.isolation.cache_clear()
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        sandbox.isolation()
    assert f"no {layer} layer" in caplog.text
    pytest.skip(f"no {layer} layer on this machine (reported)")


def marker():
    return f"{random.randint(1000, 9999)}.{random.randint(10**8, 10**9)}"  # also a valid `sleep` time


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

def test_infinite_loop_times_out():
    """The wall-clock timeout kills a busy loop."""
    assert timed_run("while True:\n    pass").status == "timeout"


@pytest.mark.parametrize("code", ["sum(range(10**12))", "x = 10**10**8",
                                  "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')"], ids=["sum", "bigint", "regex"])
def test_spin_inside_one_c_call_times_out(code):
    """A loop inside one C call never returns to Python; only a signal from outside stops it."""
    assert timed_run(code).status == "timeout"


def test_fork_bomb_is_contained(caplog):
    """RLIMIT_NPROC (with a uid of its own) caps the bomb; every bomb process is gone after the run."""
    if "uid" not in LAYERS:
        skip_reported("uid", caplog)
    tag = marker()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    r = timed_run(f"import os, sys\nos.execv(sys.executable, [sys.executable, '-S', '-c', {bomb!r}, '{tag}'])")
    assert r.status == "timeout"
    assert_no_strays(tag)


def test_process_count_is_capped(caplog):
    """RLIMIT_NPROC: forking stops at MAX_PROCS; root would ignore it, hence the uid of its own."""
    if "uid" not in LAYERS:
        skip_reported("uid", caplog)
    code = ("import os, time\nn = 0\ntry:\n    for _ in range(500):\n        if os.fork() == 0:\n"
            "            time.sleep(5)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)")
    r = timed_run(code, timeout=5)
    assert 0 < int(r.stdout) < sandbox.MAX_PROCS


def test_program_that_leaves_its_session_is_killed_at_timeout():
    """A program that calls setsid escapes a process-group kill; the timeout must still reach it."""
    tag = marker()
    code = f"import os\ntry:\n    os.setsid()\nexcept OSError:\n    pass\nos.execvp('sleep', ['sleep', '{tag}'])"
    assert timed_run(code).status == "timeout"
    assert_no_strays(tag)


def test_children_left_running_are_killed():
    """A program that exits normally while its children still run: they die with the run."""
    tag = marker()
    r = timed_run(f"import os\nif os.fork() == 0:\n    os.execvp('sleep', ['sleep', '{tag}'])\nprint('bye')")
    assert r.status == "ok"
    assert_no_strays(tag)


def test_setsid_grandchild_dies_with_the_run(caplog):
    """A grandchild that leaves the session and outlives its parent is still killed (PID namespace)."""
    tag = marker()
    code = f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execvp('sleep', ['sleep', '{tag}'])\nprint('bye')"
    r = timed_run(code)
    if "pid" not in LAYERS:
        for pid in strays(tag):
            os.kill(pid, 9)
        skip_reported("pid", caplog)
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
    if not {"pid", "uid"} & set(LAYERS):
        skip_reported("pid", caplog)
    assert (r.status, r.stdout.strip()) == ("ok", "0")


def test_root_only_files_are_unreadable(caplog):
    """As root, the program runs as another uid: the trainer's private files are out of reach."""
    if "uid" not in LAYERS:
        skip_reported("uid", caplog)
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
    assert r.status == "error" and "PermissionError" in r.stderr


def test_killing_its_parent_leaves_the_trainer_alive(caplog):
    """os.kill(os.getppid(), 9) must not reach the trainer (run here as a separate process)."""
    if not {"pid", "uid"} & set(LAYERS):
        skip_reported("pid", caplog)
    trainer = ("import sandbox\nr = sandbox.run('import os\\nos.kill(os.getppid(), 9)\\nprint(1)', timeout=2)\n"
               "print('trainer alive', r.status)")
    p = subprocess.run([sys.executable, "-c", trainer], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "trainer alive" in p.stdout


def test_network_is_unreachable(caplog):
    """No connection, not even to a server listening on the trainer's loopback."""
    if "net" not in LAYERS:
        skip_reported("net", caplog)
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


def test_timeout_holds_without_pidfd(monkeypatch):
    """Kernels without pidfd_open (old, or sandboxed ones) fall back to polling: same results."""
    def no_pidfd(pid):
        raise OSError("pidfd_open unavailable")
    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    assert timed_run("while True:\n    pass").status == "timeout"
    assert timed_run("print(6 * 7)").stdout == "42\n"


# --- housekeeping ---------------------------------------------------------------------

def test_temp_dir_is_removed_even_when_locked():
    """The run's directory is deleted, even after the program made it unreadable."""
    code = ("import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nos.chmod('d', 0)\nos.chmod('.', 0)\n"
            "print(os.getcwd())")
    r = sandbox.run(code)
    assert r.status == "ok" and r.stdout.startswith("/")
    assert not os.path.exists(os.path.dirname(r.stdout.strip()))  # the run's directory, not only its cwd


def test_program_cannot_move_or_replace_its_directory(tmp_path, caplog):
    """A program that renamed its cwd and put a symlink in its place made the cleanup raise (crashing the
    training step) and turned root's permission repair onto the link's target (here a decoy, never /)."""
    if "uid" not in LAYERS:
        skip_reported("uid", caplog)
    decoy = tmp_path / "decoy"
    (decoy / "sub").mkdir(parents=True)
    os.chmod(decoy / "sub", 0o755)
    code = ("import os\nc = os.getcwd()\ntry:\n    os.rename('../work', '../moved')\n"  # relative: /tmp may be private
            f"    os.symlink({str(decoy)!r}, '../work')\nexcept OSError as e:\n    print(type(e).__name__)\nprint(c)")
    r = sandbox.run(code)
    assert r.stdout.split()[0] == "PermissionError"
    work = r.stdout.split()[-1]
    assert not os.path.exists(os.path.dirname(work))
    assert (decoy / "sub").stat().st_mode & 0o777 == 0o755


def test_tmp_is_private_to_each_run(caplog):
    """Files a program leaves in /tmp (or /dev/shm) neither land on the trainer's disk nor reach a later run."""
    if "tmp" not in LAYERS:
        skip_reported("tmp", caplog)
    names = [f"/tmp/sandbox-note-{marker()}", f"/dev/shm/sandbox-note-{marker()}"]
    wrote = sandbox.run("".join(f"open({n!r}, 'w').write('x')\n" for n in names) + "print('ok')")
    assert wrote.status == "ok" and wrote.stdout == "ok\n"
    assert not any(os.path.exists(n) for n in names)
    later = sandbox.run(f"import os\nprint([os.path.exists(n) for n in {names!r}])")
    assert later.stdout.strip() == "[False, False]"


def test_very_deep_tree_is_removed():
    """3,000 nested directories made shutil.rmtree raise RecursionError out of run() and leak the tree."""
    code = "import os\nprint(os.getcwd())\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')"
    r = sandbox.run(code, timeout=20)
    assert r.status == "ok"
    assert not os.path.exists(os.path.dirname(r.stdout.strip()))


def test_run_many_keeps_only_the_judged_verdicts():
    """With `judge`, each run is reduced to its verdict as it ends (a code step is ~10k runs of up to 2 MB
    of output each); verdicts come back in job order."""
    jobs = [("print(input())", str(i), str(i % 2)) for i in range(4)]
    verdicts = sandbox.run_many(jobs, judge=lambda job, r: (job[1], r.stdout.strip() == job[2]))
    assert verdicts == [("0", True), ("1", True), ("2", False), ("3", False)]


def test_missing_layers_are_reported_once(monkeypatch, caplog):
    """Where nothing can be isolated, the run still works and one warning names what is missing."""
    monkeypatch.setattr(sandbox, "_starts", lambda prefix, python: False)
    sandbox.isolation.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="sandbox"):
            assert sandbox.isolation().layers == ()
            sandbox.isolation()
        assert len(caplog.records) == 1
        assert all(f"no {layer} layer" in caplog.text for layer in ("net", "pid", "uid"))
        assert sandbox.run("print(6 * 7)").stdout == "42\n"
    finally:
        sandbox.isolation.cache_clear()  # the next caller probes the real machine again
