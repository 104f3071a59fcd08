"""Memory and file-descriptor usage of a process and its children, read from Linux's /proc.

Used by the soak test (``tools/soak_test.py``) to check that long runs keep host memory and open
files flat. Linux only (a clear ``OSError`` elsewhere).
"""

import os
from dataclasses import asdict, dataclass
from typing import Dict, List

__all__ = ["ProcessUsage", "process_usage", "child_pids", "usage_with_children"]

_PROC = "/proc"


@dataclass
class ProcessUsage:
    """Resident memory (MiB), open file descriptors and threads of one process.

    ``fds`` counts files, pipes, sockets...; ``shm_fds`` counts shared-memory segments
    (``/dev/shm``, memfd), which is how torch passes tensors between data-loader workers and the
    trainer: their number follows the batches in flight, not a leak.
    """

    pid: int
    rss_mib: float
    fds: int
    shm_fds: int
    threads: int

    def as_dict(self) -> Dict:
        return asdict(self)


def _check_proc() -> None:
    if not os.path.isdir(os.path.join(_PROC, "self")):
        raise OSError("resource usage is read from /proc, which this system does not have (Linux only)")


def process_usage(pid: int) -> ProcessUsage:
    """RSS (``VmRSS``), number of open fds and threads of ``pid``.

    Raises:
        ProcessLookupError: the process no longer exists.
    """
    _check_proc()
    rss_kib, threads = 0, 0
    try:
        with open(os.path.join(_PROC, str(pid), "status")) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss_kib = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fd_dir = os.path.join(_PROC, str(pid), "fd")
        fds, shm_fds = 0, 0
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:  # closed while we looked
                continue
            if target.startswith(("/dev/shm/", "/memfd:")):
                shm_fds += 1
            else:
                fds += 1
    except FileNotFoundError as e:
        raise ProcessLookupError(f"process {pid} does not exist") from e
    return ProcessUsage(pid=pid, rss_mib=rss_kib / 1024.0, fds=fds, shm_fds=shm_fds, threads=threads)


def child_pids(pid: int) -> List[int]:
    """Direct children of ``pid`` (e.g. data-loader workers)."""
    _check_proc()
    children = []
    for name in os.listdir(_PROC):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(_PROC, name, "stat")) as f:
                stat = f.read()
        except OSError:  # the process ended while we looked
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses, so split after the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            children.append(int(name))
    return sorted(children)


def usage_with_children(pid: int) -> Dict:
    """``{"main": ProcessUsage, "children": [ProcessUsage, ...]}`` (children that vanish are skipped)."""
    children = []
    for child in child_pids(pid):
        try:
            children.append(process_usage(child))
        except ProcessLookupError:
            continue
    return {"main": process_usage(pid), "children": children}
