"""eval stage of hnp-xray: a trained run's fold models on the test shards, the way Kim et al. 2022 evaluated.

    metrics     per-level precision, recall, F1, ROC AUC (+ patient-bootstrap CI), PR AUC, accuracy
    bagging     fold bagging, per-patient means, the threshold rules (fold-mean, fixed:X, youden-oof)
    report      metrics.json/.csv, roc.png, report.md (paper Table 5 and Tables 2-4 layouts)
    gradcam     Grad-CAM of the most confident test images (Selvaraju et al. 2017)
    pointing    the pointing game against the phantom's disc truth
    run_eval    `hnp eval` (cli.py);  predict: `hnp predict` (predict_cli.py)
"""
