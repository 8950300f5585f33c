"""The reader: graphite semantics of find/query, slot combining, limits, concurrent access."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from statsyard_agent._exceptions import QueryError
from statsyard_agent._types import FlushBatch, Rollup, Tags
from statsyard_agent.storage import TSDB, Reader, SeriesKey, StorageConfig, parse_retention

T0 = 1_700_000_000 - 1_700_000_000 % 86400  # a day boundary
CONFIG = StorageConfig(retention=parse_retention("10s:1d,1m:7d,1h:1y"), fsync=False)
NAN = float("nan")


def batch(
    ts: int, points: dict[str, tuple[Rollup, float]], *, interval: float = 10.0, tags: Tags = ()
) -> FlushBatch:
    names = tuple(points)
    return FlushBatch(
        timestamp=ts,
        interval=interval,
        names=names,
        tags=(tags,) * len(names),
        rollups=tuple(points[n][0] for n in names),
        values=np.array([points[n][1] for n in names], dtype=np.float64),
    )


def one(reader: Reader, name: str, start: int, end: int, **kw: object) -> list[float]:
    [series] = reader.query(name, start, end, now=start, **kw)  # type: ignore[arg-type]
    values: list[float] = series.values.tolist()
    return values


@pytest.fixture
def db(tmp_path: Path) -> Iterator[TSDB]:
    with TSDB.open(tmp_path, CONFIG) as tsdb:
        yield tsdb


# -- several flushes in one slot (flush interval shorter than the step) -----------------------

SUB_FLUSHES = [1.0, 4.0, 2.0, 8.0, 5.0]


@pytest.mark.parametrize(
    ("rollup", "expected"),
    [
        (Rollup.SUM, 20.0),
        (Rollup.MIN, 1.0),
        (Rollup.MAX, 8.0),
        (Rollup.LAST, 5.0),
        (Rollup.AVERAGE, 4.0),
        # 5 flushes of 2 s cover the 10 s step: sum(v * 2) / 10
        (Rollup.RATE, 4.0),
    ],
)
def test_flushes_in_one_slot_combine_by_rollup(
    db: TSDB, tmp_path: Path, rollup: Rollup, expected: float
) -> None:
    for i, value in enumerate(SUB_FLUSHES):
        db.write(batch(T0 + 2 * i, {"m": (rollup, value)}, interval=2.0))
    assert one(Reader(tmp_path), "m", T0, T0 + 10) == [expected]


def test_rate_with_missing_flushes_counts_them_as_zero(db: TSDB, tmp_path: Path) -> None:
    db.write(batch(T0, {"r": (Rollup.RATE, 3.0)}, interval=2.0))
    db.write(batch(T0 + 4, {"r": (Rollup.RATE, 2.0)}, interval=2.0))
    assert one(Reader(tmp_path), "r", T0, T0 + 10) == [(3.0 * 2 + 2.0 * 2) / 10]


def test_rate_of_a_flush_longer_than_the_step_is_kept(db: TSDB, tmp_path: Path) -> None:
    db.write(batch(T0, {"r": (Rollup.RATE, 3.0)}, interval=60.0))
    assert one(Reader(tmp_path), "r", T0, T0 + 10) == [3.0]


def test_mean_is_weighted_by_the_sibling_count(db: TSDB, tmp_path: Path) -> None:
    flushes = [(10.0, 1.0, 100.0, 3.0), (20.0, 3.0, 50.0, 1.0)]
    for i, (mean, count, mean90, count90) in enumerate(flushes):
        db.write(
            batch(
                T0 + 5 * i,
                {
                    "t.mean": (Rollup.MEAN, mean),
                    "t.count": (Rollup.SUM, count),
                    "t.mean_90": (Rollup.MEAN, mean90),
                    "t.count_90": (Rollup.SUM, count90),
                    "lonely.mean": (Rollup.MEAN, mean),
                },
                interval=5.0,
            )
        )
    reader = Reader(tmp_path)
    assert one(reader, "t.mean", T0, T0 + 10) == [(10 * 1 + 20 * 3) / 4]
    assert one(reader, "t.mean_90", T0, T0 + 10) == [(100 * 3 + 50 * 1) / 4]
    assert one(reader, "lonely.mean", T0, T0 + 10) == [15.0]  # no sibling: AVERAGE


def test_one_flush_per_slot_is_stored_exactly(db: TSDB, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    sent = rng.lognormal(size=(12, len(Rollup)))
    names = [f"k.{r.name.lower()}" for r in Rollup]
    for i, row in enumerate(sent):
        points = {n: (r, float(v)) for n, r, v in zip(names, Rollup, row, strict=True)}
        db.write(batch(T0 + 10 * i + 1, points, interval=10.003))  # the agent's real stamps
    reader = Reader(tmp_path)
    for column, name in enumerate(names):
        assert one(reader, name, T0, T0 + 120) == sent[:, column].tolist()


# -- query semantics ---------------------------------------------------------------------------


def test_range_is_step_aligned_half_open_and_null_filled(db: TSDB, tmp_path: Path) -> None:
    for i in (0, 2, 3):
        db.write(batch(T0 + 10 * i, {"g": (Rollup.LAST, float(i))}))
    reader = Reader(tmp_path)
    [series] = reader.query("g", T0 - 5, T0 + 35, now=T0)
    assert (series.start, series.step) == (T0, 10)
    np.testing.assert_array_equal(series.values, [0.0, NAN, 2.0, 3.0])
    [series] = reader.query("g", T0 + 1, T0 + 30, now=T0)
    assert series.start == T0 + 10
    assert len(series.values) == 2
    [series] = reader.query("g", T0 + 30, T0 + 30, now=T0)
    assert len(series.values) == 0


def test_glob_and_tag_filters(db: TSDB, tmp_path: Path) -> None:
    web: Tags = (("env", "prod"), ("host", "web1"))
    db.write(batch(T0, {"api.req.count": (Rollup.SUM, 1.0)}, tags=web))
    db.write(batch(T0, {"api.req.count": (Rollup.SUM, 2.0)}, tags=(("env", "dev"),)))
    db.write(batch(T0, {"api.err.count": (Rollup.SUM, 3.0), "web.x": (Rollup.SUM, 4.0)}))
    reader = Reader(tmp_path)
    assert reader.find("api.*.count") == [
        SeriesKey("api.err.count", ()),
        SeriesKey("api.req.count", (("env", "dev"),)),
        SeriesKey("api.req.count", web),
    ]
    assert reader.find("api.{req,nope}.*", tags={"env": "prod"}) == [SeriesKey("api.req.count", web)]
    assert reader.find("api.*") == []  # node count must match
    assert reader.find("*", tags={"env": "prod"}) == []
    [prod] = reader.query("api.req.count", T0, T0 + 10, tags={"host": "web1"}, now=T0)
    assert (prod.tags, prod.values.tolist()) == (dict(web), [1.0])
    with pytest.raises(QueryError):
        reader.find("api.{req")


def test_finest_tier_covering_the_range_and_on_the_fly_rollup(db: TSDB, tmp_path: Path) -> None:
    for i in range(360):  # an hour of 10 s counts of 1
        db.write(batch(T0 + 10 * i, {"c": (Rollup.SUM, 1.0), "g": (Rollup.LAST, float(i))}))
    reader = Reader(tmp_path)
    [fine] = reader.query("c", T0, T0 + 3600, now=T0 + 3600)
    assert (fine.step, len(fine.values)) == (10, 360)
    [minute] = reader.query("c", T0, T0 + 3600, now=T0 + 2 * 86400)  # past the 10 s retention
    assert (minute.step, minute.values.tolist()) == (60, [6.0] * 60)
    [hour] = reader.query("g", T0, T0 + 3600, now=T0 + 30 * 86400)
    assert (hour.step, hour.values.tolist()) == (3600, [359.0])


def test_max_points_consolidates_whole_series_with_its_rollup(db: TSDB, tmp_path: Path) -> None:
    for i in range(60):
        db.write(
            batch(
                T0 + 10 * i,
                {"c": (Rollup.SUM, 1.0), "hi": (Rollup.MAX, float(i)), "g": (Rollup.LAST, i)},
            )
        )
    reader = Reader(tmp_path)
    [c] = reader.query("c", T0, T0 + 600, max_points=10, now=T0)
    assert (c.start, c.step, c.values.tolist()) == (T0, 60, [6.0] * 10)
    [hi] = reader.query("hi", T0, T0 + 600, max_points=7, now=T0)
    assert hi.step == 90
    assert len(hi.values) <= 7
    assert hi.start % 90 == 0
    assert hi.start <= T0
    assert np.nanmax(hi.values) == 59.0
    [g] = reader.query("g", T0 + 30, T0 + 600, max_points=4, now=T0)
    assert g.start % g.step == 0
    assert g.start <= T0 + 30 < g.start + g.step
    assert len(g.values) <= 4
    assert g.values[-1] == 59.0
    [same] = reader.query("c", T0, T0 + 600, max_points=600, now=T0)
    assert same.step == 10


def test_limits_raise_query_errors_naming_the_limit(db: TSDB, tmp_path: Path) -> None:
    db.write(batch(T0, {f"s.{i}": (Rollup.SUM, 1.0) for i in range(20)}))
    reader = Reader(tmp_path)
    with pytest.raises(QueryError, match=r"\(limit 10\)"):
        reader.query("s.*", T0, T0 + 10, max_series=10, now=T0)
    with pytest.raises(QueryError, match=r"\(limit 100\)"):
        reader.query("s.*", T0, T0 + 100, max_total_points=100, now=T0)
    assert len(reader.query("s.*", T0, T0 + 50, max_total_points=100, now=T0)) == 20
    with pytest.raises(QueryError):
        reader.query("s.*", T0, T0 + 50, max_points=0, now=T0)


def test_reader_sees_each_flush_as_soon_as_write_returns(db: TSDB, tmp_path: Path) -> None:
    reader = Reader(tmp_path)
    for i in range(5):
        db.write(batch(T0 + 10 * i, {"live": (Rollup.SUM, float(i + 1))}))
        assert one(reader, "live", T0, T0 + 50)[: i + 1] == [float(k + 1) for k in range(i + 1)]


# -- a writer process and a reader process ----------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from statsyard_agent._types import FlushBatch, Rollup
    from statsyard_agent.storage import TSDB, StorageConfig, parse_retention

    data, t0, flushes, width = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    # short spans: windows are sealed, compacted and rolled up while the reader reads
    config = StorageConfig(retention=parse_retention("10s:1h,1m:6h"), fsync=True)
    names = tuple(f"w.{i}" for i in range(width))
    with TSDB.open(data, config) as db:
        print("ready", flush=True)
        sys.stdin.readline()  # wait until the reader runs
        for k in range(flushes):
            values = np.full(width, float(k + 1))
            db.write(FlushBatch(t0 + 10 * k, 10.0, names, ((),) * width,
                                (Rollup.SUM,) * width, values))
            db.maintain(t0 + 10 * k + 5)
    """
)

READER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from pathlib import Path
    from statsyard_agent.storage import Reader

    data, t0, flushes, width = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    reader = Reader(data)
    print("ready", flush=True)
    seen, polls = 0, 0
    while seen < flushes:
        polls += 1
        result = reader.query("w.*", t0, t0 + 10 * flushes, now=t0)
        if not result:
            continue
        matrix = np.array([s.values for s in result])
        assert len(result) == width, len(result)
        present = ~np.isnan(matrix)
        # every slot is either complete in every series or absent from all: no half flush
        assert (present.all(axis=0) | ~present.any(axis=0)).all()
        k = int(present.all(axis=0).sum())
        assert (matrix[:, :k] == np.arange(1, k + 1)).all()
        assert not present[:, k:].any()
        seen = k
    print(json.dumps({"polls": polls, "seen": seen}))
    """
)


def test_reader_process_never_sees_half_a_flush(tmp_path: Path) -> None:
    flushes, width = 400, 1000
    args = [str(tmp_path), str(T0), str(flushes), str(width)]
    pipe = subprocess.PIPE
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, *args], stdin=pipe, stdout=pipe, stderr=pipe, text=True
    ) as writer:
        assert writer.stdin is not None
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        with subprocess.Popen(
            [sys.executable, "-c", READER, *args], stdout=pipe, stderr=pipe, text=True
        ) as reader:
            assert reader.stdout is not None
            assert reader.stdout.readline() == "ready\n"
            writer.stdin.write("go\n")
            writer.stdin.flush()
            out, err = reader.communicate(timeout=120)
        _, writer_err = writer.communicate(timeout=120)
    assert writer.returncode == 0, writer_err
    assert reader.returncode == 0, err
    outcome = json.loads(out)
    assert outcome["seen"] == flushes
    assert outcome["polls"] > 1
