"""Models, in import order: contract.py (what every model declares and computes, ModelRef, the built-in
registry) <- spectral.py (the built-in index models), network.py (torch networks, precision, devices) <-
int8.py (OpenVINO int8 variants) <- bundle.py (model folders on disk) <- quantize.py (calibrating a bundle's
int8 variant); loader.py (a ModelRef to a model, once per process) on top."""
