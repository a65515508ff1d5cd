"""The embedded durable log: append, read from an offset, group offsets, atomic transactions, and
a consumer group polling it."""

import threading

import pytest

from feedback.local_log import LocalLog
from feedback.source import LocalLogSource
from feedback.topics import FEEDBACK


def test_append_read_commit_and_reopen(tmp_path):
    log = LocalLog(tmp_path / "log.db")
    offsets = log.append([("t1", b"k", b"a"), ("t2", None, b"b"), ("t1", b"k", b"c")])
    assert offsets == sorted(offsets) and len(set(offsets)) == 3
    assert [r.value for r in log.read(0, topic="t1")] == [b"a", b"c"]
    assert [r.value for r in log.read(offsets[1])] == [b"b", b"c"]
    assert log.committed("g", "t1") == 0
    log.commit("g", "t1", offsets[0] + 1)
    log.close()

    reopened = LocalLog(tmp_path / "log.db")
    assert reopened.committed("g", "t1") == offsets[0] + 1
    assert [r.value for r in reopened.read(reopened.committed("g", "t1"), topic="t1")] == [b"c"]
    assert reopened.stats() == (3, 3)


def test_a_failed_transaction_leaves_nothing(tmp_path):
    log = LocalLog(tmp_path / "log.db")
    with pytest.raises(RuntimeError), log.transaction() as tx:
        tx.append("t", None, b"x")
        raise RuntimeError("crash mid-write")
    assert log.read(0) == []


def test_delete_before(tmp_path):
    log = LocalLog(tmp_path / "log.db")
    offsets = log.append([("t", None, bytes([i])) for i in range(5)])
    log.delete_before(offsets[3])
    assert [r.offset for r in log.read(0)] == offsets[3:]


def test_a_poll_on_a_quiet_log_waits_for_the_next_event_as_kafkas_does(tmp_path):
    # A reader that loops on poll (the canary's evidence feed, the trainer) must sleep while the log
    # is quiet, not spin a core re-reading it.
    source = LocalLogSource(tmp_path / "log.db", "g", (FEEDBACK,))
    writer = LocalLog(tmp_path / "log.db")
    assert source.poll(timeout_s=0) == []
    later = threading.Timer(0.3, writer.append, [[(FEEDBACK, None, b"not an event")]])
    later.start()
    delivered = source.poll(timeout_s=60)
    later.join()
    assert [(d.offset, d.event, d.raw) for d in delivered] == [(1, None, b"not an event")]
