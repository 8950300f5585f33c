"""Crash safety: a real writer process killed with SIGKILL at random points, again and again."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from statsyard_agent.storage import TSDB, Reader, StorageConfig, parse_retention, verify_storage

T0 = 1_700_000_000 - 1_700_000_000 % 86400
WIDTH = 300
RETENTION = "10s:2h,1m:1d,1h:30d"

# Writes flush k (every series = k, at T0 + 10 k) from the first flush the directory does
# not hold yet, and prints "wrote k" once write() returned, i.e. once it is durable. Simulated
# time runs 10 s per flush and maintain() follows every write, so kills also land in sealing,
# rollups, compaction and retention.
CHILD = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    from pathlib import Path
    from statsyard_agent._types import FlushBatch, Rollup
    from statsyard_agent.storage import TSDB, Reader, StorageConfig, parse_retention

    data, first, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    config = StorageConfig(retention=parse_retention({RETENTION!r}), fsync=True)
    names = tuple(f"c.{{i}}" for i in range({WIDTH}))
    rollups = tuple(Rollup.SUM if i % 2 else Rollup.LAST for i in range({WIDTH}))
    with TSDB.open(data, config) as db:
        print("open", flush=True)
        for k in range(first, first + count):
            ts = {T0} + 10 * k
            db.write(FlushBatch(ts, 10.0, names, ((),) * {WIDTH}, rollups,
                                np.full({WIDTH}, float(k))))
            print(f"wrote {{k}}", flush=True)
            db.maintain(ts + 5)
    """
)

CONFIG = StorageConfig(retention=parse_retention(RETENTION), fsync=True)


def _stored_flushes(data: Path, lo: int, hi: int) -> list[int]:
    """Flush numbers in [lo, hi) fully present at 10 s (every series holds k at its slot);
    asserts that no flush is partly stored."""
    start, end = T0 + 10 * lo, T0 + 10 * hi
    result = Reader(data).query("c.*", start, end, now=end)
    assert len(result) == WIDTH
    assert result[0].step == 10
    matrix = np.array([s.values for s in result])
    present = ~np.isnan(matrix)
    complete = present.all(axis=0)
    assert (complete | ~present.any(axis=0)).all(), "a flush is partly stored"
    ks = np.flatnonzero(complete) + lo
    assert (matrix[:, ks - lo] == ks).all()
    return ks.tolist()


def _check_minutes(data: Path, flushes: int) -> None:
    """The 1 min tier over every whole minute written: SUM of the six k, or the last k."""
    minutes = flushes // 6
    if minutes == 0:
        return
    result = Reader(data).query("c.*", T0, T0 + 60 * minutes, now=T0 + 86400)
    assert result[0].step == 60
    ks = np.arange(6 * minutes).reshape(minutes, 6)
    for series in result:
        odd = int(series.name.split(".")[1]) % 2
        expected = ks.sum(axis=1) if odd else ks[:, -1]
        np.testing.assert_array_equal(series.values, expected)


def _crash_cycles(data: Path, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    acknowledged = -1
    for _cycle in range(cycles):
        first = acknowledged + 1
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data), str(first), "400"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as child:
            assert child.stdout is not None
            assert child.stdout.readline() == "open\n", child.stderr
            for _ in range(rng.randrange(1, 40)):
                line = child.stdout.readline()
                assert line.startswith("wrote"), line
                acknowledged = int(line.split()[1])
            time.sleep(rng.uniform(0, 0.02))  # let the kill land anywhere in the next flush
            child.send_signal(signal.SIGKILL)
            rest, _ = child.communicate()
        for line in rest.splitlines():
            acknowledged = max(acknowledged, int(line.split()[1]))
        # The directory opens (recovering), verifies, and holds every acknowledged flush;
        # only the flush in progress at the kill may be missing.
        with TSDB.open(data, CONFIG):
            pass
        assert verify_storage(data) == []
        lo = max(0, acknowledged - 300)
        stored = _stored_flushes(data, lo, acknowledged + 2)
        assert stored[: acknowledged + 1 - lo] == list(range(lo, acknowledged + 1))
        assert set(stored) <= set(range(lo, acknowledged + 2))
        if stored and stored[-1] == acknowledged + 1:
            acknowledged += 1  # the in-flight flush made it: continue after it
        _check_minutes(data, acknowledged + 1)


def test_sigkill_at_random_points(tmp_path: Path) -> None:
    _crash_cycles(tmp_path, cycles=3, seed=1)


@pytest.mark.long
def test_sigkill_at_random_points_many_times(tmp_path: Path) -> None:
    _crash_cycles(tmp_path, cycles=60, seed=2)
