"""sharding stage of hnp-xray."""
