"""The package says what it is: one version everywhere, the license pyproject names, and
a changelog section for the version."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import dicomcommit

TOP = Path(__file__).parent.parent


def test_the_version_is_one_value_everywhere() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", dicomcommit.__version__)
    assert importlib.metadata.version("dicomcommit") == dicomcommit.__version__  # the installed metadata
    cli = Path(sys.executable).with_name("dicomcommit")  # the installed command
    shown = subprocess.run([str(cli), "--version"], capture_output=True, text=True, check=True, timeout=60)
    assert shown.stdout.strip() == f"dicomcommit {dicomcommit.__version__}"


def test_the_license_file_is_the_one_pyproject_names() -> None:
    project = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (TOP / "LICENSE").read_text().splitlines()[0] == "MIT License"


def test_the_changelog_has_a_section_for_this_version() -> None:
    headings = re.findall(r"^## (\S+)", (TOP / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings
    assert headings[0] == dicomcommit.__version__  # the newest first
