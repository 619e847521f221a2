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
WITH_LABELS, WITHOUT_LABELS = "correct", "logprob"  # what `auto` becomes (docs/results.md#label-free)


def resolve(name: str, labelled: bool, threshold: float | None = None) -> str:
    """The selector that runs: `auto` is rejection sampling where references (or a verifier) judge the
    samples, the mean token log-prob where nothing does (the best of the label-free selectors in the ablation,
    within noise of self-consistency, and it needs no answer to extract), and the CDM line when a threshold is given (--threshold
    is a CDM line unless a selector says otherwise); any other name is itself."""
    if name != AUTO:
        return name
    if threshold is not None:
        return "cdm"
    return WITH_LABELS if labelled else WITHOUT_LABELS
LABEL_FREE = ("cdm", "logprob", "majority", "majority_cdm", "random")  # what `ablate --label-free` compares
COMPARED = ("correct", "cdm", "logprob", "majority", "majority_cdm", "random")  # `ablate`'s default set
