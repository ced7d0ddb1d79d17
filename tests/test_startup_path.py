"""What the server does before its first answers: numpy, the keyword index and the model wait for later.

Start-up to `tools/list` is measured by `mcp_bench.py startup` (bench/bare_server.py is the
baseline); this checks the property the figure rests on, without timing anything.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, clean_env

PROBE = """
import sys
from pathlib import Path

import anyio

import server

mcp = server.create_server(server.Settings(db_path=Path(sys.argv[1]), transport="stdio"))
tools = anyio.run(mcp.list_tools)
print(len(tools), "numpy" in sys.modules)
found = mcp.registry.search("send an email", "hybrid", 5)
print("numpy" in sys.modules, "note" not in found)
"""


def test_the_server_answers_tools_list_before_importing_numpy_and_searches_after(tmp_path):
    result = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "s.db")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=clean_env())
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.splitlines()
    assert before == "8 False"  # eight tools listed, numpy not imported yet
    assert after == "True True"  # the first search imports it and embeds the query
