"""Sandboxes started ahead of their runs, so a run does not wait for its sandbox and interpreter to boot.

`WarmRunner` is an `executor.Runner` that, when a run ends, starts a sandbox in every free
slot exactly as a cold run's would be started (same interpreter, paths, environment, uid,
cgroup), running `_WARM_STUB`: it loads what the prelude needs and waits for the prelude on
stdin. The next run that fits takes it and sends its prelude; anything else discards it. Each
one serves one run and dies with it, so runs never share a process, directory or namespace.

On a 2-core machine the next sandbox's start (~15-20 ms of CPU under bubblewrap) competes
with the run in progress, so it happens in a worker thread (off the event loop) and, when the
server may raise priorities back (root), at nice 19 until its run begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import executor

log = logging.getLogger("selfmcp.warm")

# A sandbox started ahead of its run waits here for its prelude on stdin; stdin is then
# /dev/null as in any run. It leaves after {idle} s unused or when the server goes (stdin
# closes). _WARM_HEADER tells it what it learns only then: its directory (outside bubblewrap),
# temp dirs. Where other runs share its PID namespace it waits not dumpable (_HIDE: no process
# of its uid reads its environment) and its run makes it dumpable again (_SHOW); in a
# namespace of its own nothing else can see it, and ctypes (~3 ms) is not loaded.
_WARM_STUB = """\
import os as _o, select as _sl, resource as _rs, marshal as _ms  # the prelude's, loaded early
{hide}compile("", "", "exec")  # a first compile() costs ~1.5 ms: paid now, not by the run
if not _sl.select([0], [], [], {idle})[0]:
    _o._exit(0)
_b = []
while _x := _o.read(0, 1 << 16):
    _b.append(_x)
_x = _o.open("/dev/null", _o.O_RDONLY)
_o.dup2(_x, 0)
_o.close(_x)
if not _b:
    _o._exit(0)
_b = b"".join(_b)
del _o, _sl, _x, _rs, _ms
exec(compile(_b, "<string>", "exec"))
"""
_HIDE = "import ctypes as _ct\n_l = _ct.CDLL(None)\n_l.prctl(4, 0, 0, 0, 0)\n"
_SHOW = "_l.prctl(4, 1, 0, 0, 0)\ndel _ct, _l\n"
_WARM_HEADER = """\
{show}del _b
import os as _o
_o.environ.update({env!r})
_o.chdir({workdir!r})
del _o
"""
_WARM_IDLE_S = 60
# After the reply to the run that ended, not before it.
_START_DELAY_S = 0.005


@dataclass(frozen=True)
class _Warm:
    """A slot's sandbox started ahead of its run, for a run with this interpreter, paths and environment."""

    proc: subprocess.Popen[bytes]
    key: tuple[str, tuple[str, ...]]
    env: Mapping[str, str]
    token: str
    since: int
    workdir: str | None  # under bubblewrap its directory is mounted at start; else made with the run
    hidden: bool  # waits not dumpable
    temp_env: bool  # learns its TMPDIR with its run

    def header(self, workdir: str) -> str:
        env = {"TMPDIR": workdir, "TMP": workdir, "TEMP": workdir} if self.temp_env else {}
        return _WARM_HEADER.format(show=_SHOW if self.hidden else "", env=env, workdir=workdir)


class WarmRunner(executor.Runner):
    """An `executor.Runner` whose free slots each hold a sandbox started for the next run."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._warm: dict[int, _Warm] = {}
        self._starting: dict[int, asyncio.Future[_Warm | None]] = {}
        # Lowering a nice value again needs root: a server of another user starts them at the usual priority.
        self._renice = os.geteuid() == 0
        self._closed = False

    def _pick_slot(self) -> int:
        """A free slot: the one whose sandbox was started first (most likely ready), else one being started."""
        ready = [s for s in self._free if s in self._warm]
        starting = [s for s in self._free if s in self._starting]
        slot = min(ready, key=lambda s: self._warm[s].since) if ready else (starting or self._free)[-1]
        self._free.remove(slot)
        return slot

    async def _slot_ready(self, slot: int) -> None:
        starting = self._starting.get(slot)
        if starting is not None:  # its sandbox is being started: take it rather than start another
            with contextlib.suppress(Exception):
                await asyncio.shield(starting)

    def _after_run(self, python: str, read_only: tuple[str, ...], env: dict[str, str]) -> None:
        asyncio.get_running_loop().call_later(_START_DELAY_S, self._start_free, python, read_only, env)

    def _start_free(self, python: str, read_only: tuple[str, ...], env: dict[str, str]) -> None:
        """Start a sandbox in every free slot that has none, for runs like the one that just ended.

        Each start (a fork and exec, 1-5 ms) happens in a worker thread, off the event loop.
        """
        loop = asyncio.get_running_loop()
        for slot in list(self._free):
            if self._closed or slot in self._warm or slot in self._starting:
                continue
            try:
                future = loop.run_in_executor(None, self._start, slot, python, read_only, env)
            except RuntimeError:  # the loop's executor is shut down: the server is stopping
                return
            self._starting[slot] = future
            future.add_done_callback(lambda done, slot=slot: self._started(slot, done))

    def _start(self, slot: int, python: str, read_only: tuple[str, ...], env: dict[str, str]) -> _Warm | None:
        confinement = self.confinement
        workdir = self._new_workdir() if confinement.workdir_at_start else None
        hidden = not confinement.private_pids
        try:
            stub = _WARM_STUB.format(idle=_WARM_IDLE_S, hide=_HIDE if hidden else "")
            proc, token, since = self._spawn(stub, python=python, read_only=read_only, workdir=workdir, slot=slot,
                                             env=env, stdin=subprocess.PIPE)
        except OSError as exc:
            log.warning("could not start a sandbox ahead of a run: %s", exc)
            if workdir is not None:
                executor.remove_tree(workdir)
            return None
        if self._renice:  # the whole group (bubblewrap and what it starts) boots at the lowest priority
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PGRP, proc.pid, 19)
        return _Warm(proc, (python, read_only), env, token, since, workdir, hidden,
                     temp_env=not confinement.workdir_at_start)

    def _started(self, slot: int, done: asyncio.Future[_Warm | None]) -> None:
        self._starting.pop(slot, None)
        warm = None if done.cancelled() or done.exception() is not None else done.result()
        if warm is None:
            return
        if self._closed or slot in self._warm:
            _discard(warm)
        else:
            self._warm[slot] = warm

    def _take_warm(self, slot: int, python: str, read_only: Sequence[str], env: Mapping[str, str]) -> _Warm | None:
        """The slot's started sandbox when it fits this run (same interpreter, paths and environment)."""
        warm = self._warm.pop(slot, None)
        if warm is None:
            return None
        fresh = executor.boot_ticks() - warm.since < (_WARM_IDLE_S - 10) * executor.CLK_TCK  # won't leave by itself
        if warm.key == (python, tuple(read_only)) and warm.env == env and fresh and warm.proc.poll() is None:
            if self._renice:  # back to the priority of any run (all its processes are in its group)
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PGRP, warm.proc.pid, 0)
            return warm
        _discard(warm)
        return None

    def close(self) -> None:
        """Stop the sandboxes started ahead of runs (also done at exit)."""
        self._closed = True
        for slot, warm in list(self._warm.items()):
            del self._warm[slot]
            _discard(warm)


def _discard(warm: _Warm) -> None:
    # It never ran code: its processes are all in its session (the slot itself may be busy).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(warm.proc.pid, signal.SIGKILL)
    for stream in (warm.proc.stdin, warm.proc.stdout, warm.proc.stderr):
        if stream is not None:
            stream.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        warm.proc.wait(1)
    if warm.workdir is not None:
        executor.remove_tree(warm.workdir)
