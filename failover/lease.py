"""The write lease: a region that has not heard from any peer for its lease time takes no guarded writes.

Each region beats into its own item of the replicated regions table
(`failover.store`) a few times per lease, and reads the others'. A peer's beat
echoes the newest beat it heard from each region; the lease runs `lease_seconds`
from this region's newest beat that came back so: a round trip, so a one-way
partition fences too, and every region measures only its own clock. The items travel like every ledger item, so a
region cut off from the others stops hearing them exactly when its writes stop
reaching them. Without a renewal for `lease_seconds`, `check` refuses (503
`region_fenced`) until a peer is heard again.

A forced fail-over from region A to B *excludes* A: no region waits to hear A any
more (with two regions B could not write otherwise), and A stays fenced from the
moment it hears a beat that excludes it until a fail-over back to it lifts the
exclusion, since its replica of the moved accounts' items may still be older than
the move. The exclusion travels in B's own beats, and a region whose lease lapsed
(A, cut off) is renewed only once *every* peer has heard it again, B included: so
A cannot take writes again before it has seen B's exclusion.

That makes a forced fail-over safe to wait for: once nobody has heard region A for
its lease time plus `IN_FLIGHT_SECONDS` (the longest a write that passed the check
can still take to commit), A takes no more writes, whether it is down or alive and
cut off. `wait_seconds` measures that from what the new home's replica holds: A's
own beat, and the beat of A's that each other region last heard (a region still
heard by a third one is not cut off, and is not failed over by force).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ledger.errors import RegionFenced

from .store import Heartbeat, HeartbeatStore

DEFAULT_LEASE_SECONDS = 10.0
# A write checks the lease before each attempt, and an attempt ends within the service's
# retry budget (5 s) and botocore's timeouts: after this, nothing that passed is in flight.
IN_FLIGHT_SECONDS = 10.0


class Lease:
    """One region's side of the lease: beat, listen, and refuse writes when no peer is heard."""

    def __init__(
        self,
        region: str,
        peers: Sequence[str],
        store: HeartbeatStore,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.region = region
        self.peers = [p for p in peers if p != region]
        self.lease_seconds = lease_seconds
        self._store = store
        self._clock = clock
        self._seen: dict[str, float] = {}  # peer -> its beat_at last read
        self._echoes: dict[str, float] = {}  # peer -> our newest beat it echoed back (our clock)
        self._lapsed = True  # from the start, and after a lapse: renewed only once every peer is heard
        self.excluded: frozenset[str] = frozenset()  # peers this region failed over from by force
        self.excluded_by: set[str] = set()  # peers that failed over from this region by force
        self._out: set[str] = set()  # peers anyone failed over from: nobody waits to hear them
        self._lock = threading.Lock()

    def add_peer(self, region: str) -> None:
        """A region joined: echo its beats (its lease needs them) and count it among the peers."""
        with self._lock:
            if region != self.region and region not in self.peers:
                self.peers = [*self.peers, region]

    def tick(self) -> None:
        """Read the peers' beats, then beat: echoing what we heard, naming whom we excluded."""
        beats, exclusions = self._store.read()
        now = self._clock()
        with self._lock:
            self.excluded = frozenset(exclusions.get(self.region, set()))
            self.excluded_by = {p for p, beat in beats.items() if p != self.region and self.region in beat.excluded}
            self._out = set(self.excluded).union(*(b.excluded for p, b in beats.items() if p != self.region))
            for peer in self.peers:
                beat = beats.get(peer)
                if beat is None:
                    continue
                self._seen[peer] = beat.beat_at
                echoed = beat.heard.get(self.region)  # a beat of ours, so dated by our clock
                if echoed is not None and echoed > self._echoes.get(peer, -math.inf):
                    self._echoes[peer] = echoed
            self._lapsed = self._fenced_now(now)
            heard = dict(self._seen)
            excluded = self.excluded
        self._store.beat(Heartbeat(self.region, now, self.lease_seconds, heard, excluded, self.fenced()))

    def fenced(self) -> bool:
        with self._lock:
            return self._fenced_now(self._clock())

    def _fenced_now(self, now: float) -> bool:
        """Held while a peer echoed a beat of ours within the lease time; after a lapse (or at the start),
        only once every peer has: a region back from a split hears, before it writes again, every peer
        that may have failed it over by force (the exclusion travels in that peer's own beats)."""
        if self.excluded_by:
            return True
        required = [p for p in self.peers if p not in self._out]
        if not required:
            return False  # one region, or its only peers were failed over from: nobody to split from
        fresh = [p for p in required if now - self._echoes.get(p, -math.inf) <= self.lease_seconds]
        return len(fresh) < len(required) if self._lapsed else not fresh

    def check(self) -> None:
        """Raise `RegionFenced` while this region may not take guarded writes."""
        if self.excluded_by:
            raise RegionFenced(
                f"{', '.join(sorted(self.excluded_by))} took this region's accounts over by a forced fail-over; "
                f"{self.region} takes no writes until one fails back to it (`ledger regions failover --to {self.region}`)",
                region=self.region,
            )
        if self.fenced():
            raise RegionFenced(
                f"{self.region} has heard from none of {', '.join(self.peers)} for {self.lease_seconds:g} s "
                "and takes no writes until it does; retry, or write in another region",
                region=self.region,
            )

    def run(
        self, stop: threading.Event, log: Callable[[str], None] = lambda message: None, while_held: Callable[[], Any] | None = None
    ) -> None:
        """Tick until `stop`, a few times per lease; a failed tick is one missed beat. `while_held` runs after
        every tick that leaves the lease held (the projector's settles kept while fenced)."""
        interval = min(2.0, max(0.05, self.lease_seconds / 5))
        was_fenced: bool | None = None
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the store may be down; the lease then runs out
                log(f"{self.region}: heartbeat failed ({type(exc).__name__}); the lease runs out if this lasts")
            fenced = self.fenced()
            if not fenced and while_held is not None:
                try:
                    while_held()
                except Exception as exc:  # noqa: BLE001 - tried again after the next beat
                    log(f"{self.region}: settling what was kept while fenced failed ({type(exc).__name__}); retrying")
            if was_fenced is not None and fenced != was_fenced:
                log(f"{self.region}: " + ("fenced: it takes no writes" if fenced else "lease renewed: it takes writes"))
            was_fenced = fenced
            stop.wait(interval)


def silent_for(beats: dict[str, Heartbeat], region: str, now: float) -> float:
    """Seconds since `region`'s newest beat that anyone holds (by its clock against `now`; infinite if none)."""
    last = [beats[region].beat_at] if region in beats else []
    last += [beat.heard[region] for name, beat in beats.items() if name != region and region in beat.heard]
    return now - max(last) if last else math.inf


def wait_seconds(
    beats: dict[str, Heartbeat], region: str, now: float, asking: str, default_lease: float = DEFAULT_LEASE_SECONDS
) -> float:
    """How much longer until `region` has surely stopped writing (0: it has), as `asking` can tell.

    Every third region must be heard by `asking` right now (its beat fresh within its
    lease): one that is not might still be hearing `region`, and that cannot be told
    apart from silence (infinite: wait for a heal, or override). And there must be a
    third region at all, a witness: with two, silence cannot tell a dead region from
    one cut off that has itself failed `asking` over by force (it excluded `asking`, so
    it writes alone, and its lease no longer depends on hearing anyone); forcing back
    from this side would make two writers. A two-region split needs `--override-lease`.
    """
    if not any(name not in (region, asking) for name in beats):
        return math.inf
    for name, beat in beats.items():
        if name not in (region, asking) and now - beat.beat_at > beat.lease_seconds:
            return math.inf
    lease = beats[region].lease_seconds if region in beats else default_lease
    return max(0.0, lease + IN_FLIGHT_SECONDS - silent_for(beats, region, now))
