"""Unit tests of the delivery checker (tests/checker.py): no broker involved.

Each kind of problem is detected on a small hand-made history, a clean
history is reported clean, and at-least-once redelivery is allowed.
"""

from __future__ import annotations

import threading

import pytest

from checker import Ack, Failed, Read, Recorder, assert_clean, check, longest_pause

T = "t"


def seq_of(value: bytes) -> tuple[str, int]:
    """Values look like ``b"<producer>-<seq>"``."""
    producer, seq = value.decode().split("-")
    return producer, int(seq)


def ack(p: int, o: int, v: bytes) -> Ack:
    return Ack(T, p, o, None, v)


def read(p: int, o: int, v: bytes, session=None) -> Read:
    return Read(T, p, o, None, v, session)


def clean_history() -> tuple[list[Ack], list[Read]]:
    """Two producers on two partitions, everything read once."""
    acks = [ack(0, 0, b"a-0"), ack(0, 1, b"b-0"), ack(0, 2, b"a-1"),
            ack(1, 0, b"a-2"), ack(1, 1, b"b-1")]
    return acks, [read(a.partition, a.offset, a.value, session="s1") for a in acks]


def only(report, kind: str, count: int = 1) -> list:
    """Assert the report has exactly ``count`` problems, all of ``kind``."""
    problems = report.problems()
    assert list(problems) == [kind], report.summary()
    assert len(problems[kind]) == count, report.summary()
    return problems[kind]


def test_clean_history_is_clean():
    acks, reads = clean_history()
    report = check(acks, reads, seq_of=seq_of)
    assert report.ok, report.summary()
    assert (report.acked, report.reads, report.records, report.redelivered) == (5, 5, 5, 0)
    assert report.summary().endswith("clean")
    assert_clean(report)


def test_redelivery_is_allowed_and_counted():
    acks, reads = clean_history()
    # A second consumer session re-reads partition 0 after a rebalance.
    again = [read(0, o, v, session="s2") for o, v in [(1, b"b-0"), (2, b"a-1")]]
    # A read without a session is never checked for going backwards.
    unsessioned = read(0, 0, b"a-0")
    report = check(acks, reads + again + [unsessioned], seq_of=seq_of)
    assert report.ok, report.summary()
    assert report.redelivered == 3


def test_lost():
    acks, reads = clean_history()
    # The last record of partition 1 is never read (no gap: it is the end).
    lost = only(check(acks, reads[:-1]), "lost")
    assert lost == [acks[-1]]


def test_lost_in_the_middle_is_also_a_gap():
    acks, reads = clean_history()
    report = check(acks, [r for r in reads if r.pos != (T, 0, 1)])
    assert report.lost == [acks[1]]
    assert report.gaps == [(T, 0, 1, 1)]
    assert set(report.problems()) == {"lost", "gaps"}


def test_misplaced():
    acks = [ack(0, 0, b"a-0"), ack(0, 1, b"a-1")]
    reads = [read(0, 0, b"a-0"), read(0, 1, b"x-0"), read(0, 2, b"a-1")]
    report = check(acks, reads, attempted=[b"a-0", b"a-1", b"x-0"])
    assert report.misplaced == [(acks[1], reads[2])]
    # The read at offset 1 contradicts the ack for offset 1.
    assert [r for r, _ in report.phantom] == [reads[1]]


def test_duplicated():
    acks = [ack(0, 0, b"a-0"), ack(0, 1, b"a-1")]
    reads = [read(0, 0, b"a-0"), read(0, 1, b"a-1"), read(0, 2, b"a-1")]
    dup = only(check(acks, reads), "duplicated")
    assert dup == [(b"a-1", [(T, 0, 1), (T, 0, 2)])]


def test_duplicate_across_partitions():
    acks = [ack(0, 0, b"a-0")]
    dup = only(check(acks, [read(0, 0, b"a-0"), read(1, 0, b"a-0")]), "duplicated")
    assert dup == [(b"a-0", [(T, 0, 0), (T, 1, 0)])]


def test_phantom_never_produced():
    acks, reads = clean_history()
    stray = read(1, 2, b"zz-9")
    phantom = only(check(acks, reads + [stray]), "phantom")
    assert phantom == [(stray, "never produced")]


def test_attempted_values_are_not_phantoms():
    acks, reads = clean_history()
    unreported = read(1, 2, b"c-0")
    report = check(acks, reads + [unreported], attempted=[a.value for a in acks] + [b"c-0"])
    assert report.ok, report.summary()
    # Failed deliveries count as attempted too (they may have been stored).
    report = check(acks, reads + [unreported], failed=[Failed(None, b"c-0", "timed out")],
                   allow_failed=True)
    assert report.ok, report.summary()


def test_phantom_key_differs_from_ack():
    acks = [Ack(T, 0, 0, b"k1", b"a-0")]
    wrong_key = Read(T, 0, 0, b"k2", b"a-0")
    phantom = only(check(acks, [wrong_key]), "phantom")
    assert phantom[0][0] == wrong_key


def test_conflicting_reads():
    acks = [ack(0, 0, b"a-0")]
    reads = [read(0, 0, b"a-0"), read(0, 0, b"b-0")]
    report = check(acks, reads, attempted=[b"a-0", b"b-0"])
    assert list(report.problems()) == ["conflicting"], report.summary()
    assert report.conflicting == [((T, 0, 0), [(None, b"a-0"), (None, b"b-0")])]


def test_conflicting_acks():
    acks = [ack(0, 0, b"a-0"), ack(0, 0, b"b-0")]
    report = check(acks, [read(0, 0, b"a-0")])
    assert report.conflicting == [((T, 0, 0), [(None, b"a-0"), (None, b"b-0")])]
    assert report.lost == [acks[1]]


def test_gaps():
    acks = [ack(0, 5, b"a-0"), ack(0, 6, b"a-1"), ack(0, 9, b"a-2"), ack(0, 11, b"a-3")]
    gaps = only(check(acks, [read(a.partition, a.offset, a.value) for a in acks]), "gaps", 2)
    # Dense from the first read offset (5), not from 0.
    assert gaps == [(T, 0, 7, 8), (T, 0, 10, 10)]


def test_reordered():
    acks = [ack(0, 0, b"a-0"), ack(0, 1, b"b-0"), ack(0, 2, b"a-2"), ack(0, 3, b"a-1")]
    reads = [read(a.partition, a.offset, a.value) for a in acks]
    reordered = only(check(acks, reads, seq_of=seq_of), "reordered")
    assert reordered == [(reads[2], reads[3])]
    # Without seq_of, order is not checked.
    assert check(acks, reads).ok


def test_reordering_across_partitions_is_fine():
    acks = [ack(0, 0, b"a-1"), ack(1, 0, b"a-0")]
    assert check(acks, [read(a.partition, a.offset, a.value) for a in acks], seq_of=seq_of).ok


def test_backwards_within_a_session():
    acks, reads = clean_history()
    # Session s1 sees partition 0 offset 0 again after offset 2, without a rebalance.
    backwards = only(check(acks, reads + [reads[0]]), "backwards")
    assert backwards == [(reads[2], reads[0])]
    # The same re-read in a new session is plain redelivery.
    report = check(acks, reads + [read(0, 0, b"a-0", session="s2")])
    assert report.ok and report.redelivered == 1, report.summary()


def test_failed_deliveries():
    acks, reads = clean_history()
    failed = [Failed(b"k", b"c-0", "MSG_TIMED_OUT")]
    only(check(acks, reads, failed=failed), "failed")
    assert check(acks, reads, failed=failed, allow_failed=True).ok


def test_summary_shows_counts_and_first_examples():
    acks = [ack(0, o, b"a-%d" % o) for o in range(20)]
    report = check(acks, [])
    text = report.summary(examples=3)
    assert "20 lost" in text and "... and 17 more" in text, text
    assert text.count("Ack(") == 3, text
    with pytest.raises(AssertionError, match="20 lost"):
        assert_clean(report)


def test_longest_pause():
    assert longest_pause([]) == 0.0
    assert longest_pause([3.0, 1.0, 1.5, 7.0]) == 4.0


class Msg:
    """Just enough of confluent_kafka.Message."""

    def __init__(self, partition, offset, value, error=None):
        self._p, self._o, self._v, self._e = partition, offset, value, error

    def topic(self): return T
    def partition(self): return self._p
    def offset(self): return self._o
    def key(self): return None
    def value(self): return self._v
    def error(self): return self._e


def test_recorder_collects_from_many_threads():
    rec = Recorder()

    def work(base: int) -> None:
        for i in range(base, base + 200):
            msg = Msg(0, i, b"p-%d" % i)
            rec.on_delivery(None, msg)
            rec.read(msg, session="s%d" % base)

    threads = [threading.Thread(target=work, args=(n * 200,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.on_delivery("boom", Msg(0, -1, b"p-failed"))
    assert len(rec.acks) == 800 and len(rec.reads) == 800
    assert [f.value for f in rec.failed] == [b"p-failed"]
    assert all(a.at > 0 for a in rec.acks)
    report = rec.check(seq_of=seq_of, allow_failed=True)
    assert report.ok, report.summary()
    with pytest.raises(AssertionError, match="not a record"):
        rec.read(Msg(0, 0, None, error="some error"))
