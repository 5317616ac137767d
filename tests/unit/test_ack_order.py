from streams.ack_order import InOrderAcks


def test_acks_are_released_only_when_every_earlier_record_is_done():
    acks: InOrderAcks[str] = InOrderAcks()
    for offset in (10, 11, 12):
        acks.register("p0", offset, f"m{offset}")
    assert acks.done("p0", 11, "m11") == []
    assert acks.done("p0", 12, "m12") == []
    assert acks.done("p0", 10, "m10") == ["m10", "m11", "m12"]
    assert acks.pending() == 0


def test_a_single_slow_record_at_the_head_holds_back_the_rest():
    # The faust-streaming #606 shape: committed head in flight, successors done.
    acks: InOrderAcks[int] = InOrderAcks()
    for offset in range(5):
        acks.register("p", offset, offset)
    released = [t for offset in range(1, 5) for t in acks.done("p", offset, offset)]
    assert released == []
    assert acks.done("p", 0, 0) == [0, 1, 2, 3, 4]


def test_partitions_are_independent():
    acks: InOrderAcks[str] = InOrderAcks()
    acks.register("a", 1, "a1")
    acks.register("b", 1, "b1")
    assert acks.done("b", 1, "b1") == ["b1"]
    assert acks.pending() == 1


def test_done_twice_or_unknown_releases_nothing():
    acks: InOrderAcks[str] = InOrderAcks()
    acks.register("a", 1, "a1")
    assert acks.done("a", 1, "a1") == ["a1"]
    assert acks.done("a", 1, "a1") == []
    assert acks.done("zz", 7, "zz") == []


def test_forget_drops_a_revoked_partition():
    acks: InOrderAcks[str] = InOrderAcks()
    acks.register("a", 1, "a1")
    acks.register("a", 2, "a2")
    assert acks.forget("a") == 2
    assert acks.done("a", 1, "a1") == []
    assert acks.pending() == 0


def test_a_seek_back_drops_the_pending_entries_it_will_redeliver():
    acks: InOrderAcks[str] = InOrderAcks()
    acks.register("a", 5, "x5")
    acks.register("a", 6, "x6")
    acks.register("a", 5, "y5")  # delivered again after a seek to the committed offset
    assert acks.done("a", 6, "x6") == []  # the old in-flight copies no longer count
    assert acks.done("a", 5, "x5") == []
    assert acks.pending() == 1
    assert acks.done("a", 5, "y5") == ["y5"]
    assert acks.pending() == 0
