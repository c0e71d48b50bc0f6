"""`python -m tools.rig ...` (the guest runs `guest-ctl` this way)."""

import sys

from tools.rig.command import main

sys.exit(main())
