"""Command-line overrides of LazyConfigs that refuse unknown keys.

detectron2 v0.6's ``LazyConfig.apply_overrides`` silently creates a new key for a typo
(``train.max_itr=5`` trains for the configured number of iterations). Here every override must
name an existing key; a key can be added on purpose with Hydra's ``+key=value`` syntax.
"""

import difflib
from typing import List, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["apply_overrides_strict", "all_keys"]


def all_keys(cfg, prefix: str = "") -> List[str]:
    """Dotted paths of every node of ``cfg`` (list items as ``a.0.b``)."""
    keys = []
    items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else enumerate(cfg)
    for k, v in items:
        path = f"{prefix}{k}"
        keys.append(path)
        if isinstance(v, (DictConfig, ListConfig)):
            keys.extend(all_keys(v, path + "."))
    return keys


def _exists(cfg, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig):
            if part not in node:
                return False
            node = node._get_node(part)
            node = node if isinstance(node, (DictConfig, ListConfig)) else node
        elif isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                return False
            node = node._get_node(int(part))
        else:
            return False
    return True


def apply_overrides_strict(cfg, overrides: Sequence[str]):
    """Apply ``key=value`` overrides (Hydra syntax) to a LazyConfig, refusing unknown keys.

    Raises:
        KeyError: for an override of a key that does not exist, with the closest existing keys.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from detectron2.config import LazyConfig

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    known = None
    for o in parsed:
        if o.is_add():
            continue
        key = o.key_or_group
        if not _exists(cfg, key):
            known = known if known is not None else all_keys(cfg)
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            raise KeyError(
                f"unknown config key '{key}' in override '{o.input_line}'"
                + (f"; did you mean: {', '.join(close)}?" if close else "")
                + " (use '+key=value' to add a new key on purpose)"
            )
    return LazyConfig.apply_overrides(cfg, [o.lstrip("+") for o in overrides])
