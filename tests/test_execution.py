"""skill_execute you can trust: containment, dependencies, secrets, sandbox, params, history.

Containment and dependency tests drive the real server.py over stdio with the SDK's client;
the others use the in-process client (`Client(server)`). "No process of the run is left" is
checked by scanning /proc for a marker that only the run's processes carry (in their
SELFMCP_PARAMS, which every process of the run inherits). Sandbox tests need a working
bubblewrap (`apt-get install bubblewrap`) and are skipped, with the reason, without one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import socket
import sqlite3
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from selfmcp import confine
import skills
from conftest import assert_error
from embeddings import HashEmbedder
from selfmcp import depenv, redact
from server import ConfigError, Settings, create_server

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SECRET_NAME, SECRET = "FAKE_SERVICE_API_KEY", "sk-live-0123456789"
REDACTED = f"[REDACTED:{SECRET_NAME}]"
CAP = 1 << 20  # SELFMCP_EXEC_MAX_OUTPUT's default

_SANDBOX = confine.resolve_sandbox("auto")
needs_bwrap = pytest.mark.skipif(_SANDBOX.mode != "bwrap",
                                 reason=f"bubblewrap cannot run here: {_SANDBOX.note}")


# ------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture
def marker() -> str:
    return f"selfmcp-test-{secrets.token_hex(8)}"


def run_processes(marker: str) -> list[int]:
    """Live processes whose command line or environment holds `marker`."""
    needle, me, found = marker.encode(), os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
            if stat[stat.rindex(b")") + 2:].split()[0] in (b"Z", b"X"):
                continue
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{name}/environ", "rb") as fh:
                environ = fh.read()
        except (OSError, ValueError):
            continue
        if needle in cmdline or needle in environ:
            found.append(int(name))
    return found


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Poll `condition` until it holds; return the seconds it took (fails after `timeout_s`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await anyio.sleep(0.01)
    return time.monotonic() - started


def body_of(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def create(client: Client, name: str, body: str, **fields: Any) -> int:
    result = await client.call_tool("skill_create", {"name": name, "description": f"Test skill {name}.",
                                                     "body": body, **fields})
    return body_of(result)["id"]


async def execute(client: Client, skill_id: int, params: dict[str, Any] | None = None, timeout: float = 30,
                  **kwargs: Any) -> Any:
    return await client.call_tool("skill_execute", {"skill_id": skill_id, "params": params or {},
                                                    "timeout": timeout}, **kwargs)


async def assert_answers_at_once(client: Client) -> None:
    started = time.monotonic()
    body_of(await client.call_tool("skill_list_summary", {"limit": 5}))
    assert time.monotonic() - started < 1.0


def stdio_server(tmp: Path, **env: str) -> Client:
    base = {"SELFMCP_TRANSPORT": "stdio", "SELFMCP_DB_PATH": str(tmp / "skills.db"),
            "SELFMCP_ENV_DIR": str(tmp / "envs"), "SELFMCP_LOG_LEVEL": "WARNING",
            SECRET_NAME: SECRET, "PATH": os.environ["PATH"]}
    return Client(StdioServerParameters(command=sys.executable, args=["server.py"], env={**base, **env},
                                        cwd=str(ROOT)))


def in_process(tmp: Path, *, environ: dict[str, str] | None = None, **execution: Any) -> Client:
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp), SECRET_NAME: SECRET, **(environ or {})}
    return Client(create_server(Settings(db_path=tmp / "skills.db", embedder=HashEmbedder(), environ=environ,
                                         execution=skills.ExecutionConfig(**execution))), raise_exceptions=True)


# ------------------------------------------------------------------- containment (stdio)

SPAWNER = '''\
import json, os, subprocess, sys, time
marker = json.loads(os.environ["SELFMCP_PARAMS"])["marker"]
sleeper = [sys.executable, "-c", "import time; time.sleep(600)", marker]
subprocess.Popen(sleeper)                           # a grandchild in the run's process group
subprocess.Popen(sleeper, start_new_session=True)   # one in a session of its own
if os.fork() == 0:                                  # and a daemon: double fork, new session
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, sleeper)
    os._exit(0)
print("started", flush=True)
'''

FORK_BOMB = '''\
import os, time
def tree(depth):
    for _ in range(6):
        if os.fork() == 0:
            if depth:
                tree(depth - 1)
            if depth == 1:
                os.setsid()
            time.sleep(600)
            os._exit(0)
tree(2)  # 6 + 36 + 216 processes
print("forked", flush=True)
time.sleep(600)
'''


@pytest.fixture(scope="module", params=["none", pytest.param("bwrap", marks=needs_bwrap)])
async def contained(request, tmp_path_factory) -> AsyncIterator[Client]:
    """A real server over stdio, per sandbox mode, with a secret in its environment."""
    async with stdio_server(tmp_path_factory.mktemp(f"contain-{request.param}"),
                            SELFMCP_SANDBOX=request.param) as client:
        yield client


async def test_a_grandchild_left_running_is_killed_when_the_run_times_out(contained, marker):
    sid = await create(contained, f"grandchildren_{marker[-6:]}", SPAWNER + "while True:\n    pass\n")
    out = body_of(await execute(contained, sid, {"marker": marker}, timeout=1))
    assert out["timed_out"] is True and out["stdout"] == "started\n"
    assert run_processes(marker) == []
    await assert_answers_at_once(contained)


async def test_grandchildren_of_a_run_that_exits_do_not_outlive_it(contained, marker):
    sid = await create(contained, f"daemons_{marker[-6:]}", SPAWNER)
    out = body_of(await execute(contained, sid, {"marker": marker}))
    assert out["exit_code"] == 0 and out["timed_out"] is False
    assert run_processes(marker) == []


async def test_a_fork_bomb_is_contained(contained, marker):
    sid = await create(contained, f"fork_bomb_{marker[-6:]}", FORK_BOMB)
    out = body_of(await execute(contained, sid, {"marker": marker}, timeout=4))
    assert out["timed_out"] is True
    assert out["stdout"] == "forked\n", out["stderr"][-2000:]  # all 258 processes were there
    assert run_processes(marker) == []
    await assert_answers_at_once(contained)


async def test_a_4_gib_allocation_fails_inside_the_run(contained, marker):
    sid = await create(contained, f"memory_hog_{marker[-6:]}", "data = bytearray(4 << 30)\nprint(len(data))\n")
    out = body_of(await execute(contained, sid, {"marker": marker}))
    assert out["exit_code"] not in (0, None) and out["timed_out"] is False
    assert "MemoryError" in out["stderr"]
    assert run_processes(marker) == []
    await assert_answers_at_once(contained)


async def test_50_mib_of_output_is_cut_to_the_cap_and_counted(contained, marker):
    sid = await create(contained, f"chatty_{marker[-6:]}",
                       'import sys\nfor _ in range(50):\n    sys.stdout.write("x" * (1 << 20))\n'
                       'sys.stderr.write("done")\n')
    out = body_of(await execute(contained, sid, {"marker": marker}))
    assert out["exit_code"] == 0
    assert out["stdout_bytes"] == 50 << 20 and out["stdout_truncated"] is True
    assert len(out["stdout"]) == CAP and set(out["stdout"]) == {"x"}
    assert out["stderr"] == "done" and out["stderr_truncated"] is False
    assert run_processes(marker) == []
    await assert_answers_at_once(contained)


async def test_a_skill_printing_forever_times_out_with_capped_output(contained, marker):
    sid = await create(contained, f"forever_{marker[-6:]}", 'while True:\n    print("y" * 1000)\n')
    out = body_of(await execute(contained, sid, {"marker": marker}, timeout=1))
    assert out["timed_out"] is True and out["stdout_truncated"] is True
    assert out["stdout_bytes"] > CAP and len(out["stdout"].encode()) <= CAP
    assert run_processes(marker) == []
    await assert_answers_at_once(contained)


async def test_an_endless_loop_times_out(contained, marker):
    sid = await create(contained, f"loop_{marker[-6:]}", "while True:\n    pass\n")
    started = time.monotonic()
    out = body_of(await execute(contained, sid, {"marker": marker}, timeout=1))
    assert out["timed_out"] is True and out["exit_code"] != 0
    assert time.monotonic() - started < 5
    assert run_processes(marker) == []
    await assert_answers_at_once(contained)


async def test_cancelling_a_run_kills_all_its_processes_within_a_second(contained, marker):
    sid = await create(contained, f"cancelled_{marker[-6:]}", SPAWNER + "time.sleep(600)\n")
    async with anyio.create_task_group() as tg:
        tg.start_soon(execute, contained, sid, {"marker": marker}, 120)
        # The three sleepers carry the marker in their argv (the run's own process may have got its
        # params after it started, in a sandbox started ahead of the run, so not in /proc/<pid>/environ).
        await wait_until(lambda: len(run_processes(marker)) >= 3, 30)
        tg.cancel_scope.cancel()
    assert await wait_until(lambda: run_processes(marker) == [], 5) < 1.0
    await assert_answers_at_once(contained)
    runs = body_of(await contained.call_tool("skill_get_detail", {"skill_id": sid}))["runs"]
    assert runs["count"] == 1 and runs["success_rate"] == 0


async def test_a_printed_secret_comes_back_redacted(contained):
    body = ('import os, sys\nkey = os.environ["FAKE_SERVICE_API_KEY"]\nprint("key:", key)\n'
            'print(key[:6] + "" + key[6:], file=sys.stderr)\nraise RuntimeError(f"bad key {key}")\n')
    sid = await create(contained, f"leaky_{secrets.token_hex(3)}", body)
    result = await execute(contained, sid)
    out = body_of(result)
    assert out["stdout"] == f"key: {REDACTED}\n"
    assert out["stderr"].count(REDACTED) == 2
    assert SECRET not in result.content[0].text and SECRET not in json.dumps(out)


# ------------------------------------------------------------------ dependencies (stdio)

def build_wheel(folder: Path, name: str, version: str, payload: str) -> Path:
    """A pure-Python wheel written by hand: no build backend, no network."""
    dist = f"{name}-{version}"
    files = {f"{name}/__init__.py": payload,
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: selfmcp-tests\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}.dist-info/RECORD"] = "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n"
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    build_wheel(folder, "selfmcp_testdep", "1.0", "VALUE = 42\n")
    build_wheel(folder, "selfmcp_testdep2", "2.0", "VALUE = 'two'\n")
    return folder


def offline_index(wheelhouse: Path, tmp: Path) -> dict[str, str]:
    """Installer settings for a find-links folder and no index (the pip spellings: uv gets them too)."""
    return {"PIP_FIND_LINKS": str(wheelhouse), "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull,
            "UV_NO_CONFIG": "1", "UV_CACHE_DIR": str(tmp / "uv-cache"), "UV_PYTHON_DOWNLOADS": "never"}


@pytest.fixture(scope="module")
async def installing(tmp_path_factory, wheelhouse) -> AsyncIterator[tuple[Client, Path]]:
    tmp = tmp_path_factory.mktemp("deps")
    async with stdio_server(tmp, **offline_index(wheelhouse, tmp)) as client:
        yield client, tmp / "envs"


async def test_a_dependency_is_installed_on_the_first_run_and_reused_after(installing):
    client, env_dir = installing
    sid = await create(client, "uses_testdep", "import selfmcp_testdep\nprint(selfmcp_testdep.VALUE)\n",
                       dependencies=["selfmcp_testdep==1.0"])
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    first = body_of(await execute(client, sid, progress_callback=on_progress))
    assert first["stdout"] == "42\n" and first["exit_code"] == 0
    assert first["environment"]["installed_now"] is True
    assert first["environment"]["requirements"] == ["selfmcp-testdep==1.0"]
    assert progress and [p[0] for p in progress] == sorted(p[0] for p in progress)
    ready = env_dir / first["environment"]["key"] / depenv.READY_FILE
    built_at = ready.stat().st_mtime_ns

    second = body_of(await execute(client, sid))
    assert second["stdout"] == "42\n" and second["environment"]["installed_now"] is False
    assert ready.stat().st_mtime_ns == built_at  # no installer touched the environment


async def test_two_first_runs_of_the_same_requirements_install_once(installing):
    client, _ = installing
    a = await create(client, "testdep2_a", "import selfmcp_testdep2\nprint(selfmcp_testdep2.VALUE)\n",
                     dependencies=["selfmcp_testdep2>=2"])
    b = await create(client, "testdep2_b", "import selfmcp_testdep2\nprint(selfmcp_testdep2.VALUE)\n",
                     dependencies=["SELFMCP-TESTDEP2 >= 2"])
    results: list[dict[str, Any]] = []

    async def run(skill_id: int) -> None:
        results.append(body_of(await execute(client, skill_id)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, a)
        tg.start_soon(run, b)
    assert [r["stdout"] for r in results] == ["two\n", "two\n"]
    assert sorted(r["environment"]["installed_now"] for r in results) == [False, True]
    assert results[0]["environment"]["key"] == results[1]["environment"]["key"]


@pytest.mark.parametrize("requirement", ["-e /", "--index-url https://example.com/simple", "file:/tmp/pkg",
                                         "git+https://example.com/pkg.git", "pkg @ https://example.com/p.whl",
                                         "./local/pkg", "requests; rm -rf /", ""])
async def test_a_requirement_that_is_not_a_package_is_refused_before_any_install(installing, requirement):
    client, env_dir = installing
    before = sorted(env_dir.glob("*")) if env_dir.exists() else []
    created = await client.call_tool("skill_create", {
        "name": f"bad_dep_{secrets.token_hex(3)}", "description": "Bad dependency.", "body": "print(1)",
        "dependencies": [requirement]})
    if created.is_error:  # refused when stored: as good as refused when run
        assert_error(created, "invalid_dependency")
        return
    assert_error(await execute(client, created.structured_content["id"]), "invalid_dependency")
    assert (sorted(env_dir.glob("*")) if env_dir.exists() else []) == before


async def test_an_unsatisfiable_requirement_reports_the_installer_and_leaves_nothing(installing):
    client, env_dir = installing
    sid = await create(client, "wants_missing_version", "print(1)\n", dependencies=["selfmcp-testdep==9.9"])
    error = assert_error(await execute(client, sid), "dependency_install_failed")
    assert error["installer_tail"] and any("9.9" in line for line in error["installer_tail"])
    key = depenv.env_key(["selfmcp-testdep==9.9"])
    assert not (env_dir / key).exists()


async def test_the_pip_fallback_builds_an_environment_without_uv(tmp_path, wheelhouse):
    cache = depenv.EnvCache(tmp_path / "envs", uv=None,
                            environ={"PATH": os.environ["PATH"], **offline_index(wheelhouse, tmp_path)})
    assert cache.installer == "pip"
    env = await cache.ensure(depenv.normalise_requirements(["selfmcp_testdep"]))
    assert env.built_now
    runner = confine.runner(confine.Sandbox("none"))
    out = await runner.run("import selfmcp_testdep\nprint(selfmcp_testdep.VALUE)", "{}",
                           env={"PATH": os.environ["PATH"]}, timeout_s=30, python=env.python)
    assert out.stdout == "42\n", out.stderr
    again = await cache.ensure(depenv.normalise_requirements(["SELFMCP-testdep"]))
    assert again.built_now is False and again.path == env.path


@pytest.mark.parametrize(("spellings", "same"), [
    ((["Requests>=2", "numpy"], ["numpy", "requests >= 2"]), True),
    ((["requests[Socks]>=2,<3"], ["requests[socks]<3,>=2"]), True),
    ((["requests>=2"], ["requests>=3"]), False),
])
def test_requirement_sets_are_keyed_by_their_normalised_form(spellings, same):
    keys = [depenv.env_key(depenv.normalise_requirements(s)) for s in spellings]
    assert (keys[0] == keys[1]) is same


# -------------------------------------------------------------------- secrets, environment

async def test_declared_environment_passes_a_secret_only_to_skills_that_name_it(tmp_path):
    body = 'import os\nprint(os.environ.get("FAKE_SERVICE_API_KEY"), "PATH" in os.environ)\n'
    async with in_process(tmp_path, skill_env="declared", sandbox="none") as client:
        plain = await create(client, "plain", body)
        named = await create(client, "named", body, auth_config={"type": "api_key", "env_var": SECRET_NAME})
        assert body_of(await execute(client, plain))["stdout"] == "None True\n"
        assert body_of(await execute(client, named))["stdout"] == f"{REDACTED} True\n"


async def test_inherited_environment_passes_every_variable(tmp_path):
    async with in_process(tmp_path, sandbox="none", environ={"SOME_SETTING": "on"}) as client:
        sid = await create(client, "env", 'import os\nprint(os.environ["SOME_SETTING"], os.environ[' + repr(
            SECRET_NAME) + '] == ' + repr(SECRET) + ')\n')
        assert body_of(await execute(client, sid))["stdout"] == "on True\n"


async def test_no_skill_ever_sees_the_servers_own_credentials(tmp_path):
    body = 'import os\nprint(os.environ.get("SELFMCP_AUTH_TOKEN"), os.environ.get("SELFMCP_OWNER_PASSWORD"))\n'
    server_secrets = {"SELFMCP_AUTH_TOKEN": "token-0123456789abcdef", "SELFMCP_OWNER_PASSWORD": "owner-pass-0123"}
    for mode in ("inherit", "declared"):
        async with in_process(tmp_path / mode, sandbox="none", skill_env=mode, environ=server_secrets) as client:
            sid = await create(client, "peek", body)
            # skill_create now refuses an auth_config naming a server-only variable; a row stored
            # before that rule is still run without it.
            with contextlib.closing(sqlite3.connect(tmp_path / mode / "skills.db")) as conn, conn:
                conn.execute("update skills set auth_config_json = ? where id = ?",
                             ('{"type": "api_key", "env_var": "SELFMCP_AUTH_TOKEN"}', sid))
            sid_plain = await create(client, "peek_plain", body)
            assert body_of(await execute(client, sid_plain))["stdout"] == "None None\n", mode
            assert body_of(await execute(client, sid))["stdout"] == "None None\n", mode  # even when named


def test_redacting_a_record_keeps_the_argument_shape_formatters_unpack():
    r = redact.Redactor([(SECRET_NAME, SECRET)])
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/x?k={SECRET}", "1.1", 200), None)
    redact.redact_record(record, r)
    client, method, path, version, status = record.args  # what uvicorn's AccessFormatter does
    assert status == 200 and SECRET not in path and REDACTED in record.getMessage()


def test_redaction_hides_longest_values_first_and_a_secret_cut_by_truncation():
    r = redact.Redactor([("SHORT_TOKEN", "abcdefgh"), ("LONG_TOKEN", "abcdefgh-12345678"), ("X_KEY", "tiny")])
    assert r.redact("a abcdefgh-12345678 b abcdefgh") == "a [REDACTED:LONG_TOKEN] b [REDACTED:SHORT_TOKEN]"
    assert r.redact("tiny") == "tiny"  # shorter than 8 characters: not treated as a secret
    assert r.redact("ends with abcdefgh-123", truncated=True) == "ends with [REDACTED:LONG_TOKEN]"
    assert redact.Redactor.from_environ({"PATH": "/usr/bin:/bin", "MY_API_KEY": "secret-value"}).names == [
        "MY_API_KEY"]


def test_redaction_finds_what_a_longest_first_alternation_finds():
    import random
    import re

    rng = random.Random(9)
    r = redact.Redactor([(f"K{i}_API_KEY", rng.randbytes(12).hex()) for i in range(12)]
                        + [("A_TOKEN", "abcdefgh"), ("B_TOKEN", "abcdefgh-12345678"), ("C_TOKEN", "abcdefgx")])
    values = sorted(r._names, key=lambda v: (-len(v), v))
    flat = re.compile("|".join(re.escape(v) for v in values))
    for _ in range(2000):
        parts = [v if (k := rng.random()) < 0.4 else v[:rng.randint(1, len(v))] if k < 0.7 else rng.randbytes(3).hex()
                 for v in rng.choices(values, k=rng.randint(1, 6))]
        text = "".join(parts)
        assert r.redact(text) == flat.sub(lambda m: f"[REDACTED:{r._names[m.group(0)]}]", text), text


@pytest.fixture
def log_output() -> Any:
    stream, previous = io.StringIO(), logging.getLogRecordFactory()
    logger = logging.getLogger("selfmcp.test-redaction")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)
    logging.setLogRecordFactory(previous)


def test_log_lines_are_redacted(log_output):
    logger, stream = log_output
    redact.install_log_redaction(redact.Redactor([(SECRET_NAME, SECRET)]))
    logger.warning("calling with %s", SECRET)
    try:
        raise ValueError(f"rejected {SECRET}")
    except ValueError:
        logger.exception("failed")
    text = stream.getvalue()
    assert SECRET not in text and text.count(REDACTED) == 2


# ------------------------------------------------------------------------------- sandbox

@needs_bwrap
async def test_a_sandboxed_skill_cannot_see_the_database_or_the_server(tmp_path):
    body = ("import json, os\n"
            f"db = {str(tmp_path / 'skills.db')!r}\n"
            "def readable(path):\n"
            "    try:\n        open(path, 'rb').read(1)\n        return True\n"
            "    except OSError:\n        return False\n"
            f"print(json.dumps([readable(db), os.path.exists(os.path.dirname(db)), "
            f"os.path.exists({str(ROOT / 'server.py')!r}), os.getpid()]))\n")
    async with in_process(tmp_path, sandbox="bwrap") as client:
        out = body_of(await execute(client, await create(client, "peek", body)))
    assert out["sandbox"] == "bwrap"
    assert json.loads(out["stdout"])[:3] == [False, False, False]
    assert json.loads(out["stdout"])[3] < 10  # its own PID namespace


@needs_bwrap
async def test_a_sandboxed_skill_can_write_only_in_its_working_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    targets = [str(outside / "x"), str(ROOT / "x-from-skill"), "/tmp/x-from-skill", "/etc/x-from-skill",
               os.path.expanduser("~/x-from-skill")]
    body = ("import json, os\nresults = {}\n"
            f"for path in {targets!r} + ['here.txt']:\n"
            "    try:\n        open(path, 'w').write('x')\n        results[path] = True\n"
            "    except OSError:\n        results[path] = False\n"
            "print(json.dumps(results))\n")
    async with in_process(tmp_path, sandbox="bwrap") as client:
        out = body_of(await execute(client, await create(client, "scribble", body)))
    results = json.loads(out["stdout"])
    assert results.pop("here.txt") is True
    assert not any(results.values()), results
    assert not any(os.path.exists(t) for t in targets)


@needs_bwrap
@pytest.mark.parametrize(("network", "reaches"), [(True, True), (False, False)])
async def test_sandbox_network_follows_selfmcp_sandbox_network(tmp_path, network, reaches):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        body = ("import socket\ntry:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n    print('reached')\n"
                "except OSError as exc:\n    print('blocked', exc)\n")
        async with in_process(tmp_path, sandbox="bwrap", sandbox_network=network) as client:
            out = body_of(await execute(client, await create(client, "dial", body)))
    assert out["stdout"].startswith("reached" if reaches else "blocked"), out


# ------------------------------------------------------------------------- params schema

CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
               "required": ["city"]}


@pytest.mark.parametrize("schema", [{"type": "nope"}, {"properties": {"city": {"minLength": -1}}}, [1]])
async def test_a_params_schema_that_is_not_json_schema_is_refused(tmp_path, schema):
    async with in_process(tmp_path, sandbox="none") as client:
        result = await client.call_tool("skill_create", {"name": "weather", "description": "Weather.",
                                                         "body": "print(1)", "params_schema": schema})
        assert result.is_error
        assert json.loads(result.content[0].text)["error"] in ("invalid_params_schema", "invalid_argument")


@pytest.mark.parametrize(("params", "path"), [({"days": 2}, "$.city"), ({"city": 5}, "$.city"),
                                              ({"city": "Oslo", "days": "two"}, "$.days")])
async def test_params_are_checked_against_the_schema_before_the_run(tmp_path, params, path):
    async with in_process(tmp_path, sandbox="none") as client:
        sid = await create(client, "weather", "import os\nprint(os.environ['SELFMCP_PARAMS'])\n",
                           params_schema=CITY_SCHEMA)
        detail = body_of(await client.call_tool("skill_get_detail", {"skill_id": sid}))
        assert detail["params_schema"] == CITY_SCHEMA
        error = assert_error(await execute(client, sid, params), "invalid_params")
        assert error["path"] == path
        after_refusal = body_of(await client.call_tool("skill_get_detail", {"skill_id": sid}))
        assert after_refusal["runs"]["count"] == 0  # a refused run is not recorded
        ok = body_of(await execute(client, sid, {"city": "Oslo"}))
        assert json.loads(ok["stdout"]) == {"city": "Oslo"}


async def test_an_invalid_params_message_does_not_echo_a_secret(tmp_path):
    async with in_process(tmp_path, sandbox="none") as client:
        sid = await create(client, "weather", "print(1)\n", params_schema=CITY_SCHEMA)
        result = await execute(client, sid, {"city": "Oslo", "days": SECRET})
        error = assert_error(result, "invalid_params")
        assert error["path"] == "$.days" and REDACTED in error["message"]
        assert SECRET not in result.content[0].text


# --------------------------------------------------------------------------- run history

async def test_run_statistics_count_successes_and_durations(tmp_path):
    async with in_process(tmp_path, sandbox="none") as client:
        sid = await create(client, "flaky", "import json, os, sys\n"
                                            "sys.exit(json.loads(os.environ['SELFMCP_PARAMS'])['code'])\n")
        for code in (0, 0, 3):
            await execute(client, sid, {"code": code})
        runs = body_of(await client.call_tool("skill_get_detail", {"skill_id": sid}))["runs"]
    assert runs["count"] == 3 and runs["success_rate"] == pytest.approx(2 / 3, abs=0.001)
    assert runs["last_exit_code"] == 3 and runs["last_run_at"] and runs["median_duration_ms"] > 0


def test_run_history_keeps_the_newest_hundred_per_skill(tmp_path):
    registry = skills.Registry(tmp_path / "skills.db", HashEmbedder())
    keep = registry.create("keep", "Kept.", "print(1)")["id"]
    other = registry.create("other", "Other.", "print(1)")["id"]
    registry.runtime().record_run(other, 1, "2026-01-01T00:00:00Z", 5.0, exit_code=0)
    for i in range(skills.RUN_HISTORY_PER_SKILL + 5):
        registry.runtime().record_run(keep, 1, f"2026-01-01T00:00:{i:03d}Z", float(i), exit_code=0 if i % 2 else 1)
    runs = registry.get_detail(keep)["runs"]
    assert runs["count"] == skills.RUN_HISTORY_PER_SKILL
    assert runs["last_run_at"] == f"2026-01-01T00:00:{skills.RUN_HISTORY_PER_SKILL + 4:03d}Z"
    assert registry.get_detail(other)["runs"]["count"] == 1


# ---------------------------------------------------------------------------- concurrency

async def test_runs_beyond_the_concurrency_limit_wait_within_their_own_timeout(tmp_path, marker):
    async with in_process(tmp_path, sandbox="none", concurrency=1) as client:
        slow = await create(client, "slow", "import time\ntime.sleep(2)\nprint('slow')\n")
        quick = await create(client, "quick", "print('quick')\n")
        results: dict[str, dict[str, Any]] = {}

        async def run(label: str, skill_id: int, timeout: float) -> None:
            results[label] = body_of(await execute(client, skill_id, {"marker": marker}, timeout))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "slow", slow, 10)
            await wait_until(lambda: len(run_processes(marker)) >= 1, 10)
            tg.start_soon(run, "gives_up", quick, 1)
            tg.start_soon(run, "waits", quick, 10)
    assert results["slow"]["stdout"] == "slow\n"
    assert results["gives_up"]["timed_out"] is True and results["gives_up"]["exit_code"] is None
    assert results["gives_up"]["queued_ms"] >= 900
    assert results["waits"]["stdout"] == "quick\n" and results["waits"]["queued_ms"] >= 500


# ------------------------------------------------------------------------------ settings

@pytest.mark.parametrize(("name", "value"), [("SELFMCP_SANDBOX", "docker"), ("SELFMCP_SANDBOX_NETWORK", "maybe"),
                                             ("SELFMCP_SKILL_ENV", "all"), ("SELFMCP_EXEC_MEMORY_MB", "lots"),
                                             ("SELFMCP_EXEC_MAX_OUTPUT", "0"), ("SELFMCP_EXEC_CONCURRENCY", "-1")])
def test_a_bad_execution_setting_is_a_configuration_error(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"SELFMCP_TRANSPORT": "stdio", name: value})


def test_execution_settings_are_read_from_the_environment(tmp_path):
    settings = Settings.from_env({"SELFMCP_TRANSPORT": "stdio", "SELFMCP_ENV_DIR": str(tmp_path),
                                  "SELFMCP_EXEC_MEMORY_MB": "256", "SELFMCP_EXEC_MAX_OUTPUT": "4096",
                                  "SELFMCP_EXEC_CONCURRENCY": "2", "SELFMCP_SANDBOX": "none",
                                  "SELFMCP_SANDBOX_NETWORK": "0", "SELFMCP_SKILL_ENV": "declared"})
    assert settings.execution == skills.ExecutionConfig(
        env_dir=tmp_path, memory_mb=256, max_output_bytes=4096, concurrency=2, sandbox="none",
        sandbox_network=False, skill_env="declared")
    defaults = Settings.from_env({"SELFMCP_TRANSPORT": "stdio"}).execution
    assert (defaults.env_dir, defaults.memory_mb, defaults.max_output_bytes, defaults.sandbox,
            defaults.sandbox_network, defaults.skill_env) == (None, 1024, 1 << 20, "auto", True, "inherit")


def test_an_unusable_explicit_sandbox_stops_the_server_from_starting(tmp_path):
    with pytest.raises(RuntimeError, match="SELFMCP_SANDBOX=bwrap"):
        confine.resolve_sandbox("bwrap", bwrap=str(tmp_path / "no-bwrap-here"))
    registry = skills.Registry(tmp_path / "skills.db", HashEmbedder())
    with pytest.raises(skills.ExecutionConfigError):
        registry.configure_execution(skills.ExecutionConfig(sandbox="bwrap-typo"))


# ------------------------------------------------------------------- sandboxes started ahead of runs

WARM_PROBE = '''\
import json, os, sys
seen = {"pid": os.getpid(), "left": sorted(os.listdir(".")), "params": json.loads(os.environ["SELFMCP_PARAMS"]),
        "first": os.environ.get("FIRST_ONLY"), "stdin": sys.stdin.read(), "cwd": os.getcwd()}
open("left-behind.txt", "w").write("x")
print(json.dumps(seen))
'''


@pytest.mark.parametrize("mode", ["none", pytest.param("bwrap", marks=needs_bwrap)])
async def test_a_sandbox_started_ahead_serves_one_run_and_only_a_run_with_its_environment(mode):
    sandbox = _SANDBOX if mode == "bwrap" else confine.Sandbox("none")
    runner = confine.runner(sandbox, concurrency=2)
    first_env = {"PATH": os.environ["PATH"], "FIRST_ONLY": "1"}
    try:
        first = json.loads((await runner.run(WARM_PROBE, '{"n": 1}', env=first_env, timeout_s=30)).stdout)
        await wait_until(lambda: len(runner._warm) == 2, 30)  # both free slots got one
        ahead = {w.proc.pid for w in runner._warm.values()}
        out = await runner.run(WARM_PROBE, '{"n": 2}', env=first_env, timeout_s=30)
        second = json.loads(out.stdout)
        assert out.exit_code == 0 and second["params"] == {"n": 2} and second["first"] == "1"
        assert second["stdin"] == "" and second["left"] == first["left"] == [".in"] and second["cwd"] != first["cwd"]
        if mode == "none":  # (under bubblewrap the pid is the sandbox's own)
            assert second["pid"] in ahead
        # A run with another environment never gets a sandbox started with the last one's.
        await wait_until(lambda: len(runner._warm) == 2, 30)
        third = json.loads((await runner.run(WARM_PROBE, '{"n": 3}', env={"PATH": os.environ["PATH"]},
                                             timeout_s=30)).stdout)
        assert third["first"] is None and third["left"] == [".in"] and third["params"] == {"n": 3}
    finally:
        runner.close()
    assert runner._warm == {}


# A run ends as `python skill.py` would (the prelude leaves through os._exit, without tearing modules down).
ENDINGS = {
    "sys.exit(3)": ("import sys\nprint('x')\nsys.exit(3)", 3, "x\n", ""),
    "sys.exit(message)": ("import sys\nsys.exit('bye')", 1, "", "bye\n"),
    "sys.exit(-1)": ("import sys\nsys.exit(-1)", 255, "", ""),
    "uncaught": ("def f():\n    raise ValueError('boom')\nf()", 1, "", "ValueError: boom\n"),
    "thread": ("import threading, time\ndef f():\n    time.sleep(0.2)\n    print('late')\n"
               "threading.Thread(target=f).start()", 0, "late\n", ""),
    "atexit": ("import atexit\natexit.register(print, 'from atexit')\nprint('main')", 0, "main\nfrom atexit\n", ""),
    "unflushed": ("import sys\nsys.stdout.write('no newline')\nsys.stderr.write('err')", 0, "no newline", "err"),
    "open file": ("f = open(__import__('os').environ['OUT'], 'w')\nf.write('kept')", 0, "", ""),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
@pytest.mark.parametrize("mode", ["none", pytest.param("bwrap", marks=needs_bwrap)])
async def test_a_run_ends_as_the_interpreter_would_cold_or_started_ahead(mode, ending, tmp_path):
    code, status, stdout, stderr_end = ENDINGS[ending]
    if ending == "open file" and mode == "bwrap":
        pytest.skip("bubblewrap shows no path outside the run's own directory to write to")
    sandbox = _SANDBOX if mode == "bwrap" else confine.Sandbox("none")
    runner = confine.runner(sandbox, concurrency=1)
    out_file = tmp_path / "out.txt"
    env = {"PATH": os.environ["PATH"], "OUT": str(out_file)}
    try:
        for started_ahead in (False, True):  # the first run is cold; the second gets the sandbox started after it
            if started_ahead:
                await wait_until(lambda: len(runner._warm) == 1, 30)
            result = await runner.run(code, "{}", env=env, timeout_s=30)
            assert (result.exit_code, result.stdout) == (status, stdout), (started_ahead, result)
            assert result.stderr.endswith(stderr_end), (started_ahead, result.stderr)
            assert "Traceback" not in result.stderr or "<string>" not in result.stderr  # no prelude frames
            if ending == "open file":
                assert out_file.read_text() == "kept"
                out_file.unlink()
    finally:
        runner.close()
