"""The warm ``manage.py`` children of the tests behave as cold ones: exit codes, signals, streams,
environment and working folder (tests/warm_children.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import warm_children

pytestmark = pytest.mark.skipif(not warm_children.enabled(), reason="SALESFLOW_TEST_WARM_CHILDREN=0 or no pidfd_open")


def script(tmp_path, text: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(text)
    return [sys.executable, str(path)]


def test_a_warm_child_has_its_own_arguments_environment_folder_and_exit_code(tmp_path):
    args = script(
        tmp_path,
        "import os, sys\nprint(sys.argv[1:], os.environ['CHILD_VALUE'], os.getcwd())\n"
        "print('to stderr', file=sys.stderr)\nsys.exit(3)\n",
    )
    env = {**os.environ, "CHILD_VALUE": "given"}

    done = warm_children.run([*args, "one", "two"], env=env, cwd=str(tmp_path), text=True, timeout=60)

    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 3
    assert done.stdout == f"['one', 'two'] given {tmp_path}\n"
    assert done.stderr == "to stderr\n"


def test_a_warm_child_killed_reports_the_signal_and_reads_its_stdin(tmp_path):
    child = warm_children.popen(
        script(tmp_path, "import sys, time\nprint(sys.stdin.readline().upper(), flush=True)\ntime.sleep(60)\n"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert isinstance(child, warm_children.WarmPopen)
    child.stdin.write("hello\n")
    child.stdin.flush()
    assert child.stdout.readline() == "HELLO\n"
    assert child.poll() is None

    os.kill(child.pid, signal.SIGKILL)

    assert child.wait(timeout=10) == -signal.SIGKILL
    child.stdin.close()
    child.stdout.close()


def test_an_uncaught_exception_and_an_interrupt_end_as_in_a_cold_child(tmp_path):
    failed = warm_children.run(script(tmp_path, "raise ValueError('bad')\n"), text=True, timeout=60)
    assert failed.returncode == 1
    assert failed.stderr.rstrip().endswith("ValueError: bad")

    interrupted = warm_children.run(script(tmp_path, "raise KeyboardInterrupt\n"), text=True, timeout=60)
    assert interrupted.returncode == -signal.SIGINT


def test_a_warm_child_that_outlives_its_timeout_is_killed(tmp_path):
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        warm_children.run(script(tmp_path, "import time\ntime.sleep(60)\n"), timeout=0.5)
    assert time.monotonic() - started < 10


# --- a shell script's `python manage.py ...` (tests/warm_client.py, used by the docs test) -------------------


def client_command(tmp_path, text: str) -> tuple[list[str], dict[str, str]]:
    """A command that runs ``manage.py`` (here a script of the test's) through the warm client."""
    manage = tmp_path / "manage.py"
    manage.write_text(text)
    client = os.path.join(os.path.dirname(warm_children.__file__), "warm_client.py")
    env = {**os.environ, "SALESFLOW_PYTHON": sys.executable, "SALESFLOW_TEST_WARM_SOCKET": warm_children.socket_path()}
    return [sys.executable, "-S", client, str(manage)], env


def gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_the_client_runs_manage_py_warm_with_its_streams_and_exit_code_and_anything_else_cold(tmp_path):
    command, env = client_command(
        tmp_path,
        "import os, sys\nprint(sys.argv[1:], os.getppid(), flush=True)\nprint('err', file=sys.stderr)\nsys.exit(4)\n",
    )

    done = subprocess.run([*command, "a", "b"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert done.returncode == 4
    arguments, parent = done.stdout.rsplit(" ", 1)
    assert arguments == "['a', 'b']"
    assert int(parent) == warm_children.WarmProcess.get().process.pid  # forked warm, not started by the client
    assert done.stderr == "err\n"
    other = subprocess.run(
        [*command[:3], "-c", "import os; print(os.getppid())"], env=env, capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 0
    assert int(other.stdout) != warm_children.WarmProcess.get().process.pid


def test_a_signal_sent_to_the_client_reaches_the_child_and_ends_the_client_the_same_way(tmp_path):
    command, env = client_command(tmp_path, "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n")
    client = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    child = int(client.stdout.readline())

    client.send_signal(signal.SIGTERM)

    assert client.wait(timeout=10) == -signal.SIGTERM
    assert gone(child)
    client.stdout.close()


def test_a_client_killed_takes_its_child_with_it(tmp_path):
    command, env = client_command(
        tmp_path,
        "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print(os.getpid(), flush=True)\ntime.sleep(60)\n",
    )
    client = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    child = int(client.stdout.readline())

    client.kill()
    client.wait(timeout=10)

    assert gone(child), "the warm child outlived its killed client"
    client.stdout.close()


def test_a_request_whose_asker_left_before_its_answer_leaves_the_warm_process_serving(tmp_path):
    warm = warm_children.WarmProcess.get()
    pid_file = tmp_path / "pid"
    manage = tmp_path / "manage.py"
    manage.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    request = {"args": [sys.executable, str(manage)], "env": dict(os.environ), "cwd": str(tmp_path), "tied": True}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as asker:
        asker.connect(warm.path)
        socket.send_fds(asker, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    # gone before the warm process could answer with the child's pid (a killed client, say)

    # The child is killed at once, before or after it started its script: if it did, it is gone.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not (pid_file.exists() and pid_file.read_text()):
        time.sleep(0.05)
    if pid_file.exists() and pid_file.read_text():
        assert gone(int(pid_file.read_text())), "the child of a request nobody waits for kept running"
    done = warm_children.run(script(tmp_path, "print('still serving')\n"), text=True, timeout=60)
    assert done.stdout == "still serving\n"
    assert warm_children.WarmProcess.get() is warm  # the same warm process, not one started again
