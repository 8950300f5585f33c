"""The durable spool: order, acknowledgement, resume, torn tails, corruption, and the bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsyard_agent.forward import Spool, SpoolError
from statsyard_agent.forward._spool import CURSOR_FILE, MAGIC


def payload(i: int, size: int = 40) -> bytes:
    return f"record-{i:06d};".encode().ljust(size, b".")


def ids(chunk_payloads: tuple[bytes, ...]) -> list[int]:
    return [int(p[7:13]) for p in chunk_payloads]


def fill(spool: Spool, first: int, count: int, points: int = 10) -> None:
    for i in range(first, first + count):
        assert spool.append(payload(i), points, 1000 + i) == 0


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_read_ack_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=False)
    assert spool.read(100) is None
    fill(spool, 0, 5, points=3)
    assert (spool.pending_points, spool.oldest_timestamp) == (15, 1000)
    chunk = spool.read(7)
    assert chunk is not None
    assert ids(chunk.payloads) == [0, 1]  # a third record would exceed 7 points
    assert (chunk.points, chunk.first_timestamp, chunk.last_timestamp) == (6, 1000, 1001)
    assert spool.read(7) == chunk  # reading does not move the cursor
    spool.ack(chunk)
    assert (spool.pending_points, spool.oldest_timestamp) == (9, 1002)
    chunk = spool.read(1)  # at least one record even when it holds more points
    assert chunk is not None
    assert ids(chunk.payloads) == [2]
    spool.ack(chunk)
    chunk = spool.read(1000)
    assert chunk is not None
    assert ids(chunk.payloads) == [3, 4]
    spool.ack(chunk)
    assert (spool.pending_points, spool.oldest_timestamp) == (0, None)
    assert spool.read(1000) is None


def test_resume_after_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=True)
    fill(spool, 0, 6)
    chunk = spool.read(20)
    assert chunk is not None
    spool.ack(chunk)
    unacked = spool.read(20)  # read but never acknowledged: it must come back
    assert unacked is not None
    spool.close()

    again = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=True)
    assert again.pending_points == 40
    chunk = again.read(1000)
    assert chunk is not None
    assert ids(chunk.payloads) == [2, 3, 4, 5]
    fill(again, 6, 1)
    again.ack(chunk)
    again.close()
    third = Spool(tmp_path, compress=False, max_bytes=1 << 20)
    chunk = third.read(1000)
    assert chunk is not None
    assert ids(chunk.payloads) == [6]


def test_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1 << 20, segment_bytes=200, fsync=False)
    fill(spool, 0, 12)
    assert len(segments(tmp_path)) == 4  # 3 records of 60 bytes per 200-byte segment
    while (chunk := spool.read(25)) is not None:
        spool.ack(chunk)
    assert len(segments(tmp_path)) == 1  # the newest stays open for appending
    assert spool.disk_bytes == os.path.getsize(segments(tmp_path)[0])
    fill(spool, 12, 1)
    chunk = spool.read(100)
    assert chunk is not None
    assert ids(chunk.payloads) == [12]


@pytest.mark.parametrize("cut", [1, 10, 20, 30, 59])
def test_torn_tail_is_cut_at_open(tmp_path: Path, cut: int) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=False)
    fill(spool, 0, 3)
    spool.close()
    (segment,) = segments(tmp_path)
    size = segment.stat().st_size
    os.truncate(segment, size - cut)  # a crash in the middle of the last append
    reopened = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=False)
    assert reopened.corrupt_bytes == 60 - cut
    assert segment.stat().st_size == size - 60
    fill(reopened, 3, 1)
    chunk = reopened.read(1000)
    assert chunk is not None
    assert ids(chunk.payloads) == [0, 1, 3]


def test_a_flipped_byte_cuts_the_segment_there(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1 << 20, segment_bytes=200, fsync=False)
    fill(spool, 0, 6)
    spool.close()
    first = segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[len(MAGIC) + 60 + 25] ^= 0xFF  # inside record 1's payload
    first.write_bytes(bytes(data))
    reopened = Spool(tmp_path, compress=False, max_bytes=1 << 20, segment_bytes=200, fsync=False)
    assert reopened.corrupt_bytes == 120
    chunk = reopened.read(1000)
    assert chunk is not None
    assert ids(chunk.payloads) == [0, 3, 4, 5]


def test_corruption_found_while_reading_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1 << 20, segment_bytes=200, fsync=False)
    fill(spool, 0, 6)
    first = segments(tmp_path)[0]
    with open(first, "r+b") as fh:  # the disk changes under a running agent
        fh.seek(len(MAGIC) + 60 + 30)
        fh.write(b"X")
    chunk = spool.read(1000)
    assert chunk is not None
    assert ids(chunk.payloads) == [0, 3, 4, 5]
    assert spool.corrupt_bytes == 120
    assert spool.pending_points == 40


@pytest.mark.parametrize("cursor", [b"", b"garbage", b"\x00" * 20])
def test_a_bad_cursor_means_resend_everything(tmp_path: Path, cursor: bytes) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=False)
    fill(spool, 0, 3)
    chunk = spool.read(10)
    assert chunk is not None
    spool.ack(chunk)
    spool.close()
    (tmp_path / CURSOR_FILE).write_bytes(cursor)
    reopened = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=False)
    chunk = reopened.read(1000)
    assert chunk is not None
    assert ids(chunk.payloads) == [0, 1, 2]


def test_drop_oldest_keeps_the_bound_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1000, segment_bytes=200, fsync=False)
    dropped = 0
    for i in range(40):
        dropped += spool.append(payload(i), 10, 1000 + i)
        assert spool.disk_bytes <= 1000
        assert sum(p.stat().st_size for p in segments(tmp_path)) == spool.disk_bytes
    assert dropped == spool.dropped_points
    chunk = spool.read(10_000)
    assert chunk is not None
    kept = ids(chunk.payloads)
    assert kept == list(range(40 - len(kept), 40))  # the newest, contiguous
    assert dropped == (40 - len(kept)) * 10
    assert spool.pending_points == len(kept) * 10


def test_drop_oldest_counts_only_unsent_points(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1000, segment_bytes=200, fsync=False)
    fill(spool, 0, 3)
    chunk = spool.read(20)  # records 0 and 1 sent
    assert chunk is not None
    spool.ack(chunk)
    dropped = sum(spool.append(payload(i), 10, 1000 + i) for i in range(3, 20))
    assert dropped == spool.dropped_points
    chunk = spool.read(10_000)
    assert chunk is not None
    first = ids(chunk.payloads)[0]
    assert dropped == (first - 2) * 10


def test_an_acknowledgement_overtaken_by_drop_oldest_is_harmless(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1000, segment_bytes=200, fsync=False)
    fill(spool, 0, 3)
    in_flight = spool.read(100)
    assert in_flight is not None
    for i in range(3, 30):
        spool.append(payload(i), 10, 1000 + i)
    spool.ack(in_flight)  # its segment is long gone
    chunk = spool.read(10_000)
    assert chunk is not None
    assert ids(chunk.payloads)[-1] == 29
    assert spool.pending_points == chunk.points


def test_a_record_larger_than_the_bound_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=100, fsync=False)
    assert spool.append(b"x" * 200, 7, 1) == 7
    assert spool.dropped_points == 7
    assert spool.read(10) is None


def test_not_a_spool_segment(tmp_path: Path) -> None:
    (tmp_path / f"{1:020d}.seg").write_bytes(b"something else entirely")
    with pytest.raises(SpoolError, match="not a spool segment"):
        Spool(tmp_path, compress=False, max_bytes=1 << 20)


def test_a_segment_cut_before_its_magic_is_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=False)
    fill(spool, 0, 1)
    spool.close()
    (tmp_path / f"{2:020d}.seg").write_bytes(MAGIC[:3])  # crashed while creating it
    reopened = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=False)
    assert len(segments(tmp_path)) == 1
    fill(reopened, 1, 1)
    chunk = reopened.read(100)
    assert chunk is not None
    assert ids(chunk.payloads) == [0, 1]


def test_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match="cannot open the spool"):
        Spool(blocker / "spool", max_bytes=1 << 20)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5)),
        st.tuples(st.just("send"), st.integers(1, 30)),
        st.tuples(st.just("lose"), st.integers(1, 30)),  # read, then crash before the ack
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(ops=_ops)
def test_model(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]) -> None:
    """Against a model: what is delivered is in append order, each record once, with no gaps
    except the counted drops (a read that is never acknowledged, as when the agent dies
    mid-send, leaves the record to be read again), and the disk bound always holds."""
    directory = tmp_path_factory.mktemp("spool")
    spool = Spool(directory, compress=False, max_bytes=1500, segment_bytes=300, fsync=False)
    appended: list[int] = []
    delivered: list[int] = []
    next_id = 0
    dropped_before = 0  # the counter is per process (since open), like every /metrics counter
    for op, arg in ops:
        if op == "append":
            for _ in range(arg):
                spool.append(payload(next_id), 2, next_id)
                appended.append(next_id)
                next_id += 1
        elif op in ("send", "lose"):
            chunk = spool.read(arg)
            if chunk is not None and op == "send":
                delivered.extend(ids(chunk.payloads))
                spool.ack(chunk)
        else:
            dropped_before += spool.dropped_points
            spool.close()
            spool = Spool(directory, compress=False, max_bytes=1500, segment_bytes=300, fsync=False)
        dropped = dropped_before + spool.dropped_points
        assert spool.disk_bytes <= 1500
        assert spool.pending_points + dropped + 2 * len(delivered) == 2 * next_id
    while (chunk := spool.read(1000)) is not None:
        delivered.extend(ids(chunk.payloads))
        spool.ack(chunk)
    assert delivered == sorted(set(delivered))
    missing = set(appended) - set(delivered)
    assert len(missing) * 2 == dropped_before + spool.dropped_points
    assert spool.pending_points == 0


def test_compressed_records_round_trip_and_are_smaller(tmp_path: Path) -> None:
    lines = b"".join(
        f"stats.timers.api.endpoint{i % 7}.upper_90;env=prod {i} 1700000000\n".encode() for i in range(300)
    )
    raw = Spool(tmp_path / "raw", max_bytes=1 << 20, compress=False, fsync=False)
    packed = Spool(tmp_path / "packed", max_bytes=1 << 20, fsync=False)
    for spool in (raw, packed):
        spool.append(lines, 300, 1)
        chunk = spool.read(1000)
        assert chunk is not None
        assert chunk.payload == lines
    assert packed.disk_bytes * 4 < raw.disk_bytes


def test_segments_keep_their_own_encoding_across_a_change(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, compress=False, fsync=False)
    fill(spool, 0, 2)
    spool.close()
    spool = Spool(tmp_path, max_bytes=1 << 20, compress=True, fsync=False)
    fill(spool, 2, 2)
    assert len(segments(tmp_path)) == 2  # a compressed segment was started
    spool.close()
    spool = Spool(tmp_path, max_bytes=1 << 20, compress=True, fsync=False)
    chunk = spool.read(1000)
    assert chunk is not None
    assert ids(chunk.payloads) == [0, 1, 2, 3]


def test_a_damaged_compressed_record_fails_its_checksum(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync=False)
    fill(spool, 0, 3)
    spool.close()
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0x55  # inside the last record's compressed payload
    segment.write_bytes(bytes(data))
    reopened = Spool(tmp_path, max_bytes=1 << 20, fsync=False)
    assert reopened.corrupt_bytes > 0
    chunk = reopened.read(1000)
    assert chunk is not None
    assert ids(chunk.payloads) == [0, 1]


def test_one_timestamp_per_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compress=False, max_bytes=1 << 20, fsync=False)
    for i, timestamp in enumerate([10, 10, 20, 30, 30]):
        spool.append(payload(i), 1, timestamp)
    chunks = []
    while (chunk := spool.read(100, one_timestamp=True)) is not None:
        chunks.append((chunk.first_timestamp, ids(chunk.payloads)))
        spool.ack(chunk)
    assert chunks == [(10, [0, 1]), (20, [2]), (30, [3, 4])]
