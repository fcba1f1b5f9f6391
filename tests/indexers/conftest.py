"""Fixtures for the tests of indexers/."""
