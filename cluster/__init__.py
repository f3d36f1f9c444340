"""cluster stage of hnp-xray."""
