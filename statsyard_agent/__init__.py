"""StatsYard: a StatsD/DogStatsD metrics agent with a local rolled-up TSDB, supervised on trio."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# numpy asks for transparent huge pages on every large array (madvise). A flush makes ~100 MB of
# short-lived arrays each interval, in memory the writer has just given back to the kernel, and
# zeroing those fresh 2 MiB pages cost 100-200 ms of kernel time per flush of 100k series under
# load here (the README's flush figures). Read by numpy when it is first imported, so it is set
# before any of our modules imports it; a value the user exported wins.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
