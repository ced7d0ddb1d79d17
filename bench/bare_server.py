"""A bare mcp 2.3 server with one tool: the start-up baseline for `mcp_bench.py startup`.

    /tmp/benchvenv/bin/python ../shared/bench/mcp_bench.py --server-cmd "$(pwd)/.venv/bin/python bench/bare_server.py" \\
        --cwd "$(pwd)" startup --runs 10

selfMCP's start-up (the same command with `server.py`) should stay within 0.15 s of this.
"""

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("bare")


@mcp.tool()
def ping() -> str:
    """Answer pong."""
    return "pong"


if __name__ == "__main__":
    mcp.run("stdio")
