"""Build ``vqkit-runtime``: the torch-free part of the ``vqkit`` package, from the same source files.

The distribution holds the modules ``vqkit.runtime`` needs and nothing else, so an app that only runs exported
tokenizers installs numpy, ONNX Runtime and Pillow, not torch. ``from vqkit.runtime import Tokenizer`` is the
same import with either distribution installed (install one of the two: ``vqkit`` already contains these).
"""

from setuptools import setup
from setuptools.command.build_py import build_py

RUNTIME_MODULES = {"__init__", "_version", "errors", "images", "resample", "runtime"}


class RuntimeModulesOnly(build_py):
    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[1] in RUNTIME_MODULES]


setup(cmdclass={"build_py": RuntimeModulesOnly})
