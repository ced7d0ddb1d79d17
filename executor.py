"""Run skill code in a subprocess: its own working directory, process group, limits and sandbox.

`Runner.run()` is a coroutine, so the server keeps answering other calls while a skill
runs. Each run gets:

- a fresh working directory (also its TMPDIR), removed afterwards;
- its own session and process group, and a token (SELFMCP_RUN_ID) in its environment;
- resource limits set by a short prelude in the skill's own interpreter before the
  skill's code runs (address space, CPU time, file size, no core files), so no
  `preexec_fn` runs in the server;
- at most `max_output_bytes` kept of each of stdout and stderr, while the bytes
  produced are still counted;
- optionally bubblewrap (`Sandbox.mode == "bwrap"`): a PID namespace, no capabilities,
  a read-only view of the system with only its working directory writable, and none of
  the paths in `Sandbox.hidden` (the database's and the server's directories).

When the run ends (exit, timeout or the caller's cancellation) every process it
started is killed: the process group, then any process found in /proc that belongs to
the run's session or carries its token, repeated until none is left. A run that
crashes, times out or is killed is a result, not an exception; cancellation is
re-raised after the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("selfmcp.executor")

SANDBOX_MODES = ("auto", "bwrap", "none")
RUN_ID_VAR = "SELFMCP_RUN_ID"
# How long to keep reading a finished run's pipes once its processes are killed.
_DRAIN_AFTER_KILL_S = 0.5
# How long the kill loop may go on before giving up on a process that will not die.
_KILL_DEADLINE_S = 2.0
_READ_CHUNK = 1 << 16
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_MERGED_USR_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# Runs in the skill's interpreter before its code: set the limits (soft = hard, so the
# skill cannot raise them back; never above a hard limit the server already has), then
# run the script as `python skill.py` would, in __main__. {load} puts the code object in
# `_c`: unmarshalled from what the server compiled when the interpreter is the server's
# own (a first compile() in a fresh interpreter costs ~2 ms), else compiled from source.
_PRELUDE = """\
import resource as _r, sys as _s
for _k, _v in ({limits}):
    _h = _r.getrlimit(_k)[1]
    _v = _v if _h == _r.RLIM_INFINITY else min(_v, _h)
    _r.setrlimit(_k, (_v, _v))
def _hook(t, v, tb, _print=_s.__excepthook__):
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
        tb = tb.tb_next  # drop this prelude's frame from the skill's tracebacks
    if isinstance(v, BaseException):
        v.__traceback__ = tb
    _print(t, v, tb)
_s.excepthook = _hook
_p = {script!r}
_s.argv[:] = [_p]
_s.path[0] = {script_dir!r}
__file__ = _p
{load}
del _r, _s, _k, _v, _h, _p, _f, _hook
exec(globals().pop("_c"))
"""
_LOAD_SOURCE = """with open(_p, "rb") as _f:
    _c = compile(_f.read(), _p, "exec")"""
_LOAD_MARSHAL = """import marshal
with open({code_path!r}, "rb") as _f:
    _c = marshal.loads(_f.read())
del marshal"""
# Code larger than this is compiled in a worker thread rather than on the event loop.
_INLINE_COMPILE_CHARS = 32 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits. 0 means "no limit" for the sizes."""

    memory_mb: int = 1024
    max_output_bytes: int = 1 << 20
    file_size_mb: int = 256
    cpu_s: int | None = None  # None: the run's timeout, rounded up, plus one second


@dataclass(frozen=True)
class Sandbox:
    """How runs are isolated: `mode` is "bwrap" or "none" (never "auto": see `resolve_sandbox`)."""

    mode: str = "none"
    network: bool = True
    bwrap: str | None = None
    hidden: tuple[str, ...] = ()
    # Why "auto" settled on "none" (for the start-up warning); empty otherwise.
    note: str = ""


@dataclass
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    duration_ms: float
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    queued_ms: float = 0.0
    sandbox: str = "none"


# --------------------------------------------------------------------------- sandbox

def probe_bwrap(bwrap: str, *, network: bool = True) -> str | None:
    """Try a minimal bubblewrap sandbox; None when it works, else why it does not."""
    true = shutil.which("true") or "/bin/true"
    cmd = [bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid",
           "--die-with-parent", "--cap-drop", "ALL"]
    if not network:
        cmd.append("--unshare-net")
    try:
        done = subprocess.run([*cmd, true], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} could not be run: {exc}"
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"{bwrap} failed ({err[-1] if err else f'exit {done.returncode}'})"
    return None


def resolve_sandbox(requested: str, *, network: bool = True, hidden: Iterable[str | os.PathLike[str]] = (),
                    bwrap: str | None = None) -> Sandbox:
    """Turn SELFMCP_SANDBOX's value into a `Sandbox`; raises RuntimeError when "bwrap" cannot work."""
    if requested not in SANDBOX_MODES:
        raise ValueError(f"Unknown sandbox mode {requested!r}; use one of {', '.join(SANDBOX_MODES)}.")
    hide = tuple(sorted({os.path.realpath(p) for p in hidden}))
    if requested == "none":
        return Sandbox("none", network=network, hidden=hide)
    path = bwrap or shutil.which("bwrap")
    problem = "bubblewrap (bwrap) is not installed" if path is None else probe_bwrap(path, network=network)
    if problem is None:
        return Sandbox("bwrap", network=network, bwrap=path, hidden=hide)
    if requested == "bwrap":
        raise RuntimeError(f"SELFMCP_SANDBOX=bwrap but {problem}.")
    return Sandbox("none", network=network, hidden=hide, note=problem)


def python_roots(python: str) -> list[str]:
    """Directories an interpreter needs to start: its prefix, and its venv's base prefix."""
    roots: list[str] = []
    exe = os.path.abspath(python)
    venv = os.path.dirname(os.path.dirname(exe))
    cfg = os.path.join(venv, "pyvenv.cfg")
    if os.path.isfile(cfg):
        roots.append(venv)
        with open(cfg, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition("=")
                if key.strip() == "home" and value.strip():
                    roots.append(os.path.dirname(os.path.realpath(value.strip())))
    roots.append(os.path.dirname(os.path.dirname(os.path.realpath(exe))))
    if os.path.realpath(exe) == os.path.realpath(sys.executable):
        roots += [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    return roots


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def bwrap_workdir(workdir: str) -> list[str]:
    return ["--bind", workdir, workdir, "--proc", "/proc", "--dev", "/dev", "--chdir", workdir,
            "--remount-ro", "/"]


def bwrap_mounts(sandbox: Sandbox, *, python: str, read_only: Sequence[str] = ()) -> list[str]:
    """The part of the bwrap command that does not depend on the run's working directory."""
    assert sandbox.bwrap is not None
    cmd = [sandbox.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--cap-drop", "ALL"]
    if not sandbox.network:
        cmd.append("--unshare-net")
    system = ["/usr", "/etc"]
    for top in _MERGED_USR_DIRS:
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            system.append(top)
    resolv = os.path.realpath("/etc/resolv.conf")
    if not _is_within(resolv, "/etc") and os.path.exists(resolv):
        system.append(resolv)  # e.g. systemd-resolved's file under /run
    for path in system:
        cmd += ["--ro-bind", path, path]
    # Hide what must stay invisible where it lies inside something bound above.
    for path in sandbox.hidden:
        # (Never a parent of a system directory: hiding /usr would hide the interpreter.)
        if any(_is_within(path, s) for s in system) and not any(_is_within(s, path) for s in system):
            cmd += ["--tmpfs", path, "--remount-ro", path]
    # Each path at its real location and, when a symlink leads there, where the argv names it.
    binds: dict[str, str] = {}
    for path in [*python_roots(python), *read_only]:
        if not path or not os.path.exists(path):
            continue
        real = os.path.realpath(path)
        for dest in {real, os.path.abspath(path)}:
            if not any(_is_within(dest, s) for s in system):
                binds[dest] = real
    # Parents before children, so a nested bind lands on top of its parent's.
    for dest in sorted(binds, key=len):
        cmd += ["--ro-bind", binds[dest], dest]
    return cmd


# ---------------------------------------------------------------------- process control

def _boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc/<pid>/stat uses for start times."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _CLK_TCK)


def _last_pid() -> int | None:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def find_run_processes(session: int, token: bytes, since_ticks: int, *,
                       pid_range: tuple[int, int] | None = None) -> list[int]:
    """Live processes that belong to a run: in its session or process group, or carrying its token.

    The token check reads /proc/<pid>/environ only of processes started since the run
    began. With `pid_range` only those pids are looked at (a cheap pass for a run that
    ended by itself; pids are handed out in increasing order).
    """
    me = os.getpid()
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me or (pid_range is not None and not pid_range[0] <= pid <= pid_range[1]):
            continue
        stat = _read_proc(name, "stat")
        if stat is None:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            continue
        if int(fields[2]) == session or int(fields[3]) == session:
            found.append(pid)
            continue
        if int(fields[19]) + 1 < since_ticks:
            continue
        environ = _read_proc(name, "environ")
        if environ is not None and token in environ:
            found.append(pid)
    return found


def _read_proc(pid: str, entry: str) -> bytes | None:
    """/proc/<pid>/<entry>, or None when the process is gone or not ours to read."""
    try:
        with open(f"/proc/{pid}/{entry}", "rb") as fh:
            return fh.read()
    except OSError:
        return None


def kill_run(session: int, token: bytes, since_ticks: int, *, thorough: bool,
             deadline_s: float = _KILL_DEADLINE_S) -> int:
    """SIGKILL every process of a run until none is left; return how many were signalled.

    `thorough` looks at every process in /proc; otherwise only at the pids handed out
    since the run's first process (enough for a run that ended by itself). Synchronous
    on purpose: it must also complete when the caller is being cancelled.
    """
    signalled = 0
    end = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGKILL)
        pid_range = None
        if not thorough:
            last = _last_pid()
            if last == session:  # no process was started after the run's first: nothing can be left
                return signalled
            if last is not None and last > session:  # else the pid counter wrapped: look everywhere
                pid_range = (session, last)
        strays = find_run_processes(session, token, since_ticks, pid_range=pid_range)
        if not strays:
            return signalled
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                signalled += 1
        if time.monotonic() > end:
            log.warning("processes of a run survived SIGKILL for %.1f s: %s", deadline_s, strays[:20])
            return signalled
        time.sleep(0.001)


class _Capture:
    """One output stream: the first `cap` bytes kept, every byte counted."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.kept)

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")


class _Watch:
    """Follows one child from the event loop: its output as it arrives, its exit, its pipes closing.

    The exit is seen through a pidfd (no thread per child, unlike asyncio's default child
    watcher in Python 3.11); a worker thread waits instead where pidfds are missing.
    """

    def __init__(self, proc: subprocess.Popen[bytes], cap: int, loop: asyncio.AbstractEventLoop) -> None:
        self.proc = proc
        self.loop = loop
        self.stdout = _Capture(cap)
        self.stderr = _Capture(cap)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._fds: list[int] = []
        for stream, capture in ((proc.stdout, self.stdout), (proc.stderr, self.stderr)):
            assert stream is not None
            fd = stream.fileno()
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._read, fd, capture)
            self._fds.append(fd)
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            loop.run_in_executor(None, proc.wait).add_done_callback(lambda _: self._set(self.exited))
        else:
            loop.add_reader(self._pidfd, self._poll)

    def _read(self, fd: int, capture: _Capture) -> None:
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            capture.add(data)
            return
        self.loop.remove_reader(fd)
        self._fds.remove(fd)
        if not self._fds:
            self._set(self.closed)

    def _poll(self) -> None:
        if self.proc.poll() is not None:
            self._close_pidfd()
            self._set(self.exited)

    @staticmethod
    def _set(future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close(self) -> None:
        """Stop watching; reap the child (in a worker thread if it has not exited yet)."""
        for fd in self._fds:
            self.loop.remove_reader(fd)
        self._fds.clear()
        self._close_pidfd()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self.proc.poll() is None:
            self.loop.run_in_executor(None, self.proc.wait)


def _rlimits(limits: Limits, timeout_s: float) -> str:
    pairs = []
    if limits.memory_mb > 0:
        pairs.append(f"(_r.RLIMIT_AS, {limits.memory_mb << 20})")
    cpu = limits.cpu_s if limits.cpu_s is not None else int(timeout_s + 0.999) + 1
    if cpu > 0:
        pairs.append(f"(_r.RLIMIT_CPU, {cpu})")
    if limits.file_size_mb > 0:
        pairs.append(f"(_r.RLIMIT_FSIZE, {limits.file_size_mb << 20})")
    pairs.append("(_r.RLIMIT_CORE, 0)")
    return ", ".join(pairs) + ","


# ------------------------------------------------------------------------------ runner

class Runner:
    """Runs skills with the given limits and sandbox, at most `concurrency` at a time."""

    def __init__(self, *, limits: Limits | None = None, sandbox: Sandbox | None = None,
                 concurrency: int = 4, tmp_root: str | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")
        self.limits = limits or Limits()
        self.sandbox = sandbox or Sandbox()
        self.concurrency = concurrency
        self.tmp_root = tmp_root
        self._slots = asyncio.Semaphore(concurrency)
        # Per interpreter (and extra paths): the answers only change when files are replaced.
        self._same_interpreter: dict[str, bool] = {}
        self._mounts: dict[tuple[str, tuple[str, ...]], list[str]] = {}

    async def run(self, code: str, params_json: str, *, env: Mapping[str, str], timeout_s: float,
                  python: str = sys.executable, read_only: Sequence[str] = (),
                  files: Mapping[str, bytes] | None = None, script: str = "skill.py") -> ExecResult:
        """Run `code` with `python`; `params_json` arrives as SELFMCP_PARAMS.

        Waiting for a free slot counts against `timeout_s`. `read_only` names extra
        paths the sandbox shows (a dependency environment). `files` (relative path ->
        bytes, already checked) are written into the working directory first, and `code`
        is run as `script` there, with the script's folder first on sys.path.
        """
        python = os.path.abspath(python)  # "/a/../venv/bin/python" would need /a inside the sandbox
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            waited = round((time.perf_counter() - started) * 1000, 1)
            return ExecResult("", "", None, True, waited, queued_ms=waited, sandbox=self.sandbox.mode)
        try:
            queued_ms = round((time.perf_counter() - started) * 1000, 1)
            result = await self._run(code, params_json, env=env, deadline=deadline, timeout_s=timeout_s,
                                     python=python, read_only=read_only, files=files or {}, script=script)
        finally:
            self._slots.release()
        result.queued_ms = queued_ms
        result.duration_ms = round((time.perf_counter() - started) * 1000, 1)
        return result

    async def _run(self, code: str, params_json: str, *, env: Mapping[str, str], deadline: float,
                   timeout_s: float, python: str, read_only: Sequence[str], files: Mapping[str, bytes],
                   script: str) -> ExecResult:
        workdir = tempfile.mkdtemp(prefix="selfmcp-run-", dir=self.tmp_root)
        try:
            if files:
                await asyncio.to_thread(write_files, workdir, files)
            return await self._run_in(workdir, code, params_json, env=env, deadline=deadline,
                                      timeout_s=timeout_s, python=python, read_only=read_only, script=script)
        finally:
            # Every process of the run is dead: nothing can write there any more. Removing
            # it in a worker thread keeps the directory operations out of the reply's path.
            asyncio.get_running_loop().run_in_executor(None, _remove_tree, workdir)

    async def _run_in(self, workdir: str, code: str, params_json: str, *, env: Mapping[str, str],
                      deadline: float, timeout_s: float, python: str, read_only: Sequence[str],
                      script: str = "skill.py") -> ExecResult:
        script = os.path.join(workdir, script)
        os.makedirs(os.path.dirname(script), exist_ok=True)
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(code)
        load = _LOAD_SOURCE
        same = self._same_interpreter.get(python)
        if same is None:
            same = self._same_interpreter[python] = _same_interpreter(python)
        if same:
            compiled = (_marshal_code(code, script) if len(code) <= _INLINE_COMPILE_CHARS
                        else await asyncio.to_thread(_marshal_code, code, script))
            if compiled is not None:
                code_path = os.path.join(workdir, ".skill.code")
                with open(code_path, "wb") as fh:
                    fh.write(compiled)
                load = _LOAD_MARSHAL.format(code_path=code_path)
        token = secrets.token_hex(12)
        child_env = {**env, "SELFMCP_PARAMS": params_json, "PYTHONUNBUFFERED": "1", RUN_ID_VAR: token,
                     "TMPDIR": workdir, "TMP": workdir, "TEMP": workdir}
        prelude = _PRELUDE.format(limits=_rlimits(self.limits, timeout_s), script=script,
                                  script_dir=os.path.dirname(script), load=load)
        argv = [python, "-c", prelude]
        if self.sandbox.mode == "bwrap":
            child_env["HOME"] = workdir  # the real home is not visible (or writable) in the sandbox
            key = (python, tuple(read_only))
            mounts = self._mounts.get(key)
            if mounts is None:
                mounts = self._mounts[key] = bwrap_mounts(self.sandbox, python=python, read_only=read_only)
            argv = [*mounts, *bwrap_workdir(workdir), *argv]
        since = _boot_ticks()
        loop = asyncio.get_running_loop()
        proc = subprocess.Popen(argv, cwd=workdir, env=child_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        watch = _Watch(proc, self.limits.max_output_bytes or sys.maxsize, loop)
        marker = f"{RUN_ID_VAR}={token}".encode()
        timed_out = False
        try:
            done, _ = await asyncio.wait([watch.exited], timeout=max(0.0, deadline - loop.time()))
            timed_out = not done
            # Whatever the skill left behind dies with it.
            kill_run(proc.pid, marker, since, thorough=timed_out)
            # Every writer is dead now: the pipes close as soon as their last bytes are read.
            await asyncio.wait([watch.exited, watch.closed], timeout=_DRAIN_AFTER_KILL_S)
        except BaseException:  # cancelled by the client: take the whole run down first
            kill_run(proc.pid, marker, since, thorough=True)
            raise
        finally:
            watch.close()
        out, err = watch.stdout, watch.stderr
        return ExecResult(
            stdout=out.text(), stderr=err.text(), exit_code=proc.returncode, timed_out=timed_out, duration_ms=0.0,
            stdout_bytes=out.total, stderr_bytes=err.total, stdout_truncated=out.truncated,
            stderr_truncated=err.truncated, sandbox=self.sandbox.mode,
        )


def write_files(workdir: str, files: Mapping[str, bytes]) -> None:
    """Write a skill's files (relative paths, checked by the caller) under `workdir`, byte for byte."""
    root = os.path.realpath(workdir)
    for path, data in files.items():
        target = os.path.realpath(os.path.join(root, path))
        if not target.startswith(root + os.sep):
            raise ValueError(f"file path {path!r} leaves the working directory")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(data)


def _same_interpreter(python: str) -> bool:
    """Whether `python` is the interpreter running the server (so its marshal format is ours)."""
    try:
        return os.path.realpath(python) == os.path.realpath(sys.executable) and bool(sys.executable)
    except OSError:
        return False


def _marshal_code(code: str, filename: str) -> bytes | None:
    """The compiled code, marshalled; None if it does not compile (the child then reports the error)."""
    try:
        return marshal.dumps(compile(code, filename, "exec", dont_inherit=True, optimize=0))
    except (SyntaxError, ValueError):
        return None


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, onerror=_log_rmtree_error)


def _log_rmtree_error(function: object, path: str, exc_info: object) -> None:
    log.warning("could not remove %s from a run's working directory", path)

