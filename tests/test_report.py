"""The HTML conflict report: self-contained, one image pair per conflict, and it renders."""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomcommit import Stager, commit
from dicomcommit.cli.main import main
from dicomcommit.review.report import THUMBNAIL, write_report
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
    assert len(page.sections) == 3
    assert all(len(figures) == 2 for figures in page.sections)
    images = [src for figures in page.sections for src in figures if src]
    assert len(images) == 2  # only the synthetic pair has pixels we can decode
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
