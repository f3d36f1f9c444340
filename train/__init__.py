"""train stage of hnp-xray."""
