"""``python -m dicomcommit``."""

from __future__ import annotations

import sys

from dicomcommit.cli import main

sys.exit(main())
