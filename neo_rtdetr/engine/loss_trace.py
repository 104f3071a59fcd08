"""A per-iteration log of the raw (unsmoothed) losses, for exact comparisons between runs.

``metrics.json`` holds detectron2's smoothed values (the median over a window of 20 iterations for
the losses), written every ``log_period`` iterations, so it cannot show that two runs computed the
same loss at the same iteration. :class:`LossTraceWriter` appends one JSON line per iteration
with the exact values; ``train.loss_trace=True`` turns it on in ``tools/lazyconfig_train_net.py``
(file ``<output_dir>/loss_trace.jsonl``).

After a crash and ``--resume`` the iterations after the last checkpoint are written again: the
file is append-only and :func:`read_loss_trace` keeps the last record of each iteration.
"""

import json
import logging
import os
from typing import Dict

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["LossTraceWriter", "read_loss_trace", "LOSS_TRACE_FILE"]

logger = logging.getLogger(__name__)

LOSS_TRACE_FILE = "loss_trace.jsonl"
_EXTRA_KEYS = ("total_loss", "lr", "grad_norm", "ema_decay", "loss_scale")


class LossTraceWriter(HookBase):
    """Appends ``{"iteration", "total_loss", "loss_*", "lr", "grad_norm", "skipped"}`` per step.

    Values are the ones put into the event storage at this iteration (so register it after the
    LR-scheduler and EMA hooks). Only the main process writes.
    """

    def __init__(self, path: str):
        """
        Args:
            path: the JSON-lines file (appended to; created with its folder).
        """
        self.path = path
        self._file = None

    def before_train(self) -> None:
        if not comm.is_main_process():
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        needs_newline = False
        if os.path.isfile(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"  # a line cut short by a kill
        self._file = open(self.path, "a", encoding="utf-8")
        if needs_newline:
            self._file.write("\n")

    def after_step(self) -> None:
        if self._file is None:
            return
        iteration = self.trainer.iter
        row = {"iteration": iteration}
        for name, (value, it) in sorted(self.trainer.storage.latest().items()):
            if it == iteration and (name.startswith("loss_") or name in _EXTRA_KEYS):
                row[name] = float(value)
        row["skipped"] = bool(getattr(self.trainer, "last_step_skipped", False))
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def after_train(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_loss_trace(path: str) -> Dict[int, Dict[str, float]]:
    """Read a loss trace: ``{iteration: record}``, the last record of each iteration winning.

    A line cut short by a kill is skipped (and counted in a log message).
    """
    records: Dict[int, Dict] = {}
    broken = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                broken += 1
                continue
            records[int(row["iteration"])] = row
    if broken:
        logger.info(f"{path}: skipped {broken} incomplete line(s) (written when a run was killed)")
    return records
