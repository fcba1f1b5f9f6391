"""The write side: turns files into evidence items and feeds them into a store.

``base`` defines the ``Ingestor`` protocol (accepts a sniffed content type, yields ``Item``s)
and the ``IngestContext`` an ingestor works in; ``sniff`` tells a file's type from its bytes;
``registry`` maps types to ingestors (``images``, ``text``, ``pdf``, ``av``), turning a missing
optional dependency into an install hint; ``chunking`` cuts text into overlapping chunks; and
``ingest`` runs the pipeline that discovers, ingests, encodes and commits. Importing it loads
no model or media library: ingestors load theirs when the registry first needs them.
"""
