"""A training hook that profiles a few iterations of the real training run (``train.profile``).

The benchmark (``tools/benchmark.py --profile-train``) profiles a bare train step on fixed synthetic inputs; this
profiles what a training run does: the data loader, the trainer's host transfer, the hooks (EMA, LR schedule) and
inputs whose box counts change every batch. Both write the same per-step summary
(:func:`~neo_rtdetr.utils.profiling.step_summary_lines`), so the two can be compared line by line.
"""

import logging
import os
import time
from typing import List, Optional

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from neo_rtdetr.utils.profiling import device_kernel_ms, phase_markers, step_summary_lines

from .ema import unwrap_model

__all__ = ["TrainingProfiler"]

logger = logging.getLogger(__name__)


class TrainingProfiler(HookBase):
    """Profiles iterations ``start_iter .. start_iter + iters - 1`` with ``torch.profiler``.

    Writes, under ``output_dir`` (``_rank<r>`` added to the names when several processes train):

    * ``profile_iter<a>-<b>.txt``: per step, the synchronized wall time, the device's kernel time (and so how
      busy the device was), the main process's CPU time (all its threads) and the load average, then the host
      time of each phase (``## data``, ``## forward``, ``## backbone`` ... ``## optimizer``), kernel launches
      and host waits; then the top operators by device and by host time. The summary is also logged.
    * ``profile_iter<a>-<b>_trace.json.gz`` (``trace=True``): the Chrome / Perfetto trace.

    Register it last: its ``before_step`` then runs right before the step and its ``after_step`` after the other
    hooks', so the window holds the steps and the other hooks' ``after_step`` (their ``before_step`` of the first
    iteration is outside). An evaluation or checkpoint that falls in the window is counted in its step: choose a
    window without one. A window past the last iteration ends with it. If training stops inside the window with an
    exception, what was recorded is written in ``after_train``.
    """

    def __init__(self, *, start_iter: int, iters: int = 3, output_dir: str, trace: bool = True):
        """
        Args:
            start_iter: the first profiled iteration (leave the compile / warm-up iterations before it).
            iters: how many iterations to profile.
            output_dir: where the files go (created if missing).
            trace: also export the Chrome trace.
        """
        if int(start_iter) < 0 or int(iters) < 1:
            raise ValueError(f"TrainingProfiler: start_iter must be >= 0 and iters >= 1, got {start_iter}, {iters}")
        self.start_iter = int(start_iter)
        self.iters = int(iters)
        self.output_dir = output_dir
        self.trace = bool(trace)
        self.files: List[str] = []
        self._prof = None
        self._handles: List = []
        self._cuda = False
        self._t0 = self._cpu0 = 0.0
        self._last_done: Optional[int] = None

    def before_train(self) -> None:
        last = self.start_iter + self.iters - 1
        if self.start_iter < self.trainer.start_iter or last >= self.trainer.max_iter:
            logger.warning(
                f"TrainingProfiler: iterations {self.start_iter}-{last} are not all in this run "
                f"({self.trainer.start_iter}-{self.trainer.max_iter - 1}); "
                + ("nothing will be profiled." if self.start_iter < self.trainer.start_iter
                   or self.start_iter >= self.trainer.max_iter else "the profile will be shorter.")
            )

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def before_step(self) -> None:
        if self._prof is not None or self.trainer.iter != self.start_iter:
            return
        from torch.profiler import ProfilerActivity, profile

        model = unwrap_model(self.trainer.model)
        param = next(model.parameters(), None)
        self._cuda = param is not None and param.device.type == "cuda"
        self._sync()
        self._handles = phase_markers(model)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else [])
        self._prof = profile(activities=activities)
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        self._last_done = None
        self._prof.__enter__()

    def after_step(self) -> None:
        if self._prof is None:
            return
        self._last_done = self.trainer.iter
        # a window past the end closes with the last iteration (not in after_train: the final evaluation and
        # checkpoint run in the other hooks' after_train first)
        if self.trainer.iter >= min(self.start_iter + self.iters, self.trainer.max_iter) - 1:
            self._finish(self.trainer.iter)

    def after_train(self) -> None:
        # still open: training stopped inside the window with an exception (its partial iteration is in the profile
        # too, the name counts the finished ones). Writing what was recorded must not replace that exception.
        if self._prof is not None:
            try:
                self._finish(self._last_done if self._last_done is not None else self.start_iter)
            except Exception:
                logger.exception("TrainingProfiler: could not write the profile of the interrupted window")

    def _finish(self, last_iter: int) -> None:
        prof, self._prof = self._prof, None
        try:
            self._sync()
            wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._cpu0
        finally:  # the profiler is stopped and the hooks are removed whatever happens
            prof.__exit__(None, None, None)
            for h in self._handles:
                h.remove()
            self._handles = []
        steps = max(1, last_iter - self.start_iter + 1)
        averages = prof.key_averages()
        summary = step_summary_lines(averages, steps, cuda=self._cuda)
        device_ms = device_kernel_ms(averages, steps) if self._cuda else float("nan")
        wall_ms = wall / steps * 1e3
        busy = f" ({100 * device_ms / wall_ms:.0f}% of the wall time)" if self._cuda else ""
        rank = comm.get_rank() if comm.get_world_size() > 1 else None
        card = torch.cuda.get_device_name() if self._cuda else "CPU"
        head = [
            f"==== training iterations {self.start_iter}-{last_iter} ({steps} steps)"
            + (f", rank {rank}" if rank is not None else "") + f", {card}",
            f"{'wall per step (synchronized)':<32}{wall_ms:>10.2f} ms",
            f"{'device kernels per step':<32}{device_ms:>10.2f} ms{busy}",
            f"{'process CPU per step':<32}{cpu / steps * 1e3:>10.2f} ms (main process, all its threads)",
            f"{'load average (1 min) / CPUs':<32}{os.getloadavg()[0]:>10.1f} / {os.cpu_count()}",
        ]
        os.makedirs(self.output_dir, exist_ok=True)
        stem = os.path.join(self.output_dir, f"profile_iter{self.start_iter}-{last_iter}"
                            + (f"_rank{rank}" if rank is not None else ""))
        sort = "cuda_time_total" if self._cuda else "cpu_time_total"
        with open(stem + ".txt", "w") as f:
            f.write("\n".join(head + summary) + "\n")
            f.write(f"==== sorted by {sort}\n{averages.table(sort_by=sort, row_limit=40)}\n")
            f.write(f"==== sorted by self_cpu_time_total\n{averages.table(sort_by='self_cpu_time_total', row_limit=40)}\n")
        self.files = [stem + ".txt"]
        if self.trace:
            prof.export_chrome_trace(stem + "_trace.json.gz")
            self.files.append(stem + "_trace.json.gz")
        logger.info("TrainingProfiler: wrote %s\n%s", ", ".join(self.files), "\n".join(head + summary))


def build_profiler_hook(profile_cfg, output_dir: str) -> Optional[TrainingProfiler]:
    """The hook for ``train.profile`` (``None`` when it is off or missing).

    Raises:
        ValueError: ``enabled`` or ``trace`` not a bool, ``start_iter`` / ``iters`` not ints (>= 0 / >= 1); the
            message names the key.
    """
    if not profile_cfg:
        return None
    enabled, trace = profile_cfg.get("enabled", False), profile_cfg.get("trace", True)
    for key, value in (("enabled", enabled), ("trace", trace)):
        if not isinstance(value, bool):
            raise ValueError(f"train.profile.{key} must be True or False, got {value!r}")
    if not enabled:
        return None
    start_iter, iters = profile_cfg.get("start_iter", 100), profile_cfg.get("iters", 3)
    for key, value, low in (("start_iter", start_iter, 0), ("iters", iters, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"train.profile.{key} must be an int >= {low}, got {value!r}")
    return TrainingProfiler(start_iter=start_iter, iters=iters, output_dir=os.path.join(output_dir, "profile"),
                            trace=trace)
