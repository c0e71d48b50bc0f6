"""Trace replay: the record's policies run against real block I/O traces, off the board.

- ``traces``: readers for the trace formats (MSR Cambridge CSV, blkparse text, ...).
- ``sim``: the replay model (the firmware's own Record and policies on a virtual clock).
- ``baselines``: the simple record policies the report compares against.
- ``command``: `tandem replay`; ``report``: `tandem replay-report`.
"""
