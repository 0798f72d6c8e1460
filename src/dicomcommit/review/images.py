"""Images for review: a thumbnail of a file's pixels, and where two files' pixels differ.

pydicom does the imaging: its modality LUT, then VOI LUT or window (PS3.3 C.11), and its
palette for PALETTE COLOR; what is left here is choosing the frame, scaling to 8 bits and
shrinking. Pillow encodes the PNG.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

from dicomcommit.review.loading import Loaded, decode, load, warnings_logged
from dicomcommit.review.show import flat, pixel_mask

THUMBNAIL = 192  # pixels, the longer side
DIFFERENCE = (255, 0, 0)  # the colour of a pixel that differs, over the existing image dimmed


def thumbnail(source: Path | Loaded) -> bytes | str:
    """A PNG thumbnail of the image in *source* (a path, or a file :func:`load` read), or why there is none.

    Never raises for what is in the file: a decoder that fails gives a one-line reason,
    and pydicom's warnings are logged once, naming the file.
    """
    loaded = source if isinstance(source, Loaded) else load(source)
    image = _rendered(loaded)
    if isinstance(image, str):
        return image
    step = _step(image)
    return encode_png(np.ascontiguousarray(image[::step, ::step]))


def difference(existing: Loaded, staged: Loaded) -> bytes | None:
    """A PNG of where the two images differ, in any frame (in red, over the existing image
    dimmed), the size of their thumbnails; None when they do not differ or cannot be compared."""
    first, second = decode(existing), decode(staged)
    if isinstance(first, str) or isinstance(second, str) or first.shape != second.shape:
        return None
    unequal = pixel_mask(existing, first, second)
    if not unequal.any():
        return None
    where = flat(unequal)
    base = _rendered(existing)
    grey = np.zeros(where.shape, np.uint8) if isinstance(base, str) else base if base.ndim == 2 else base.mean(axis=2)
    step = _step(where)
    shown = np.repeat((np.asarray(grey, np.float64)[::step, ::step] * 0.4).astype(np.uint8)[..., None], 3, axis=2)
    # A block of the thumbnail is marked when any pixel in it differs: one pixel stays visible.
    rows, cols = -(-where.shape[0] // step), -(-where.shape[1] // step)
    padded = np.zeros((rows * step, cols * step), bool)
    padded[: where.shape[0], : where.shape[1]] = where
    shown[padded.reshape(rows, step, cols, step).any(axis=(1, 3))] = DIFFERENCE
    return encode_png(shown)


def _step(image: np.ndarray) -> int:
    return max(1, -(-int(max(image.shape[:2])) // THUMBNAIL))


def _rendered(loaded: Loaded) -> np.ndarray | str:
    """The middle frame as 8-bit grey (rows, columns) or RGB (rows, columns, 3), or why not."""
    pixels = decode(loaded)
    if isinstance(pixels, str):
        return pixels
    assert loaded.dataset is not None
    with warnings_logged(loaded.path):
        try:
            return _render(loaded.dataset, pixels)
        except Exception as exc:  # a shape or a lookup table the windowing does not expect
            return f"cannot render the pixel data: {' '.join(str(exc).split()) or type(exc).__name__}"


def _render(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    color = ds.get("SamplesPerPixel", 1) == 3
    if pixels.ndim == (4 if color else 3):
        pixels = pixels[len(pixels) // 2]  # the middle frame
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)[..., :3]  # 8- or 16-bit entries; an alpha channel is dropped
        pixels, color = (rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)), True
    return _to_rgb8(pixels) if color else _window(ds, pixels)


def _window(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """8-bit grey: pydicom's modality then VOI LUT or window (PS3.3 C.11), else the 1st-99th percentiles."""
    values = apply_modality_lut(pixels, ds)
    output = _voi_range(ds)
    if output is None:
        low, high = map(float, np.percentile(values, (1, 99)))
    else:
        with np.errstate(over="ignore"):  # SIGMOID's exp() far below the centre: the output is its minimum all the same
            values = apply_voi_lut(values, ds)
        low, high = output
    scaled = (np.asarray(values, dtype=np.float64) - low) / ((high - low) or 1e-9) * 255
    grey = np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)
    return 255 - grey if ds.get("PhotometricInterpretation") == "MONOCHROME1" else grey


def _voi_range(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The range of what pydicom's ``apply_voi_lut`` gives for *ds* (as its code decides), None if it has no VOI."""
    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
        return 0.0, 2.0 ** lut[0].LUTDescriptor[2] - 1  # the VOI LUT's entries: its bit depth
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    # apply_windowing maps onto the range of the modality LUT's output, else of the stored values, rescaled
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    elif ds.PixelRepresentation == 0:
        low, high = 0.0, 2.0**ds.BitsStored - 1
    else:
        low, high = -(2.0 ** (ds.BitsStored - 1)), 2.0 ** (ds.BitsStored - 1) - 1
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:  # a negative slope swaps the ends: the scaling keeps the order
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return low, high


def _to_rgb8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    top = max(float(pixels.max()), 1.0)
    return np.clip(pixels.astype(np.float64) / top * 255, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """Encode an 8-bit grey (h, w) or RGB (h, w, 3) array as PNG (Pillow)."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")  # uint8: (h, w) is mode L, (h, w, 3) is RGB
    return out.getvalue()
