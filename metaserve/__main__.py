"""`python -m metaserve ...`: the same command line as `metaserve ...`."""

import sys

from metaserve.cli import main

sys.exit(main())
