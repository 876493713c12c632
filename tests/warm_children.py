"""``manage.py`` children forked from a warm process instead of started cold.

The tests start ``manage.py`` children by the hundred (a kill, another environment, a process of its
own), and a cold one spends most of a second of CPU importing Django, psycopg and their kin before it
reads its first argument (0.7 s; nine tenths of that is imports). Each test process therefore keeps one
warm process (this module run as ``python -m tests.warm_children SOCKET``) that has imported those
libraries, and nothing of the project: it reads no settings, opens no connection and holds no state a
test could leave behind. A child is forked from it per request and then runs ``manage.py`` with its
own arguments, environment, working folder and standard streams, exactly as a cold start would from
there on: the settings it reads from its environment, the project it imports, its exit code (a
signal's as ``-N``). Measured: 0.26 s of CPU against 0.75 s for ``migrate_phase status``.

:class:`WarmPopen` is a ``subprocess.Popen`` whose child comes from the warm process: its pid is the
real process (``os.kill`` and SIGKILL reach it), its pipes are ordinary pipes, and its exit status comes
back over the socket it was asked through, since only the warm process, its parent, can wait for it.
``SALESFLOW_TEST_WARM_CHILDREN=0`` starts every child cold; so does a platform without ``pidfd_open``.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
# What a `manage.py` run imports that reads no settings: the bulk of a cold start. A module that does
# read them (django_tenants, the project) is imported by each child, from its own environment.
PRELOADED = (
    "django.core.management",
    "django.core.management.base",
    "django.core.checks",
    "django.db.models",
    "django.db.migrations.executor",
    "django.db.migrations.autodetector",
    "django.db.backends.postgresql.base",
    "django.db.backends.postgresql.schema",
    "django.db.backends.postgresql.introspection",
    "django.contrib.admin",
    "django.contrib.admin.sites",
    "django.contrib.admin.options",
    "django.contrib.auth.apps",
    "django.contrib.contenttypes.apps",
    "django.contrib.sessions.apps",
    "django.contrib.messages.apps",
    "django.contrib.staticfiles.apps",
    "django.http",
    "django.urls",
    "django.views.generic",
    "django.forms",
    "django.template.loader",
    "django.test.utils",
    "psycopg",
    "psycopg.sql",
    "psycopg.rows",
    "sqlparse",
    "asyncio",
    "email.message",
    "concurrent.futures",
)
READY = b"ready\n"


def enabled() -> bool:
    return os.environ.get("SALESFLOW_TEST_WARM_CHILDREN", "1") != "0" and hasattr(os, "pidfd_open")


# --- the warm process -------------------------------------------------------------------------------


def preload() -> None:
    for name in PRELOADED:
        with contextlib.suppress(Exception):  # one that wants settings is left to the children
            importlib.import_module(name)
    gc.freeze()  # what is loaded now stays shared with the children (no copy on their first collection)


def receive_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _address = socket.recv_fds(conn, 1 << 16, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 16)
        if not more:
            raise ConnectionError("the request ended early")
        data += more
    return json.loads(data), fds


def serve(path: str) -> tuple[dict[str, Any], list[int]]:
    """Fork a child per request until the test process goes (EOF on stdin); returns only in a child."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "request")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "parent")
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    running: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, the connection that asked)
    while True:
        for key, _events in selector.select():
            if key.data == "parent":
                if not os.read(key.fd, 4096):
                    os.unlink(path)
                    sys.exit(0)
            elif key.data == "request":
                conn, _address = listener.accept()
                request, fds = receive_request(conn)
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for pidfd, (_pid, other) in running.items():
                        os.close(pidfd)
                        other.close()
                    conn.close()
                    return request, fds
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                running[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "child")
                try:
                    conn.sendall(b"%d\n" % pid)
                except OSError:
                    # Whoever asked is gone already (the child can write before this, and be answered):
                    # nobody can wait for the child or stop it, so it goes now; it is reaped as it ends.
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    continue
                if request.get("tied"):
                    selector.register(conn, selectors.EVENT_READ, pidfd)
            elif isinstance(key.data, int):
                # A tied request's client went away (it sends nothing more): its child goes with it.
                if running.get(key.data, (0, None))[1] is not key.fileobj:
                    continue  # its child was reaped earlier in this round
                selector.unregister(key.fileobj)
                with contextlib.suppress(OSError):  # it may have ended meanwhile
                    signal.pidfd_send_signal(key.data, signal.SIGKILL)
            else:
                pid, conn = running.pop(key.fd)
                selector.unregister(key.fd)
                with contextlib.suppress(KeyError):  # tied: its client's end is no longer watched
                    selector.unregister(conn)
                os.close(key.fd)
                _pid, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):  # the test may have stopped listening
                    conn.sendall(b"%d\n" % status)
                conn.close()


def become(request: dict[str, Any], fds: list[int]) -> str:
    """In a fresh fork: take the request's streams, folder, environment and arguments; the script to run."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script = request["args"][1]
    sys.argv = request["args"][1:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    return script


# --- the test process's side ------------------------------------------------------------------------


class WarmProcess:
    """The warm process of this test process, started on first use."""

    _lock = threading.Lock()
    _instance: WarmProcess | None = None

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="salesflow-warm-")
        self.path = os.path.join(self.folder, "socket")
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "tests.warm_children", self.path],
            cwd=PROJECT_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        if not select.select([self.process.stdout], [], [], 60)[0] or self.process.stdout.readline() != READY:
            self.process.kill()
            raise RuntimeError("the warm process did not start")
        atexit.register(self.stop)

    @classmethod
    def get(cls) -> WarmProcess | None:
        with cls._lock:
            if cls._instance is None or cls._instance.process.poll() is not None:
                try:
                    cls._instance = cls()
                except (OSError, RuntimeError) as exc:
                    warnings.warn(f"manage.py children start cold: {exc}", stacklevel=2)
                    return None
            return cls._instance

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()  # EOF: it ends, its children carry on until they end
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        with contextlib.suppress(OSError):
            os.rmdir(self.folder)


class WarmPopen(subprocess.Popen):  # type: ignore[type-arg]
    """``subprocess.Popen`` of ``[python, manage.py, ...]`` whose child is forked by the warm process."""

    def _execute_child(  # type: ignore[override]
        self,
        args: list[str],
        executable: Any,
        preexec_fn: Any,
        close_fds: bool,
        pass_fds: Any,
        cwd: Any,
        env: Any,
        startupinfo: Any,
        creationflags: int,
        shell: bool,
        p2cread: int,
        p2cwrite: int,
        c2pread: int,
        c2pwrite: int,
        errread: int,
        errwrite: int,
        *_rest: Any,
    ) -> None:
        warm = WarmProcess.get()
        assert warm is not None  # popen() starts cold without one
        streams = [p2cread, c2pwrite, errwrite]
        fds = [fd if fd != -1 else default for fd, default in zip(streams, (0, 1, 2), strict=True)]
        request = {
            "args": [os.fsdecode(arg) for arg in args],
            "env": {os.fsdecode(k): os.fsdecode(v) for k, v in (os.environ if env is None else env).items()},
            "cwd": os.fsdecode(cwd) if cwd is not None else os.getcwd(),
        }
        payload = json.dumps(request).encode() + b"\n"
        self._status = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._status_buffer = b""
        try:
            self._status.connect(warm.path)
            sent = socket.send_fds(self._status, [payload], fds)
            self._status.sendall(payload[sent:])
            self.pid = int(self._read_line())
            self._child_created = True
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _read_line(self) -> bytes:
        while b"\n" not in self._status_buffer:
            more = self._status.recv(64)
            if not more:
                raise ChildProcessError("the warm process went away")
            self._status_buffer += more
        line, self._status_buffer = self._status_buffer.split(b"\n", 1)
        return line

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        waiting = wait_flags & os.WNOHANG and b"\n" not in self._status_buffer
        if waiting and not select.select([self._status], [], [], 0)[0]:
            return 0, 0
        try:
            status = int(self._read_line())
        except ChildProcessError:
            status = 255 << 8  # its status is lost: reported as exit code 255
        self._status.close()
        return self.pid, status

    def _internal_poll(self, _deadstate: Any = None, **_unused: Any) -> int | None:
        if self.returncode is None and self._waitpid_lock.acquire(False):
            try:
                if self.returncode is None:
                    pid, status = self._try_wait(os.WNOHANG)
                    if pid == self.pid:
                        self._handle_exitstatus(status)
            finally:
                self._waitpid_lock.release()
        return self.returncode


def socket_path() -> str | None:
    """Where this test process's warm process takes requests (tests/warm_client.py's), if it has one."""
    warm = WarmProcess.get() if enabled() else None
    return warm.path if warm is not None else None


def popen(args: list[str], **kwargs: Any) -> subprocess.Popen:  # type: ignore[type-arg]
    """``subprocess.Popen(args, **kwargs)``, forked warm when ``args`` is this interpreter and a script."""
    if enabled() and len(args) >= 2 and args[0] == sys.executable and WarmProcess.get() is not None:
        return WarmPopen(args, **kwargs)
    return subprocess.Popen(args, **kwargs)


def run(args: list[str], *, timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """``subprocess.run(args, capture_output=True, ...)`` through :func:`popen`."""
    with popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


if __name__ == "__main__":
    preload()
    request, fds = serve(sys.argv[1])
    runpy.run_path(become(request, fds), run_name="__main__")
