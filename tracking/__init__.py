"""The tracking room: the record's vocabulary (``tracking.record``), MLflow stores, run lifecycle, the server.

``tracking.record`` imports nothing heavy, so ``analysis`` and ``app`` read the vocabulary without MLflow or torch;
the other modules load MLflow on import and are imported by name.
"""
