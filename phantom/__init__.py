"""phantom stage of hnp-xray."""
