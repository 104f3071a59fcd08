"""How many CPU threads a training process gives PyTorch's own operators (``train.cpu_threads``).

PyTorch starts every process with one intra-op thread per physical core. A process that trains on a GPU runs only
small operators on its CPU (index tensors built from the batch's box counts, target checks), while the data
loader's worker processes decode and augment images on the same cores. Several of those small operators open a
parallel region over every intra-op thread whatever their size (``repeat_interleave`` on the host, for one): with the
workers keeping the cores busy, each region waits for threads that are not scheduled. Measured on an H200 with 16
cores and 12 workers (docs/performance.md, run Q): the three host ``repeat_interleave`` calls of an R50 step took
~6 ms each (self time), and the training process burnt 0.75-0.9 s of CPU per step (five cores' worth) while the GPU
ran 44-53 ms of kernels. With one thread and those calls gone (run S, another call on the same kind of machine) the
compiled R50 step took 83.1 ms end to end instead of 117.9 ms, and the process 0.19 s of CPU per step. In one call
(run W, eager R50, the numpy slots in both): 151.5 ms per step with one thread, 167.3 ms with 16.

``torchrun`` does the same when it starts several processes on a machine (``OMP_NUM_THREADS=1`` unless set).
"""

import logging
import os
from typing import Optional

import torch

__all__ = ["resolve_cpu_threads", "apply_cpu_threads"]

logger = logging.getLogger("neo_rtdetr")


def resolve_cpu_threads(setting, *, on_cuda: bool, env_threads: Optional[str]) -> Optional[int]:
    """The intra-op thread count to set, or None to leave PyTorch's own choice.

    Args:
        setting: ``train.cpu_threads``: a positive int, or None for automatic (1 for a CUDA device unless
            ``OMP_NUM_THREADS`` says otherwise; PyTorch's default on the CPU, where the model's own operators are
            the work).
        on_cuda: whether the model runs on a CUDA device.
        env_threads: the ``OMP_NUM_THREADS`` environment variable (None when unset); PyTorch already honours it.

    Raises:
        ValueError: ``setting`` is neither None nor a positive int.
    """
    if setting is None:
        if env_threads or not on_cuda:
            return None
        return 1
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(
            f"train.cpu_threads must be a positive int (intra-op CPU threads per training process) or None "
            f"(automatic: 1 on CUDA), got {setting!r}"
        )
    return setting


def apply_cpu_threads(cfg) -> int:
    """Set ``torch.set_num_threads`` from ``train.cpu_threads`` (see :func:`resolve_cpu_threads`) and log it.

    The device is ``train.device`` (a CUDA device counts only when CUDA is available: otherwise the run falls back
    to the CPU).

    Returns:
        the intra-op thread count now in effect.
    """
    setting = cfg.train.get("cpu_threads", None)
    on_cuda = str(cfg.train.get("device", "cuda")).startswith("cuda") and torch.cuda.is_available()
    threads = resolve_cpu_threads(setting, on_cuda=on_cuda, env_threads=os.environ.get("OMP_NUM_THREADS"))
    if threads is not None:
        torch.set_num_threads(threads)
    reason = (
        "train.cpu_threads" if setting is not None
        else "OMP_NUM_THREADS" if threads is None and os.environ.get("OMP_NUM_THREADS")
        else "automatic on CUDA" if threads is not None
        else "PyTorch's default on the CPU"
    )
    logger.info("intra-op CPU threads of this process: %d (%s)", torch.get_num_threads(), reason)
    return torch.get_num_threads()
