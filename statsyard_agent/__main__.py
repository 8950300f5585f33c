"""``python -m statsyard_agent`` is the ``statsyard-agent`` command."""

from __future__ import annotations

import sys

from ._cli import main

sys.exit(main())
