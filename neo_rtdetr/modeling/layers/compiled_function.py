"""``torch.compile`` of a module's method, switched on per instance and safe to deep-copy.

A compiled bound method stored on a module would survive ``copy.deepcopy`` as a reference to the *original*
module (functions are not copied), so an EMA copy would silently run the original's weights. Instead the module
stores only the ``torch.compile`` arguments (plain data) and calls the compiled *unbound* function with itself as
the first argument; the compiled function is created once per (function, arguments) and shared. Dynamo treats the
module as an input (its parameters are graph inputs), so copies reuse the graphs.
"""

from typing import Any, Callable, Dict, Optional

import torch

__all__ = ["compiled_function"]

# (function, frozen torch.compile arguments) -> compiled function
_CACHE: Dict[tuple, Callable] = {}


def _freeze(value: Any) -> Any:
    """A hashable key for a ``torch.compile`` argument: dicts (e.g. ``options``) and lists as sorted/plain tuples."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_freeze(v) for v in value))
    return value


def compiled_function(fn: Callable, compile_kwargs: Optional[Dict]) -> Callable:
    """``fn`` itself when ``compile_kwargs`` is None, else ``torch.compile(fn, **compile_kwargs)`` (cached)."""
    if compile_kwargs is None:
        return fn
    key = (fn, _freeze(compile_kwargs))
    compiled = _CACHE.get(key)
    if compiled is None:
        compiled = _CACHE[key] = torch.compile(fn, **compile_kwargs)
    return compiled
