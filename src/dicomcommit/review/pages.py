"""The review pages' templates (Jinja2, autoescaped) and what they show of a conflict.

The static report and the served review page render the same conflict card from the same
:class:`ConflictView`: both images, where their pixels differ, and the header differences.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from dicomcommit.archives import BaseArchive
from dicomcommit.manifests.records import Record
from dicomcommit.review.images import THUMBNAIL, difference, thumbnail
from dicomcommit.review.loading import Loaded, load
from dicomcommit.review.show import FileDiff, diff_loaded


@dataclass(frozen=True)
class Figure:
    """One file of a conflict: its image (a PNG data URI), or in words why there is none."""

    label: str
    path: str
    sha256: str | None
    src: str | None
    placeholder: str | None


@dataclass(frozen=True)
class ConflictView:
    """What a page shows of one open conflict."""

    record: Record
    existing: Figure
    staged: Figure
    difference: str | None  # a PNG data URI of where the pixels differ, when they do
    diff: FileDiff
    commands: list[str]  # the resolve commands, for a page that has no buttons


def conflict_view(archive: BaseArchive, row: Record) -> ConflictView:
    """Read both files of the conflict *row* once, and compare them."""
    existing, staged = load(Path(row.target or ""), archive), load(Path(row.path), archive)
    location = shlex.quote(str(archive.location))
    found = difference(existing, staged)
    return ConflictView(
        record=row,
        existing=_figure("existing (committed)", existing, row.existing_sha256),
        staged=_figure("staged (conflicting)", staged, row.sha256),
        difference=None if found is None else _data_uri(found),
        diff=diff_loaded(existing, staged),
        commands=[f"dicomcommit resolve {location} {row.id} --keep {keep}" for keep in ("existing", "staged", "both")],
    )


def _figure(label: str, loaded: Loaded, sha256: str | None) -> Figure:
    image = thumbnail(loaded)
    if isinstance(image, bytes):
        return Figure(label, loaded.path, sha256, _data_uri(image), None)
    return Figure(label, loaded.path, sha256, None, image)


def _data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def render(template: str, **context: Any) -> str:
    """The page *template* (a file in ``review/templates``) with *context*."""
    return _environment().get_template(template).render(thumbnail=THUMBNAIL, **context)


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("dicomcommit.review", "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise (none does)
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the render instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
