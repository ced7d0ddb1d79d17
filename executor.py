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
- bubblewrap (`Sandbox.mode == "bwrap"`): a PID namespace, no capabilities, a read-only
  view of the system with only its working directory (a tmpfs of `Limits.workdir_mb`)
  writable, a read-only /dev and /proc/sys, /etc/shadow masked, and none of the paths in
  `Sandbox.hidden` (the database's and the server's directories). A root server runs each
  slot's skills as its own unprivileged uid (`confine.RunUids`, switched by setpriv);
- or, without bubblewrap, Landlock (`Sandbox.mode == "landlock"`): the same paths hidden,
  writes only in the run's directory, no signals to the server (see confine.py);
- where the system allows, a cgroup per slot bounding the run's TOTAL memory and process
  count; the child waits on a pipe until the server has moved it there.

The skill's code, params and compiled code are written to `<workdir>/.in`, read-only in
the sandbox; params longer than `_PARAMS_IN_ENV` reach SELFMCP_PARAMS through that file
(Linux caps one environment string at 128 KiB).

When the run ends (exit, timeout or the caller's cancellation) every process it
started is killed: the process group, then any process found in /proc that belongs to
the run's session or carries its token, repeated until none is left. A run that
crashes, times out or is killed is a result, not an exception; cancellation is
re-raised after the kill.
"""

from __future__ import annotations

import asyncio
import atexit
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import confine

log = logging.getLogger("selfmcp.executor")

# SELFMCP_PARAMS up to this many characters goes in the environment; longer ones by file.
_PARAMS_IN_ENV = 64 * 1024
RUN_ID_VAR = "SELFMCP_RUN_ID"
# How long to keep reading a finished run's pipes once its processes are killed.
_DRAIN_AFTER_KILL_S = 0.5
# How long the kill loop may go on before giving up on a process that will not die.
_KILL_DEADLINE_S = 2.0
_READ_CHUNK = 1 << 16
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Runs in the skill's interpreter before its code: set the limits (soft = hard, so the
# skill cannot raise them back; never above a hard limit the server already has), then
# run the script as `python skill.py` would, in __main__. {load} puts the code object in
# `_c`: unmarshalled from what the server compiled when the interpreter is the server's
# own (a first compile() in a fresh interpreter costs ~2 ms), else compiled from source.
_PRELUDE = """\
{landlock}import resource as _r, sys as _s
for _k, _v in ({limits}):
    _h = _r.getrlimit(_k)[1]
    _v = _v if _h == _r.RLIM_INFINITY else min(_v, _h)
    _r.setrlimit(_k, (_v, _v))
{files}def _hook(t, v, tb, _print=_s.__excepthook__):
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
{params}{site}del _r, _s, _k, _v, _h, _p, _f, _hook
exec(globals().pop("_c"))
"""
_LOAD_SOURCE = """with open({code_path!r}, "rb") as _f:
    _c = compile(_f.read(), _p, "exec")"""
_LOAD_MARSHAL = """import marshal
with open({code_path!r}, "rb") as _f:
    _c = marshal.loads(_f.read())
del marshal"""
# The run's first process joins its slot's cgroups ("0" moves the writer) and then becomes the
# run, so every process the run starts is born inside them: no race, no /proc scan.
_JOIN_CGROUPS = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo 0 > "$1/cgroup.procs" || exit 125; shift; n=$((n-1)); done; exec "$@"'
# A skill's files, written by the server under .in/files, become the run's working directory's own.
_FILES = """import os as _o, shutil as _sh
for _d, _ds, _fs in _o.walk({src!r}):
    _t = _o.path.join({dst!r}, _o.path.relpath(_d, {src!r}))
    _o.makedirs(_t, exist_ok=True)
    for _n in _fs:
        _sh.copyfile(_o.path.join(_d, _n), _o.path.join(_t, _n))
del _o, _sh, _d, _ds, _fs, _t
"""
_PARAMS_FILE = """import os as _o
with open({path!r}, encoding="utf-8") as _f:
    _o.environ["SELFMCP_PARAMS"] = _f.read()
del _o
"""
_SITE = "import site as _site\n_site.main()\ndel _site\n"
# Code larger than this is compiled in a worker thread rather than on the event loop.
_INLINE_COMPILE_CHARS = 32 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits. 0 means "no limit" for the sizes."""

    memory_mb: int = 1024
    max_output_bytes: int = 1 << 20
    file_size_mb: int = 256
    cpu_s: int | None = None  # None: the run's timeout, rounded up, plus one second
    processes: int = 128  # per run, in total (cgroup; else RLIMIT_NPROC of the slot's uid)
    workdir_mb: int = 256  # size of the working directory (a tmpfs under bubblewrap)


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


# The sandbox's pieces (bubblewrap argv, Landlock, uids, cgroups) live in confine.py.
make_not_dumpable = confine.make_not_dumpable
Sandbox, resolve_sandbox, probe_bwrap = confine.Sandbox, confine.resolve_sandbox, confine.probe_bwrap
python_roots, bwrap_mounts, bwrap_workdir = confine.python_roots, confine.bwrap_mounts, confine.bwrap_workdir
setpriv_argv, SANDBOX_MODES = confine.setpriv_argv, confine.SANDBOX_MODES


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


def _rlimits(limits: Limits, timeout_s: float, *, own_uid: bool) -> str:
    pairs = []
    if limits.memory_mb > 0:
        pairs.append(f"(_r.RLIMIT_AS, {limits.memory_mb << 20})")
    cpu = limits.cpu_s if limits.cpu_s is not None else int(timeout_s + 0.999) + 1
    if cpu > 0:
        pairs.append(f"(_r.RLIMIT_CPU, {cpu})")
    if limits.file_size_mb > 0:
        pairs.append(f"(_r.RLIMIT_FSIZE, {limits.file_size_mb << 20})")
    if own_uid and limits.processes > 0:  # the uid belongs to this run alone: a total process bound
        pairs.append(f"(_r.RLIMIT_NPROC, {limits.processes})")
    pairs.append("(_r.RLIMIT_CORE, 0)")
    return ", ".join(pairs) + ","


# ------------------------------------------------------------------------------ runner

class Runner:
    """Runs skills with the given limits and sandbox, at most `concurrency` at a time (one per slot)."""

    def __init__(self, *, limits: Limits | None = None, sandbox: Sandbox | None = None,
                 concurrency: int = 4, tmp_root: str | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")
        self.limits = limits or Limits()
        self.sandbox = sandbox or Sandbox()
        self.concurrency = concurrency
        # Every run's directory lives in a root of its own: Landlock lets runs write only there.
        self.tmp_root = tempfile.mkdtemp(prefix="selfmcp-runs-", dir=tmp_root)
        os.chmod(self.tmp_root, 0o711)
        self._free = list(range(concurrency))
        self._slots = asyncio.Semaphore(concurrency)
        self.uids = (confine.RunUids.probe(concurrency) if self.sandbox.mode == "bwrap" and self.sandbox.setpriv
                     else None)
        self.cgroups = confine.CgroupSlots.create(concurrency, memory_bytes=self.limits.memory_mb << 20,
                                                  pids=self.limits.processes or 1 << 22)
        if self.cgroups is not None:
            atexit.register(self.cgroups.close)
        atexit.register(_remove_tree, self.tmp_root)
        # Per interpreter (and extra paths): the answers only change when files are replaced.
        self._same_interpreter: dict[str, bool] = {}
        self._mounts: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self._rulesets: dict[tuple[str, tuple[str, ...]], int] = {}

    def describe(self) -> dict[str, object]:
        """Which protections and limits are in force, in words (for the start-up log and selfmcp_about)."""
        lim = self.limits
        isolation = {
            "bwrap": "bubblewrap: own PID namespace, read-only system view, database and server directory hidden, "
                     "read-only /dev and /proc/sys, /etc/shadow masked, no capabilities",
            "landlock": "Landlock (no bubblewrap): database and server directory unreadable, writes only in the "
                        "run's directory, no signals to the server; same PID namespace",
            "none": "NONE: skills can read everything this server's user can, including the database",
        }[self.sandbox.mode]
        uid = (f"each run as its own unprivileged uid ({self.uids.for_slot(0)}-{self.uids.for_slot(self.concurrency - 1)})"
               if self.uids else ("the server's uid (root, without capabilities)" if os.geteuid() == 0
                                  else "the server's uid"))
        if self.cgroups is not None:
            totals = self.cgroups.describe()
        elif self.uids is not None:
            totals = (f"{lim.processes} processes per run (RLIMIT_NPROC of the run's uid); memory only per process "
                      f"({lim.memory_mb} MiB each): no cgroup here")
        else:
            totals = (f"memory only per process ({lim.memory_mb} MiB each) and no total process bound: no cgroup "
                      "here")
        disk = (f"working directory a {lim.workdir_mb} MiB tmpfs" if self.sandbox.mode == "bwrap"
                else f"working directory on disk, files up to {lim.file_size_mb} MiB each, no total bound")
        return {"isolation": isolation, "uid": uid, "totals": totals, "disk": disk,
                "server_environ": "unreadable to runs (the server is not dumpable)"}

    async def run(self, code: str, params_json: str, *, env: Mapping[str, str], timeout_s: float,
                  python: str = sys.executable, read_only: Sequence[str] = (),
                  files: Mapping[str, bytes] | None = None, script: str = "skill.py") -> ExecResult:
        """Run `code` with `python`; `params_json` arrives as SELFMCP_PARAMS.

        Waiting for a free slot counts against `timeout_s`. `read_only` names extra
        paths the sandbox shows (a dependency environment).
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
        slot = self._free.pop()
        try:
            queued_ms = round((time.perf_counter() - started) * 1000, 1)
            result = await self._run(code, params_json, env=env, deadline=deadline, timeout_s=timeout_s,
                                     python=python, read_only=read_only, slot=slot, files=files or {},
                                     script=script)
        finally:
            self._free.append(slot)
            self._slots.release()
        result.queued_ms = queued_ms
        result.duration_ms = round((time.perf_counter() - started) * 1000, 1)
        return result

    async def _run(self, code: str, params_json: str, *, env: Mapping[str, str], deadline: float,
                   timeout_s: float, python: str, read_only: Sequence[str], slot: int,
                   files: Mapping[str, bytes], script: str) -> ExecResult:
        workdir = tempfile.mkdtemp(prefix="run-", dir=self.tmp_root)
        try:
            if files:
                # The skill's folder, its code at `script` included, under .in/files: the prelude copies
                # it into the working directory (in bwrap a fresh tmpfs the server cannot write into).
                await asyncio.to_thread(write_files, os.path.join(workdir, ".in", "files"),
                                        {script: code.encode("utf-8"), **files})
            return await self._run_in(workdir, code, params_json, env=env, deadline=deadline, timeout_s=timeout_s,
                                      python=python, read_only=read_only, slot=slot,
                                      script=script if files else None)
        finally:
            # Every process of the run is dead: nothing can write there any more. Removing
            # it in a worker thread keeps the directory operations out of the reply's path.
            asyncio.get_running_loop().run_in_executor(None, _remove_tree, workdir)

    def _ruleset(self, python: str, read_only: Sequence[str]) -> int:
        key = (python, tuple(read_only))
        fd = self._rulesets.get(key)
        if fd is None:
            fd = self._rulesets[key] = confine.landlock_ruleset(
                hidden=self.sandbox.hidden, read=[*python_roots(python), *read_only], write=[self.tmp_root],
                network=self.sandbox.network)
        return fd

    async def _run_in(self, workdir: str, code: str, params_json: str, *, env: Mapping[str, str],
                      deadline: float, timeout_s: float, python: str, read_only: Sequence[str],
                      slot: int, script: str | None) -> ExecResult:
        inputs = os.path.join(workdir, ".in")
        os.makedirs(inputs, 0o755, exist_ok=True)
        code_file = os.path.join(inputs, "skill.py")
        with open(code_file, "w", encoding="utf-8") as fh:
            fh.write(code)
        # Where the code says it lives (__file__, sys.path[0]): its own file, or its place in the skill's folder.
        files = ""
        if script is None:
            script = code_file
        else:
            files = _FILES.format(src=os.path.join(inputs, "files"), dst=workdir)
            script = os.path.join(workdir, script)
        load = _LOAD_SOURCE.format(code_path=code_file)
        same = self._same_interpreter.get(python)
        if same is None:
            same = self._same_interpreter[python] = _same_interpreter(python)
        if same:
            compiled = (_marshal_code(code, script) if len(code) <= _INLINE_COMPILE_CHARS
                        else await asyncio.to_thread(_marshal_code, code, script))
            if compiled is not None:
                code_path = os.path.join(inputs, ".skill.code")
                with open(code_path, "wb") as fh:
                    fh.write(compiled)
                load = _LOAD_MARSHAL.format(code_path=code_path)
        token = secrets.token_hex(12)
        child_env = {**env, "PYTHONUNBUFFERED": "1", RUN_ID_VAR: token, "TMPDIR": workdir, "TMP": workdir,
                     "TEMP": workdir}
        params = ""
        if len(params_json) <= _PARAMS_IN_ENV:
            child_env["SELFMCP_PARAMS"] = params_json
        else:
            params_path = os.path.join(inputs, "params.json")
            with open(params_path, "w", encoding="utf-8") as fh:
                fh.write(params_json)
            params = _PARAMS_FILE.format(path=params_path)
        mode = self.sandbox.mode
        uid = self.uids.for_slot(slot) if self.uids is not None else None
        pass_fds: list[int] = []
        landlock = ""
        if mode == "landlock":
            ruleset = self._ruleset(python, read_only)
            pass_fds.append(ruleset)
            landlock = confine.LANDLOCK_PRELUDE.format(fd=ruleset)
        prelude = _PRELUDE.format(
            landlock=landlock,
            limits=_rlimits(self.limits, timeout_s, own_uid=uid is not None), script=script,
            script_dir=workdir if not files else os.path.dirname(script), files=files,
            load=load, params=params, site=_SITE if mode == "landlock" else "")
        argv = [python, "-S", "-c", prelude] if mode == "landlock" else [python, "-c", prelude]
        if mode == "bwrap":
            child_env["HOME"] = workdir  # the real home is not visible (or writable) in the sandbox
            key = (python, tuple(read_only))
            mounts = self._mounts.get(key)
            if mounts is None:
                mounts = self._mounts[key] = bwrap_mounts(self.sandbox, python=python, read_only=read_only)
            drop = setpriv_argv(self.sandbox.setpriv, uid) if self.sandbox.setpriv and uid is not None else []
            argv = [*mounts, *bwrap_workdir(workdir, self.limits.workdir_mb), *drop, *argv]
        if self.cgroups is not None:
            dirs = self.cgroups.slots[slot]
            argv = ["/bin/sh", "-c", _JOIN_CGROUPS, "sh", str(len(dirs)), *dirs, *argv]
        since = _boot_ticks()
        loop = asyncio.get_running_loop()
        proc = subprocess.Popen(argv, cwd=workdir, env=child_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                pass_fds=pass_fds)
        watch = _Watch(proc, self.limits.max_output_bytes or sys.maxsize, loop)
        marker = f"{RUN_ID_VAR}={token}".encode()
        timed_out = False
        try:
            done, _ = await asyncio.wait([watch.exited], timeout=max(0.0, deadline - loop.time()))
            timed_out = not done
            # Whatever the skill left behind dies with it.
            self._kill(proc.pid, marker, since, slot, uid, thorough=timed_out)
            # Every writer is dead now: the pipes close as soon as their last bytes are read.
            await asyncio.wait([watch.exited, watch.closed], timeout=_DRAIN_AFTER_KILL_S)
        except BaseException:  # cancelled by the client: take the whole run down first
            self._kill(proc.pid, marker, since, slot, uid, thorough=True)
            raise
        finally:
            watch.close()
        out, err = watch.stdout, watch.stderr
        return ExecResult(
            stdout=out.text(), stderr=err.text(), exit_code=proc.returncode, timed_out=timed_out, duration_ms=0.0,
            stdout_bytes=out.total, stderr_bytes=err.total, stdout_truncated=out.truncated,
            stderr_truncated=err.truncated, sandbox=self.sandbox.mode,
        )

    def _kill(self, session: int, marker: bytes, since: int, slot: int, uid: int | None, *, thorough: bool) -> None:
        kill_run(session, marker, since, thorough=thorough)
        if self.cgroups is not None:
            self.cgroups.kill(slot)
        elif uid is not None and thorough:
            for pid in confine.processes_of_uid(uid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


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



def write_files(root: str, files: Mapping[str, bytes]) -> None:
    """Write a skill's files (relative paths, checked by the caller) under `root`, byte for byte."""
    os.makedirs(root, 0o755, exist_ok=True)
    real = os.path.realpath(root)
    for path, data in files.items():
        target = os.path.realpath(os.path.join(real, path))
        if not target.startswith(real + os.sep):
            raise ValueError(f"file path {path!r} leaves the working directory")
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(data)
