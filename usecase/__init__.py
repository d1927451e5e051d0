"""Use cases: one class per use case with ``execute()``; ports live in ``usecase.ports``."""
