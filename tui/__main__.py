"""`python -m tui`: the same as `appliance tui`."""

import sys

from tui.app import main

sys.exit(main())
