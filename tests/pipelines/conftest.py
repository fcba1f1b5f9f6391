"""Fixtures for the tests of pipelines/."""
