"""``python manage.py ...`` for a shell script, forked by a test process's warm process (tests/warm_children.py).

The docs test puts a ``python`` first on the script's PATH that runs this file (standard library only,
started with ``-S``: a few hundredths of a second). It asks the warm process named by
``SALESFLOW_TEST_WARM_SOCKET`` for a child with this process's arguments, environment, folder and
standard streams, passes on the signals the script sends it (``kill``, ``timeout``), and ends as the
child ended: the same exit code, or killed by the same signal. The request is tied to this process:
if it dies without passing anything on (SIGKILL, the end of the script's session), the warm process
kills the child, as the session's end would have killed a child started cold.
Anything but a ``manage.py`` run, or no warm process, runs the real interpreter (``SALESFLOW_PYTHON``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def read_line(conn: socket.socket, buffer: bytearray) -> int:
    while b"\n" not in buffer:
        more = conn.recv(64)
        if not more:
            raise ConnectionError("the warm process went away")
        buffer += more
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return int(line)


def start_warm(path: str, python: str, args: list[str]) -> tuple[socket.socket, bytearray, int]:
    """The connection the child's status will come back on, and the child's pid."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    request = {"args": [python, *args], "env": dict(os.environ), "cwd": os.getcwd(), "tied": True}
    payload = json.dumps(request).encode() + b"\n"
    sent = socket.send_fds(conn, [payload], [0, 1, 2])
    conn.sendall(payload[sent:])
    buffer = bytearray()
    return conn, buffer, read_line(conn, buffer)


def wait_warm(conn: socket.socket, buffer: bytearray, pid: int) -> int:
    for number in PASSED_ON:
        signal.signal(number, lambda received, _frame: os.kill(pid, received))
    try:
        status = read_line(conn, buffer)
    except ConnectionError:
        return 255  # the child started: its status is lost, and it must not run a second time
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 255


def main() -> None:
    python = os.environ["SALESFLOW_PYTHON"]
    args = sys.argv[1:]
    path = os.environ.get("SALESFLOW_TEST_WARM_SOCKET", "")
    if path and args and args[0].endswith("manage.py"):
        try:
            started = start_warm(path, python, args)
        except (OSError, ValueError):
            pass  # no warm process (any more): started cold below
        else:
            sys.exit(wait_warm(*started))
    os.execv(python, [python, *args])


if __name__ == "__main__":
    main()
