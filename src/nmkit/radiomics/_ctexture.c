/* nmkit.radiomics._ctexture: compiled kernels (placeholder module; see setup.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyMethodDef methods[] = {{NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctexture", "nmkit compiled kernels", -1, methods};

PyMODINIT_FUNC PyInit__ctexture(void) { return PyModule_Create(&module); }
