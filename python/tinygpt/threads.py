"""Default CPU thread count: one thread per physical core this process may run on.

A decode step is bound by memory bandwidth and the GEMMs fill a core's vector units, so a second hardware
thread on the same core adds contention, not speed (llama.cpp moved its default to physical cores for this
reason). Cores are told apart with Linux sysfs: logical CPUs that share a core list the same
topology/core_cpus_list (thread_siblings_list on older kernels); only CPUs in the process's affinity mask
count. Where that is not readable (other systems, containers without sysfs), every usable logical CPU counts.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidArgumentError

SYSFS_CPU = Path("/sys/devices/system/cpu")


def usable_cpus() -> set[int]:
    """Logical CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int] | None = None, sysfs: Path = SYSFS_CPU) -> int | None:
    """Physical cores among `cpus` (default: usable_cpus()), or None when the topology cannot be read."""
    cpus = usable_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topo = sysfs / f"cpu{cpu}" / "topology"
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topo / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            return None
    return len(cores) or None


def default_threads(environ=os.environ) -> int | None:
    """The thread count to set when the caller gave none; None leaves it to TINYGPT_NUM_THREADS or
    OMP_NUM_THREADS (read by the native module and OpenMP)."""
    env = environ.get("TINYGPT_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise InvalidArgumentError(f"TINYGPT_NUM_THREADS must be a positive integer, got {env!r}")
        return None
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return physical_cores() or len(usable_cpus())


_explicit = False  # a threads= was given: later loads without one keep it (the last threads= given wins)


def apply(cpu_module, threads: int | None) -> None:
    """Set the cpu backend's process-wide thread count: `threads` when given, else the default once."""
    global _explicit
    if threads is not None:
        cpu_module.set_num_threads(threads)
        _explicit = True
    elif not _explicit:
        n = default_threads()
        if n is not None:
            cpu_module.set_num_threads(n)
