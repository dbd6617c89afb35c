/* nmkit.radiomics._cmorph: compiled kernels of the non-texture radiomics families (morphology, Moran's I /
Geary's C, local intensity peak, interpolation).

Plain C99 against the CPython API; arrays come in through the buffer protocol (C-contiguous, format and length
checked here) and are allocated by the Python callers (morphology.py, _fft.py, local_intensity.py,
preprocess.py), which keep an equivalent NumPy path used when this module is not built. Results equal the NumPy
path's up to floating-point round-off (sums are accumulated in another order), integer results exactly. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* ----- buffers ---------------------------------------------------------------------------------------------- */

enum kind { U8, I64, F64, C128 };

static int format_is(const Py_buffer *v, enum kind k) {
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    switch (k) {
    case U8: return v->itemsize == 1 && (!strcmp(f, "B") || !strcmp(f, "?"));
    case I64: return v->itemsize == 8 && (!strcmp(f, "l") || !strcmp(f, "q"));
    case F64: return v->itemsize == 8 && !strcmp(f, "d");
    case C128: return v->itemsize == 16 && !strcmp(f, "Zd");
    }
    return 0;
}

static const char *kind_name(enum kind k) {
    static const char *names[] = {"uint8/bool", "int64", "float64", "complex128"};
    return names[k];
}

/* A C-contiguous buffer of kind `k` with `n` items (any count >= 0 when n < 0), writable when asked; 0 on
   success, -1 with an exception set. */
static int get_buf(PyObject *obj, Py_buffer *view, enum kind k, Py_ssize_t n, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (!format_is(view, k)) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous %s array (format '%s', itemsize %zd)", what,
                     kind_name(k), view->format ? view->format : "?", view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    if (n >= 0 && view->len != n * view->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s has %zd items, expected %zd", what, view->len / view->itemsize, n);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* n0 * n1 * ... with every factor in [lo, 2**24] and the product below 2**40; -1 with an exception otherwise. */
static Py_ssize_t checked_size(const Py_ssize_t *dims, int nd, Py_ssize_t lo, const char *what) {
    Py_ssize_t total = 1;
    for (int i = 0; i < nd; i++) {
        if (dims[i] < lo || dims[i] > (1 << 24)) {
            PyErr_Format(PyExc_ValueError, "%s: dimension %d is %zd (allowed %zd..2**24)", what, i, dims[i], lo);
            return -1;
        }
        total *= dims[i];
        if (total > ((Py_ssize_t)1 << 40)) {
            PyErr_Format(PyExc_ValueError, "%s: too many elements", what);
            return -1;
        }
    }
    return total;
}

/* ----- Moran's I / Geary's C: Parseval pair sums ---------------------------------------------------------- */

/* moran_rows(image, mask, shape, box, rows, n2) -> (n, mean, ss)
   image float64 / mask uint8 of shape (Z, Y, X); box = (z0, y0, x0, nz, ny, nx) within it. Fills rows
   (3, nz, ny, n2) float64 with the mask m, the deviations d = m (x - mean) and d^2 of the box, each row
   zero-padded from nx to n2, and returns the voxel count, mean and sum of d^2 over the mask. Sums are taken per
   row and then over rows (error ~ (row length + rows) eps, like NumPy's pairwise sums). */
static PyObject *moran_rows(PyObject *self, PyObject *args) {
    PyObject *o_img, *o_mask, *o_rows;
    Py_ssize_t sh[3], bx[6], n2;
    if (!PyArg_ParseTuple(args, "OO(nnn)(nnnnnn)On", &o_img, &o_mask, &sh[0], &sh[1], &sh[2], &bx[0], &bx[1],
                          &bx[2], &bx[3], &bx[4], &bx[5], &o_rows, &n2))
        return NULL;
    Py_ssize_t total = checked_size(sh, 3, 1, "shape");
    if (total < 0) return NULL;
    for (int a = 0; a < 3; a++)
        if (bx[a] < 0 || bx[a + 3] < 1 || bx[a] + bx[a + 3] > sh[a])
            return PyErr_Format(PyExc_ValueError, "box does not fit the shape along axis %d", a);
    Py_ssize_t nz = bx[3], ny = bx[4], nx = bx[5];
    if (n2 < nx || n2 > (1 << 24)) return PyErr_Format(PyExc_ValueError, "row length %zd < box width %zd", n2, nx);
    Py_buffer img, msk, rows;
    if (get_buf(o_img, &img, F64, total, 0, "image") < 0) return NULL;
    if (get_buf(o_mask, &msk, U8, total, 0, "mask") < 0) { PyBuffer_Release(&img); return NULL; }
    if (get_buf(o_rows, &rows, F64, 3 * nz * ny * n2, 1, "rows") < 0) {
        PyBuffer_Release(&img); PyBuffer_Release(&msk); return NULL;
    }
    const double *x = (const double *)img.buf;
    const uint8_t *m = (const uint8_t *)msk.buf;
    double *r = (double *)rows.buf;
    Py_ssize_t plane = nz * ny * n2, sy = sh[2], sz = sh[1] * sh[2];
    Py_ssize_t count = 0;
    double sum = 0.0, ss = 0.0;
    for (Py_ssize_t z = 0; z < nz; z++)
        for (Py_ssize_t y = 0; y < ny; y++) {
            Py_ssize_t src = (bx[0] + z) * sz + (bx[1] + y) * sy + bx[2];
            double rs = 0.0;
            for (Py_ssize_t i = 0; i < nx; i++)
                if (m[src + i]) { rs += x[src + i]; count++; }
            sum += rs;
        }
    double mu = count ? sum / (double)count : 0.0;
    for (Py_ssize_t z = 0; z < nz; z++)
        for (Py_ssize_t y = 0; y < ny; y++) {
            Py_ssize_t src = (bx[0] + z) * sz + (bx[1] + y) * sy + bx[2];
            double *r0 = r + (z * ny + y) * n2, *r1 = r0 + plane, *r2 = r1 + plane;
            double rs = 0.0;
            for (Py_ssize_t i = 0; i < nx; i++) {
                double in = m[src + i] ? 1.0 : 0.0;
                double d = m[src + i] ? x[src + i] - mu : 0.0;
                double d2 = d * d;
                r0[i] = in; r1[i] = d; r2[i] = d2;
                rs += d2;
            }
            for (Py_ssize_t i = nx; i < n2; i++) r0[i] = r1[i] = r2[i] = 0.0;
            ss += rs;
        }
    PyBuffer_Release(&img); PyBuffer_Release(&msk); PyBuffer_Release(&rows);
    return Py_BuildValue("ndd", count, mu, ss);
}

/* fill_slab(f, slab, k0, (p, nz, ny, nh), (n0, n1)): slab (kb, p, n0, n1) complex128 gets
   slab[k, q, z, y] = f[q, z, y, k0 + k] for z < nz, y < ny and 0 for z < nz, y >= ny (rows z >= nz are left as
   they are: split_slab writes them); f is (p, nz, ny, nh) complex128 (the real transform of the rows along x).
   kb = len(slab) / (p n0 n1) and k0 + kb <= nh. */
static PyObject *fill_slab(PyObject *self, PyObject *args) {
    PyObject *o_f, *o_s;
    Py_ssize_t k0, d[4], n0, n1;
    if (!PyArg_ParseTuple(args, "OOn(nnnn)(nn)", &o_f, &o_s, &k0, &d[0], &d[1], &d[2], &d[3], &n0, &n1)) return NULL;
    Py_ssize_t nf = checked_size(d, 4, 1, "spectrum shape");
    if (nf < 0) return NULL;
    Py_ssize_t p = d[0], nz = d[1], ny = d[2], nh = d[3];
    if (n0 < nz || n1 < ny || n1 > (1 << 24) || n0 > (1 << 24))
        return PyErr_Format(PyExc_ValueError, "slab plane %zd x %zd smaller than the data %zd x %zd", n0, n1, nz, ny);
    Py_buffer f, s;
    if (get_buf(o_f, &f, C128, nf, 0, "spectrum") < 0) return NULL;
    if (get_buf(o_s, &s, C128, -1, 1, "slab") < 0) { PyBuffer_Release(&f); return NULL; }
    Py_ssize_t per = p * n0 * n1, kb = (s.len / 16) / per;
    if (kb < 1 || kb * per * 16 != s.len || k0 < 0 || k0 + kb > nh) {
        PyBuffer_Release(&f); PyBuffer_Release(&s);
        return PyErr_Format(PyExc_ValueError, "slab of %zd items does not hold whole (p, n0, n1) blocks within nh",
                            s.len / 16);
    }
    const double *src = (const double *)f.buf;
    double *dst = (double *)s.buf;
    for (Py_ssize_t k = 0; k < kb; k++)
        for (Py_ssize_t q = 0; q < p; q++) {
            double *blk = dst + 2 * ((k * p + q) * n0 * n1);
            for (Py_ssize_t z = 0; z < nz; z++) {
                double *row = blk + 2 * z * n1;
                const double *in = src + 2 * (((q * nz + z) * ny) * nh + k0 + k);
                for (Py_ssize_t y = 0; y < ny; y++) {
                    row[2 * y] = in[2 * y * nh];
                    row[2 * y + 1] = in[2 * y * nh + 1];
                }
                memset(row + 2 * ny, 0, (size_t)(n1 - ny) * 16);
            }
        }
    PyBuffer_Release(&f); PyBuffer_Release(&s);
    Py_RETURN_NONE;
}

/* split_slab(slab, (p, n0, n1), nz): the first radix-2 step of the transform along z (length n0 = 2M, data in
   rows z < nz <= M + 1, zeros beyond), in place: row n becomes x[n] + x[n + M] (its M-point transform gives the
   even frequencies 2r) and row M + n becomes (x[n] - x[n + M]) exp(-i pi n / M) (odd frequencies 2r + 1), for
   n < M, with x[n + M] = 0 when n + M >= nz. Then two M-point transforms replace the 2M-point one. */
static PyObject *split_slab(PyObject *self, PyObject *args) {
    PyObject *o_s;
    Py_ssize_t p, n0, n1, nz;
    if (!PyArg_ParseTuple(args, "O(nnn)n", &o_s, &p, &n0, &n1, &nz)) return NULL;
    Py_ssize_t d[3] = {p, n0, n1};
    Py_ssize_t per = checked_size(d, 3, 1, "slab block shape");
    if (per < 0) return NULL;
    Py_ssize_t M = n0 / 2;
    if (n0 % 2 || nz < 1 || nz > M + 1) return PyErr_Format(PyExc_ValueError, "need even n0 and nz <= n0 / 2 + 1");
    Py_buffer s;
    if (get_buf(o_s, &s, C128, -1, 1, "slab") < 0) return NULL;
    Py_ssize_t kb = (s.len / 16) / per;
    if (kb < 1 || kb * per * 16 != s.len) {
        PyBuffer_Release(&s);
        return PyErr_Format(PyExc_ValueError, "slab of %zd items does not hold whole (p, n0, n1) blocks", s.len / 16);
    }
    double *dst = (double *)s.buf;
    for (Py_ssize_t n = 0; n < M; n++) {
        double c = cos(M_PI * (double)n / (double)M), sn = -sin(M_PI * (double)n / (double)M);
        for (Py_ssize_t b = 0; b < kb * p; b++) {
            double *lo = dst + 2 * (b * n0 * n1 + n * n1), *hi = lo + 2 * M * n1;
            if (n + M < nz) {
                for (Py_ssize_t y = 0; y < n1; y++) {
                    double ar = lo[2 * y], ai = lo[2 * y + 1], br = hi[2 * y], bi = hi[2 * y + 1];
                    double dr = ar - br, di = ai - bi;
                    lo[2 * y] = ar + br; lo[2 * y + 1] = ai + bi;
                    hi[2 * y] = dr * c - di * sn; hi[2 * y + 1] = dr * sn + di * c;
                }
            } else if (n < nz) {
                for (Py_ssize_t y = 0; y < n1; y++) {
                    double ar = lo[2 * y], ai = lo[2 * y + 1];
                    hi[2 * y] = ar * c - ai * sn; hi[2 * y + 1] = ar * sn + ai * c;
                }
            } else {
                memset(lo, 0, (size_t)n1 * 16);
                memset(hi, 0, (size_t)n1 * 16);
            }
        }
    }
    PyBuffer_Release(&s);
    Py_RETURN_NONE;
}

#define MAX_PAIRS 16

/* slab_sums(slab, weights, k0, p, pairs, out): out[j] += sum over the slab's k, z, y of
   weights[k0 + k, z, y] Re(conj(slab[k, a_j, z, y]) slab[k, b_j, z, y]) for pairs[j] = (a_j, b_j).
   weights (nh, n0, n1) float64; slab (kb, p, n0, n1) complex128; out float64 (len(pairs)). */
static PyObject *slab_sums(PyObject *self, PyObject *args) {
    PyObject *o_s, *o_w, *o_pairs, *o_out;
    Py_ssize_t k0, p, nh, n0, n1;
    if (!PyArg_ParseTuple(args, "OOn(nnnn)OO", &o_s, &o_w, &k0, &p, &nh, &n0, &n1, &o_pairs, &o_out)) return NULL;
    Py_ssize_t dw[3] = {nh, n0, n1};
    Py_ssize_t nw = checked_size(dw, 3, 1, "weights shape");
    if (nw < 0) return NULL;
    if (p < 1 || p > MAX_PAIRS) return PyErr_Format(PyExc_ValueError, "p must be 1..%d", MAX_PAIRS);
    if (!PyTuple_Check(o_pairs) || PyTuple_GET_SIZE(o_pairs) < 1 || PyTuple_GET_SIZE(o_pairs) > MAX_PAIRS)
        return PyErr_Format(PyExc_TypeError, "pairs must be a tuple of 1..%d (a, b) tuples", MAX_PAIRS);
    int np_ = (int)PyTuple_GET_SIZE(o_pairs), pa[MAX_PAIRS], pb[MAX_PAIRS];
    for (int j = 0; j < np_; j++) {
        int a, b;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(o_pairs, j), "ii", &a, &b)) return NULL;
        if (a < 0 || b < 0 || a >= p || b >= p) return PyErr_Format(PyExc_ValueError, "pair (%d, %d) out of range", a, b);
        pa[j] = a; pb[j] = b;
    }
    Py_buffer s, w, out;
    if (get_buf(o_s, &s, C128, -1, 0, "slab") < 0) return NULL;
    if (get_buf(o_w, &w, F64, nw, 0, "weights") < 0) { PyBuffer_Release(&s); return NULL; }
    if (get_buf(o_out, &out, F64, np_, 1, "out") < 0) { PyBuffer_Release(&s); PyBuffer_Release(&w); return NULL; }
    Py_ssize_t per = p * n0 * n1, kb = (s.len / 16) / per;
    if (kb < 1 || kb * per * 16 != s.len || k0 < 0 || k0 + kb > nh) {
        PyBuffer_Release(&s); PyBuffer_Release(&w); PyBuffer_Release(&out);
        return PyErr_Format(PyExc_ValueError, "slab of %zd items does not hold whole (p, n0, n1) blocks within nh",
                            s.len / 16);
    }
    const double *sd = (const double *)s.buf, *wd = (const double *)w.buf;
    double *acc = (double *)out.buf;
    Py_ssize_t plane = n0 * n1;
    for (Py_ssize_t k = 0; k < kb; k++) {
        const double *wk = wd + (k0 + k) * plane, *blk = sd + 2 * k * per;
        for (int j = 0; j < np_; j++) {
            const double *A = blk + 2 * pa[j] * plane, *B = blk + 2 * pb[j] * plane;
            double total = 0.0;
            for (Py_ssize_t z = 0; z < n0; z++) {
                const double *wr = wk + z * n1, *ar = A + 2 * z * n1, *br = B + 2 * z * n1;
                double r[4] = {0.0, 0.0, 0.0, 0.0};  /* independent lanes: the compiler vectorises them */
                Py_ssize_t y = 0;
                for (; y + 1 < n1; y += 2) {
                    r[0] += wr[y] * (ar[2 * y] * br[2 * y]);
                    r[1] += wr[y] * (ar[2 * y + 1] * br[2 * y + 1]);
                    r[2] += wr[y + 1] * (ar[2 * y + 2] * br[2 * y + 2]);
                    r[3] += wr[y + 1] * (ar[2 * y + 3] * br[2 * y + 3]);
                }
                for (; y < n1; y++) {
                    r[0] += wr[y] * (ar[2 * y] * br[2 * y]);
                    r[1] += wr[y] * (ar[2 * y + 1] * br[2 * y + 1]);
                }
                total += (r[0] + r[1]) + (r[2] + r[3]);
            }
            acc[j] += total;
        }
    }
    PyBuffer_Release(&s); PyBuffer_Release(&w); PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* ----- module ----------------------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"moran_rows", moran_rows, METH_VARARGS, "mask, deviations and squared deviations rows for the pair sums"},
    {"fill_slab", fill_slab, METH_VARARGS, "copy a block of x-frequencies of the spectrum into a zero-padded slab"},
    {"split_slab", split_slab, METH_VARARGS, "first radix-2 step along z of a slab, in place"},
    {"slab_sums", slab_sums, METH_VARARGS, "kernel-weighted cross-spectrum sums over a slab"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cmorph", "nmkit compiled morphology kernels", -1, methods};

PyMODINIT_FUNC PyInit__cmorph(void) { return PyModule_Create(&module); }
