"""Delivery checker: compares what producers were told with what consumers read.

This module owns the *definition* of a correct delivery history for Fjord's
tests, independent of any broker or client:

* :class:`Ack` -- a successful delivery report (the broker said "stored at
  topic/partition/offset");
* :class:`Failed` -- a failed delivery report;
* :class:`Read` -- one record a consumer received (the same offset may be read
  several times, e.g. after a consumer-group rebalance);
* :func:`check` -- turns acks and reads into a :class:`Report` listing every
  violation; :func:`assert_clean` fails a test with the report's summary;
* :class:`Recorder` -- thread-safe collection of acks/failures/reads straight
  from confluent-kafka delivery callbacks and consumed messages.

Records are identified by their **value**: tests must make every produced
value unique.  The properties checked (each a field of :class:`Report`):

``lost``
    acknowledged, but the value was never read.
``misplaced``
    acknowledged at one position, read at another one.
``duplicated``
    one value stored at two or more positions (written twice to the log,
    which an idempotent producer must never cause).
``phantom``
    a read that nobody attempted to produce, or whose key/value differ from
    what the ack for that very position says.
``conflicting``
    one position with two different records (two reads disagree, or two acks
    disagree).
``gaps``
    offsets of a partition that were never read, between the partition's
    first and last read offset ("offsets stay dense").
``reordered``
    (with ``seq_of``) within a partition, a producer's records are not in the
    order that producer sent them.
``backwards``
    (with ``Read.session`` set) within one consumer session, a partition's
    offsets did not strictly increase.
``failed``
    failed deliveries; a problem unless ``check(..., allow_failed=True)``.

Re-reading a position with the same record is at-least-once redelivery, which
is allowed: it is only counted (``Report.redelivered``).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Optional

#: ``(topic, partition, offset)`` -- where a record sits in the log.
Position = tuple[str, int, int]
#: Maps a value to ``(producer id, producer-local sequence number)``.
SeqOf = Callable[[bytes], tuple[Hashable, int]]


@dataclass(frozen=True)
class Ack:
    """A successful delivery report."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: bytes
    #: ``time.monotonic()`` when the report arrived (for pause statistics).
    at: float = field(default=0.0, compare=False)

    @property
    def pos(self) -> Position:
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class Failed:
    """A failed delivery report."""

    key: Optional[bytes]
    value: bytes
    error: Any
    topic: Optional[str] = None


@dataclass(frozen=True)
class Read:
    """One record as a consumer received it.

    ``session`` names one uninterrupted consumer session (a consumer between
    two rebalances, say); it enables the ``backwards`` check.  Reads must be
    passed to :func:`check` in the order each session received them.
    """

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: bytes
    session: Optional[Hashable] = None

    @property
    def pos(self) -> Position:
        return (self.topic, self.partition, self.offset)


@dataclass
class Report:
    """Outcome of :func:`check`.  Every list holds the offending items."""

    acked: int = 0
    reads: int = 0
    #: distinct positions read
    records: int = 0
    redelivered: int = 0
    lost: list[Ack] = field(default_factory=list)
    misplaced: list[tuple[Ack, Read]] = field(default_factory=list)
    duplicated: list[tuple[bytes, list[Position]]] = field(default_factory=list)
    phantom: list[tuple[Read, str]] = field(default_factory=list)
    conflicting: list[tuple[Position, list[tuple[Optional[bytes], bytes]]]] = field(default_factory=list)
    #: ``(topic, partition, first missing offset, last missing offset)``
    gaps: list[tuple[str, int, int, int]] = field(default_factory=list)
    #: ``(earlier read, later read)`` of one producer, in log order
    reordered: list[tuple[Read, Read]] = field(default_factory=list)
    #: ``(previous read, read)`` of one session and partition
    backwards: list[tuple[Read, Read]] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    allow_failed: bool = False

    PROBLEMS = ("lost", "misplaced", "duplicated", "phantom", "conflicting", "gaps",
                "reordered", "backwards", "failed")

    def problems(self) -> dict[str, list]:
        """``{kind: items}`` for every kind of problem that occurred."""
        found = {k: getattr(self, k) for k in self.PROBLEMS if getattr(self, k)}
        if self.allow_failed:
            found.pop("failed", None)
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary(self, examples: int = 5) -> str:
        """A few lines: the counts, then the first ``examples`` of each problem."""
        head = (f"{self.acked} acked, {len(self.failed)} failed, {self.reads} reads of "
                f"{self.records} positions ({self.redelivered} redelivered)")
        problems = self.problems()
        if not problems:
            return head + ": clean"
        lines = [head + ": " + ", ".join(f"{len(v)} {k}" for k, v in problems.items())]
        for kind, items in problems.items():
            lines.append(f"  {kind}:")
            lines += [f"    {_short(item)}" for item in items[:examples]]
            if len(items) > examples:
                lines.append(f"    ... and {len(items) - examples} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _short(item: Any, limit: int = 300) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(
    acks: Iterable[Ack],
    reads: Iterable[Read],
    *,
    failed: Iterable[Failed] = (),
    attempted: Optional[Iterable[bytes]] = None,
    seq_of: Optional[SeqOf] = None,
    allow_failed: bool = False,
) -> Report:
    """Check a delivery history; see the module docstring for the properties.

    ``attempted`` is every value any producer tried to send; a read of any
    other value is a phantom.  By default it is the values of ``acks`` and
    ``failed`` -- pass it explicitly if some deliveries were never reported.
    The consumers are assumed to have read every partition they touched up
    to its end: acknowledged records that were not read count as lost.
    """
    acks, reads, failed = list(acks), list(reads), list(failed)
    report = Report(acked=len(acks), reads=len(reads), failed=failed, allow_failed=allow_failed)
    attempted_values = (
        set(attempted) if attempted is not None
        else {a.value for a in acks} | {f.value for f in failed}
    )

    # What each position holds, according to the acks and according to the reads.
    acked_at: dict[Position, Ack] = {}
    ack_conflicts: dict[Position, set] = defaultdict(set)
    for a in acks:
        prev = acked_at.setdefault(a.pos, a)
        if (prev.key, prev.value) != (a.key, a.value):
            ack_conflicts[a.pos] |= {(prev.key, prev.value), (a.key, a.value)}

    log: dict[Position, Read] = {}  # first read of each position
    read_conflicts: dict[Position, set] = defaultdict(set)
    for r in reads:
        first = log.setdefault(r.pos, r)
        if first is r:
            continue
        if (first.key, first.value) == (r.key, r.value):
            report.redelivered += 1
        else:
            read_conflicts[r.pos] |= {(first.key, first.value), (r.key, r.value)}
    report.records = len(log)
    for pos in sorted(ack_conflicts.keys() | read_conflicts.keys()):
        report.conflicting.append((pos, sorted(ack_conflicts[pos] | read_conflicts[pos], key=repr)))

    positions_of: dict[bytes, list[Position]] = defaultdict(list)
    for pos in sorted(log):
        positions_of[log[pos].value].append(pos)
    report.duplicated = [(v, ps) for v, ps in positions_of.items() if len(ps) > 1]

    for pos in sorted(log):
        r = log[pos]
        a = acked_at.get(pos)
        if a is not None and (a.key, a.value) != (r.key, r.value):
            report.phantom.append((r, f"acked there: key={a.key!r} value={a.value!r}"))
        elif r.value not in attempted_values:
            report.phantom.append((r, "never produced"))

    for a in sorted(acks, key=lambda a: a.pos):
        where = positions_of.get(a.value)
        if not where:
            report.lost.append(a)
        elif a.pos not in where:
            report.misplaced.append((a, log[where[0]]))

    report.gaps = _gaps(log)
    if seq_of is not None:
        report.reordered = _reordered(log, seq_of)
    report.backwards = _backwards(reads)
    return report


def _gaps(log: dict[Position, Read]) -> list[tuple[str, int, int, int]]:
    offsets: dict[tuple[str, int], list[int]] = defaultdict(list)
    for topic, partition, offset in sorted(log):
        offsets[(topic, partition)].append(offset)
    gaps = []
    for (topic, partition), offs in sorted(offsets.items()):
        gaps += [(topic, partition, a + 1, b - 1) for a, b in zip(offs, offs[1:]) if b > a + 1]
    return gaps


def _reordered(log: dict[Position, Read], seq_of: SeqOf) -> list[tuple[Read, Read]]:
    last: dict[tuple[str, int, Hashable], tuple[int, Read]] = {}
    found = []
    for pos in sorted(log):
        r = log[pos]
        producer, seq = seq_of(r.value)
        k = (r.topic, r.partition, producer)
        prev = last.get(k)
        if prev is not None and seq < prev[0]:
            found.append((prev[1], r))
        if prev is None or seq > prev[0]:
            last[k] = (seq, r)
    return found


def _backwards(reads: list[Read]) -> list[tuple[Read, Read]]:
    last: dict[tuple[Hashable, str, int], Read] = {}
    found = []
    for r in reads:
        if r.session is None:
            continue
        k = (r.session, r.topic, r.partition)
        prev = last.get(k)
        if prev is not None and r.offset <= prev.offset:
            found.append((prev, r))
        last[k] = r
    return found


def assert_clean(report: Report, examples: int = 5) -> None:
    """Fail (``AssertionError``) with the report's summary unless it is clean."""
    assert report.ok, "delivery check failed: " + report.summary(examples)


def longest_pause(times: Iterable[float]) -> float:
    """Longest interval between consecutive timestamps (0 for fewer than two)."""
    ts = sorted(times)
    return max((b - a for a, b in zip(ts, ts[1:])), default=0.0)


class Recorder:
    """Thread-safe collector of a test's delivery history.

    ``recorder.on_delivery`` is a confluent-kafka ``on_delivery`` callback;
    ``recorder.read(msg, session)`` records a consumed message (messages
    carrying an error are refused with ``AssertionError``);
    ``recorder.attempt(value)`` records a value about to be produced (only
    needed when some deliveries may never be reported).  ``check()`` runs
    :func:`check` on a snapshot of what was collected.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acks: list[Ack] = []
        self._failed: list[Failed] = []
        self._reads: list[Read] = []
        self._attempted: list[bytes] = []

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            item = Ack(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                       at=time.monotonic())
            with self._lock:
                self._acks.append(item)
        else:
            with self._lock:
                self._failed.append(Failed(msg.key(), msg.value(), err, msg.topic()))

    def attempt(self, value: bytes) -> None:
        with self._lock:
            self._attempted.append(value)

    def read(self, msg: Any, session: Optional[Hashable] = None) -> None:
        assert msg.error() is None, f"not a record: {msg.error()}"
        item = Read(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), session)
        with self._lock:
            self._reads.append(item)

    @property
    def acks(self) -> list[Ack]:
        with self._lock:
            return list(self._acks)

    @property
    def failed(self) -> list[Failed]:
        with self._lock:
            return list(self._failed)

    @property
    def reads(self) -> list[Read]:
        with self._lock:
            return list(self._reads)

    def check(self, **kwargs: Any) -> Report:
        """:func:`check` on everything recorded so far (``attempted`` defaults
        to the values passed to :meth:`attempt`, if any)."""
        with self._lock:
            acks, failed, reads = list(self._acks), list(self._failed), list(self._reads)
            if self._attempted:
                kwargs.setdefault("attempted", list(self._attempted))
        return check(acks, reads, failed=failed, **kwargs)
