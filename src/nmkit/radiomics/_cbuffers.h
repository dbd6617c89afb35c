/* Buffer checks shared by nmkit's compiled radiomics kernels (_ctexture.c, _cmorph.c): every array comes in through
the buffer protocol, C-contiguous, with its element format and item count checked before a kernel reads it. */
#ifndef NMKIT_CBUFFERS_H
#define NMKIT_CBUFFERS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* element kinds of the buffers */
enum kind { U8, U16, I32, I64, F64, C128 };

/* The buffer's struct format (byte-order prefix '@', '=' or '<' allowed) is exactly that of kind `k`. */
static int format_is(const Py_buffer *v, enum kind k) {
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    switch (k) {
    case U8: return v->itemsize == 1 && (!strcmp(f, "B") || !strcmp(f, "?"));
    case U16: return v->itemsize == 2 && !strcmp(f, "H");
    case I32: return v->itemsize == 4 && !strcmp(f, "i");
    case I64: return v->itemsize == 8 && (!strcmp(f, "l") || !strcmp(f, "q"));
    case F64: return v->itemsize == 8 && !strcmp(f, "d");
    case C128: return v->itemsize == 16 && !strcmp(f, "Zd");
    }
    return 0;
}

static const char *kind_name(enum kind k) {
    static const char *names[] = {"uint8/bool", "uint16", "int32", "int64", "float64", "complex128"};
    return names[k];
}

/* A C-contiguous buffer of kind `k` (writable when asked) of any length; 0 on success, -1 with an exception set. */
static int get_buf_any(PyObject *obj, Py_buffer *view, enum kind k, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (!format_is(view, k)) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous %s array (format '%s', itemsize %zd)", what,
                     kind_name(k), view->format ? view->format : "?", view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The same with exactly `n` items; 0 on success, -1 with an exception set. */
static int get_buf(PyObject *obj, Py_buffer *view, enum kind k, Py_ssize_t n, int writable, const char *what) {
    if (get_buf_any(obj, view, k, writable, what) < 0) return -1;
    if (n < 0 || view->len != n * view->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s has %zd items, expected %zd", what, view->len / view->itemsize, n);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

#endif
