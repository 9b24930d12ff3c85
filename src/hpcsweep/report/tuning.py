"""Tuned comparisons: configurations that differ only in tuned keys are one set-up at its best value.

An optimizer compared at one hand-picked learning rate ranks the learning rates, not the optimizers.
A grid that names tuned keys (`tune: [lr]`, tag `hpcsweep.tuned` on its runs) tries several values
per set-up; here the configurations that differ only in those keys are grouped, each group's best
value is the one with the highest mean val/acc over its finished seeds (never test/acc), and a
warning is written when that value sits at the edge of the range tried. Configurations of runs
that tuned nothing are groups of one.
"""

from __future__ import annotations

import dataclasses
import math

from hpcsweep.report.records import ACCURACY, IDENTITY, Configuration
from hpcsweep.report.statistics import mean_or_nan

DEFAULT_LABEL_KEYS = ("model", "optimizer", "batch_size")  # when nothing varies, still say what ran


def label_keys(varying: list[str], tuned: tuple[str, ...] = ()) -> list[str]:
    """The keys a label names: those that vary between configurations, less the tuned ones."""
    kept = [name for name in varying if name not in tuned]
    return kept or [name for name in DEFAULT_LABEL_KEYS if name in IDENTITY and name not in tuned]


def label_of(key: tuple[str, ...], names: list[str]) -> str:
    return ", ".join(f"{name}={key[IDENTITY.index(name)]}" for name in names)


def mean_accuracy(configuration: Configuration) -> float:
    return mean_or_nan(run.final(ACCURACY) for run in configuration.finished)


def as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def sorted_values(values: set[str]) -> list[str]:
    """Numbers in numeric order (0.01 before 0.1 before 1), anything else as text."""
    return sorted(values, key=float) if all(as_number(value) is not None for value in values) else sorted(values)


@dataclasses.dataclass(frozen=True)
class TunedGroup:
    """One set-up: its configurations differ only in the `tuned` keys (one configuration if none)."""

    label: str  # the set-up without its tuned keys
    tuned: tuple[str, ...]
    members: list[Configuration]
    chosen: Configuration | None  # the best value by mean val/acc; None when no member finished

    def values(self, name: str) -> list[str]:
        """The values of tuned key `name` tried in this group, in order."""
        return sorted_values({member.key[IDENTITY.index(name)] for member in self.members})

    @property
    def range_text(self) -> str:
        """ "lr 0.01..0.3, 4 values"; empty when nothing was tuned."""
        parts = []
        for name in self.tuned:
            tried = self.values(name)
            span = tried[0] if len(tried) == 1 else f"{tried[0]}..{tried[-1]}"
            parts.append(f"{name} {span}, {len(tried)} value{'s' if len(tried) != 1 else ''}")
        pruned = sum(len(member.pruned) for member in self.members)
        return "; ".join(parts) + (f" ({pruned} run{'s' if pruned != 1 else ''} pruned)" if pruned and parts else "")

    def shown(self, configuration: Configuration) -> bool:
        """Whether the configuration stands for its set-up in the table: the chosen one, or every
        member while none finished (so that each shows its own failure)."""
        return self.chosen is None or configuration is self.chosen

    def edge_warnings(self) -> list[str]:
        """A sentence per tuned number whose best value is the smallest or largest of several tried."""
        if self.chosen is None:
            return []
        warnings = []
        for name in self.tuned:
            tried = self.values(name)
            best = self.chosen.key[IDENTITY.index(name)]
            if len(tried) < 2 or any(as_number(value) is None for value in tried):
                continue
            edge = "smallest" if best == tried[0] else "largest" if best == tried[-1] else None
            if edge:
                warnings.append(f"best {name}={best} is the {edge} tried for {self.label}: extend the range.")
        return warnings


def best_member(members: list[Configuration]) -> Configuration | None:
    """The member with the highest mean final val/acc over its finished seeds (ties: by label)."""
    scored = [(mean_accuracy(member), member.label, member) for member in members]
    scored = [entry for entry in scored if not math.isnan(entry[0])]
    return min(scored, key=lambda entry: (-entry[0], entry[1]))[2] if scored else None


def tuned_groups(found: list[Configuration], varying: list[str]) -> list[TunedGroup]:
    """The configurations grouped into set-ups: equal in every IDENTITY key but their tuned ones."""
    grouped: dict[tuple, list[Configuration]] = {}
    for configuration in found:
        tuned = configuration.tuned
        rest = tuple("*" if name in tuned else value for name, value in zip(IDENTITY, configuration.key))
        grouped.setdefault((tuned, rest), []).append(configuration)
    return [
        TunedGroup(label_of(members[0].key, label_keys(varying, tuned)), tuned, members, best_member(members))
        for (tuned, _), members in grouped.items()
    ]
