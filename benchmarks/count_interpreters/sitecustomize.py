"""Counts the Python interpreters a command starts (the test suite's subprocesses, torchrun's ranks, loader workers
started by spawn), for measuring how many start-ups a change saves:

    PYTHONPATH=benchmarks/count_interpreters COUNT_INTERPRETERS=/tmp/starts.log make test
    wc -l < /tmp/starts.log          # one line per interpreter: pid and command line

Every interpreter started with this folder on PYTHONPATH imports this file at start-up (Python's `site`). Nothing
happens without COUNT_INTERPRETERS. Forked processes (DataLoader workers under fork) are not new interpreters and
are not counted.
"""

import os
import sys

if os.environ.get("COUNT_INTERPRETERS"):
    with open(os.environ["COUNT_INTERPRETERS"], "a") as log:
        command = " ".join(sys.orig_argv[1:4]).replace("\n", " ")[:200]  # a -c script on one line
        log.write(f"{os.getpid()} {command}\n")
