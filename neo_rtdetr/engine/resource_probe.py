"""A training hook that samples host memory and open file descriptors (for soak tests)."""

import os
import time
from typing import Dict, List, Optional

from detectron2.engine import HookBase

from neo_rtdetr.utils.resource_usage import usage_with_children

__all__ = ["ResourceProbe"]


class ResourceProbe(HookBase):
    """Samples RSS and open fds of the training process and its children (data-loader workers).

    File descriptors are counted in two groups (see
    :class:`~neo_rtdetr.utils.resource_usage.ProcessUsage`): files/pipes/sockets, which must stay
    flat, and shared-memory segments of tensors in transit from the workers, which follow the
    batches in flight.

    A sample is taken after iteration ``warmup - 1`` (the reference: workers started, first epoch
    cached, allocator warmed up), every ``period`` iterations, and after the last iteration.
    :meth:`summary` compares the reference with the end.
    """

    def __init__(self, *, warmup: int = 50, period: int = 50):
        """
        Args:
            warmup: iterations before the reference sample.
            period: iterations between samples.
        """
        if warmup < 1 or period < 1:
            raise ValueError(f"warmup and period must be >= 1, got {warmup}, {period}")
        self.warmup = int(warmup)
        self.period = int(period)
        self.samples: List[Dict] = []
        self._t0: Optional[float] = None

    def _sample(self, iteration: int) -> None:
        usage = usage_with_children(os.getpid())
        main, children = usage["main"], usage["children"]
        self.samples.append(
            {
                "iteration": iteration,
                "time": time.perf_counter(),
                "rss_main_mib": main.rss_mib,
                "rss_workers_mib": sum(c.rss_mib for c in children),
                "rss_total_mib": main.rss_mib + sum(c.rss_mib for c in children),
                "fds_main": main.fds,
                "shm_fds_main": main.shm_fds,
                "fds_workers": sum(c.fds for c in children),
                "workers": len(children),
                "threads_main": main.threads,
            }
        )

    def before_train(self) -> None:
        self._sample(self.trainer.start_iter - 1)  # before the first step (no workers yet)

    def after_step(self) -> None:
        it = self.trainer.iter
        done = it - self.trainer.start_iter + 1
        if done == self.warmup or (done > self.warmup and (done - self.warmup) % self.period == 0):
            self._sample(it)

    def after_train(self) -> None:
        last = self.trainer.iter - 1  # detectron2 leaves iter at max_iter after a complete run
        if not self.samples or self.samples[-1]["iteration"] < last:
            self._sample(last)

    def summary(self) -> Dict:
        """Reference (after warm-up) vs end: RSS (main, workers, total; peak over the samples), fds,
        seconds per iteration after warm-up."""
        after = [s for s in self.samples if s["iteration"] >= self.samples[0]["iteration"] + self.warmup]
        if len(after) < 2:
            raise RuntimeError(f"need at least 2 samples after {self.warmup} warm-up iterations, got {len(after)}")
        ref, end = after[0], after[-1]
        iters = end["iteration"] - ref["iteration"]
        return {
            "iterations": end["iteration"] - self.samples[0]["iteration"],
            "warmup_iterations": self.warmup,
            "measured_iterations": iters,
            "seconds_per_iteration": (end["time"] - ref["time"]) / iters if iters else float("nan"),
            "rss_total_start_mib": ref["rss_total_mib"],
            "rss_total_end_mib": end["rss_total_mib"],
            "rss_total_peak_mib": max(s["rss_total_mib"] for s in after),
            "rss_total_growth_mib": end["rss_total_mib"] - ref["rss_total_mib"],
            "rss_main_start_mib": ref["rss_main_mib"],
            "rss_main_end_mib": end["rss_main_mib"],
            "rss_main_growth_mib": end["rss_main_mib"] - ref["rss_main_mib"],
            "rss_workers_start_mib": ref["rss_workers_mib"],
            "rss_workers_end_mib": end["rss_workers_mib"],
            "fds_main_start": ref["fds_main"],
            "fds_main_end": end["fds_main"],
            "shm_fds_main_start": ref["shm_fds_main"],
            "shm_fds_main_end": end["shm_fds_main"],
            "shm_fds_main_peak": max(s["shm_fds_main"] for s in after),
            "fds_workers_start": ref["fds_workers"],
            "fds_workers_end": end["fds_workers"],
            "workers_start": ref["workers"],
            "workers_end": end["workers"],
            "rss_before_training_mib": self.samples[0]["rss_total_mib"],
        }
