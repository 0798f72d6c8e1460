"""review --serve: the page needs its token, answers only its own host, refuses writes when
read only, and (in headless Chromium) shows coloured images and resolves what is clicked."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from dicomcommit import Stager, commit
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.records import Status
from dicomcommit.review.serve import ReviewServer
from tests.conftest import sha256_of, tmpfs, wheel_file

NAMES = ("examples_palette.dcm", "CT_small.dcm", "MR_small.dcm")  # palette colour, and two grey images


def _conflicts(staging: Path, archive: Path) -> None:
    stager = Stager(staging)
    for name in NAMES:
        stager.stage(pydicom.dcmread(wheel_file(name)))
    commit(staging, archive)
    for name in NAMES:
        ds = pydicom.dcmread(wheel_file(name))
        ds.StudyDescription = "edited by hand"
        stager.stage(ds)
    assert commit(staging, archive).conflicts == len(NAMES)


@pytest.fixture
def served(dirs: tuple[Path, Path]) -> Iterator[tuple[ReviewServer, Path]]:
    staging, archive = dirs
    _conflicts(staging, archive)
    server = ReviewServer(archive)
    server.start()
    yield server, archive
    server.shutdown()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as answer:  # noqa: S310
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _post(server: ReviewServer, fields: dict[str, str]) -> tuple[int, str]:
    data = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/resolve", data=data)
    try:
        with urllib.request.urlopen(request) as answer:  # noqa: S310
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _open_conflicts(archive: Path) -> list[int]:
    with open_manifest(archive) as manifest:
        return [r.id for r in manifest.records(Status.CONFLICT)]


def test_every_request_needs_the_token(served: tuple[ReviewServer, Path]) -> None:
    server, archive = served
    base = f"http://127.0.0.1:{server.port}/"
    assert _get(base)[0] == 403
    assert _get(base + "?token=wrong")[0] == 403
    status, page = _get(server.url)
    assert status == 200
    assert page.count('class="conflict"') == len(NAMES)
    ids = _open_conflicts(archive)
    # A cross-site form cannot know the token: nothing is resolved.
    assert _post(server, {"one": f"{ids[0]}:staged"})[0] == 403
    assert _post(server, {"one": f"{ids[0]}:staged", "token": "guess"})[0] == 403
    assert _open_conflicts(archive) == ids


def test_only_its_own_host_is_answered(served: tuple[ReviewServer, Path]) -> None:
    """A name rebound to 127.0.0.1 (DNS rebinding) does not reach the page."""
    server, _ = served
    assert _get(server.url, {"Host": f"evil.example:{server.port}"})[0] == 403
    assert _get(server.url, {"Host": f"localhost:{server.port}"})[0] == 200


def test_answers_forbid_framing_and_referrers(served: tuple[ReviewServer, Path]) -> None:
    server, _ = served
    with urllib.request.urlopen(server.url) as answer:  # noqa: S310
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert answer.headers["Cache-Control"] == "no-store"


def test_a_decision_is_recorded_with_who_made_it(served: tuple[ReviewServer, Path]) -> None:
    server, archive = served
    ids = _open_conflicts(archive)
    status, page = _post(server, {"token": server.token, "one": f"{ids[0]}:both"})
    assert status == 200  # (after the redirect)
    with open_manifest(archive) as manifest:
        row = manifest.get(ids[0])
    assert row.resolution == "both"
    assert row.resolved_by is not None
    assert row.resolved_by.endswith("(review page)")
    assert f"#{ids[0]}: kept both" in page
    # The same button again (a stale page, another reviewer): refused, nothing changes.
    status, page = _post(server, {"token": server.token, "one": f"{ids[0]}:staged"})
    assert status == 409
    assert "not a conflict" in page
    # Nothing selected, or a choice the page never sends.
    assert _post(server, {"token": server.token, "keep": "staged"})[0] == 409
    assert _post(server, {"token": server.token, "one": f"{ids[1]}:delete"})[0] == 409
    assert _open_conflicts(archive) == ids[1:]


def test_a_read_only_archive_offers_no_decisions(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    staging, _ = dirs
    with tmpfs(tmp_path / "ro", "16m") as mount:
        archive = mount / "archive"
        _conflicts(staging, archive)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        try:
            server = ReviewServer(archive)
            server.start()
            try:
                status, page = _get(server.url)
                assert status == 200
                assert "Read only" in page
                assert "disabled" in page
                ids = _open_conflicts(archive)
                status, page = _post(server, {"token": server.token, "one": f"{ids[0]}:staged"})
                assert status == 403
                assert "read-only filesystem" in page
                assert _open_conflicts(archive) == ids
            finally:
                server.shutdown()
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)


def test_the_command_needs_a_manifest(tmp_path: Path) -> None:
    from dicomcommit.cli.main import main  # noqa: PLC0415

    assert main(["review", str(tmp_path / "nothing"), "--serve"]) == 1
    assert main(["review", str(tmp_path / "nothing"), "--port", "80"]) == 2  # --port goes with --serve
    assert main(["review", str(tmp_path / "nothing"), "--serve", "--port", "70000"]) == 2


# --- in a real browser -------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    (shutil.which("chromium") is None or shutil.which("chromedriver") is None) and not os.environ.get("CI"),
    reason="Chromium and chromedriver are not installed (scripts/test installs them as root; CI does)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,2400", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    # The system's driver, matching the system's Chromium: Selenium Manager would download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    yield driver
    driver.quit()


def _screenshot_of(element: WebElement) -> np.ndarray:
    png = element.screenshot_as_png
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@needs_chromium
def test_the_page_in_chromium_shows_colour_and_resolves_what_is_clicked(
    served: tuple[ReviewServer, Path], browser: WebDriver
) -> None:
    server, archive = served
    driver = browser
    driver.get(server.url)
    ids = _open_conflicts(archive)
    with open_manifest(archive) as manifest:
        rows = {r.id: r for r in manifest.records(Status.CONFLICT)}
    sections = driver.find_elements(By.CSS_SELECTOR, "section.conflict")
    cards = {int((c.get_attribute("id") or "-").split("-")[1]): c for c in sections}
    assert sorted(cards) == ids
    palette, grey = ids[0], ids[1]
    for row_id, coloured in ((palette, True), (grey, False)):
        images = cards[row_id].find_elements(By.TAG_NAME, "img")
        assert len(images) == 2  # both files; the pixels are the same: no difference image
        for image in images:
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
            pixels = _screenshot_of(image)
            assert pixels.std() > 10  # an image, not a blank box
            coloured_share = ((pixels.max(axis=2) - pixels.min(axis=2)) > 40).mean()
            assert (coloured_share > 0.02) if coloured else (coloured_share == 0), (
                coloured_share
            )  # the palette; grey CT

    staged_sha = rows[palette].sha256
    cards[palette].find_element(By.XPATH, ".//button[normalize-space()='Keep staged']").click()
    WebDriverWait(driver, 60).until(lambda d: f"#{palette}: kept staged" in d.find_element(By.TAG_NAME, "body").text)
    assert f"#{palette}: kept staged" in driver.find_element(By.CLASS_NAME, "said").text
    target = archive / (rows[palette].target or "")
    assert sha256_of(target) == staged_sha  # the staged bytes hold the name now
    # Keep both for a selection of the rest.
    for row_id in ids[1:]:
        driver.find_element(By.ID, f"select-{row_id}").click()
    driver.find_element(By.XPATH, "//button[normalize-space()='Keep both for the selected']").click()
    # click() returns before the answer to the POST has loaded: wait for the page that says what was done
    WebDriverWait(driver, 60).until(lambda d: f"#{ids[-1]}: kept both" in d.find_element(By.TAG_NAME, "body").text)
    assert _open_conflicts(archive) == []
    with open_manifest(archive) as manifest:
        for row_id in ids[1:]:
            row = manifest.get(row_id)
            assert row.resolution == "both"
            assert row.status is Status.COMMITTED
            assert (archive / row.path).is_file()
            assert sha256_of(archive / row.path) == rows[row_id].sha256
            assert sha256_of(archive / (rows[row_id].target or "")) == rows[row_id].existing_sha256
    assert "0 conflict rows" in driver.find_element(By.CLASS_NAME, "count").text


@needs_chromium
def test_the_report_in_chromium_shows_a_difference_image(
    dirs: tuple[Path, Path], browser: WebDriver, tmp_path: Path
) -> None:
    from dicomcommit.review.report import write_report  # noqa: PLC0415

    staging, archive = dirs
    ds = pydicom.dcmread(wheel_file("CT_small.dcm"))
    Stager(staging).stage(ds)
    commit(staging, archive)
    pixels = ds.pixel_array.copy()
    pixels[40, 50] += 100  # one pixel: it must still show in a thumbnail
    ds.PixelData = pixels.tobytes()
    Stager(staging).stage(ds)
    assert commit(staging, archive).conflicts == 1
    out = tmp_path / "report.html"
    write_report(archive, out)
    driver = browser
    driver.get(out.as_uri())
    text = driver.find_element(By.CLASS_NAME, "pixels").text
    assert text == "pixel data differs: 1 of 16,384 pixels, rows 40-40, columns 50-50"
    shot = _screenshot_of(driver.find_element(By.CSS_SELECTOR, "figure.difference img"))
    red = (shot[..., 0] > 150) & (shot[..., 1] < 80) & (shot[..., 2] < 80)
    assert red.any()  # the one pixel that differs, marked
    assert red.mean() < 0.01  # and nothing else
