"""Sweeps and ablations on a Ray cluster: `depthtune sweep FILE --executor ray [--address ADDR]`, the same
for `depthtune ablate`.

    local cluster   without --address a Ray cluster is started for the command (all this machine's CPUs and
                    GPUs, listening on 127.0.0.1 only) and stopped when it ends
    a cluster       --address auto joins the cluster this machine is part of (`ray start --head` on one node,
                    `ray start --address HEAD:6379` on the others); --address ray://HEAD:10001 joins through
                    Ray Client

What runs where: the driver (this process) plans, holds the sweep directory's lock, submits tasks and
writes the report. Every teacher job, ensemble and untouched student is a task, and every cell a task
whose arguments are the tasks it reads, so Ray starts a cell only once its teacher work is done. Each task
requests the sweep file's `resources: {cpus_per_cell, gpus_per_cell}` (ablate: ablate.resources) and uses
that many threads. The run directory must be on storage every node sees: at start a task on a worker
reads a marker the driver wrote, and the command stops in one line if it cannot.

What the sequential executor guarantees holds here too: a cell is the same function (experiments.cell,
experiments.ablate), so the same cells give the same result.json; a worker that dies mid-cell makes Ray
run the task again (max_retries), and it resumes from the cell's last checkpoint; a cell that fails is
recorded with its one-line error (error.json) and the others go on; Ctrl-C cancels what is running and
leaves every finished cell in place for the next run.

A Ray cluster runs whatever code is submitted to it (Ray's own security notes): keep it on a trusted
network; the local cluster depthtune starts listens on 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

from .. import artifacts
from ..errors import DepthtuneError

RETRIES = 2  # Ray re-runs a task whose worker died this many times


def require_ray():
    try:
        import ray
    except ImportError:
        raise DepthtuneError("--executor ray needs Ray: pip install 'depthtune[ray]' (or pip install 'ray[default]>=2.50')") \
            from None
    return ray


@contextlib.contextmanager
def cluster(address: str | None, log=print):
    """Join the cluster at `address`, or start a local one on 127.0.0.1 for the duration of the block."""
    ray = require_ray()
    if address:
        ctx = ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    else:
        ctx = ray.init(_node_ip_address="127.0.0.1", dashboard_host="127.0.0.1", include_dashboard=True,
                       log_to_driver=False, logging_level="ERROR")
    try:
        url = getattr(ctx, "dashboard_url", None)
        cpus = ray.cluster_resources().get("CPU", 0)
        log(f"ray: {'joined ' + address if address else 'local cluster on 127.0.0.1'}, {cpus:g} CPUs"
            + (f"; dashboard: http://{url}" if url else ""))
        yield ray
    finally:
        ray.shutdown()


def check_shared(ray, folder: Path) -> None:
    """A worker must see the directory the driver writes: a marker written here, read there."""
    marker = Path(folder) / f".ray-visible-{uuid.uuid4().hex[:8]}"
    artifacts.write_text(marker, "depthtune")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> tuple[bool, str]:
        import socket

        return Path(path).exists(), socket.gethostname()

    try:
        seen, host = ray.get(sees.remote(str(marker.resolve())))
    finally:
        marker.unlink(missing_ok=True)
    if not seen:
        raise DepthtuneError(f"the directory {folder} is not visible to the Ray worker on {host}; put it on storage "
                             f"every node mounts (NFS, a shared disk) and give that path")


def threads(ray) -> None:
    """As many torch threads as CPUs the task was given (a 4-CPU cell on a 32-core node uses 4)."""
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))


def _running(ray) -> int | None:
    try:
        from ray.util.state import list_tasks

        return len(list_tasks(filters=[("state", "=", "RUNNING")], limit=1000, raise_on_missing_output=False))
    except Exception:  # no state API (Ray Client, no dashboard): say nothing rather than guess
        return None


def wait_all(ray, cells: dict, log, done_before: int = 0) -> dict:
    """{name: ref} -> {name: result}, with a progress line as each cell ends; Ctrl-C cancels the rest."""
    pending = dict(cells)
    results, failed, times, start = {}, 0, [], time.monotonic()
    total = len(cells) + done_before
    try:
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=60)
            for ref in ready:
                name = next(n for n, r in pending.items() if r == ref)
                del pending[name]
                out = ray.get(ref)
                results[name] = out
                failed += bool(out.get("error"))
                times.append(time.monotonic() - start)
            done = done_before + len(results) - failed
            running = _running(ray)
            left = len(pending) - (running or 0)
            eta = ""
            if results and pending:
                per = (time.monotonic() - start) / len(results)
                eta = f", ~{per * len(pending) / 60:.0f} min left"
            log(f"  cells: {done} done, " + (f"{running} running, " if running is not None else "")
                + f"{failed} failed, {max(0, left)} queued of {total}{eta}")
    except KeyboardInterrupt:
        for ref in pending.values():
            ray.cancel(ref, force=True)
        raise
    return results


# -- sweeps -------------------------------------------------------------------------------------------


def _sweep_tasks(ray, resources: dict):
    opts = dict(num_cpus=resources.get("cpus_per_cell", 1), num_gpus=resources.get("gpus_per_cell", 0),
                max_retries=RETRIES)

    @ray.remote(**opts)
    def shared(sweep, folder: str, kind: str, key: str, *_deps) -> dict:
        """One teacher job, ensemble or untouched student (the deps are the jobs it reads)."""
        from . import sweep as sw
        from .plan import make_plan

        threads(ray)
        plan, folder_ = make_plan(sweep), Path(folder)
        mdl = sw.Models(sweep.base, lambda *a: None)
        try:
            if kind == "job":
                sw.run_job(folder_ / "teachers" / key, plan.jobs[key], plan, mdl, lambda *a: None)
            elif kind == "ensemble":
                samples = {k: sw.job_rows(folder_ / "teachers" / k, plan.jobs[k]) for k in plan.ensembles[key]["jobs"]}
                sw.run_ensemble(folder_ / "ensembles" / key, plan.ensembles[key], plan, samples, mdl, lambda *a: None)
            else:
                spec, base = key
                sw.untouched(folder_ / "students" / sw.student_key(spec, base), spec, base, plan, mdl, lambda *a: None)
        except DepthtuneError as e:
            return {"error": str(e)}
        return {}

    @ray.remote(**opts)
    def cell(sweep, folder: str, dir_name: str, *deps) -> dict:
        """One cell, once the shared work it reads has finished (its deps)."""
        from . import sweep as sw
        from .plan import make_plan

        threads(ray)
        blocked = [d["error"] for d in deps if d.get("error")]
        plan, folder_ = make_plan(sweep), Path(folder)
        cp = next(c for c in plan.cells if c.dir_name == dir_name)
        cell_dir = folder_ / "cells" / dir_name
        if blocked:
            return sw.record_failure(cell_dir, cp, DepthtuneError(f"shared teacher work failed: {blocked[0]}"))
        with artifacts.DirLock(cell_dir, lambda *a: None, "cell directory"):
            artifacts.write_text(cell_dir / "worker.pid", str(os.getpid()))  # for whoever watches the workers
            samples = {k: sw.job_rows(folder_ / "teachers" / k, plan.jobs[k]) for k in cp.jobs}
            return sw.attempt_cell(cell_dir, cp, plan, samples, sw.Models(sweep.base, lambda *a: None), folder_,
                                   lambda *a: None)

    return shared, cell


def run_sweep_on_ray(sweep, plan, folder: Path, log=print, address: str | None = None) -> None:
    """Every unfinished cell of the plan as a Ray task after the shared work it reads (see the module docstring)."""
    from .plan import student_key

    folder = Path(folder)
    with cluster(address, log) as ray:
        check_shared(ray, folder)
        shared, cell = _sweep_tasks(ray, sweep.resources)
        jobs = {k: shared.remote(sweep, str(folder), "job", k) for k in plan.jobs}
        ensembles = {k: shared.remote(sweep, str(folder), "ensemble", k, *[jobs[j] for j in spec["jobs"]])
                     for k, spec in plan.ensembles.items()}
        students = {student_key(cp.student, cp.base_model): (cp.student, cp.base_model) for cp in plan.cells}
        studs = {k: shared.remote(sweep, str(folder), "student", v) for k, v in students.items()}
        todo = [cp for cp in plan.cells if not (folder / "cells" / cp.dir_name / "result.json").exists()]
        log(f"ray: {len(plan.jobs)} teacher jobs, {len(plan.ensembles)} ensembles, {len(students)} untouched students, "
            f"then {len(todo)} cells ({len(plan.cells) - len(todo)} already finished)")
        refs = {cp.dir_name: cell.remote(sweep, str(folder), cp.dir_name, *[jobs[k] for k in cp.jobs],
                                         *([ensembles[cp.ensemble]] if cp.ensemble else []),
                                         studs[student_key(cp.student, cp.base_model)]) for cp in todo}
        wait_all(ray, refs, log, done_before=len(plan.cells) - len(todo))


# -- ablations ----------------------------------------------------------------------------------------


def run_ablate_cells(run_dir: Path, cfg, cells: list[tuple[str, int]], k: int, log=print,
                     address: str | None = None) -> list[dict]:
    """Every (selector, seed) cell of an ablation as a Ray task; -> their results in `cells` order."""
    run_dir = Path(run_dir)
    with cluster(address, log) as ray:
        check_shared(ray, run_dir)
        res = cfg.ablate.resources

        @ray.remote(num_cpus=res.get("cpus_per_cell", 1), num_gpus=res.get("gpus_per_cell", 0), max_retries=RETRIES)
        def cell(run_dir_: str, cfg_, selector: str, seed: int) -> dict:
            from ..stages.pipeline import Session
            from .ablate import run_cell

            threads(ray)
            folder = Path(run_dir_)
            cell_dir = folder / "ablate" / f"{selector}-seed{seed}"
            try:
                with artifacts.DirLock(cell_dir, lambda *a: None, "cell directory"):
                    artifacts.write_text(cell_dir / "worker.pid", str(os.getpid()))
                    session = Session(cfg_, lambda *a: None)
                    rows = artifacts.read_jsonl(folder / "score" / "scored.jsonl")
                    return run_cell(folder, cfg_, selector, seed, k, rows, *session.base(), log=lambda *a: None)
            except DepthtuneError as e:
                return {"error": str(e), "selector": selector, "seed": seed}

        refs = {f"{sel}-seed{seed}": cell.remote(str(run_dir), cfg, sel, seed) for sel, seed in cells}
        results = wait_all(ray, refs, log)
    failed = {n: r["error"] for n, r in results.items() if r.get("error")}
    if failed:
        name, error = next(iter(failed.items()))
        raise DepthtuneError(f"ablation cell {name} failed: {error}; the others are kept, run the same command again")
    return [results[f"{sel}-seed{seed}"] for sel, seed in cells]
