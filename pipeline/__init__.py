"""pipeline stage of hnp-xray."""
