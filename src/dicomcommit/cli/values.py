"""The values of the command line's options and arguments: each a type for argparse, which
turns its ``ArgumentTypeError`` into a usage error naming the option; and the options that
several commands share."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from dicomcommit.locations import is_other_url
from dicomcommit.manifests import ENV_MANIFEST


def seconds(text: str) -> float:
    """An option's value as seconds: a finite number, 0 or more.

    Raises:
        argparse.ArgumentTypeError: anything else (``nan``, ``inf``, ``-1``, ``soon``), which
            the parser turns into a usage error naming the option.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    # float() takes "nan" and "inf"; every comparison with nan is false, so it would pass a
    # range check and then wait forever, or crash deep inside the lock.
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, not {text!r}")
    return value


def count(text: str) -> int:
    """An option's value as a count: a whole number, 1 or more.

    Raises:
        argparse.ArgumentTypeError: anything else, which the parser turns into a usage error.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def port(text: str) -> int:
    """A TCP port: 0 (any free one) to 65535.

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 (any free one) to 65535, not {value}")
    return value


def archive_location(text: str) -> str | Path:
    """An ARCHIVE argument: ``s3://bucket/prefix`` (kept as text), or a directory.

    Raises:
        argparse.ArgumentTypeError: a URL of another scheme (it would become a local directory).
    """
    if text[:5].lower() == "s3://":  # (S3:// too: a scheme is case-insensitive)
        return "s3://" + text[5:]
    if is_other_url(text):  # s3:/bucket (one slash), gs://..., file:///...
        raise argparse.ArgumentTypeError(f"unknown archive URL {text!r}: a directory, or s3://bucket/prefix "
                                         "(for a directory named so, write ./NAME)")  # fmt: skip
    return Path(text)


def directory(text: str) -> Path:
    """An argument that must be a directory (the demo's archive): an archive URL is refused."""
    location = archive_location(text)
    if not isinstance(location, Path):
        raise argparse.ArgumentTypeError(f"the demo runs on a directory, not {text!r}")
    return location


def add_manifest_option(p: argparse.ArgumentParser) -> None:
    """``--manifest URL``, on every command that opens a manifest."""
    p.add_argument(
        "--manifest",
        metavar="URL",
        default=None,
        help=f"the manifest: a path, sqlite:///path or postgresql://user@host:port/dbname (many hosts) "
        f"[${ENV_MANIFEST}, else ARCHIVE/.dicomcommit/manifest.sqlite]",
    )


def add_store_options(p: argparse.ArgumentParser, *, jobs: bool) -> None:
    """The options of an object-store archive (s3://bucket/prefix)."""
    p.add_argument("--endpoint-url", metavar="URL", default=None,
                   help="the object store's endpoint [$AWS_ENDPOINT_URL, else AWS's]")  # fmt: skip
    if jobs:
        p.add_argument("--jobs", type=count, default=None, metavar="N",
                       help="requests in flight at most, to an object store [32]")  # fmt: skip
