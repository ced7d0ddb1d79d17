"""`python3 -m selfmcp COMMAND`: the `selfmcp` command line (selfmcp/cli.py)."""

import sys

from selfmcp.cli import main

sys.exit(main())
