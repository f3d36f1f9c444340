"""hnp-xray: predict lumbar disc herniation (HNP) per level from plain lumbar X-rays.

The pieces every stage shares live here: the levels, the manifest schema, config loading and the CLI.
The stages themselves are top-level packages: `phantom`, `sharding`, `pipeline`, `train`, `eval`, `cluster`.
"""

__version__ = "0.1.0"
