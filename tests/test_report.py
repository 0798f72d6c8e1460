"""The HTML conflict report: self-contained, one image pair per conflict, and it renders."""

from __future__ import annotations

import base64
import copy
import io
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicomcommit import Stager, commit
from dicomcommit.cli.main import main
from dicomcommit.review.images import THUMBNAIL, thumbnail
from dicomcommit.review.loading import Loaded
from dicomcommit.review.report import write_report
from dicomcommit.review.show import diff_files, label
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import wheel_file

MakeDs = Callable[..., Dataset]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[list[str]] = []  # per conflict: the src of each figure's image ("" if placeholder)
        self.in_figure = False
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append([])
        elif tag == "figure":
            self.sections[-1].append("")
        elif tag == "img":
            self.sections[-1][-1] = values.get("src") or ""
        for name in ("src", "href"):
            if values.get(name):
                self.links.append(values[name] or "")


def _conflicting_copy(name: str, staging: Path) -> None:
    ds = pydicom.dcmread(wheel_file(name))
    ds.StudyDescription = "edited by hand"
    Stager(staging).stage(ds)


@pytest.fixture
def archive(dirs: tuple[Path, Path], make_ds: MakeDs) -> Path:
    staging, archive = dirs
    stager = Stager(staging)
    stager.stage(make_ds(1))
    for name in ("rtplan.dcm", "JPEG-lossy.dcm"):  # no pixel data; pixels without a decoder here
        stager.stage(pydicom.dcmread(wheel_file(name)))
    commit(staging, archive)
    Stager(staging).stage(make_ds(1, variant=1))
    for name in ("rtplan.dcm", "JPEG-lossy.dcm"):
        _conflicting_copy(name, staging)
    assert commit(staging, archive).conflicts == 3
    return archive


def test_the_report_has_one_image_pair_per_conflict(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert write_report(archive, out) == 3
    page = _Page()
    page.feed(out.read_text())
    # Both files each; the synthetic pair, whose pixels differ, has a difference image too.
    assert [len(figures) for figures in page.sections] == [3, 2, 2]
    images = [src for figures in page.sections for src in figures if src]
    assert len(images) == 3  # only the synthetic pair has pixels that can be decoded
    for src in images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert 0 < width <= THUMBNAIL
        assert 0 < height <= THUMBNAIL
    assert all(link.startswith("data:") for link in page.links)  # nothing from the network
    text = out.read_text()
    assert "no pixel data" in text
    assert "cannot decode the pixel data" in text
    assert "SeriesDescription" in text
    assert "StudyDescription" in text
    assert "--keep staged" in text


def test_the_report_command(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    out.write_text("old")
    assert main(["report", str(archive), "-o", str(out)]) == 0
    assert "3 open conflicts" in capsys.readouterr().out
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "no-archive"), "-o", str(out)]) == 1
    assert main(["report", str(archive)]) == 2  # -o is required


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"), reason="Chromium is not installed (CI installs it)"
)
def test_the_report_renders_in_headless_chromium(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_report(archive, out)
    shot = tmp_path / "report.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def _png_pixels(png: bytes | str) -> np.ndarray:
    """The pixels of a PNG thumbnail: 8 bits, grey (h, w) or RGB (h, w, 3)."""
    assert isinstance(png, bytes), png
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode in ("L", "RGB")
        return np.asarray(image)


def _grey_file(path: Path, pixels: np.ndarray, **elements: object) -> Path:
    """A one-frame 16-bit allocated grey image of *pixels* (12 bits stored), with *elements* set on it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("pixels", "rescale", "window", "output"),
    [
        (np.arange(4096, dtype=np.uint16), {}, (2048, 1024), (0, 4095)),  # unsigned: 0 to 2**12-1
        (np.arange(4096, dtype=np.int16) - 2048, {"RescaleSlope": 2, "RescaleIntercept": -1000}, (0, 2000),
         (-2048 * 2 - 1000, 2047 * 2 - 1000)),  # signed, rescaled: the signed range, rescaled
    ],
    ids=["unsigned", "signed-rescaled"],
)  # fmt: skip
def test_a_sigmoid_window_is_pydicoms(
    pixels: np.ndarray,
    rescale: dict[str, int],
    window: tuple[int, int],
    output: tuple[int, int],
    tmp_path: Path,
) -> None:
    center, width = window
    path = _grey_file(
        tmp_path / "sigmoid.dcm", pixels.reshape(64, 64), WindowCenter=center, WindowWidth=width,
        VOILUTFunction="SIGMOID", **rescale,
    )  # fmt: skip
    ds = pydicom.dcmread(path)
    low, high = output
    expected = (apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds) - low) / (high - low) * 255
    grey = _png_pixels(thumbnail(path))
    assert grey.shape == (64, 64)
    assert np.abs(grey - expected).max() <= 1  # pydicom's curve, not a straight line between the window's ends


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_voi_lut_sequence_is_applied(photometric: str, tmp_path: Path) -> None:
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)  # not the straight line of percentiles
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.add_new("LUTData", "OW", lut.tobytes())
    pixels = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    path = _grey_file(tmp_path / "voilut.dcm", pixels, PhotometricInterpretation=photometric, VOILUTSequence=[item])
    expected = lut[pixels] / 65535 * 255  # the LUT's 16-bit output, in 8 bits
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    assert np.abs(_png_pixels(thumbnail(path)) - expected).max() <= 1


def test_a_palette_colour_image_is_shown_in_its_colours() -> None:
    path = wheel_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    image = _png_pixels(thumbnail(path))
    step = -(-max(ds.Rows, ds.Columns) // THUMBNAIL)
    assert image.shape == (-(-ds.Rows // step), -(-ds.Columns // step), 3)  # RGB, colour type 2
    assert (image[..., 0] != image[..., 1]).mean() > 0.1  # not the indices as grey
    colours = apply_color_lut(ds.pixel_array, ds)[::step, ::step]
    assert (image == colours >> 8).all()  # its 16-bit palette entries, in 8 bits


def test_a_conflict_of_pixels_only_says_the_headers_agree(tmp_path: Path) -> None:
    """Not an empty table of headings."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    ds = synthetic_dataset("1.2.826.0.1.3680043.10.1234", 1)
    other = copy.deepcopy(ds)
    other.PixelData = bytes(len(ds.PixelData))
    with Stager(staging) as stager:
        stager.stage_many([ds, other])
    commit(staging, archive)
    out = tmp_path / "report.html"
    assert write_report(archive, out) == 1
    text = out.read_text()
    assert "pixel data differs" in text
    assert "no header differences" in text
    assert "<table>" not in text


def test_header_differences_name_group_lengths_and_private_elements(tmp_path: Path) -> None:
    original = wheel_file("ExplVR_BigEnd.dcm")  # written with group lengths, which pydicom drops
    ds = pydicom.dcmread(original)
    ds.add_new(0x00091010, "LO", "a private value")
    copy_path = tmp_path / "rewritten.dcm"
    ds.save_as(copy_path)
    labels = {e.tag: e.keyword for e in diff_files(original, copy_path).elements}
    assert labels["(0008,0000)"] == "(group length)"
    assert labels["(0009,1010)"] == "(private)"
    assert "(private or unknown)" not in labels.values()
    assert label(0x0008FFF1) == "(unknown)"
    assert label(0x00100010) == "PatientName"


@pytest.mark.parametrize("other", ["MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_the_same_image_in_another_transfer_syntax_is_identical_after_decoding(other: str) -> None:
    diff = diff_files(wheel_file("MR_small.dcm"), wheel_file(other))
    assert diff.pixels_differ is False
    assert diff.pixels == "pixel data identical after decoding"


def test_pixels_that_differ_say_how_many_and_where(tmp_path: Path) -> None:
    ds = pydicom.dcmread(wheel_file("MR_small.dcm"))
    pixels = ds.pixel_array.copy()
    pixels[10:13, 20:24] += 7  # 12 pixels in rows 10-12, columns 20-23
    ds.PixelData = pixels.tobytes()
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    diff = diff_files(wheel_file("MR_small.dcm"), changed)
    assert diff.pixels_differ is True
    assert diff.pixels == f"pixel data differs: 12 of {pixels.size:,} pixels, rows 10-12, columns 20-23"


def test_without_the_decoders_the_placeholder_names_the_syntax_and_the_extra() -> None:
    """In a process where the [images] decoders cannot be imported (as on an install without the extra)."""
    code = (
        "import sys\n"
        "for name in ('pylibjpeg', 'libjpeg', 'openjpeg', 'rle', 'gdcm'): sys.modules[name] = None\n"
        "from dicomcommit.review.images import thumbnail\n"
        f"print(thumbnail(__import__('pathlib').Path({str(wheel_file('MR_small_jpeg_ls_lossless.dcm'))!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == (
        "cannot decode the pixel data: no decoder for JPEG-LS Lossless Image Compression is installed "
        "(pip install 'dicomcommit[images]')"
    )


def test_fewer_frames_than_the_header_says_is_a_reason_not_an_empty_one() -> None:
    ds = pydicom.dcmread(wheel_file("MR_small_RLE.dcm"))
    ds.NumberOfFrames = 3  # one fragment: pydicom's frame iterator raises a bare StopIteration
    loaded = Loaded("MR_small_RLE.dcm", ds)
    assert thumbnail(loaded) == (
        "cannot decode the pixel data (RLE Lossless): it holds fewer frames than its Number of Frames (3)"
    )


def test_a_long_reason_is_kept_whole_and_its_box_scrolls(tmp_path: Path, archive: Path) -> None:
    out = tmp_path / "report.html"
    write_report(archive, out)
    text = out.read_text()
    reason = text.split('<div class="placeholder"', 2)[1]
    assert "…</div>" not in reason  # not cut
    assert "overflow: auto" in text  # the box scrolls instead of spilling over the heading
