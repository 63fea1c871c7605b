"""The write lease: a region fences itself when no peer hears it, and a forced fail-over can wait for that.

Each region's heartbeat store is its own replica; `Net.deliver` replicates every
region's items to the others except across a cut, as the replicator would.
"""

from __future__ import annotations

import math
import threading

import pytest

from failover.lease import IN_FLIGHT_SECONDS, Lease, silent_for, wait_seconds
from failover.store import Heartbeat
from ledger.errors import RegionFenced

LEASE = 10.0


class Net:
    def __init__(self, names: list[str]) -> None:
        self.now = 1_000.0
        self.replicas: dict[str, dict[str, object]] = {n: {} for n in names}
        self.cuts: set[tuple[str, str]] = set()
        self.leases = {n: Lease(n, names, _Replica(self, n), LEASE, clock=lambda: self.now) for n in names}

    def deliver(self) -> None:
        for source, items in self.replicas.items():
            for key in (source, "x#" + source):
                if key in items:
                    for dest in self.replicas:
                        if dest != source and (source, dest) not in self.cuts:
                            self.replicas[dest][key] = items[key]

    def rounds(self, seconds: float, step: float = 1.0) -> None:
        """Every region ticks, then replication delivers, once per `step` of simulated time."""
        for _ in range(int(seconds / step)):
            self.now += step
            for lease in self.leases.values():
                lease.tick()
            self.deliver()


class _Replica:
    """HeartbeatStore's interface over one region's replica in `Net`."""

    def __init__(self, net: Net, region: str) -> None:
        self.net, self.region = net, region

    def beat(self, heartbeat: Heartbeat) -> None:
        self.net.replicas[self.region][heartbeat.region] = heartbeat

    def set_exclusions(self, region: str, excluded: set[str]) -> None:
        self.net.replicas[self.region]["x#" + region] = set(excluded)

    def read(self):
        items = self.net.replicas[self.region]
        beats = {k: v for k, v in items.items() if not k.startswith("x#")}
        return beats, {k[2:]: v for k, v in items.items() if k.startswith("x#")}


@pytest.fixture
def net() -> Net:
    net = Net(["a", "b"])
    net.rounds(3)
    return net


def test_regions_that_hear_each_other_take_writes(net):
    assert not any(lease.fenced() for lease in net.leases.values())
    net.leases["a"].check()


def test_a_region_that_has_not_been_heard_yet_takes_no_writes():
    net = Net(["a", "b"])
    with pytest.raises(RegionFenced):
        net.leases["a"].check()


def test_a_partition_fences_both_sides_after_the_lease_and_healing_lifts_it(net):
    net.cuts = {("a", "b"), ("b", "a")}
    net.rounds(LEASE - 2)
    assert not net.leases["a"].fenced(), "fenced before its lease ran out"
    net.rounds(3)
    assert net.leases["a"].fenced() and net.leases["b"].fenced()
    with pytest.raises(RegionFenced) as refused:
        net.leases["a"].check()
    assert refused.value.code == "region_fenced"
    net.cuts = set()
    net.rounds(3)
    assert not any(lease.fenced() for lease in net.leases.values())


def test_a_one_way_cut_fences_both_sides_since_renewal_is_a_round_trip(net):
    net.cuts = {("b", "a")}  # a's beats reach b; b's never reach a, so b's echoes of a are lost too
    net.rounds(LEASE + 2)
    assert net.leases["a"].fenced() and net.leases["b"].fenced()


def test_a_region_still_heard_by_a_third_keeps_its_lease_and_cannot_be_failed_over_by_force():
    net = Net(["a", "b", "c"])
    net.rounds(3)
    net.cuts = {("a", "b"), ("b", "a")}
    net.rounds(LEASE + IN_FLIGHT_SECONDS + 5)
    assert not net.leases["a"].fenced(), "a hears c"
    beats, _ = _Replica(net, "b").read()
    assert wait_seconds(beats, "a", net.now, "b") > 0, "b would take a's accounts while a still writes them"


def test_a_forced_fail_over_waits_until_nobody_heard_the_old_home_for_its_lease_and_in_flight_time():
    net = Net(["a", "b", "c"])
    net.rounds(3)
    net.cuts = {(x, y) for x in "abc" for y in "abc" if "a" in (x, y) and x != y}
    cut_at = net.now
    beats, _ = _Replica(net, "b").read()
    assert wait_seconds(beats, "a", net.now, "b") > LEASE
    net.rounds(LEASE + 1)
    assert net.leases["a"].fenced(), "a, cut off from everyone, fenced itself"
    assert not net.leases["b"].fenced(), "b and c hear each other"
    net.rounds(IN_FLIGHT_SECONDS)
    beats, _ = _Replica(net, "b").read()
    assert wait_seconds(beats, "a", net.now, "b") == 0
    assert silent_for(beats, "a", net.now) >= net.now - cut_at - 1


def test_an_excluded_region_stays_fenced_though_it_hears_peers_until_the_exclusion_is_lifted(net):
    net.cuts = {("a", "b"), ("b", "a")}
    net.rounds(LEASE + IN_FLIGHT_SECONDS + 1)
    _Replica(net, "b").set_exclusions("b", {"a"})
    net.rounds(2)
    assert not net.leases["b"].fenced(), "b failed a over by force: it no longer waits to hear it"
    net.cuts = set()
    net.rounds(3)
    assert net.leases["a"].fenced(), "a took writes again for accounts b took over"
    with pytest.raises(RegionFenced, match="forced fail-over"):
        net.leases["a"].check()
    _Replica(net, "b").set_exclusions("b", set())
    net.rounds(3)
    assert not net.leases["a"].fenced()


def test_nobody_ever_heard_is_silent_forever():
    assert silent_for({}, "a", 5.0) == math.inf


def test_a_forced_fail_over_cannot_tell_silence_from_a_third_region_it_does_not_hear():
    net = Net(["a", "b", "c"])
    net.rounds(3)
    net.cuts = {("a", "b"), ("b", "a"), ("c", "b"), ("b", "c")}  # a and c still hear each other
    net.rounds(LEASE + IN_FLIGHT_SECONDS + 5)
    assert not net.leases["a"].fenced()
    beats, _ = _Replica(net, "b").read()
    assert wait_seconds(beats, "a", net.now, "b") == math.inf


def test_a_region_back_from_a_split_writes_again_only_once_every_peer_heard_it():
    """Else, healed towards c first, it could write accounts b took over before b's exclusion reached it."""
    net = Net(["a", "b", "c"])
    net.rounds(3)
    net.cuts = {(x, y) for x in "abc" for y in "abc" if "a" in (x, y) and x != y}
    net.rounds(LEASE + 2)
    assert net.leases["a"].fenced()
    net.cuts = {("a", "b"), ("b", "a")}  # a and c hear each other again; b still cut off from a
    net.rounds(3)
    assert net.leases["a"].fenced(), "renewed by c alone after a lapse"
    net.cuts = set()
    net.rounds(3)
    assert not net.leases["a"].fenced()


def test_with_two_regions_a_forced_fail_over_has_no_witness_and_never_waits_the_lease_out():
    """Seed 18346634: b forced a's accounts over (excluding a, so b writes alone); a, cut off and unaware,
    waited out b's lease and forced b's accounts over too: two writers. With two regions the wait never ends."""
    net = Net(["a", "b"])
    net.rounds(3)
    net.cuts = {("a", "b"), ("b", "a")}
    net.rounds(LEASE + IN_FLIGHT_SECONDS + 1)
    for asking, region in (("b", "a"), ("a", "b")):
        beats, _ = _Replica(net, asking).read()
        assert wait_seconds(beats, region, net.now, asking) == math.inf


class _StopsAfterBeats(_Replica):
    """A replica that ends `Lease.run` after `beats` beats (each beat is one pass of its loop)."""

    def __init__(self, net: Net, region: str, stop, beats: int) -> None:
        super().__init__(net, region)
        self.stop, self.left = stop, beats

    def beat(self, heartbeat: Heartbeat) -> None:
        super().beat(heartbeat)
        self.left -= 1
        if self.left == 0:
            self.stop.set()


def _run(names: list[str], beats: int, while_held) -> list[str]:
    net, stop, logged = Net(names), threading.Event(), []
    # A short lease: the loop waits a fifth of it between beats.
    lease = Lease(names[0], names, _StopsAfterBeats(net, names[0], stop, beats), 0.25, clock=lambda: net.now)
    lease.run(stop, logged.append, while_held)
    return logged


def test_the_lease_loop_runs_the_settles_kept_while_fenced_after_every_beat_that_leaves_it_held():
    calls: list[int] = []

    _run(["us-east-1"], beats=3, while_held=lambda: calls.append(1))  # alone: held from the first beat

    assert calls == [1, 1, 1]


def test_the_lease_loop_runs_nothing_while_fenced():
    calls: list[int] = []

    _run(["us-east-1", "eu-west-1"], beats=2, while_held=lambda: calls.append(1))  # its peer never heard it

    assert calls == []


def test_a_failing_settle_is_logged_and_tried_again_after_the_next_beat():
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise RuntimeError("store down")

    logged = _run(["us-east-1"], beats=2, while_held=failing)

    assert calls == [1, 1]
    assert sum("settling what was kept while fenced failed (RuntimeError)" in line for line in logged) == 2
