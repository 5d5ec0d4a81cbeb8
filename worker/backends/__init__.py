"""Optional inference backends implementing :class:`worker.protocols.Classifier` (torch is in ``worker.classifier``)."""
