"""Entrypoint for the nightly `ray job submit --working-dir . -- python jobs/score.py ...`.

Takes the flags of `raymae score`; `--date` defaults to today in UTC, and
`{date}` in `--input` / `--output` is replaced by the date, so one fixed
command scores each night's dump:

    python jobs/score.py --input 's3://factory-dumps/{date}/' --model s3://models/tile-v3 \
        --output s3://factory-scores/ --gpu --actors 4
"""

import sys

from raymae.cli import main, with_default_date

if __name__ == "__main__":
    sys.exit(main(["score", *with_default_date(sys.argv[1:])]))
