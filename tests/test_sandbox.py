"""The trust boundary of skill runs and dependency installs (issue 9, findings 2, 3, 4, 8, 12).

Every test drives server.py over stdio with the SDK's client. The run-side tests run once per
confinement this machine offers: bubblewrap ("bwrap", skipped without it) and Landlock, the
fallback without bubblewrap ("landlock", skipped on a kernel without it). Tests of a root
server's uid and cgroup bounds skip, with the reason, when the tests do not run as root.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from selfmcp import confine, landlock
from conftest import assert_error

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SECRET_NAME, SECRET = "FAKE_SERVICE_API_KEY", "sk-live-0123456789"
TOKEN = "server-token-0123456789abcdef"
_BWRAP = confine.resolve_sandbox("auto")
MODES = [pytest.param("bwrap", marks=pytest.mark.skipif(_BWRAP.mode != "bwrap", reason=f"no bubblewrap: {_BWRAP.note}")),
         pytest.param("landlock", marks=pytest.mark.skipif(landlock.landlock_abi() < 1, reason="no Landlock here"))]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a root server's guarantees need the tests to run as root")
needs_cgroup = pytest.mark.skipif(
    os.geteuid() != 0 or confine.CgroupSlots.create(1, memory_bytes=1 << 20, pids=8) is None,
    reason="no writable cgroup here")


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


def server(tmp: Path, **env: str) -> Client:
    base = {"SELFMCP_TRANSPORT": "stdio", "SELFMCP_DB_PATH": str(tmp / "db" / "skills.db"),
            "SELFMCP_ENV_DIR": str(tmp / "envs"), "SELFMCP_LOG_LEVEL": "WARNING", SECRET_NAME: SECRET,
            "SELFMCP_AUTH_TOKEN": TOKEN, "PATH": os.environ["PATH"]}
    (tmp / "db").mkdir(exist_ok=True)
    return Client(StdioServerParameters(command=sys.executable, args=["server.py"], env={**base, **env},
                                        cwd=str(ROOT)))


async def run(client: Client, body: str, params: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    created = await client.call_tool("skill_create", {"name": f"s{abs(hash(body)) % 10**8}",
                                                      "description": "A sandbox test skill.", "body": body, **fields})
    assert not created.is_error, created.content[0].text
    result = await client.call_tool("skill_execute", {"skill_id": created.structured_content["id"],
                                                      "params": params or {}, "timeout": 60})
    assert not result.is_error, result.content[0].text
    return result.structured_content


PROBE = textwrap.dedent('''\
    import json, os
    p = json.loads(os.environ["SELFMCP_PARAMS"])
    out = {"uid": os.getuid(), "caps": [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]}
    def attempt(fn):
        try:
            fn()
            return "ok"
        except OSError as exc:
            return "denied"
    out["shadow"] = attempt(lambda: open("/etc/shadow").read())
    out["db"] = attempt(lambda: open(p["db"], "rb").read())
    out["server_environ"] = attempt(lambda: open(f"/proc/{os.getppid()}/environ", "rb").read()) \\
        if os.getppid() > 1 else "denied"
    writable = []
    for d, _, files in os.walk("/proc/sys"):
        for f in files:
            try:
                open(os.path.join(d, f), "r+").close()
                writable.append(os.path.join(d, f))
            except OSError:
                pass
    out["proc_sys_writable"] = writable[:5]
    out["server_code"] = attempt(lambda: open(p["code"], "a").close())
    print(json.dumps(out))
''')


@pytest.mark.parametrize("mode", MODES)
async def test_a_skill_cannot_reach_secrets_the_database_or_proc_sys(tmp_path, mode):
    async with server(tmp_path, SELFMCP_SANDBOX=mode) as client:
        out = await run(client, PROBE, {"db": str(tmp_path / "db" / "skills.db"), "code": str(ROOT / "server.py")})
    probe = json.loads(out["stdout"])
    assert out["sandbox"] == mode
    assert probe["shadow"] == "denied" and probe["db"] == "denied" and probe["server_environ"] == "denied"
    assert probe["proc_sys_writable"] == [] and probe["server_code"] == "denied"
    assert int(probe["caps"], 16) == 0


@needs_root
@pytest.mark.parametrize("mode", MODES[:1])
async def test_a_root_servers_skill_runs_as_an_unprivileged_uid(tmp_path, mode):
    async with server(tmp_path, SELFMCP_SANDBOX=mode) as client:
        out = await run(client, "import os; print(os.getuid(), os.getgid(), os.getgroups())")
    uid, gid, groups = out["stdout"].split(maxsplit=2)
    assert uid != "0" and gid != "0" and groups.strip() == "[]"


@needs_cgroup
@pytest.mark.parametrize("mode", MODES)
async def test_one_run_cannot_hold_more_than_the_memory_limit_across_its_processes(tmp_path, mode):
    body = textwrap.dedent('''\
        import subprocess, sys
        hold = "import sys, time; b = b'x' * (100 << 20); print('held', flush=True); time.sleep(3)"
        kids = [subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE) for _ in range(5)]
        print(sum(k.communicate()[0] == b"held\\n" and k.returncode == 0 for k in kids))
    ''')
    # Each process may hold 256 MiB: five of 100 MiB pass a per-process limit, not the total.
    async with server(tmp_path, SELFMCP_SANDBOX=mode, SELFMCP_EXEC_MEMORY_MB="256") as client:
        out = await run(client, body)
    assert out["exit_code"] == 0, out["stderr"]
    assert int(out["stdout"]) < 5


@needs_root
@pytest.mark.parametrize("mode", MODES)
async def test_one_run_cannot_start_more_than_the_process_limit(tmp_path, mode):
    body = textwrap.dedent('''\
        import os, time
        started = 0
        for _ in range(60):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            started += 1
        print(started)
    ''')
    async with server(tmp_path, SELFMCP_SANDBOX=mode, SELFMCP_EXEC_MAX_PROCS="20") as client:
        out = await run(client, body)
    assert 0 < int(out["stdout"]) < 20


@pytest.mark.parametrize("mode", MODES[:1])
async def test_dev_and_the_working_directory_are_bounded_in_size(tmp_path, mode):
    body = textwrap.dedent('''\
        import os
        def fill(path, mib):
            try:
                with open(path, "wb") as fh:
                    for _ in range(mib):
                        fh.write(b"x" * (1 << 20))
                        fh.flush()
                return "ok"
            except OSError:
                return "full"
        print(fill("/dev/extra", 1), fill("/dev/shm/big", 64), fill("big", 32))
    ''')
    async with server(tmp_path, SELFMCP_SANDBOX=mode, SELFMCP_EXEC_DISK_MB="8") as client:
        out = await run(client, body)
    assert out["stdout"].split() == ["full", "full", "full"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_detached_background_process_does_not_survive_the_run(tmp_path, mode):
    marker = f"selfmcp-bg-{os.getpid()}-{mode}"
    body = textwrap.dedent(f'''\
        import subprocess, sys
        # A new session and an empty environment: neither the process group nor the run token finds it.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # {marker}"], env={{}},
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("left")
    ''')
    async with server(tmp_path, SELFMCP_SANDBOX=mode) as client:
        out = await run(client, body)
        assert out["stdout"] == "left\n"
        left = []
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        left.append(name)
            except OSError:
                continue
    assert left == []


@pytest.mark.parametrize("mode", [*MODES, "none"])
async def test_params_up_to_one_mib_reach_the_skill(tmp_path, mode):
    params = {"blob": "x" * 1_000_000}
    async with server(tmp_path, SELFMCP_SANDBOX=mode) as client:
        out = await run(client, "import json, os\nprint(len(json.loads(os.environ['SELFMCP_PARAMS'])['blob']))",
                        params)
    assert out["stdout"] == "1000000\n" and out["exit_code"] == 0


async def test_about_says_which_limits_are_in_force(tmp_path):
    async with server(tmp_path) as client:
        listed = await client.call_tool("skill_search", {"query": "selfmcp_about", "mode": "keyword"})
        about = listed.structured_content["results"][0]["id"]
        result = await client.call_tool("skill_execute", {"skill_id": about, "params": {"section": "in_force"}})
    text = json.loads(result.structured_content["stdout"])["text"]
    assert "isolation:" in text and "totals:" in text and "server_environ: unreadable" in text


# ------------------------------------------------------------------------- dependency installs

BACKEND = textwrap.dedent('''\
    """A PEP 517 backend with no requirements: its build runs code, as any source build may."""
    import base64, hashlib, json, os, zipfile

    def _dump():
        try:
            open(DB, "rb").read()
            db = "read"
        except OSError:
            db = "denied"
        return "ENV = " + repr(dict(os.environ)) + "\\nDB = " + repr(db) + "\\n"

    def get_requires_for_build_wheel(config_settings=None):
        return []

    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        dist = "selfmcp_leaky-1.0"
        files = {"selfmcp_leaky/__init__.py": _dump(),
                 dist + ".dist-info/METADATA": "Metadata-Version: 2.1\\nName: selfmcp_leaky\\nVersion: 1.0\\n",
                 dist + ".dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
        record = []
        for path, text in files.items():
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(text.encode())}")
        files[dist + ".dist-info/RECORD"] = "\\n".join(record + [dist + ".dist-info/RECORD,,"]) + "\\n"
        name = dist + "-py3-none-any.whl"
        with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
            for path, text in files.items():
                archive.writestr(path, text)
        return name
''')


def build_sdist(folder: Path, db: Path) -> None:
    """selfmcp_leaky-1.0.tar.gz: its build writes the environment it sees, and whether it read `db`."""
    files = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
             "backend.py": BACKEND.replace("open(DB", f"open({str(db)!r}"),
             "PKG-INFO": "Metadata-Version: 2.1\nName: selfmcp_leaky\nVersion: 1.0\n"}
    with tarfile.open(folder / "selfmcp_leaky-1.0.tar.gz", "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"selfmcp_leaky-1.0/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def offline(tmp: Path, links: Path) -> dict[str, str]:
    return {"PIP_FIND_LINKS": str(links), "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "UV_NO_CONFIG": "1",
            "UV_PYTHON_DOWNLOADS": "never"}


@pytest.mark.parametrize("mode", MODES)
async def test_a_source_build_is_refused_by_default_and_contained_when_allowed(tmp_path_factory, mode):
    tmp, links = tmp_path_factory.mktemp("leak"), tmp_path_factory.mktemp("links")
    build_sdist(links, tmp / "db" / "skills.db")
    skill = {"dependencies": ["selfmcp_leaky==1.0"]}
    body = "import selfmcp_leaky as m, json\nprint(json.dumps({'env': m.ENV, 'db': m.DB}))"
    async with server(tmp, SELFMCP_SANDBOX=mode, **offline(tmp, links)) as client:
        created = await client.call_tool("skill_create", {"name": "leaky", "description": "Leaks.", "body": body,
                                                          **skill})
        refused = await client.call_tool("skill_execute", {"skill_id": created.structured_content["id"]})
        assert_error(refused, "dependency_install_failed")
    async with server(tmp, SELFMCP_SANDBOX=mode, SELFMCP_ALLOW_SOURCE_BUILDS="1", **offline(tmp, links)) as client:
        sid = (await client.call_tool("skill_list_summary", {})).structured_content["skills"]
        leaky = next(s["id"] for s in sid if s["name"] == "leaky")
        result = await client.call_tool("skill_execute", {"skill_id": leaky})
    assert not result.is_error, result.content[0].text
    seen = json.loads(result.structured_content["stdout"])
    assert seen["db"] == "denied"
    assert not any(name.startswith("SELFMCP_") for name in seen["env"]), sorted(seen["env"])
    assert SECRET_NAME not in seen["env"] and SECRET not in json.dumps(seen) and TOKEN not in json.dumps(seen)
