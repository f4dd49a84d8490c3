"""Shared test settings: no progress bars (trainers stay quiet and fast in every test), and
parallel runs with pytest-xdist (`make test` runs `pytest -n auto`).

Under xdist each worker gets its own slice of the usable CPUs as its affinity mask, before torch
is imported. N workers that each start threads for all cores oversubscribe the machine (two
torch threads on a busy 2-core machine ran ~8x slower than one, `coachlm/cpus.py`); the mask is
what `coachlm.cpus.usable_cpus` reads, so torch's default, the trainers' `threads=None` and every
child process (a CLI run, `accelerate launch`, the labeling server) all stay within the slice.
"""

import os

import pytest

from coachlm.cpus import usable_cpus

# The feedback store's fixtures (a throwaway PostgreSQL server per test session, fresh stores on
# both backends) are defined here once, so that every module shares one server per worker: a
# session fixture imported into each module is a separate fixture there, one server per module.
from feedback_support import pg_admin_url, store_url  # noqa: F401  (fixtures)


def _worker_cpus() -> set[int] | None:
    """This xdist worker's share of the CPUs (None: not a worker, or fewer CPUs than workers)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return None
    index, workers = int(worker.removeprefix("gw")), int(count)
    cpus = sorted(os.sched_getaffinity(0))[:usable_cpus()]
    share = len(cpus) // workers
    return set(cpus[index * share:(index + 1) * share]) if share else None


_cpus = _worker_cpus()
if _cpus:
    os.sched_setaffinity(0, _cpus)
    os.environ["OMP_NUM_THREADS"] = str(len(_cpus))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per usable CPU (affinity mask and cgroup quota), not psutil's count of
    the host's cores; PYTEST_XDIST_AUTO_NUM_WORKERS still wins."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return usable_cpus()


def pytest_collection_modifyitems(config, items):
    """Files with `slow` tests first, the most first (a stable sort: order within a file and among
    the rest is kept). A worker that draws a long file late keeps the run going alone after the
    other workers are done; longest-first scheduling leaves the short files to fill in the end.
    `make test` passes --no-loadscope-reorder, which makes xdist keep this order."""
    def file(item) -> str:
        return item.nodeid.split("::")[0]

    slow: dict[str, int] = {}
    for item in items:
        slow[file(item)] = slow.get(file(item), 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[file(item)])


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("COACHLM_NO_PROGRESS", "1")
