"""`depthtune sweep` (and the selector ablation): grids of runs built on distill and the stages.

grid (the sweep file, checked) -> plan (cells, shared teacher jobs) -> sweep (the runner)
-> cell (one trained student on the battery) -> battery, matched, report, plots.
"""
