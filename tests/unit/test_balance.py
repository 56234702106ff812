"""The balancer's choices among a variant's replicas (rollout.balance): least outstanding
requests, ties rotating, ejected replicas and unready targets skipped, a retry never back to the
replica it left."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rollout.balance import Balancer, Readiness, Replica


@dataclass(eq=False)
class Target:
    name: str
    load: int = 0
    readiness: Readiness = field(default_factory=lambda: Readiness(Replica("127.0.0.1", 1)))

    def available(self) -> bool:
        return self.readiness.available()

    def outstanding(self) -> int:
        return self.load


def test_the_least_loaded_replica_is_picked_and_ties_rotate() -> None:
    a, b, c = Target("a", 3), Target("b", 1), Target("c", 2)
    balancer = Balancer((a, b, c))
    assert [balancer.pick().name for _ in range(3)] == ["b", "b", "b"]
    b.load = 3
    picks = {balancer.pick().name for _ in range(3)}
    assert picks == {"c"}
    a.load = b.load = c.load = 0
    assert {balancer.pick().name for _ in range(3)} == {"a", "b", "c"}


def test_ejected_replicas_and_unready_targets_are_skipped_until_back() -> None:
    a, b = Target("a", 5), Target("b", 0)
    balancer = Balancer((a, b))
    b.readiness.replica.eject("connect failed")
    assert {balancer.pick().name for _ in range(4)} == {"a"}
    b.readiness.replica.admit()
    b.readiness.mark_unready()  # Triton said the model is not loaded there
    assert {balancer.pick().name for _ in range(4)} == {"a"}
    b.readiness.unready_until = 1.0  # the hold has passed: one request finds out again
    assert balancer.pick().name == "b"


def test_with_every_replica_ejected_one_is_still_tried() -> None:
    a, b = Target("a", 2), Target("b", 1)
    for t in (a, b):
        t.readiness.replica.eject("failed its readiness check")
    assert Balancer((a, b)).pick().name == "b"


def test_a_retry_goes_to_another_available_replica_or_nowhere() -> None:
    a, b, c = Target("a"), Target("b", 4), Target("c", 1)
    balancer = Balancer((a, b, c))
    assert balancer.pick_other(a) is c
    c.readiness.replica.eject("connect failed")
    assert balancer.pick_other(a) is b
    b.readiness.replica.eject("connect failed")
    assert balancer.pick_other(a) is None
    assert Balancer((a,)).pick_other(a) is None


def test_a_variant_without_targets_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one target"):
        Balancer(())
