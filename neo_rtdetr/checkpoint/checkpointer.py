"""RTDETRCheckpointer: DetectionCheckpointer with crash-safe saves, safe loading and EMA-first
inference loading.

* ``save`` writes to a temporary file in the checkpoint folder, flushes and fsyncs it, then
  ``os.replace``\\ s it onto the final name (atomic on POSIX); the ``last_checkpoint`` tag is
  written the same way, after the checkpoint. A crash or kill at any moment leaves either the old
  or the new complete file, never a truncated one; temp files of an interrupted save are removed
  by the next save.
* ``.pth`` files are read with ``torch.load(weights_only=True)``: everything this project saves
  (model, optimizer, LR-scheduler hook state, iteration, EMA, trainer/grad-scaler state) is plain
  tensors/containers/numbers and loads; a file with other pickled objects (e.g. an argparse
  ``Namespace`` in a foreign checkpoint) raises a clear :class:`UnsafeCheckpointError`. Pass
  ``weights_only=False`` to the constructor only for files you trust.
* ``load_for_inference`` loads ``ckpt["ema"]["module"]`` into the model when present (like the
  official RT-DETR loaders), else ``ckpt["model"]``.
* A checkpoint must fit the model: detectron2 skips tensors of another shape and tensors missing
  on either side with a warning, so a checkpoint of another model size (an R50 file for an R18
  config) would "load" as a half-random model. Here that is a :class:`CheckpointMismatchError`
  naming the file and the tensors. The one tolerated difference is the class-dependent tensors
  (fine-tuning with another number of classes: those are skipped with detectron2's warning, as
  the official code does); BatchNorm ``num_batches_tracked`` counters are ignored.
* The RT-DETRv2 decoder's ``anchors`` and ``valid_mask`` buffers are functions of the config's
  ``eval_spatial_size`` (:data:`~neo_rtdetr.checkpoint.convert.ANCHOR_BUFFER_KEYS`): they are never
  loaded from a checkpoint (dropped from its model state, said once at INFO), the model keeps its
  own, so a checkpoint saved with another ``eval_spatial_size`` (or none) loads. The EMA checkpointable
  (:class:`~neo_rtdetr.engine.ema.ModelEMA`) applies the same rule (:func:`drop_anchor_buffers`) on resume.
"""

import logging
import os
import pickle
import tempfile
from typing import Any, Callable, Dict, IO, List, Optional, Tuple

import torch

from detectron2.checkpoint import DetectionCheckpointer

from neo_rtdetr.checkpoint.convert import ANCHOR_BUFFER_KEYS, CLASS_DEPENDENT_KEYS
from neo_rtdetr.data.validation import format_ids

__all__ = [
    "RTDETRCheckpointer",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "atomic_write",
    "is_anchor_buffer",
    "drop_anchor_buffers",
    "describe_mismatch",
]

logger = logging.getLogger(__name__)

_TMP_MARK = ".neo_rtdetr_tmp"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickled objects that ``torch.load(weights_only=True)`` refuses."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model (another size or architecture)."""


#: How many tensors a mismatch error names per kind before "... (N more)".
_LISTED_KEYS = 6


def is_anchor_buffer(key: str) -> bool:
    """True for the decoder's ``anchors`` / ``valid_mask`` (also with a DDP ``module.`` prefix)."""
    return bool(ANCHOR_BUFFER_KEYS.match(key[len("module."):] if key.startswith("module.") else key))


def drop_anchor_buffers(state: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """``state`` without the derived anchor buffers, which the model being loaded keeps as its own.

    The RT-DETRv2 decoder's ``anchors`` / ``valid_mask`` (:func:`is_anchor_buffer`) are functions of the
    config's ``eval_spatial_size``, not learned weights: a state dict saved with another size (or none) must
    not overwrite them. The one rule for every load of model weights (the model entry, the EMA module).

    Args:
        state: a model state dict (not modified).

    Returns:
        ``(kept, dropped)``: a new dict without the anchor buffers (``state`` itself when it has none) and
        the dropped keys, in ``state``'s order.
    """
    dropped = [k for k in state if is_anchor_buffer(k)]
    if not dropped:
        return state, dropped
    return {k: v for k, v in state.items() if not is_anchor_buffer(k)}, dropped


def describe_mismatch(shapes, missing, unexpected) -> str:
    """The parts of a "checkpoint does not fit" message, ``"; "``-joined, each naming its first tensors.

    Args:
        shapes: (key, checkpoint shape, model shape) of the tensors whose shapes differ.
        missing: keys of the model that the checkpoint lacks.
        unexpected: keys of the checkpoint that the model lacks.
    """
    parts = []
    if shapes:
        listed = (f"{k}: {tuple(a)} in the checkpoint, {tuple(b)} in the model" for k, a, b in shapes)
        parts.append(f"{len(shapes)} tensors have another shape ({format_ids(listed, _LISTED_KEYS)})")
    if missing:
        parts.append(f"{len(missing)} model tensors are not in the checkpoint ({format_ids(missing, _LISTED_KEYS)})")
    if unexpected:
        parts.append(f"{len(unexpected)} checkpoint tensors are not in the model ({format_ids(unexpected, _LISTED_KEYS)})")
    return "; ".join(parts)


def check_checkpoint_fits(incompatible) -> None:
    """Raise :class:`CheckpointMismatchError` unless only class-dependent tensors differ.

    The derived anchor buffers (:data:`~neo_rtdetr.checkpoint.convert.ANCHOR_BUFFER_KEYS`) are
    ignored: they follow ``eval_spatial_size``, not the weights.

    Args:
        incompatible: fvcore's ``_IncompatibleKeys`` (``missing_keys``, ``unexpected_keys``,
            ``incorrect_shapes`` as (key, checkpoint shape, model shape)).
    """
    def relevant(key: str) -> bool:
        return not key.endswith("num_batches_tracked") and not is_anchor_buffer(key)

    shapes = [(k, a, b) for k, a, b in incompatible.incorrect_shapes if relevant(k) and not CLASS_DEPENDENT_KEYS.match(k)]
    wrong_shape = {k for k, _, _ in incompatible.incorrect_shapes}  # fvcore also lists these as missing
    missing = [k for k in incompatible.missing_keys if relevant(k) and k not in wrong_shape]
    unexpected = [k for k in incompatible.unexpected_keys if relevant(k)]
    if not (shapes or missing or unexpected):
        return
    raise CheckpointMismatchError(
        "the checkpoint does not fit the model: " + describe_mismatch(shapes, missing, unexpected)
        + ". It is probably from another model size or architecture (e.g. an R50 checkpoint with an R18 config): "
        "use the config it was trained with (docs/model_zoo.md). Only the class-dependent heads may differ "
        "(fine-tuning with another num_classes)."
    )


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` atomically: ``write_fn(f)`` fills a temp file in the same folder, which is
    flushed, fsynced and renamed onto ``path`` with ``os.replace``. On any exception the temp file
    is removed and ``path`` is untouched.

    Args:
        path: final file path (local file system).
        write_fn: writes the content into the binary file object it receives.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=_TMP_MARK)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


class RTDETRCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves, ``weights_only`` loading and EMA-first inference loads.

    Same constructor as ``DetectionCheckpointer`` (``model, save_dir="", *, save_to_disk=None,
    **checkpointables``) plus ``weights_only``. Typical training use::

        checkpointer = RTDETRCheckpointer(model, output_dir, trainer=trainer, ema=ema)
        checkpointer.resume_or_load(init_checkpoint, resume=args.resume)

    and for evaluation / export::

        RTDETRCheckpointer(model).load_for_inference(path)   # EMA weights if the file has them
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk: Optional[bool] = None,
                 weights_only: bool = True, **checkpointables: Any):
        """
        Args:
            model, save_dir, save_to_disk, checkpointables: as in ``DetectionCheckpointer``.
            weights_only: load ``.pth`` files with ``torch.load(weights_only=True)`` (default).
                Set False only for trusted files that contain arbitrary pickled objects.
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.weights_only = weights_only

    # ----------------------------------------------------------------------------- saving
    def _remove_stale_temp_files(self) -> None:
        try:
            names = os.listdir(self.save_dir)
        except OSError:
            return
        for name in names:
            if name.startswith(".") and name.endswith(_TMP_MARK):
                try:
                    os.unlink(os.path.join(self.save_dir, name))
                    self.logger.info(f"Removed {name}, left by an interrupted checkpoint save.")
                except OSError:
                    pass

    def save(self, name: str, *, tag_last_checkpoint: bool = True, **kwargs: Any) -> None:
        """Save the model and checkpointables to ``<save_dir>/<name>.pth`` atomically, then tag it
        as the last checkpoint (also atomically).

        Args:
            name: file name without extension.
            tag_last_checkpoint: make ``--resume`` start from this file (False for side copies such
                as ``model_best``).
            kwargs: extra data stored in the file.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self._remove_stale_temp_files()
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        if tag_last_checkpoint:
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically write ``last_filename_basename`` into ``<save_dir>/last_checkpoint``."""
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode("utf-8")),
        )

    # ----------------------------------------------------------------------------- loading
    def _torch_load(self, filename: str) -> Any:
        if not self.weights_only:
            return torch.load(filename, map_location="cpu", weights_only=False)
        try:
            return torch.load(filename, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()
            detail = "\n".join(first[:6])
            raise UnsafeCheckpointError(
                f"Refusing to load '{filename}' with weights_only=True: it contains pickled objects that "
                f"are not plain tensors/containers (torch says:\n{detail}\n).\n"
                "Checkpoints written by neo_rtdetr never need this. If you trust the file, either re-save "
                "its state dict (torch.save(torch.load(f, weights_only=False)['model'], 'clean.pth')), "
                "allowlist the class with torch.serialization.add_safe_globals([...]), or construct "
                "RTDETRCheckpointer(..., weights_only=False)."
            ) from e

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl") or filename.endswith(".pyth"):
            return super()._load_file(filename)  # detectron2 / Caffe2 / pycls zoo formats
        loaded = self._torch_load(filename)
        if not isinstance(loaded, dict):
            raise ValueError(f"Checkpoint '{filename}' holds a {type(loaded).__name__}, expected a dict.")
        if "model" not in loaded:
            ema_state = _ema_module_state(loaded)
            if ema_state is not None:
                self.logger.info(f"'{filename}' has no 'model' entry; using its 'ema.module' weights as the model.")
                loaded = dict(loaded)
                loaded["model"] = ema_state
            else:
                loaded = {"model": loaded}  # a bare state dict
        return loaded

    def _drop_anchor_buffers(self, checkpoint: Dict[str, Any]) -> None:
        """Remove the derived anchor buffers from ``checkpoint["model"]`` (the model keeps its own)."""
        state = checkpoint.get("model")
        if not isinstance(state, dict):
            return
        checkpoint["model"], dropped = drop_anchor_buffers(state)
        if not dropped:
            return
        self.logger.info(
            f"[Checkpointer] Not loading {', '.join(dropped)} from the checkpoint: they are derived from the "
            "config's eval_spatial_size, the model keeps its own."
        )

    def _load_model(self, checkpoint: Dict[str, Any]):
        self._drop_anchor_buffers(checkpoint)
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None:
            check_checkpoint_fits(incompatible)
            # the model's own anchors are not "missing": no detectron2 warning about them
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not is_anchor_buffer(k)]
        return incompatible

    def load(self, path: str, checkpointables=None) -> Dict[str, Any]:
        """Like ``DetectionCheckpointer.load``; a checkpoint that does not fit the model is a
        :class:`CheckpointMismatchError` naming ``path``."""
        try:
            return super().load(path, checkpointables=checkpointables)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"{path}: {e}") from e

    def load_for_inference(self, path: str, *, prefer_ema: bool = True) -> Dict[str, Any]:
        """Load weights for evaluation/export: the EMA weights when the file has
        ``ema["module"]`` (and ``prefer_ema``), else the ``model`` weights. No checkpointable
        (optimizer, trainer, ...) is touched.

        Args:
            path: checkpoint file.
            prefer_ema: use ``ema.module`` when present.

        Returns:
            The remaining, unused entries of the checkpoint (like ``load``).
        """
        if not path:
            raise ValueError("load_for_inference: empty checkpoint path")
        local = path if os.path.isfile(path) else self.path_manager.get_local_path(path)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"Checkpoint {path} not found!")
        checkpoint = self._load_file(local)
        ema_state = _ema_module_state(checkpoint) if prefer_ema else None
        if ema_state is not None:
            updates = checkpoint["ema"].get("updates", "?")
            self.logger.info(f"[Checkpointer] Loading EMA weights (ema.module, {updates} updates) from {path}")
            checkpoint.pop("ema")
            checkpoint["model"] = ema_state
        else:
            self.logger.info(f"[Checkpointer] Loading model weights from {path}"
                             + (" (the file has no EMA weights)" if prefer_ema else ""))
        try:
            incompatible = self._load_model(checkpoint)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"{path}: {e}") from e
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        return checkpoint


def _ema_module_state(checkpoint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    ema = checkpoint.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
        return ema["module"]
    return None
