"""DICOM ingest (`hnp import-dicom`): a PACS export of DICOM files to the JPEGs and the manifest the system takes.

- `ingest.sources`: the input files (a folder tree or a DICOMDIR).
- `ingest.header`: is a file a lumbar radiograph; its manifest metadata (patient, study, date, age, sex, view).
- `ingest.pixels`: the pixels as displayed (Modality LUT, VOI LUT or window, MONOCHROME1, padding) in 8 bits.
- `ingest.convert`: one file to one JPEG and its record, the work of each process.
- `ingest.labels`: MRI-read labels and the 90-day rule.
- `ingest.outputs`: duplicates, labels, split; manifest.csv/.parquet (or inventory) and skipped.csv.
- `ingest.journal`: what an interrupted import has done, so that a rerun continues.
- `ingest.importer`: the whole import over worker processes; `ingest.cli`: the subcommand.
- `ingest.reasons`: why a file was skipped, the one list.
"""
