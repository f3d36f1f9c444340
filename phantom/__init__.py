"""Synthetic lumbar radiographs with planted signs of herniation, their ground truth and their ceiling
(`hnp phantom`). They stand in for the private hospital data of Kim et al. 2022 in demos, tests and benchmarks.

- `phantom.signs`: the difficulty presets (`easy`, `paper`): each sign's probability with and without HNP,
  severity, magnitude and the views that show it; the sampler and the likelihoods the ceiling uses.
- `phantom.anatomy`: patients (age, sex, labels, views, signs) and the spine all their films share.
- `phantom.views`: each view's geometry in mm (AP, LAT, OBL_L, OBL_R, FLEX, EXT) and what it draws of the signs.
- `phantom.render`: pose, rasterisation, exposure, blur, noise and JPEG, plus each disc's and sign's place in pixels.
- `phantom.truth`: the truth tables and their reader; `phantom.ceiling`: the ideal observer's AUC (`ceiling.json`)
  and the model-beside-ceiling block of `hnp eval --truth`.
- `phantom.generate`: the data set on disk, deterministic per seed whatever the number of worker processes.
- `phantom.cli`: the `hnp phantom` subcommand.

Truth files (full description: `phantom.truth`, docs/phantom.md; levels spelled as `hnp.levels.LEVELS`):

    truth.parquet            one row per radiograph, manifest row order: row (the manifest row), image_path,
                             patient (running number), view, height, width (pixels); per level <level>_x, _y,
                             _half_height, _half_width (pixels, y down), _angle (degrees); posterior_<level>
    truth_signs.parquet      one row per radiograph x level x sign (row order, then LEVELS, then SIGNS): row,
                             image_path, patient, level, sign, planted, visible, severity (0-1), magnitude
                             (SIGN_UNITS), side ("L"/"R"/""), x0, y0, x1, y1 (pixels, clipped to the image)
    truth_patients.parquet   one row per patient x level x sign: the latent state (hnp, silent, age, ...) and
                             observed (some film of the patient shows the sign)

`visible` is planted and shown by that view. `paper`: narrowing and listhesis on LAT, FLEX, EXT; osteophytes and
scoliosis on AP, OBL_L, OBL_R; sclerosis on AP, LAT, FLEX, EXT; a facet sign on the oblique of its side;
instability never in one film (only a FLEX and an EXT film together: truth_patients' `observed`). `easy`:
narrowing, osteophytes and sclerosis in every view, no other sign.
"""
