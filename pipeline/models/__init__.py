"""Models: the contract every model meets, the built-in spectral models, networks, bundles, int8 variants."""
