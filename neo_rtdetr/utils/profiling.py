"""torch.profiler helpers shared by the benchmark (``tools/benchmark.py --profile-train``) and the training-run
profiler (:class:`~neo_rtdetr.engine.profiler_hook.TrainingProfiler`): phase ranges and a per-step summary.

Phases are profiler ranges named ``"## <phase>"``: the trainer opens them around its own parts of a step (data,
forward, backward, host transfer, optimizer) and :func:`phase_markers` around the model's top-level parts.
"""

import contextlib
from typing import Iterable, List

import torch
from torch import nn

__all__ = ["PHASE_PREFIX", "phase", "phase_markers", "device_kernel_ms", "step_summary_lines"]

PHASE_PREFIX = "## "

# host-side rows worth a line of their own: kernel launches and the calls where the host waits for the device
_HOST_ROWS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cudaMemcpyAsync", "cudaStreamSynchronize",
              "cudaDeviceSynchronize", "cudaEventSynchronize")


def phase(name: str):
    """A profiler range ``"## <name>"`` (a no-op context when no profiler is recording)."""
    if not torch.autograd.profiler._is_profiler_enabled:
        return contextlib.nullcontext()
    return torch.profiler.record_function(PHASE_PREFIX + name)


def phase_markers(model: nn.Module, names: Iterable[str] = ("backbone", "encoder", "decoder", "criterion")) -> List:
    """Forward hooks that open a phase range around each named top-level part of ``model``.

    Parts compiled as a whole module are left out: a hook inside a compiled module would be traced (a graph
    break and another graph, only while profiling).

    Returns:
        the hook handles; ``remove()`` each when done.
    """
    handles = []
    for name in names:
        module = getattr(model, name, None)
        if module is None or getattr(module, "_compiled_call_impl", None) is not None:
            continue
        ranges = []

        def pre(_m, _args, _name=name, _ranges=ranges):
            r = torch.profiler.record_function(PHASE_PREFIX + _name)
            r.__enter__()
            _ranges.append(r)

        def post(_m, _args, _out, _ranges=ranges):
            if _ranges:
                _ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def device_kernel_ms(averages, steps: int) -> float:
    """Per-step sum of the device's kernel (and memcpy/memset) time in a profile of ``steps`` steps (``0.0`` when no
    device activity was recorded). The device-side spans of the phase ranges are left out: they cover gaps and
    overlap kernels."""
    return sum(e.self_device_time_total for e in averages
               if e.device_type.name == "CUDA" and not e.key.startswith(PHASE_PREFIX)) / steps / 1e3


def step_summary_lines(averages, steps: int, *, cuda: bool) -> List[str]:
    """Per-step means of a profile of ``steps`` steps: host time of each phase range, kernel launches and host
    waits, and the device's kernel time.

    Args:
        averages: ``prof.key_averages()``.
        steps: how many steps the profile holds.
        cuda: whether device activity was recorded.

    Returns:
        text lines (a table: name, host ms per step, calls per step); the last is :func:`device_kernel_ms`
        (``nan`` without CUDA).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lines = [f"{'phase / host call':<32}{'host ms':>10}{'calls':>8}"]
    for evt in averages:
        # the "## " ranges also appear as device-side spans (device_type CUDA): host rows only here
        if evt.device_type.name == "CPU" and (evt.key.startswith(PHASE_PREFIX) or evt.key in _HOST_ROWS):
            lines.append(f"{evt.key:<32}{evt.cpu_time_total / steps / 1e3:>10.2f}{evt.count / steps:>8.0f}")
    device_ms = device_kernel_ms(averages, steps) if cuda else float("nan")
    lines.append(f"{'device (sum of kernels)':<32}{device_ms:>10.2f}")
    return lines
