from .overrides import apply_overrides_strict

__all__ = ["apply_overrides_strict"]
