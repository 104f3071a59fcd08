"""Image reading: detectron2's ``read_image`` semantics, plus correct 16-bit images.

:func:`read_image` behaves like ``detectron2.data.detection_utils.read_image`` (PIL, the EXIF
orientation applied with detectron2's own helper, then ``convert_PIL_to_numpy``), so pixels and
annotation frames are exactly detectron2's: COCO boxes, ``height`` and ``width`` refer to the image
*as displayed*, i.e. after the EXIF rotation. It differs in one case: single-channel 16-bit
images (PIL modes ``I;16*`` / ``I``, e.g. 16-bit grayscale PNG), which PIL's ``convert("RGB")``
clips to 255 (an almost white image); here they are scaled to 8 bits (``value >> 8``, the same
reduction PIL applies to 16-bit RGB PNGs). Grayscale, palette, RGBA (alpha dropped, not
composited, like the official loader's ``convert("RGB")``) and CMYK images become RGB as in
detectron2.
"""

import numpy as np
from PIL import Image

__all__ = ["read_image", "exif_orientation", "EXIF_ORIENTATION_TAG", "SIZE_SWAPPING_ORIENTATIONS"]

#: The EXIF "Orientation" tag.
EXIF_ORIENTATION_TAG = 0x0112
#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
SIZE_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of a PIL image (1 = none/normal; unreadable EXIF counts as 1)."""
    try:
        exif = image.getexif()
    except Exception:  # noqa: BLE001 - detectron2 treats unreadable EXIF as absent too (its issue #1885)
        return 1
    value = exif.get(EXIF_ORIENTATION_TAG, 1) if exif is not None else 1
    return int(value) if isinstance(value, int) else 1


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer single-channel images -> 8-bit "L" (``value >> 8``)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(image).astype(np.uint16)
    elif image.mode == "I":  # 16-bit PNG/TIFF data that PIL opened as 32-bit ints
        arr = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    else:
        return image
    return Image.fromarray((arr >> 8).astype(np.uint8))  # 2-D uint8 -> mode "L"


def read_image(file_name: str, format: str = "RGB") -> np.ndarray:
    """Read an image file as a uint8 HxWxC array, EXIF orientation applied.

    Args:
        file_name: image path (local or an iopath-supported URI).
        format: "RGB", "BGR", "L" or any PIL mode, as in detectron2's ``read_image``.

    Returns:
        uint8 array [H, W, C] (C = 3 for RGB/BGR, 1 for "L") of the image as displayed.

    Raises:
        OSError / PIL.UnidentifiedImageError: unreadable, truncated or corrupt files (PIL's errors;
            callers add the dataset context).
    """
    from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
    from detectron2.utils.file_io import PathManager

    with PathManager.open(file_name, "rb") as f:
        image = Image.open(f)
        image = _apply_exif_orientation(image)
        image = _to_8bit(image)
        return convert_PIL_to_numpy(image, format)
