"""The ``vqkit`` command line: thin shells over library functions."""
