"""``python -m rdprune.report``: see :mod:`rdprune.report.build`."""

import sys

from rdprune.report.build import main

sys.exit(main())
