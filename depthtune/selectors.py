"""The selectors, in one table: what each ranks samples by, and what it needs.

Read by the config (validation), the select stage (which applies them), the ablation (which compares
them) and the command line's help. depthtune.stages.select says what each one does.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Selector:
    name: str
    field: str | None
    """The scored sample's field it ranks by, best first (None: a seeded random order)."""
    keeps_all: bool = False
    """A filter: it keeps every eligible sample (no line)."""
    votes: bool = False
    """Eligible only when the sample agrees with its prompt's majority answer."""
    needs_labels: bool = False
    cdm: bool = False
    """Needs CDM from the score stage."""


TABLE = (
    Selector("correct", None, keeps_all=True, needs_labels=True),
    Selector("majority", "agreement", keeps_all=True, votes=True),
    Selector("majority_cdm", "cdm", votes=True, cdm=True),
    Selector("cdm", "cdm", cdm=True),
    Selector("logprob", "mean_logprob"),
    Selector("random", None, keeps_all=True),
    Selector("entropy_collapse", "entropy_collapse", cdm=True),
    Selector("attention_sparsification", "attention_sparsification", cdm=True),
    Selector("basin_resistance", "basin_resistance", cdm=True),
)
SELECTORS = {s.name: s for s in TABLE}
AUTO = "auto"
WITH_LABELS, WITHOUT_LABELS = "correct", "majority"  # what `auto` becomes (docs/results.md#label-free)
NO_VOTE = "logprob"  # auto without labels where too few answers agree to vote on (open-ended answers)


def resolve(name: str, labelled: bool, threshold: float | None = None, votes: bool = True) -> str:
    """The selector that runs: `auto` is rejection sampling where references (or a verifier) judge the
    samples; where nothing does, self-consistency (the best label-free selector in the two label-free
    ablations, docs/results.md#label-free: tied on the built-in suites, 6.6 points above the mean log-prob on
    the procedural task; ranking its pool by CDM added nothing), or the mean token log-prob when the answers
    give no majority to vote with (votes false: open-ended answers); the CDM line when a threshold is given
    (--threshold is a CDM line unless a selector says otherwise). Any other name is itself."""
    if name != AUTO:
        return name
    if threshold is not None:
        return "cdm"
    return WITH_LABELS if labelled else WITHOUT_LABELS if votes else NO_VOTE
LABEL_FREE = ("cdm", "logprob", "majority", "majority_cdm", "random")  # what `ablate --label-free` compares
COMPARED = ("correct", "cdm", "logprob", "majority", "majority_cdm", "random")  # `ablate`'s default set
