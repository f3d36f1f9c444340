"""Helpers the tests import (`from support.manifests import write_manifest`); fixtures stay in conftest.py."""
