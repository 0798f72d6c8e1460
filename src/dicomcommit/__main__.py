"""``python -m dicomcommit``."""

from __future__ import annotations

import sys

from dicomcommit.cli.main import main

sys.exit(main())
