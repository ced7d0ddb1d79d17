"""Run skill code in a subprocess: its own process group, its own working directory.

`run_python()` is a coroutine so the server keeps answering other calls while a skill
runs. A timeout, or the caller's cancellation, kills the run's whole process group, so
grandchildren die with the child. A skill that crashes or times out is a result, not
an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass

# How long to keep reading a killed run's pipes: a grandchild that left the process
# group may hold them open forever.
_DRAIN_AFTER_KILL_S = 0.5


@dataclass
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    duration_ms: float
    cancelled: bool = False


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _read_all(stream: asyncio.StreamReader | None, sink: bytearray) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        sink.extend(chunk)


async def run_python(
    code: str,
    params_json: str,
    *,
    env: Mapping[str, str],
    timeout_s: float,
    python: str = sys.executable,
) -> ExecResult:
    """Run `code` with `python` in a fresh directory; `params_json` arrives as SELFMCP_PARAMS."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="selfmcp-run-") as workdir:
        script = os.path.join(workdir, "skill.py")
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(code)
        child_env = {**env, "SELFMCP_PARAMS": params_json, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            python, script,
            cwd=workdir, env=child_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        out, err = bytearray(), bytearray()
        readers = asyncio.gather(_read_all(proc.stdout, out), _read_all(proc.stderr, err))
        timed_out = False
        try:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), timeout_s)
            except TimeoutError:
                timed_out = True
            # The child is done (or timed out): end anything it left behind in its group.
            _kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(readers), _DRAIN_AFTER_KILL_S)
        except BaseException:  # cancelled by the client: take the whole run down with us
            _kill_group(proc.pid)
            raise
        finally:
            readers.cancel()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(proc.wait(), 2)
        return ExecResult(
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            exit_code=proc.returncode,
            timed_out=timed_out,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
