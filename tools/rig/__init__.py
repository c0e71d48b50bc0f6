"""The test rig: a virtual one (a QEMU guest with LIO/TCMU) or a real board.

- ``command``: `tandem rig` / `python -m tools.rig` (setup, test, exec, guest-ctl).
- ``tcmu_file``: an image file exported through LIO/TCMU, no record (plumbing checks).
- ``capture``: records a real kernel's TCMU ring for the unit tests' fixtures.
"""
