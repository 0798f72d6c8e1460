"""Reading DICOM bytes: naming attributes from headers (raw scanner, pydicom for the rest), and completeness."""
