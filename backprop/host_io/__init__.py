"""Host-side file I/O: the only part of ``backprop/`` that may use NumPy directly.

Reading datasets, writing model files and drawing plots happen on the host;
arrays reach a device through ``backend.from_host`` and come back through
``backend.to_host``.
"""
