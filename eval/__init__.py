"""eval stage of hnp-xray."""
