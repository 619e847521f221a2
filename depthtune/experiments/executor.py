"""Sweeps and ablations on a Ray cluster: `depthtune sweep FILE --executor ray [--address ADDR]`, the same
for `depthtune ablate`.

    local cluster   without --address a Ray cluster is started for the command (all this machine's CPUs and
                    GPUs, listening on 127.0.0.1 only) and stopped when it ends
    a cluster       --address auto joins the cluster this machine is part of (`ray start --head` on one node,
                    `ray start --address HEAD:6379` on the others); --address ray://HEAD:10001 joins through
                    Ray Client

What runs where (the tasks themselves live with their commands, experiments.sweep and experiments.ablate;
this module is the part they share): the driver (this process) plans, holds the sweep directory's lock, submits tasks and
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


def remote(ray, fn, resources: dict):
    """`fn` as a Ray task asking for `resources` ({cpus_per_cell, gpus_per_cell}), retried when its worker dies,
    running with as many torch threads as CPUs it was given."""
    def task(*args):
        threads(ray)
        return fn(*args)

    task.__name__ = task.__qualname__ = getattr(fn, "__name__", "task")
    return ray.remote(num_cpus=resources.get("cpus_per_cell", 1), num_gpus=resources.get("gpus_per_cell", 0),
                      max_retries=RETRIES)(task)
