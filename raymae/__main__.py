"""`python -m raymae ...`: the `raymae` command line, for where its script is not on PATH
(inside a Ray job, a container, a bare virtualenv)."""

import sys

from raymae.cli import main

if __name__ == "__main__":
    sys.exit(main())
