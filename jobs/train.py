"""Entrypoint for `ray job submit --working-dir . -- python jobs/train.py --data ... --out ...`.

Takes the same flags as `raymae train`; on a cluster it joins the running Ray
(RAY_ADDRESS is set by the job) instead of starting a local one.
"""

import sys

from raymae.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
