"""Why an input file did not become a manifest row: the one list of reasons `skipped.csv` uses.

A reason is fixed text, never a header value (a body part, a modality, a UID and a file's own error message can all
carry PHI or let one be guessed), so `skipped.csv` and the logs stay free of them; the file's path names it.
"""

from __future__ import annotations

from hnp.schema import AGE_RANGE, MAX_XRAY_MRI_DAYS

# Reading the file
NOT_DICOM = "not DICOM"
UNREADABLE = "unreadable file"
CORRUPT = "corrupt DICOM (the header cannot be parsed)"
TRUNCATED = "truncated file"
DICOMDIR = "DICOMDIR (the export's index, not an image)"
NOT_A_FILE = "not a regular file (a pipe, socket or device)"
MISSING = "file missing (listed in the DICOMDIR, or removed during the import)"
NO_PIXELS = "no pixel data"
# What the image is
NOT_RADIOGRAPH = "not a radiograph (modality and SOP class are not CR or DX)"
FOR_PROCESSING = "DX for processing (raw detector data, not for display)"
NOT_LUMBAR = "not lumbar (body part, anatomic region and descriptions do not name the lumbar spine)"
BURNED_IN = "burned-in annotation (BurnedInAnnotation is YES)"
NO_PATIENT_ID = "no PatientID"
# Its pixels
MULTI_FRAME = "multi-frame image (more than one frame)"
NOT_GRAYSCALE = "not grayscale (colour or palette image)"
BIT_DEPTH = "unsupported bit depth (8 to 16 bits stored in 8 or 16 allocated)"
UNSUPPORTED_SYNTAX = "unsupported transfer syntax"  # + ": <its name>"
TRUNCATED_PIXELS = "truncated pixel data"
UNDECODABLE = "pixel data cannot be decoded"
BLANK = "blank image (every pixel has the same displayed value)"
UNEXPECTED = "unexpected error"  # + ": <exception type>": a case this importer does not know; please report it
# Across files, and the manifest's rules
DUPLICATE = "duplicate SOP instance"  # + " (same as <path of the first>)"
NO_DATE = "no study date (StudyDate, AcquisitionDate, ContentDate and SeriesDate are empty)"
NO_AGE = "no age (PatientAge and PatientBirthDate are empty)"
AGE_OUT_OF_RANGE = f"age outside {AGE_RANGE[0]}-{AGE_RANGE[1]}"
NO_MRI = "no MRI read for this patient in the labels"
NO_MRI_NEAR = f"no MRI read within {MAX_XRAY_MRI_DAYS} days of the X-ray"
