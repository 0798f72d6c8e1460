"""The conflict report: one self-contained HTML page a person can decide from.

Every open conflict gets both images side by side (thumbnails rendered from the pixel
data, inline as PNG data URIs: the page needs no network), the header elements that
differ, and the commands that resolve it.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

from dicomcommit.archives import BaseArchive, open_archive
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.records import Record, Status
from dicomcommit.review.show import Loaded, diff_loaded, load, warnings_logged
from dicomcommit.staging.writing import write_file

THUMBNAIL = 192  # pixels, the longer side
_REASON_WIDTH = 200  # characters of a decoder's message: about what the placeholder box holds


def write_report(
    archive_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    manifest: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
) -> int:
    """Write the HTML report of every open conflict of *archive_dir* (recorded in the
    manifest at *manifest*, as for :func:`dicomcommit.commit`; *endpoint_url* for an object
    store) to *output*.

    Returns the number of conflicts listed.

    Raises:
        ManifestError: the archive has no manifest.
        FileOpError: *output* cannot be written (nothing partial is left there).
    """
    with open_manifest(archive_dir, manifest=manifest) as opened:
        conflicts = opened.records(Status.CONFLICT)
    with open_archive(archive_dir, endpoint_url=endpoint_url) as archive:
        sections = [_section(archive, row) for row in conflicts]
    page = _PAGE.format(
        title=html.escape(f"dicomcommit: {len(conflicts)} open conflicts in {archive.location}"),
        body="\n".join(sections) or "<p>No open conflicts.</p>",
    )
    # A name that is not UTF-8 (os.fsdecode gives it surrogates) is written as \udcXX, not a crash.
    write_file(output, page.encode(errors="backslashreplace"), overwrite=True)
    return len(conflicts)


def _section(archive: BaseArchive, row: Record) -> str:
    # Each file is read once, for the differences and its image: pydicom's warnings about
    # it are logged once, and a 50 MB file is not read twice.
    existing, staged = load(Path(row.target or ""), archive), load(Path(row.path), archive)
    diff = diff_loaded(existing, staged)
    rows = "".join(
        f"<tr><td>{html.escape(e.tag)}</td><td>{html.escape(e.keyword)}</td>"
        f"<td>{html.escape(e.existing)}</td><td>{html.escape(e.staged)}</td></tr>"
        for e in diff.elements
    )
    pixels = diff.pixels
    commands = "\n".join(
        html.escape(f"dicomcommit resolve {archive.location} {row.id} --keep {keep}")
        for keep in ("existing", "staged", "both")
    )
    error = f"<p class='error'>{html.escape(diff.error)}</p>" if diff.error else ""
    heading = "<tr><th>tag</th><th>keyword</th><th>existing</th><th>staged</th></tr>"
    table = f"<table>{heading}{rows}</table>" if rows else "<p class='headers'>no header differences</p>"
    table = "" if diff.error else table  # (the files could not both be read: nothing was compared)
    return f"""<section class="conflict" id="conflict-{row.id}">
<h2>#{row.id} {html.escape(row.target or "")}</h2>
<div class="pair">
{_figure("existing (committed)", existing, row.existing_sha256)}
{_figure("staged (conflicting)", staged, row.sha256)}
</div>
{error}<p class="pixels">{html.escape(pixels)}</p>
{table}
<pre>{commands}</pre>
</section>"""


def _figure(label: str, loaded: Loaded, sha256: str | None) -> str:
    image = thumbnail(loaded)
    if isinstance(image, bytes):
        inner = f'<img alt="{html.escape(label)}" src="data:image/png;base64,{base64.b64encode(image).decode()}">'
    else:
        inner = f'<div class="placeholder">{html.escape(image)}</div>'
    path = html.escape(str(loaded.path))
    caption = f"{label}<br><code>{path}</code><br>sha256 {html.escape((sha256 or '?')[:16])}…"
    return f"<figure>{inner}<figcaption>{caption}</figcaption></figure>"


def thumbnail(source: Path | Loaded) -> bytes | str:
    """A PNG thumbnail of the image in *source* (a path, or a file :func:`load` read), or why there is none.

    Never raises for what is in the file: a decoder that fails gives a one-line reason,
    and pydicom's warnings are logged once, naming the file.
    """
    loaded = source if isinstance(source, Loaded) else load(source)
    if loaded.dataset is None:
        return f"cannot read the file: {loaded.error}"
    ds = loaded.dataset
    if "PixelData" not in ds:
        return "no pixel data"
    with warnings_logged(loaded.path):
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # no decoder for this transfer syntax, corrupt data...
            syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
            name = getattr(syntax, "name", str(syntax))
            return f"cannot decode the pixel data ({name}): {_reason(exc)}"
        try:
            return _render(ds, pixels)
        except Exception as exc:  # a shape or a lookup table the windowing does not expect
            return f"cannot render the pixel data: {_reason(exc)}"


def _reason(exc: Exception) -> str:
    """An exception's message on one line, cut short (decoders list every plugin they tried)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _REASON_WIDTH else f"{text[: _REASON_WIDTH - 1]}…"


def _render(ds: pydicom.Dataset, pixels: np.ndarray) -> bytes:
    color = ds.get("SamplesPerPixel", 1) == 3
    if pixels.ndim == (4 if color else 3):
        pixels = pixels[len(pixels) // 2]  # the middle frame
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)[..., :3]  # 8- or 16-bit entries; an alpha channel is dropped
        pixels, color = (rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)), True
    image = _to_rgb8(pixels) if color else _window(ds, pixels)
    step = max(1, -(-max(image.shape[:2]) // THUMBNAIL))
    return encode_png(np.ascontiguousarray(image[::step, ::step]))


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


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
section.conflict {{ border: 1px solid #ccc; border-radius: 6px; padding: 1em; margin-bottom: 2em; }}
h2 {{ font-size: 15px; word-break: break-all; }}
.pair {{ display: flex; gap: 2em; flex-wrap: wrap; }}
figure {{ margin: 0; max-width: 420px; }}
img, .placeholder {{ width: {size}px; height: {size}px; object-fit: contain; background: #000; display: block; }}
.placeholder {{ color: #eee; display: flex; align-items: center; justify-content: center; text-align: center;
  padding: 1em; box-sizing: border-box; }}
figcaption {{ font-size: 12px; word-break: break-all; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: left; font-size: 12px; }}
pre {{ background: #f5f5f5; padding: 0.5em; }}
.pixels {{ font-weight: bold; }}
.error {{ color: #a00; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
""".replace("{size}", str(THUMBNAIL))
