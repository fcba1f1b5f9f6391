"""Fixtures for the tests of retriever/."""
