"""Entrypoint for `ray job submit --working-dir . -- python jobs/report.py ...`: the nightly HTML report.

Takes the flags of `raymae report`; `--date` defaults to today in UTC, and
`{date}` in `--output` is replaced by the date:

    python jobs/report.py --scores s3://factory-scores/ --output 's3://factory-reports/{date}/'

(`jobs/score.py --report URI` writes the same page right after scoring.)
"""

import sys

from raymae.cli import main, with_default_date

if __name__ == "__main__":
    sys.exit(main(["report", *with_default_date(sys.argv[1:])]))
