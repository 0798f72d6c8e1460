"""The conflict report: one self-contained HTML page a person can decide from.

Every open conflict gets both images side by side (thumbnails rendered from the pixel
data, inline as PNG data URIs: the page needs no network), where their pixels differ, the
header elements that differ, and the commands that resolve it. The review page
(``review --serve``) shows the same cards, with buttons.
"""

from __future__ import annotations

import os

from dicomcommit.archives import open_archive
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.records import Status
from dicomcommit.review.pages import conflict_view, render
from dicomcommit.staging.writing import write_file


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
        views = [conflict_view(archive, row) for row in conflicts]
    title = f"dicomcommit: {len(conflicts)} open conflicts in {archive.location}"
    page = render("report.html", title=title, conflicts=views)
    # A name that is not UTF-8 (os.fsdecode gives it surrogates) is written as \udcXX, not a crash.
    write_file(output, page.encode(errors="backslashreplace"), overwrite=True)
    return len(conflicts)
