"""Synthetic DICOM datasets for the demo, the tests and the benchmarks: the same arguments
always give the same bytes."""

from __future__ import annotations

import random

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

ROWS = 32
_DUPLICATE_SHARE = 0.10  # staged twice, byte for byte the same
_CONFLICT_SHARE = 0.05  # staged twice, the second time with different content


def synthetic_dataset(root: str, index: int, variant: int = 0, *, size: int = ROWS) -> Dataset:
    """A CT image of *size* x *size* 16-bit pixels (32: about 2.4 KB; 512: about 0.5 MB).

    The same arguments always give the same bytes. *index* picks the instance (its SOP
    Instance UID), *variant* changes its content but not its name, as reprocessing would.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{root}.3.{index}"
    ds.PatientID = f"DEMO{index // 100:04d}"
    ds.PatientName = f"Demo^Patient{index // 100}"
    ds.StudyInstanceUID = f"{root}.1.{index // 100}"
    ds.SeriesInstanceUID = f"{root}.2.{index // 20}"
    ds.Modality = "CT"
    ds.InstanceNumber = index % 20 + 1
    ds.SeriesDescription = "reprocessed" if variant else "original"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    pattern = bytes((index * 7 + variant * 13 + i) % 256 for i in range(256))
    length = size * size * 2
    ds.PixelData = (pattern * (length // 256 + 1))[:length]
    return ds


def plan_jobs(
    total: int, seed: int = 0, *, duplicates: float = _DUPLICATE_SHARE, conflicts: float = _CONFLICT_SHARE
) -> list[tuple[int, int]]:
    """(index, variant) pairs: *total* stage operations, a share of them staging an instance
    a second time, identically (*duplicates*) or with other content (*conflicts*)."""
    duplicates, conflicts = int(total * duplicates), int(total * conflicts)
    unique = total - duplicates - conflicts
    jobs = [(i, 0) for i in range(unique)]
    jobs += [(i, 0) for i in range(duplicates)]
    jobs += [(duplicates + i, 1) for i in range(conflicts)]  # instances not already duplicated
    random.Random(seed).shuffle(jobs)
    return jobs
