"""``fakesake eval``: how accurate a detector is on labelled data.

Pure parts (``metrics``, ``dataset``, ``report``) apart from the libraries they drive (``perturb``: Pillow,
``plots``: matplotlib). The command that wires them to the scan pipeline is :mod:`worker.service.evaluate`.
"""
