"""Synthetic lumbar radiographs with a planted, known per-level HNP signal (`hnp phantom`).

They stand in for the private hospital data of Kim et al. 2022 in demos, tests and benchmarks:

- `phantom.anatomy`: patients (age, sex, labels, views) and the spine all their images share; age raises
  prevalence and narrows every disc a little, HNP narrows its own disc clearly (often with spurs and sclerosis).
- `phantom.views`: each view's geometry in mm (AP, LAT, OBL_L, OBL_R, FLEX, EXT).
- `phantom.render`: pose, rasterisation, exposure, blur, noise and JPEG, plus each disc's truth in pixels.
- `phantom.generate`: the data set on disk (images, manifest.parquet/csv, truth.parquet), deterministic per
  seed and parallel over worker processes.
- `phantom.cli`: the `hnp phantom` subcommand.
"""
