"""Matched cells: the labels, accuracies and pairing key that the sweep's findings and plots share.

Two cells are matched on an axis when they agree on every other setting (seed included); an
axis' effect is then read off such pairs rather than off a mix of settings.
"""
from __future__ import annotations


def label(settings: dict, key: str) -> str:
    v = settings[key]
    if key == "method":
        return v if v == "full" else f"{v} r{settings['rank']}"
    if key == "teachers":
        return "+".join(v)
    return "+".join(v) if isinstance(v, list) else str(v)


def cell_accuracy(r: dict, cat: str | None = None):
    b = r["battery"]
    a = b["all"] if cat is None else b["category"].get(cat, {})
    return None if a.get("accuracy") is None else 100 * a["accuracy"]


def rest_key(r: dict, axis: str) -> str:
    """Every setting of a cell but `axis` (a method's rank goes with the method), seed included."""
    rest = {k: v for k, v in r["settings"].items() if k != axis and not (axis == "method" and k == "rank")}
    return repr(sorted(rest.items())) + repr(sorted(r["overrides"].items()))
