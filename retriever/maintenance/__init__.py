"""Store maintenance without a model: ``verify`` (catalog <-> indexes <-> files) and ``repair``."""
