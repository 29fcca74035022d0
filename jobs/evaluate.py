"""Entrypoint for `ray job submit --working-dir . -- python jobs/evaluate.py --data ... --model ... --output ...`.

Takes the same flags as `raymae evaluate`.
"""

import sys

from raymae.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
