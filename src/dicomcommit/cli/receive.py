"""``dicomcommit receive``: a DICOM receiver (C-STORE, C-ECHO, Storage Commitment) that
stages every instance durably before its Success and commits the staging directory as it goes."""

from __future__ import annotations

import argparse
import logging
import signal
import types
from pathlib import Path
from typing import TypeVar

from dicomcommit.cli.values import add_manifest_option, add_store_options, archive_location, count, seconds
from dicomcommit.committing.decide import ON_CONFLICT_CHOICES
from dicomcommit.errors import EXIT_OK, UsageError
from dicomcommit.naming import DEFAULT_TEMPLATE
from dicomcommit.receiving.settings import (
    DEFAULT_AE_TITLE,
    DEFAULT_COMMIT_FILES,
    DEFAULT_COMMIT_INTERVAL,
    DEFAULT_MAX_ASSOCIATIONS,
    DEFAULT_PORT,
)

_P = TypeVar("_P", bound=argparse.ArgumentParser)


def add_receive_command(sub: argparse._SubParsersAction[_P]) -> None:
    """Add ``receive`` to the subcommands *sub*."""
    r = sub.add_parser("receive", help="receive DICOM over the network (C-STORE, Storage Commitment) and commit it")
    r.add_argument("staging", type=Path, help="the staging directory (created if missing)")
    r.add_argument("archive", type=archive_location, help="the archive root, or s3://bucket/prefix")
    r.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"the TCP port to listen on [{DEFAULT_PORT}]")
    r.add_argument("--host", default="", metavar="ADDRESS", help="the address to listen on [every interface]")
    r.add_argument("--ae-title", default=DEFAULT_AE_TITLE, help=f"this receiver's AE title [{DEFAULT_AE_TITLE}]")
    r.add_argument("--allow", action="append", default=[], metavar="AE[@HOST]",
                   help="only these calling AE titles (from these hosts) may associate; repeatable")  # fmt: skip
    r.add_argument("--peer", action="append", default=[], metavar="AE@HOST:PORT",
                   help="where AE accepts a Storage Commitment report once its own association has closed")  # fmt: skip
    r.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"final name over DICOM keywords [{DEFAULT_TEMPLATE}]")
    r.add_argument("--on-conflict", choices=[c for c in ON_CONFLICT_CHOICES if c != "error"], default="record",
                   help="a different instance under a name already taken: keep it for review, or commit it "
                   "under a suffixed name [record]")  # fmt: skip
    r.add_argument("--allow-collisions", action="store_true", help="accept a template without {SOPInstanceUID}")
    r.add_argument("--max-associations", type=count, default=DEFAULT_MAX_ASSOCIATIONS, metavar="N",
                   help=f"associations at once; more are rejected [{DEFAULT_MAX_ASSOCIATIONS}]")  # fmt: skip
    r.add_argument("--commit-interval", type=seconds, default=DEFAULT_COMMIT_INTERVAL, metavar="SECONDS",
                   help=f"seconds between commits of what was received [{DEFAULT_COMMIT_INTERVAL:g}]")  # fmt: skip
    r.add_argument("--commit-files", type=count, default=DEFAULT_COMMIT_FILES, metavar="N",
                   help=f"commit sooner once this many instances wait [{DEFAULT_COMMIT_FILES}]")  # fmt: skip
    r.add_argument("--json-log", type=Path, default=None, metavar="FILE",
                   help="append one JSON object per association and per instance to FILE")  # fmt: skip
    r.add_argument("--no-fsync", action="store_true", help="skip fsync (only for data you can regenerate)")
    add_manifest_option(r)
    add_store_options(r, jobs=False)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 0 to 65535, not {text!r}")
    return int(text)


def run_receive(args: argparse.Namespace) -> int:
    """Receive until SIGTERM or Ctrl-C, then stop as :meth:`Receiver.stop` does; exit 0."""
    if args.commit_interval <= 0:
        raise UsageError("--commit-interval must be more than 0 seconds")
    receive_log = logging.getLogger("dicomcommit.receive")
    receive_log.setLevel(logging.INFO)  # one line per association and per instance
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    from dicomcommit.receiving.receiver import Receiver  # noqa: PLC0415 -- pynetdicom, for this command only

    receiver = Receiver(args.staging, args.archive, port=args.port, host=args.host, ae_title=args.ae_title,
                        allow=args.allow, peers=args.peer, template=args.template, on_conflict=args.on_conflict,
                        manifest=args.manifest, max_associations=args.max_associations,
                        commit_interval=args.commit_interval, commit_files=args.commit_files,
                        json_log=args.json_log, durable=not args.no_fsync, endpoint_url=args.endpoint_url,
                        allow_collisions=args.allow_collisions)  # fmt: skip

    def stop(signum: int, frame: types.FrameType | None) -> None:
        receiver.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        receiver.serve_forever()
    finally:
        receiver.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK
