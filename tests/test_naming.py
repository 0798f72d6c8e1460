from __future__ import annotations

import os
import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomcommit import DEFAULT_TEMPLATE, MISSING, TemplateError
from dicomcommit.naming import (
    MAX_COMPONENT_BYTES,
    Scalar,
    Value,
    _sanitize,
    attrs_from_dataset,
    parse_template,
    sanitize_component,
)


@pytest.mark.parametrize(
    "template",
    [
        "",
        "/abs/{SOPInstanceUID}",
        "a/../{SOPInstanceUID}",
        "./{SOPInstanceUID}",
        "a//{SOPInstanceUID}",
        "{NotAKeyword}/{SOPInstanceUID}",
        "{PatientID.__class__}/{SOPInstanceUID}",
        "{PatientID[0]}/{SOPInstanceUID}",
        "{PatientID!r}/{SOPInstanceUID}",
        "{PatientID:{Modality}}/{SOPInstanceUID}",
        "{SOPInstanceUID",
        "{0}/{SOPInstanceUID}",
    ],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_template_without_sop_instance_uid_needs_allow_collisions() -> None:
    with pytest.raises(TemplateError, match="allow_collisions"):
        parse_template("{PatientID}/{SeriesInstanceUID}.dcm")
    assert parse_template("{PatientID}.dcm", allow_collisions=True).keywords == ("PatientID",)


def test_default_template_renders_the_four_uids() -> None:
    attrs = {"PatientID": "P1", "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"}
    assert parse_template(DEFAULT_TEMPLATE).render(attrs) == "P1/1.2/1.2.3/1.2.3.4.dcm"


def test_missing_and_empty_values_render_as_placeholder() -> None:
    template = parse_template("{PatientID}/{Modality}/{SOPInstanceUID}.dcm")
    assert template.render({"PatientID": "", "SOPInstanceUID": None}) == f"{MISSING}/{MISSING}/{MISSING}.dcm"


def test_format_specs_apply_to_numbers_and_numeric_text() -> None:
    template = parse_template("{InstanceNumber:05d}_{SliceThickness:.1f}_{SOPInstanceUID}")
    assert template.render({"InstanceNumber": 7, "SliceThickness": "2.50", "SOPInstanceUID": "1"}) == "00007_2.5_1"
    # a value the spec cannot format renders plainly, never raises
    assert template.render({"InstanceNumber": "abc", "SliceThickness": "x", "SOPInstanceUID": "1"}) == "abc_x_1"


def test_multi_valued_attributes_join_deterministically(ct: object) -> None:
    attrs = attrs_from_dataset(ct, ["ImageType", "InstanceNumber", "PatientName"])  # type: ignore[arg-type]
    assert attrs == {
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "InstanceNumber": 1,
        "PatientName": "CompressedSamples^CT1",
    }
    rendered = parse_template("{ImageType}/{SOPInstanceUID}").render({**attrs, "SOPInstanceUID": "9"})
    assert rendered == "ORIGINAL_PRIMARY_AXIAL/9"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("..", MISSING),
        (".", MISSING),
        (".hidden", "_hidden"),
        ("../../etc", "___.._etc"),
        ("a/b\\c", "a_b_c"),
        ("nul\x00byte", "nul_byte"),
        ("new\nline\ttab", "new_line_tab"),
        ("  padded  ", "padded"),
        ("trailing. . ", "trailing"),
        (" .x", "_x"),
        ("%(PatientID)s", "%(PatientID)s"),
        ("{SOPInstanceUID}", "{SOPInstanceUID}"),
        ("Müller^José", "Müller^José"),
        ("", MISSING),
    ],
)
def test_sanitize_component(value: str, expected: str) -> None:
    assert sanitize_component(value) == expected


def test_values_are_never_expanded_again() -> None:
    template = parse_template("{PatientID}/{SOPInstanceUID}.dcm")
    assert template.render({"PatientID": "{SOPInstanceUID}", "SOPInstanceUID": "%(PatientID)s"}) == (
        "{SOPInstanceUID}/%(PatientID)s.dcm"
    )


def test_long_components_are_capped_with_a_hash_keeping_the_extension() -> None:
    template = parse_template("{PatientID}/{SOPInstanceUID}.dcm")
    a = template.render({"PatientID": "x" * 10_000, "SOPInstanceUID": "1." * 5_000})
    b = template.render({"PatientID": "x" * 10_001, "SOPInstanceUID": "1." * 5_000})
    first, last = a.split("/")
    assert len(first.encode()) <= MAX_COMPONENT_BYTES
    assert len(last.encode()) <= MAX_COMPONENT_BYTES
    assert last.endswith(".dcm")
    assert a != b.split("/")[0] + "/" + last  # different values, different names
    assert a == template.render({"PatientID": "x" * 10_000, "SOPInstanceUID": "1." * 5_000})


hostile_text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["..", ".", "../../etc/passwd", "/", "\\", "\x00", " ", "%(PatientID)s", "{SOPInstanceUID}"]),
    st.text(alphabet=st.sampled_from("./\\\x00 \n.é{}%"), max_size=40),
    st.integers(min_value=0, max_value=300).map(lambda n: "é" * n),
)


@settings(max_examples=400, deadline=None)
@given(patient=hostile_text, study=hostile_text, sop=hostile_text, multi=st.lists(hostile_text, max_size=4))
def test_hostile_values_stay_inside_the_archive(patient: str, study: str, sop: str, multi: list[str]) -> None:
    template = parse_template("{PatientID}/{StudyInstanceUID}/{ImageType}/{SOPInstanceUID}.dcm")
    values: dict[str, Value] = {"PatientID": patient, "StudyInstanceUID": study, "SOPInstanceUID": sop}
    values["ImageType"] = list[Scalar](multi)
    rel = template.render(values)
    parts = rel.split("/")
    assert len(parts) == 4  # no value adds or removes a directory level
    for part in parts:
        assert part not in ("", ".", "..")
        assert not part.startswith(".")
        assert part == part.strip()
        assert "\x00" not in part
        assert "\\" not in part
        assert all(ord(c) >= 32 for c in part)
        assert len(part.encode()) <= MAX_COMPONENT_BYTES
    root = "/archive/root"
    assert posixpath.normpath(posixpath.join(root, rel)).startswith(root + "/")
    assert rel == template.render(values)  # deterministic


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(hostile_text, st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E))))
def test_the_fast_path_agrees_with_the_full_sanitizer(value: str) -> None:
    assert sanitize_component(value) == _sanitize(value)


@settings(max_examples=200, deadline=None)
@given(value=hostile_text)
def test_sanitized_components_are_valid_file_names(tmp_path_factory: pytest.TempPathFactory, value: str) -> None:
    directory = tmp_path_factory.mktemp("names", numbered=True)
    name = sanitize_component(value)
    path = directory / name
    path.write_bytes(b"x")  # the filesystem takes it as one name, inside the directory
    assert os.listdir(directory) == [name]
