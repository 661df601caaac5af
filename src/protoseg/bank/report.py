"""What a re-clustering changed: sub-clusters per class, members moved, prototypes recomputed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protoseg.bank.core import ImageBank
from protoseg.bank.errors import BankError


@dataclass(frozen=True)
class ClassChange:
    """One class before and after: sub-clusters holding active members, members moved, mean distance."""

    name: str
    members: int
    clusters_before: int
    clusters_after: int
    moved: int
    distance_before: float | None  # mean cosine distance of its active members to their prototype
    distance_after: float | None


@dataclass(frozen=True)
class ReclusterReport:
    """The changes of :func:`protoseg.bank.recluster` (``before`` -> ``after``), for a status line or a log."""

    k_before: int
    k_after: int
    classes: tuple[ClassChange, ...]
    prototypes: int  # (class, sub-cluster) prototypes recomputed from the new clusters; 0 when impossible
    problem: str | None = None  # why the prototypes could not be computed

    @property
    def moved(self) -> int:
        """Members whose sub-cluster changed, all classes."""
        return sum(c.moved for c in self.classes)

    def summary(self) -> str:
        """One line: K, per class sub-clusters and members moved, prototypes recomputed, mean distance."""
        k = f"K={self.k_after}" + (f" (was {self.k_before})" if self.k_after != self.k_before else "")
        parts = [
            f"{c.name} {c.clusters_before}→{c.clusters_after} sub-clusters, {c.moved}/{c.members} moved"
            for c in self.classes
        ]
        protos = (
            f"{self.prototypes} prototypes recomputed ({len(self.classes)} classes × {self.k_after})"
            if self.prototypes
            else f"prototypes not recomputed: {self.problem}"
        )
        before, after = (
            _mean([c.distance_before for c in self.classes]),
            _mean([c.distance_after for c in self.classes]),
        )
        spread = (
            f"; mean distance to prototype {before:.3f} → {after:.3f}"
            if before is not None and after is not None
            else ""
        )
        return f"re-clustered with {k}: {'; '.join(parts)}; {protos}{spread}"


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _class_change(before: ImageBank, after: ImageBank, c: int) -> ClassChange:
    """The change of class ``c`` between two banks holding the same members."""
    rows = [i for i, m in enumerate(before.members) if m.class_index == c]
    active_b = [i for i in rows if before.members[i].active]
    active_a = [i for i in rows if after.members[i].active]

    def distance(bank: ImageBank, active: list[int]) -> float | None:
        return float(np.mean([bank.members[i].distance for i in active])) if active else None

    return ClassChange(
        name=before.class_spec.names[c],
        members=len(rows),
        clusters_before=len({before.members[i].cluster for i in active_b}),
        clusters_after=len({after.members[i].cluster for i in active_a}),
        moved=sum(before.members[i].cluster != after.members[i].cluster for i in rows),
        distance_before=distance(before, active_b),
        distance_after=distance(after, active_a),
    )


def recluster_report(before: ImageBank, after: ImageBank) -> ReclusterReport:
    """What re-clustering ``before`` into ``after`` changed (same members, same order); computes the new
    prototypes to count them (a class without active members has none: said in ``problem``)."""
    if [m.member_id for m in before.members] != [m.member_id for m in after.members]:
        raise BankError("a re-clustering report needs the same bank members before and after")
    changes = tuple(_class_change(before, after, c) for c in range(before.class_spec.num_classes))
    try:
        prototypes, problem = int(np.prod(after.prototypes().shape[:2])), None
    except BankError as exc:
        prototypes, problem = 0, str(exc)
    return ReclusterReport(before.k, after.k, changes, prototypes, problem)
