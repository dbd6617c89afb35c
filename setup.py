"""Compiled kernels of nmkit (optional): the project metadata is in pyproject.toml.

Each extension is plain C against the CPython API (arrays pass through the buffer protocol, no NumPy headers), built
by ``pip install`` when a C compiler is present. ``optional=True``: without a compiler the install still succeeds and
nmkit runs the same computations in NumPy (``nmkit.radiomics._native``); tests compare both paths value for value.
"""

from setuptools import Extension, setup

_FLAGS = ["-O3", "-std=c99", "-ffp-contract=off"]  # no fused multiply-add: the same sums as NumPy's, portable


def _ext(name: str) -> Extension:
    return Extension(f"nmkit.radiomics.{name}", [f"src/nmkit/radiomics/{name}.c"], extra_compile_args=_FLAGS,
                     depends=["src/nmkit/radiomics/_cbuffers.h"],
                     optional=True)


setup(ext_modules=[_ext("_ctexture"), _ext("_cmorph")])
