/* nmkit.radiomics._cmorph: compiled kernels of the non-texture radiomics families: Moran's I / Geary's C pair sums
(rows, slab copies, radix-2 split, weighted spectrum sums around scipy's FFTs), morphology (mesh pattern counts,
moments, convex hull of the mesh vertices), local intensity peak (sphere means), trilinear interpolation passes and
the intensity statistics' sums.

Plain C99 against the CPython API; arrays come in through the buffer protocol (C-contiguous, format and length
checked here) and are allocated by the Python callers (morphology.py, _fft.py, local_intensity.py, preprocess.py,
intensity.py), which keep an equivalent NumPy path used when this module is not built. Results equal the NumPy
path's up to floating-point round-off (sums are accumulated in another order), integer results exactly; the
interpolation passes and the statistics' pairwise sums give the very same numbers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* ----- buffers: format_is, get_buf, get_buf_any (shared with the other kernel module) ----------------------- */

#include "_cbuffers.h"

/* Widen the inclusive box [lo, hi] (per axis z, y, x) to hold row (z, y) from x0 to x1. */
static inline void grow_box(Py_ssize_t lo[3], Py_ssize_t hi[3], Py_ssize_t z, Py_ssize_t y, Py_ssize_t x0,
                            Py_ssize_t x1) {
    if (z < lo[0]) lo[0] = z;
    if (z > hi[0]) hi[0] = z;
    if (y < lo[1]) lo[1] = y;
    if (y > hi[1]) hi[1] = y;
    if (x0 < lo[2]) lo[2] = x0;
    if (x1 > hi[2]) hi[2] = x1;
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
   (nz, n2, 3, ny) float64 (x before the array index and y, so that the real transform along x gives blocks of
   x-frequencies of contiguous y-rows, and an x-line spans only n2 * 3 * ny values) with the mask m, the
   deviations d = m (x - mean) and d^2 of the box, zero for x >= nx, and returns the voxel
   count, mean and sum of d^2 over the mask. Sums are taken per row and then over rows (error ~ (row length +
   rows) eps, like NumPy's pairwise sums). */
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
    Py_ssize_t sy = sh[2], sz = sh[1] * sh[2];
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
    /* plane by plane: the (y, x) plane of the box is read across its rows (it stays in cache) so that the
       rows of the output, along y, are written contiguously */
    for (Py_ssize_t z = 0; z < nz; z++) {
        Py_ssize_t src0 = (bx[0] + z) * sz + bx[1] * sy + bx[2];
        double *rz = r + z * n2 * 3 * ny;
        for (Py_ssize_t i = 0; i < nx; i++) {
            double *r0 = rz + i * 3 * ny, *r1 = r0 + ny, *r2 = r1 + ny;
            double rs = 0.0;
            for (Py_ssize_t y = 0; y < ny; y++) {
                Py_ssize_t k = src0 + y * sy + i;
                double in = m[k] ? 1.0 : 0.0;
                double d = m[k] ? x[k] - mu : 0.0;
                double d2 = d * d;
                r0[y] = in; r1[y] = d; r2[y] = d2;
                rs += d2;
            }
            ss += rs;
        }
        memset(rz + nx * 3 * ny, 0, sizeof(double) * (size_t)((n2 - nx) * 3 * ny));
    }
    PyBuffer_Release(&img); PyBuffer_Release(&msk); PyBuffer_Release(&rows);
    return Py_BuildValue("ndd", count, mu, ss);
}

/* fill_slab(f, slab, k0, (nz, nh, p, ny), (n0, n1)): slab (kb, p, n0, n1) complex128 gets
   slab[k, q, z, y] = f[z, k0 + k, q, y] for z < nz, y < ny and 0 for z < nz, y >= ny (rows z >= nz are left as
   they are: split_slab writes them); f is (nz, nh, p, ny) complex128 (the real transform of moran_rows' rows
   along x). kb = len(slab) / (p n0 n1) and k0 + kb <= nh. */
static PyObject *fill_slab(PyObject *self, PyObject *args) {
    PyObject *o_f, *o_s;
    Py_ssize_t k0, d[4], n0, n1;
    if (!PyArg_ParseTuple(args, "OOn(nnnn)(nn)", &o_f, &o_s, &k0, &d[0], &d[1], &d[2], &d[3], &n0, &n1)) return NULL;
    Py_ssize_t nf = checked_size(d, 4, 1, "spectrum shape");
    if (nf < 0) return NULL;
    Py_ssize_t nz = d[0], nh = d[1], p = d[2], ny = d[3];
    if (n0 < nz || n1 < ny || n1 > (1 << 24) || n0 > (1 << 24))
        return PyErr_Format(PyExc_ValueError, "slab plane %zd x %zd smaller than the data %zd x %zd", n0, n1, nz, ny);
    Py_buffer f, s;
    if (get_buf(o_f, &f, C128, nf, 0, "spectrum") < 0) return NULL;
    if (get_buf_any(o_s, &s, C128, 1, "slab") < 0) { PyBuffer_Release(&f); return NULL; }
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
            const double *in = src + 2 * (((k0 + k) * p + q) * ny);
            for (Py_ssize_t z = 0; z < nz; z++) {
                double *row = blk + 2 * z * n1;
                memcpy(row, in + 2 * z * nh * p * ny, (size_t)ny * 16);
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
    if (get_buf_any(o_s, &s, C128, 1, "slab") < 0) return NULL;
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
        if (a < 0 || b < 0 || a >= p || b >= p)
            return PyErr_Format(PyExc_ValueError, "pair (%d, %d) out of range", a, b);
        pa[j] = a; pb[j] = b;
    }
    Py_buffer s, w, out;
    if (get_buf_any(o_s, &s, C128, 0, "slab") < 0) return NULL;
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
        if (np_ == 3) { /* the usual case (Moran / Geary): all three sums in one pass over the slab */
            const double *A0 = blk + 2 * pa[0] * plane, *B0 = blk + 2 * pb[0] * plane;
            const double *A1 = blk + 2 * pa[1] * plane, *B1 = blk + 2 * pb[1] * plane;
            const double *A2 = blk + 2 * pa[2] * plane, *B2 = blk + 2 * pb[2] * plane;
            double t0 = 0.0, t1 = 0.0, t2 = 0.0;
            for (Py_ssize_t z = 0; z < n0; z++) {
                Py_ssize_t o = z * n1;
                const double *wr = wk + o;
                double r[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0}; /* (re, im) lanes of the three sums */
                for (Py_ssize_t y = 0; y < n1; y++) {
                    Py_ssize_t e = 2 * (o + y);
                    double wy = wr[y];
                    r[0] += wy * (A0[e] * B0[e]);
                    r[1] += wy * (A0[e + 1] * B0[e + 1]);
                    r[2] += wy * (A1[e] * B1[e]);
                    r[3] += wy * (A1[e + 1] * B1[e + 1]);
                    r[4] += wy * (A2[e] * B2[e]);
                    r[5] += wy * (A2[e + 1] * B2[e + 1]);
                }
                t0 += r[0] + r[1]; t1 += r[2] + r[3]; t2 += r[4] + r[5];
            }
            acc[0] += t0; acc[1] += t1; acc[2] += t2;
            continue;
        }
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

/* ----- work memory ------------------------------------------------------------------------------------------ */

/* Work arrays are reused between calls (fresh memory costs a page fault per 4 KiB at first touch, every call);
   up to KEEP_BYTES stays allocated, larger requests are freed after the call. The GIL is held throughout, so
   one static buffer is safe. */
#define KEEP_BYTES ((size_t)32 << 20)
static void *work_buf = NULL;
static size_t work_size = 0;

static void *work_get(size_t nbytes) {
    if (nbytes <= work_size) return work_buf;
    void *p = PyMem_Malloc(nbytes);
    if (!p) return NULL;
    if (nbytes <= KEEP_BYTES) {
        PyMem_Free(work_buf);
        work_buf = p;
        work_size = nbytes;
    }
    return p;
}

static void work_release(void *p) {
    if (p && p != work_buf) PyMem_Free(p);
}

/* ----- local intensity: sphere means ------------------------------------------------------------------------ */

/* sphere_means(image, where, shape, kernel, kshape, out, max_bytes) -> count or None
   image float64 and where uint8, both of shape (Z, Y, X); kernel uint8 of odd shape kshape = (KZ, KY, KX),
   centred, each of its x-rows either empty or one run of ones symmetric about the centre (a sphere or ellipsoid).
   out (float64, one per voxel of `where`, C order) gets the mean of the image over the kernel voxels around each
   such voxel that lie inside the image. The x-row window sums W_h (half width h) are built for every h on the
   box of `where` widened by the kernel (W_h = W_(h-1) + two neighbours: no cancellation), then each mean adds one
   W value per kernel row. Returns None (nothing written) when those sums would take more than max_bytes. */
static PyObject *sphere_means(PyObject *self, PyObject *args) {
    PyObject *o_img, *o_where, *o_k, *o_out;
    Py_ssize_t sh[3], ks[3], max_bytes;
    if (!PyArg_ParseTuple(args, "OO(nnn)O(nnn)On", &o_img, &o_where, &sh[0], &sh[1], &sh[2], &o_k, &ks[0], &ks[1],
                          &ks[2], &o_out, &max_bytes))
        return NULL;
    Py_ssize_t total = checked_size(sh, 3, 1, "shape"), ktotal = checked_size(ks, 3, 1, "kernel shape");
    if (total < 0 || ktotal < 0) return NULL;
    if (!(ks[0] % 2 && ks[1] % 2 && ks[2] % 2)) return PyErr_Format(PyExc_ValueError, "kernel shape must be odd");
    Py_buffer img, wh, kb, out;
    if (get_buf(o_img, &img, F64, total, 0, "image") < 0) return NULL;
    if (get_buf(o_where, &wh, U8, total, 0, "where") < 0) { PyBuffer_Release(&img); return NULL; }
    if (get_buf(o_k, &kb, U8, ktotal, 0, "kernel") < 0) { PyBuffer_Release(&img); PyBuffer_Release(&wh); return NULL; }
    if (get_buf_any(o_out, &out, F64, 1, "out") < 0) {
        PyBuffer_Release(&img); PyBuffer_Release(&wh); PyBuffer_Release(&kb); return NULL;
    }
    PyObject *result = NULL;
    double *W = NULL, **ptr = NULL;
    Py_ssize_t *rdz = NULL, *rdy = NULL, *rh = NULL;
    const double *x = (const double *)img.buf;
    const uint8_t *w = (const uint8_t *)wh.buf, *k = (const uint8_t *)kb.buf;
    Py_ssize_t cz = ks[0] / 2, cy = ks[1] / 2, cx = ks[2] / 2, nrows = 0, hmax = -1;
    rdz = PyMem_Malloc(sizeof(Py_ssize_t) * ks[0] * ks[1]);
    rdy = PyMem_Malloc(sizeof(Py_ssize_t) * ks[0] * ks[1]);
    rh = PyMem_Malloc(sizeof(Py_ssize_t) * ks[0] * ks[1]);
    if (!rdz || !rdy || !rh) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t a = 0; a < ks[0]; a++)
        for (Py_ssize_t b = 0; b < ks[1]; b++) {
            const uint8_t *row = k + (a * ks[1] + b) * ks[2];
            Py_ssize_t cnt = 0, first = -1;
            for (Py_ssize_t c = 0; c < ks[2]; c++)
                if (row[c]) { if (first < 0) first = c; cnt++; }
            if (!cnt) continue;
            for (Py_ssize_t c = first; c < first + cnt; c++)
                if (!row[c]) { PyErr_SetString(PyExc_ValueError, "kernel rows must be single runs"); goto done; }
            if (first + cnt - 1 != 2 * cx - first) {
                PyErr_SetString(PyExc_ValueError, "kernel rows must be symmetric about the centre");
                goto done;
            }
            rdz[nrows] = a - cz; rdy[nrows] = b - cy; rh[nrows] = cx - first;
            if (rh[nrows] > hmax) hmax = rh[nrows];
            nrows++;
        }
    /* box of `where`, and the count of its voxels */
    Py_ssize_t lo[3] = {sh[0], sh[1], sh[2]}, hi[3] = {-1, -1, -1}, count = 0;
    for (Py_ssize_t z = 0; z < sh[0]; z++)
        for (Py_ssize_t y = 0; y < sh[1]; y++) {
            const uint8_t *r = w + (z * sh[1] + y) * sh[2];
            Py_ssize_t c0 = -1, c1 = -1, cnt = 0;
            for (Py_ssize_t i = 0; i < sh[2]; i++)
                if (r[i]) { if (c0 < 0) c0 = i; c1 = i; cnt++; }
            if (!cnt) continue;
            count += cnt;
            grow_box(lo, hi, z, y, c0, c1);
        }
    if (out.len != count * 8) {
        PyErr_Format(PyExc_ValueError, "out has %zd items, `where` has %zd voxels", out.len / 8, count);
        goto done;
    }
    if (!count || !nrows) { result = PyLong_FromSsize_t(count); goto done; }
    Py_ssize_t half[3] = {cz, cy, cx}, b0[3], bn[3];
    for (int a = 0; a < 3; a++) {
        b0[a] = lo[a] - half[a] < 0 ? 0 : lo[a] - half[a];
        Py_ssize_t e = hi[a] + half[a] + 1 > sh[a] ? sh[a] : hi[a] + half[a] + 1;
        bn[a] = e - b0[a];
    }
    Py_ssize_t bsize = bn[0] * bn[1] * bn[2];
    if ((double)(hmax + 1) * (double)bsize * 8.0 > (double)max_bytes) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    W = work_get(sizeof(double) * (size_t)((hmax + 1) * bsize + sh[2] + 2 * hmax + (hi[2] - lo[2] + 1)));
    ptr = PyMem_Malloc(sizeof(double *) * nrows);
    if (!W || !ptr) { PyErr_NoMemory(); goto done; }
    double *pad = W + (hmax + 1) * bsize, *acc = pad + sh[2] + 2 * hmax;
    /* W_0 = image on the box; W_h[x] = W_(h-1)[x] + (image[x - h] + image[x + h]) (terms outside the image: 0,
       through a zero-padded copy of the image row) */
    for (Py_ssize_t i = 0; i < hmax; i++) pad[i] = pad[hmax + sh[2] + i] = 0.0;
    for (Py_ssize_t z = 0; z < bn[0]; z++)
        for (Py_ssize_t y = 0; y < bn[1]; y++) {
            const double *src = x + ((b0[0] + z) * sh[1] + b0[1] + y) * sh[2];
            Py_ssize_t off = (z * bn[1] + y) * bn[2];
            memcpy(pad + hmax, src, sizeof(double) * (size_t)sh[2]);
            const double *row = pad + hmax + b0[2];
            double *w0 = W + off;
            for (Py_ssize_t i = 0; i < bn[2]; i++) w0[i] = row[i];
            for (Py_ssize_t h = 1; h <= hmax; h++) {
                const double *prev = W + (h - 1) * bsize + off;
                double *cur = W + h * bsize + off;
                for (Py_ssize_t i = 0; i < bn[2]; i++) cur[i] = prev[i] + (row[i - h] + row[i + h]);
            }
        }
    double full = 0.0;
    for (Py_ssize_t r = 0; r < nrows; r++) full += (double)(2 * rh[r] + 1);
    double *o = (double *)out.buf;
    Py_ssize_t j = 0, nq = hi[2] - lo[2] + 1;
    for (Py_ssize_t z = lo[0]; z <= hi[0]; z++)
        for (Py_ssize_t y = lo[1]; y <= hi[1]; y++) {
            const uint8_t *wr = w + (z * sh[1] + y) * sh[2] + lo[2];
            Py_ssize_t q0 = 0, q1 = nq; /* the row's first and last voxel of `where`, + 1 */
            while (q0 < nq && !wr[q0]) q0++;
            if (q0 == nq) continue;
            while (!wr[q1 - 1]) q1--;
            /* the kernel rows that lie inside the image, each one W row; summed over that part of the row */
            Py_ssize_t nr = 0;
            for (Py_ssize_t r = 0; r < nrows; r++) {
                Py_ssize_t zz = z + rdz[r], yy = y + rdy[r];
                if (zz < 0 || zz >= sh[0] || yy < 0 || yy >= sh[1]) continue;
                ptr[nr++] = W + rh[r] * bsize + ((zz - b0[0]) * bn[1] + (yy - b0[1])) * bn[2] + (lo[2] - b0[2]);
            }
            for (Py_ssize_t i = q0; i < q1; i++) acc[i] = 0.0;
            for (Py_ssize_t r = 0; r < nr; r++) {
                const double *pr = ptr[r];
                for (Py_ssize_t i = q0; i < q1; i++) acc[i] += pr[i];
            }
            int rows_inside = z - cz >= 0 && z + cz < sh[0] && y - cy >= 0 && y + cy < sh[1];
            for (Py_ssize_t i = q0; i < q1; i++) {
                if (!wr[i]) continue;
                Py_ssize_t g = lo[2] + i;
                double den = full;
                if (!(rows_inside && g - cx >= 0 && g + cx < sh[2])) {  /* near the image edge: count the voxels */
                    den = 0.0;
                    for (Py_ssize_t r = 0; r < nrows; r++) {
                        Py_ssize_t zz = z + rdz[r], yy = y + rdy[r];
                        if (zz < 0 || zz >= sh[0] || yy < 0 || yy >= sh[1]) continue;
                        Py_ssize_t a = g - rh[r] < 0 ? 0 : g - rh[r], e = g + rh[r] >= sh[2] ? sh[2] - 1 : g + rh[r];
                        den += (double)(e - a + 1);
                    }
                    if (den < 1.0) den = 1.0;
                }
                o[j++] = acc[i] / den;
            }
        }
    result = PyLong_FromSsize_t(count);
done:
    work_release(W); PyMem_Free(ptr); PyMem_Free(rdz); PyMem_Free(rdy); PyMem_Free(rh);
    PyBuffer_Release(&img); PyBuffer_Release(&wh); PyBuffer_Release(&kb); PyBuffer_Release(&out);
    return result;
}

/* ----- morphology: one scan of the masks ------------------------------------------------------------------- */

/* morph_scan(morph, int_mask, image, shape, bbox, moments, wsum, counts, isum) -> voxel count of morph
   morph / int_mask uint8 and image float64 of shape (Z, Y, X).
   bbox (int64, 6): (z0, y0, x0, z1, y1, x1) of morph (half-open; all 0 when empty).
   moments (int64, 10): n, the first index moments (z, y, x) and the second ones (zz, yy, xx, zy, zx, yx) of morph.
   wsum (float64, 4): sum of the image over int_mask and its sums times z, y and x.
   counts (int64, 256) and isum (int64, 256 x 3): for the 2x2x2 cells of morph's bounding box with a one-voxel zero
   frame (cell (z, y, x) has corners (z..z+1, y..y+1, x..x+1) of that framed box), the number of cells of each corner
   pattern (bit 4 dz + 2 dy + dx) and the sums of their (z, y, x) cell indices, for the patterns other than 0 and 255
   (as morphology.mask_volume_area counts them). */
static PyObject *morph_scan(PyObject *self, PyObject *args) {
    PyObject *o_m, *o_im, *o_x, *o_bb, *o_mom, *o_ws, *o_cnt, *o_is;
    Py_ssize_t sh[3];
    if (!PyArg_ParseTuple(args, "OOO(nnn)OOOOO", &o_m, &o_im, &o_x, &sh[0], &sh[1], &sh[2], &o_bb, &o_mom, &o_ws,
                          &o_cnt, &o_is))
        return NULL;
    Py_ssize_t total = checked_size(sh, 3, 1, "shape");
    if (total < 0) return NULL;
    Py_buffer bm, bim, bx, bbb, bmom, bws, bcnt, bis;
    int got = 0;
    PyObject *result = NULL;
    uint8_t *work = NULL;
    if (get_buf(o_m, &bm, U8, total, 0, "morph") < 0) goto done;
    got++;
    if (get_buf(o_im, &bim, U8, total, 0, "int_mask") < 0) goto done;
    got++;
    if (get_buf(o_x, &bx, F64, total, 0, "image") < 0) goto done;
    got++;
    if (get_buf(o_bb, &bbb, I64, 6, 1, "bbox") < 0) goto done;
    got++;
    if (get_buf(o_mom, &bmom, I64, 10, 1, "moments") < 0) goto done;
    got++;
    if (get_buf(o_ws, &bws, F64, 4, 1, "wsum") < 0) goto done;
    got++;
    if (get_buf(o_cnt, &bcnt, I64, 256, 1, "counts") < 0) goto done;
    got++;
    if (get_buf(o_is, &bis, I64, 256 * 3, 1, "isum") < 0) goto done;
    got++;
    const uint8_t *m = bm.buf, *im = bim.buf;
    const double *x = bx.buf;
    int64_t *bb = bbb.buf, *mom = bmom.buf, *cnt = bcnt.buf, *is = bis.buf;
    double *ws = bws.buf;
    Py_ssize_t lo[3] = {sh[0], sh[1], sh[2]}, hi[3] = {-1, -1, -1};
    int64_t n = 0, s1[3] = {0, 0, 0}, s2[6] = {0, 0, 0, 0, 0, 0};
    double w = 0.0, wz = 0.0, wy = 0.0, wx = 0.0;
    for (Py_ssize_t z = 0; z < sh[0]; z++)
        for (Py_ssize_t y = 0; y < sh[1]; y++) {
            Py_ssize_t off = (z * sh[1] + y) * sh[2];
            const uint8_t *mr = m + off, *ir = im + off;
            const double *xr = x + off;
            int64_t rn = 0, rx = 0, rxx = 0, c0 = -1, c1 = -1;
            double rw = 0.0, rwx = 0.0;
            for (Py_ssize_t i = 0; i < sh[2]; i++) {
                if (mr[i]) {
                    if (c0 < 0) c0 = i;
                    c1 = i;
                    rn++; rx += i; rxx += (int64_t)i * i;
                }
                if (ir[i]) { rw += xr[i]; rwx += xr[i] * (double)i; }
            }
            w += rw; wz += rw * (double)z; wy += rw * (double)y; wx += rwx;
            if (!rn) continue;
            n += rn;
            s1[0] += rn * z; s1[1] += rn * y; s1[2] += rx;
            s2[0] += rn * z * z; s2[1] += rn * y * y; s2[2] += rxx;
            s2[3] += rn * z * y; s2[4] += rx * z; s2[5] += rx * y;
            grow_box(lo, hi, z, y, c0, c1);
        }
    mom[0] = n;
    for (int a = 0; a < 3; a++) mom[1 + a] = s1[a];
    for (int a = 0; a < 6; a++) mom[4 + a] = s2[a];
    ws[0] = w; ws[1] = wz; ws[2] = wy; ws[3] = wx;
    memset(cnt, 0, 256 * sizeof(int64_t));
    memset(is, 0, 256 * 3 * sizeof(int64_t));
    if (!n) {
        for (int a = 0; a < 6; a++) bb[a] = 0;
        result = PyLong_FromLongLong(0);
        goto done;
    }
    for (int a = 0; a < 3; a++) { bb[a] = lo[a]; bb[3 + a] = hi[a] + 1; }
    /* framed box: (pz, py, px) = box + 2; row codes r = m[x] | m[x + 1] << 1, plane codes q = r[y] | r[y + 1] << 2,
       cell code = q(z) | q(z + 1) << 4 over the (pz - 1) (py - 1) (px - 1) cells */
    Py_ssize_t pz = hi[0] - lo[0] + 3, py = hi[1] - lo[1] + 3, px = hi[2] - lo[2] + 3;
    Py_ssize_t qsize = (py - 1) * (px - 1);
    work = work_get((size_t)(2 * qsize + px));
    if (!work) { PyErr_NoMemory(); goto done; }
    uint8_t *q0 = work, *q1 = work + qsize, *rowbuf = work + 2 * qsize;
    for (Py_ssize_t zp = 0; zp < pz; zp++) {
        /* plane codes of framed plane zp into q1 */
        Py_ssize_t z = lo[0] + zp - 1;
        for (Py_ssize_t yp = 0; yp < py; yp++) {
            Py_ssize_t y = lo[1] + yp - 1;
            /* row codes of framed row yp into rowbuf (px - 1 entries) */
            if (z < lo[0] || z > hi[0] || y < lo[1] || y > hi[1]) {
                memset(rowbuf, 0, (size_t)(px - 1));
            } else {
                const uint8_t *mr = m + (z * sh[1] + y) * sh[2] + lo[2];
                Py_ssize_t nx = px - 2;
                rowbuf[0] = mr[0] ? 2 : 0;
                for (Py_ssize_t i = 1; i < nx; i++) rowbuf[i] = (uint8_t)((mr[i - 1] ? 1 : 0) | (mr[i] ? 2 : 0));
                rowbuf[nx] = mr[nx - 1] ? 1 : 0;
            }
            if (yp > 0) {
                uint8_t *qr = q1 + (yp - 1) * (px - 1);
                for (Py_ssize_t i = 0; i < px - 1; i++) qr[i] |= (uint8_t)(rowbuf[i] << 2);
            }
            if (yp < py - 1) memcpy(q1 + yp * (px - 1), rowbuf, (size_t)(px - 1));
        }
        if (zp > 0) {
            Py_ssize_t cz = zp - 1;
            for (Py_ssize_t cy = 0; cy < py - 1; cy++) {
                const uint8_t *a = q0 + cy * (px - 1), *b = q1 + cy * (px - 1);
                for (Py_ssize_t cx = 0; cx < px - 1; cx++) {
                    unsigned code = (unsigned)a[cx] | ((unsigned)b[cx] << 4);
                    if (code == 0 || code == 255) continue;
                    cnt[code]++;
                    is[3 * code] += cz; is[3 * code + 1] += cy; is[3 * code + 2] += cx;
                }
            }
        }
        uint8_t *t = q0; q0 = q1; q1 = t;
    }
    result = PyLong_FromLongLong(n);
done:
    work_release(work);
    if (got > 0) PyBuffer_Release(&bm);
    if (got > 1) PyBuffer_Release(&bim);
    if (got > 2) PyBuffer_Release(&bx);
    if (got > 3) PyBuffer_Release(&bbb);
    if (got > 4) PyBuffer_Release(&bmom);
    if (got > 5) PyBuffer_Release(&bws);
    if (got > 6) PyBuffer_Release(&bcnt);
    if (got > 7) PyBuffer_Release(&bis);
    return result;
}

/* ----- morphology: convex hull candidates ------------------------------------------------------------------ */

typedef struct {
    int64_t c[3]; /* doubled (z, y, x) box index: one coordinate odd (the line's axis), two even */
} HPoint;

/* the plane axis and the two in-plane axes (u, v) of the current 2D filter pass */
static int ax_w = 0, ax_u = 1, ax_v = 2;

static int64_t cross2(const HPoint *o, const HPoint *a, const HPoint *b) {
    return (a->c[ax_u] - o->c[ax_u]) * (b->c[ax_v] - o->c[ax_v]) -
           (a->c[ax_v] - o->c[ax_v]) * (b->c[ax_u] - o->c[ax_u]);
}

/* Vertices of the 2D convex hull (u, v) of pts[0..n) (sorted by u then v, distinct), collinear points dropped
   (Andrew's monotone chain, exact integer arithmetic), written to out; returns their count. */
static Py_ssize_t hull2d(const HPoint *pts, Py_ssize_t n, HPoint *out, const HPoint **st) {
    if (n <= 2) {
        for (Py_ssize_t i = 0; i < n; i++) out[i] = pts[i];
        return n;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        while (k >= 2 && cross2(st[k - 2], st[k - 1], &pts[i]) <= 0) k--;
        st[k++] = &pts[i];
    }
    for (Py_ssize_t i = n - 2, t = k + 1; i >= 0; i--) {
        while (k >= t && cross2(st[k - 2], st[k - 1], &pts[i]) <= 0) k--;
        st[k++] = &pts[i];
    }
    k--; /* the last point is the first one */
    for (Py_ssize_t i = 0; i < k; i++) out[i] = *st[i];
    return k;
}

/* The candidates of morphology._hull_points for a uint8 mask of shape sh (the outermost marching-cubes vertices
   of each grid line, half a voxel beyond its first and last inside voxel, less those lying between both
   neighbouring lines' points), in doubled (z, y, x) indices relative to the mask's bounding box; then, plane by
   plane along z, y and x in turn, only the vertices of each plane's 2D convex hull are kept (a point inside the
   hull of other points of its plane is no corner of the 3D hull, so the hull is unchanged). Returns a PyMem
   array (*out, *count; NULL count 0 for an empty mask) or -1 with an exception set. */
static int hull_candidates(const uint8_t *m, const Py_ssize_t *sh, const Py_ssize_t *box, HPoint **out,
                           Py_ssize_t *count) {
    HPoint *pts = NULL, *kept = NULL;
    const HPoint **st = NULL;
    int64_t *first = NULL, *last = NULL;
    Py_ssize_t *counts = NULL;
    int rc = -1;
    *out = NULL;
    *count = 0;
    Py_ssize_t lo[3] = {sh[0], sh[1], sh[2]}, hi[3] = {-1, -1, -1};
    if (box) { /* the caller's bounding box (half-open): trusted only for its extent, the lines are still read */
        for (int a = 0; a < 3; a++) { lo[a] = box[a]; hi[a] = box[3 + a] - 1; }
    } else {
        for (Py_ssize_t z = 0; z < sh[0]; z++)
            for (Py_ssize_t y = 0; y < sh[1]; y++) {
                const uint8_t *r = m + (z * sh[1] + y) * sh[2];
                for (Py_ssize_t i = 0; i < sh[2]; i++)
                    if (r[i]) {
                        grow_box(lo, hi, z, y, i, i);
                    }
            }
    }
    if (hi[0] < 0) return 0;
    Py_ssize_t n[3] = {hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1};
    Py_ssize_t cap = 2 * (n[1] * n[2] + n[0] * n[2] + n[0] * n[1]);
    Py_ssize_t maxline = n[1] * n[2];
    if (n[0] * n[2] > maxline) maxline = n[0] * n[2];
    if (n[0] * n[1] > maxline) maxline = n[0] * n[1];
    pts = PyMem_Malloc(sizeof(HPoint) * cap);
    kept = PyMem_Malloc(sizeof(HPoint) * cap);
    st = PyMem_Malloc(sizeof(HPoint *) * (cap + 1));
    first = PyMem_Malloc(sizeof(int64_t) * maxline);
    last = PyMem_Malloc(sizeof(int64_t) * maxline);
    if (!pts || !kept || !st || !first || !last) { PyErr_NoMemory(); goto done; }
    Py_ssize_t np_ = 0;
    Py_ssize_t str[3] = {sh[1] * sh[2], sh[2], 1};
    const uint8_t *base = m + lo[0] * str[0] + lo[1] * str[1] + lo[2];
    for (int ax = 0; ax < 3; ax++) {
        int a1 = ax == 0 ? 1 : 0, a2 = ax == 2 ? 1 : 2; /* the other two axes, in order */
        Py_ssize_t na = n[a1], nb = n[a2], len = n[ax];
        /* first / last inside index of each line (a, b) along ax; -1 when the line is empty */
        for (Py_ssize_t a = 0; a < na; a++)
            for (Py_ssize_t b = 0; b < nb; b++) {
                const uint8_t *p = base + a * str[a1] + b * str[a2];
                int64_t f = -1, l = -1;
                for (Py_ssize_t t = 0; t < len; t++)
                    if (p[t * str[ax]]) { f = t; break; }
                if (f >= 0)
                    for (Py_ssize_t t = len - 1; t >= 0; t--)
                        if (p[t * str[ax]]) { l = t; break; }
                first[a * nb + b] = f;
                last[a * nb + b] = l;
            }
        for (Py_ssize_t a = 0; a < na; a++)
            for (Py_ssize_t b = 0; b < nb; b++) {
                Py_ssize_t i = a * nb + b;
                if (first[i] < 0) continue;
                int keep_f = 1, keep_l = 1;
                if (a > 0 && a < na - 1 && first[i - nb] >= 0 && first[i + nb] >= 0) {
                    if (2 * first[i] >= first[i - nb] + first[i + nb]) keep_f = 0;
                    if (2 * last[i] <= last[i - nb] + last[i + nb]) keep_l = 0;
                }
                if (b > 0 && b < nb - 1 && first[i - 1] >= 0 && first[i + 1] >= 0) {
                    if (2 * first[i] >= first[i - 1] + first[i + 1]) keep_f = 0;
                    if (2 * last[i] <= last[i - 1] + last[i + 1]) keep_l = 0;
                }
                for (int e = 0; e < 2; e++) {
                    if (!(e ? keep_l : keep_f)) continue;
                    HPoint *q = &pts[np_++];
                    q->c[ax] = e ? 2 * last[i] + 1 : 2 * first[i] - 1;
                    q->c[a1] = 2 * a;
                    q->c[a2] = 2 * b;
                }
            }
    }
    Py_ssize_t nk = np_;
    /* counting sorts (stable, least significant key first) on coordinates -1 .. 2 n[a] + 1 */
    Py_ssize_t range = 2 * (n[0] > n[1] ? (n[0] > n[2] ? n[0] : n[2]) : (n[1] > n[2] ? n[1] : n[2])) + 3;
    counts = PyMem_Calloc((size_t)range + 1, sizeof(Py_ssize_t));
    if (!counts) { PyErr_NoMemory(); goto done; }
    for (int w = 0; w < 3; w++) {
        ax_w = w; ax_u = w == 0 ? 1 : 0; ax_v = w == 2 ? 1 : 2;
        int keys[3] = {ax_v, ax_u, ax_w};
        for (int k = 0; k < 3; k++) {
            int a = keys[k];
            memset(counts, 0, sizeof(Py_ssize_t) * (size_t)(range + 1));
            for (Py_ssize_t i = 0; i < nk; i++) counts[pts[i].c[a] + 2]++;
            for (Py_ssize_t r = 1; r <= range; r++) counts[r] += counts[r - 1];
            for (Py_ssize_t i = 0; i < nk; i++) kept[counts[pts[i].c[a] + 1]++] = pts[i];
            HPoint *t = pts; pts = kept; kept = t;
        }
        Py_ssize_t nn = 0;
        for (Py_ssize_t i = 0; i < nk;) {
            Py_ssize_t j = i;
            while (j < nk && pts[j].c[w] == pts[i].c[w]) j++;
            nn += hull2d(pts + i, j - i, kept + nn, st);
            i = j;
        }
        HPoint *t = pts; pts = kept; kept = t;
        nk = nn;
    }
    *out = pts;
    *count = nk;
    pts = NULL;
    rc = 0;
done:
    PyMem_Free(pts); PyMem_Free(kept); PyMem_Free(st); PyMem_Free(first); PyMem_Free(last); PyMem_Free(counts);
    return rc;
}

/* hull_points(mask, shape, spacing_zyx, out) -> number of points written to out (float64, (cap, 3) with cap at
   least 2 (ny nx + nz nx + nz ny) of the mask's bounding box): hull_candidates in mm relative to the box. */
static PyObject *hull_points(PyObject *self, PyObject *args) {
    PyObject *o_m, *o_out;
    Py_ssize_t sh[3];
    double sp[3];
    if (!PyArg_ParseTuple(args, "O(nnn)(ddd)O", &o_m, &sh[0], &sh[1], &sh[2], &sp[0], &sp[1], &sp[2], &o_out))
        return NULL;
    Py_ssize_t total = checked_size(sh, 3, 1, "shape");
    if (total < 0) return NULL;
    Py_buffer bm, bo;
    if (get_buf(o_m, &bm, U8, total, 0, "mask") < 0) return NULL;
    if (get_buf_any(o_out, &bo, F64, 1, "out") < 0) { PyBuffer_Release(&bm); return NULL; }
    PyObject *result = NULL;
    HPoint *res = NULL;
    Py_ssize_t nk = 0;
    if (hull_candidates(bm.buf, sh, NULL, &res, &nk) < 0) goto done;
    if (bo.len < nk * 3 * 8) {
        PyErr_Format(PyExc_ValueError, "out holds %zd points, need %zd", bo.len / 24, nk);
        goto done;
    }
    double *o = bo.buf;
    for (Py_ssize_t i = 0; i < nk; i++)
        for (int k = 0; k < 3; k++) o[3 * i + k] = ((double)res[i].c[k] * 0.5) * sp[k];
    result = PyLong_FromSsize_t(nk);
done:
    PyMem_Free(res);
    PyBuffer_Release(&bm); PyBuffer_Release(&bo);
    return result;
}

/* ----- morphology: convex hull ----------------------------------------------------------------------------- */

typedef struct {
    int v[3]; /* outward: (v1 - v0) x (v2 - v0) points away from the hull */
} Face;

/* ((b - a) x (c - a)) . (p - a): > 0 when p lies on the outer side of face (a, b, c); exact for coordinates below
   2**16 in magnitude */
static int64_t orient3(const HPoint *a, const HPoint *b, const HPoint *c, const HPoint *p) {
    int64_t bx = b->c[0] - a->c[0], by = b->c[1] - a->c[1], bz = b->c[2] - a->c[2];
    int64_t cx = c->c[0] - a->c[0], cy = c->c[1] - a->c[1], cz = c->c[2] - a->c[2];
    int64_t px = p->c[0] - a->c[0], py = p->c[1] - a->c[1], pz = p->c[2] - a->c[2];
    return (by * cz - bz * cy) * px + (bz * cx - bx * cz) * py + (bx * cy - by * cx) * pz;
}

#define HULL_MAX_COORD (1 << 16)

/* Convex hull of pts[0..n) (distinct, doubled integer coordinates), incremental with exact orientation tests
   (a point sees a face when strictly outside it, so coplanar points never make degenerate faces). Returns the
   number of faces written to *faces (PyMem array), 0 when the points span no volume, -1 with an exception. */
static Py_ssize_t hull3d(const HPoint *pts, Py_ssize_t n, Face **faces_out) {
    *faces_out = NULL;
    if (n < 4) return 0;
    /* initial tetrahedron: p0, the point farthest from it, the one farthest from that line, the one farthest
       from that plane */
    Py_ssize_t i0 = 0, i1 = -1, i2 = -1, i3 = -1;
    double best = 0.0;
    for (Py_ssize_t i = 1; i < n; i++) {
        double d = 0.0;
        for (int k = 0; k < 3; k++) d += (double)(pts[i].c[k] - pts[i0].c[k]) * (double)(pts[i].c[k] - pts[i0].c[k]);
        if (d > best) { best = d; i1 = i; }
    }
    if (i1 < 0) return 0;
    best = 0.0;
    for (Py_ssize_t i = 1; i < n; i++) {
        int64_t u[3], v[3];
        for (int k = 0; k < 3; k++) { u[k] = pts[i1].c[k] - pts[i0].c[k]; v[k] = pts[i].c[k] - pts[i0].c[k]; }
        int64_t x = u[1] * v[2] - u[2] * v[1], y = u[2] * v[0] - u[0] * v[2], z = u[0] * v[1] - u[1] * v[0];
        double d = (double)x * (double)x + (double)y * (double)y + (double)z * (double)z;
        if ((x || y || z) && d > best) { best = d; i2 = i; }
    }
    if (i2 < 0) return 0;
    int64_t vbest = 0;
    for (Py_ssize_t i = 1; i < n; i++) {
        int64_t o = orient3(&pts[i0], &pts[i1], &pts[i2], &pts[i]);
        if ((o < 0 ? -o : o) > vbest) { vbest = o < 0 ? -o : o; i3 = i; }
    }
    if (i3 < 0) return 0;
    /* faces never move (ids index the outside sets and the neighbour links); each point not yet on the hull
       belongs to the outside set of one face it sees, or is dropped as inside (Barber et al.'s quickhull: a point
       that saw a face removed by an insertion and sees none of the new faces lies inside the new hull). The faces
       an inserted point sees form a connected patch found by a walk over neighbours from the face it came from. */
    Py_ssize_t cap = 64, nf = 0;
    Face *F = PyMem_Malloc(sizeof(Face) * cap);
    Py_ssize_t *head = PyMem_Malloc(sizeof(Py_ssize_t) * cap), *nb = PyMem_Malloc(sizeof(Py_ssize_t) * 3 * cap);
    Py_ssize_t *mark = PyMem_Malloc(sizeof(Py_ssize_t) * cap), *stack = PyMem_Malloc(sizeof(Py_ssize_t) * cap);
    int *alive = PyMem_Malloc(sizeof(int) * cap);
    Py_ssize_t *next = PyMem_Malloc(sizeof(Py_ssize_t) * n), *freed = PyMem_Malloc(sizeof(Py_ssize_t) * n);
    Py_ssize_t *start_of = PyMem_Malloc(sizeof(Py_ssize_t) * n), *hz = PyMem_Malloc(sizeof(Py_ssize_t) * 3 * cap);
    if (!F || !head || !nb || !mark || !stack || !alive || !next || !freed || !start_of || !hz) goto nomem;
    int tet[4] = {(int)i0, (int)i1, (int)i2, (int)i3};
    for (int f = 0; f < 4; f++) {
        int a = tet[f == 3 ? 1 : 0], b = tet[f >= 2 ? 2 : 1], c = tet[f >= 1 ? 3 : 2];
        int other = tet[3 - f];
        if (orient3(&pts[a], &pts[b], &pts[c], &pts[other]) > 0) { int t = b; b = c; c = t; }
        F[nf].v[0] = a; F[nf].v[1] = b; F[nf].v[2] = c; alive[nf] = 1; head[nf] = -1; mark[nf] = -1; nf++;
    }
    for (int f = 0; f < 4; f++) /* neighbours of the tetrahedron: the face holding the reversed edge */
        for (int e = 0; e < 3; e++) {
            int u = F[f].v[e], v = F[f].v[(e + 1) % 3];
            nb[3 * f + e] = -1;
            for (int g = 0; g < 4; g++)
                for (int h = 0; h < 3; h++)
                    if (g != f && F[g].v[h] == v && F[g].v[(h + 1) % 3] == u) nb[3 * f + e] = g;
        }
    for (Py_ssize_t i = 0; i < n; i++) {
        next[i] = -1;
        start_of[i] = -1;
        if (i == i0 || i == i1 || i == i2 || i == i3) continue;
        for (Py_ssize_t f = 0; f < 4; f++)
            if (orient3(&pts[F[f].v[0]], &pts[F[f].v[1]], &pts[F[f].v[2]], &pts[i]) > 0) {
                next[i] = head[f]; head[f] = i; break;
            }
    }
    Py_ssize_t stamp = 0;
    for (Py_ssize_t f0 = 0; f0 < nf; f0++) {
        if (!alive[f0] || head[f0] < 0) continue;
        stamp++;
        /* the farthest point of this face's outside set */
        Py_ssize_t pi = -1;
        int64_t far = 0;
        for (Py_ssize_t q = head[f0]; q >= 0; q = next[q]) {
            int64_t o = orient3(&pts[F[f0].v[0]], &pts[F[f0].v[1]], &pts[F[f0].v[2]], &pts[q]);
            if (o > far) { far = o; pi = q; }
        }
        const HPoint *p = &pts[pi];
        /* walk the visible patch from f0: mark = 2 stamp (visible) or 2 stamp + 1 (not visible, tested);
           horizon edges (face, edge) collected in hz */
        Py_ssize_t top = 0, nh = 0, nfree = 0, first_new = nf;
        stack[top++] = f0;
        mark[f0] = 2 * stamp;
        while (top) {
            Py_ssize_t f = stack[--top];
            alive[f] = 0;
            for (Py_ssize_t q = head[f]; q >= 0; q = next[q])
                if (q != pi) freed[nfree++] = q;
            head[f] = -1;
            for (int e = 0; e < 3; e++) {
                Py_ssize_t g = nb[3 * f + e];
                if (mark[g] == 2 * stamp) continue;
                if (mark[g] != 2 * stamp + 1 &&
                    orient3(&pts[F[g].v[0]], &pts[F[g].v[1]], &pts[F[g].v[2]], p) > 0) {
                    mark[g] = 2 * stamp;
                    stack[top++] = g;
                } else {
                    mark[g] = 2 * stamp + 1;
                    hz[2 * nh] = f; hz[2 * nh + 1] = e; nh++;
                }
            }
        }
        /* one new face (u, v, p) on each horizon edge (u, v) of a removed face, linked to the face g beyond it
           and, around p, to the new faces on the neighbouring horizon edges */
        if (nf + nh > cap) {
            while (nf + nh > cap) cap *= 2;
            void *t[7];
            t[0] = PyMem_Realloc(F, sizeof(Face) * cap); if (t[0]) F = t[0];
            t[1] = PyMem_Realloc(head, sizeof(Py_ssize_t) * cap); if (t[1]) head = t[1];
            t[2] = PyMem_Realloc(nb, sizeof(Py_ssize_t) * 3 * cap); if (t[2]) nb = t[2];
            t[3] = PyMem_Realloc(mark, sizeof(Py_ssize_t) * cap); if (t[3]) mark = t[3];
            t[4] = PyMem_Realloc(stack, sizeof(Py_ssize_t) * cap); if (t[4]) stack = t[4];
            t[5] = PyMem_Realloc(alive, sizeof(int) * cap); if (t[5]) alive = t[5];
            t[6] = PyMem_Realloc(hz, sizeof(Py_ssize_t) * 3 * cap); if (t[6]) hz = t[6];
            for (int k = 0; k < 7; k++)
                if (!t[k]) goto nomem;
        }
        for (Py_ssize_t h = 0; h < nh; h++) {
            Py_ssize_t f = hz[2 * h];
            int e = (int)hz[2 * h + 1];
            int u = F[f].v[e], v = F[f].v[(e + 1) % 3];
            Py_ssize_t g = nb[3 * f + e], nfc = nf++;
            F[nfc].v[0] = u; F[nfc].v[1] = v; F[nfc].v[2] = (int)pi;
            alive[nfc] = 1; head[nfc] = -1; mark[nfc] = -1;
            nb[3 * nfc] = g;
            for (int k = 0; k < 3; k++)
                if (F[g].v[k] == v && F[g].v[(k + 1) % 3] == u) nb[3 * g + k] = nfc;
            start_of[u] = nfc;
        }
        for (Py_ssize_t c = first_new; c < nf; c++) {
            /* edge 1 (v, p) borders the new face starting at v, whose edge 2 is (p, v) */
            Py_ssize_t d = start_of[F[c].v[1]];
            nb[3 * c + 1] = d;
            nb[3 * d + 2] = c;
        }
        /* the freed points go to a new face they see, or are inside */
        for (Py_ssize_t k = 0; k < nfree; k++) {
            Py_ssize_t q = freed[k];
            next[q] = -1;
            for (Py_ssize_t f = first_new; f < nf; f++)
                if (orient3(&pts[F[f].v[0]], &pts[F[f].v[1]], &pts[F[f].v[2]], &pts[q]) > 0) {
                    next[q] = head[f]; head[f] = q; break;
                }
        }
        f0 = -1; /* start over: earlier faces may still have outside points (new ones are appended) */
    }
    Py_ssize_t w = 0;
    for (Py_ssize_t f = 0; f < nf; f++)
        if (alive[f]) F[w++] = F[f];
    PyMem_Free(alive); PyMem_Free(head); PyMem_Free(next); PyMem_Free(freed);
    PyMem_Free(nb); PyMem_Free(mark); PyMem_Free(stack); PyMem_Free(start_of); PyMem_Free(hz);
    *faces_out = F;
    return w;
nomem:
    PyMem_Free(F); PyMem_Free(alive); PyMem_Free(head); PyMem_Free(next); PyMem_Free(freed);
    PyMem_Free(nb); PyMem_Free(mark); PyMem_Free(stack); PyMem_Free(start_of); PyMem_Free(hz);
    PyErr_NoMemory();
    return -1;
}

/* hull_measures(mask, shape, spacing_zyx, max_points[, bbox]) -> (volume, area, diameter, n_vertices) or None
   (bbox: the mask's bounding box (z0, y0, x0, z1, y1, x1), half-open, when the caller has it)
   The convex hull of the marching-cubes vertices of a uint8 mask (from hull_candidates): volume (mm^3, exact
   integer sum of signed tetrahedra, scaled), area (mm^2) and the largest distance between hull vertices (mm, as
   scipy's pdist computes it from the coordinates hull_points gives). None when the candidates span no volume,
   exceed max_points or the box is too large for exact 64-bit orientation tests: the caller then uses qhull. */
static PyObject *hull_measures(PyObject *self, PyObject *args) {
    PyObject *o_m, *o_box = Py_None;
    Py_ssize_t sh[3], max_points, box[6];
    double sp[3];
    if (!PyArg_ParseTuple(args, "O(nnn)(ddd)n|O", &o_m, &sh[0], &sh[1], &sh[2], &sp[0], &sp[1], &sp[2], &max_points,
                          &o_box))
        return NULL;
    Py_ssize_t total = checked_size(sh, 3, 1, "shape");
    if (total < 0) return NULL;
    if (o_box != Py_None) {
        if (!PyArg_ParseTuple(o_box, "nnnnnn", &box[0], &box[1], &box[2], &box[3], &box[4], &box[5])) return NULL;
        for (int a = 0; a < 3; a++)
            if (box[a] < 0 || box[3 + a] <= box[a] || box[3 + a] > sh[a])
                return PyErr_Format(PyExc_ValueError, "bounding box does not fit the shape along axis %d", a);
    }
    Py_buffer bm;
    if (get_buf(o_m, &bm, U8, total, 0, "mask") < 0) return NULL;
    PyObject *result = NULL;
    HPoint *pts = NULL;
    Face *F = NULL;
    Py_ssize_t n = 0, nf = 0;
    int *used = NULL;
    if (hull_candidates(bm.buf, sh, o_box != Py_None ? box : NULL, &pts, &n) < 0) goto done;
    int ok = n >= 4 && n <= max_points && n < (1 << 30);
    for (Py_ssize_t i = 0; ok && i < n; i++)
        for (int k = 0; k < 3; k++)
            if (pts[i].c[k] <= -HULL_MAX_COORD || pts[i].c[k] >= HULL_MAX_COORD) ok = 0;
    if (!ok) { result = Py_None; Py_INCREF(result); goto done; }
    nf = hull3d(pts, n, &F);
    if (nf < 0) goto done;
    if (nf == 0) { result = Py_None; Py_INCREF(result); goto done; }
    int64_t six = 0;
    double area = 0.0;
    const HPoint *o = &pts[F[0].v[0]];
    used = PyMem_Calloc((size_t)n, sizeof(int));
    if (!used) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t f = 0; f < nf; f++) {
        const HPoint *a = &pts[F[f].v[0]], *b = &pts[F[f].v[1]], *c = &pts[F[f].v[2]];
        six += orient3(o, a, b, c);
        double u[3], v[3];
        for (int k = 0; k < 3; k++) {
            u[k] = (double)(b->c[k] - a->c[k]) * 0.5 * sp[k];
            v[k] = (double)(c->c[k] - a->c[k]) * 0.5 * sp[k];
        }
        double x = u[1] * v[2] - u[2] * v[1], y = u[2] * v[0] - u[0] * v[2], z = u[0] * v[1] - u[1] * v[0];
        area += 0.5 * sqrt(x * x + y * y + z * z);
        used[F[f].v[0]] = used[F[f].v[1]] = used[F[f].v[2]] = 1;
    }
    /* six = 6 V in doubled index units: V (mm^3) = six / 6 / 8 * sz sy sx */
    double volume = (double)(six < 0 ? -six : six) / 48.0 * sp[0] * sp[1] * sp[2];
    Py_ssize_t nv = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (used[i]) pts[nv++] = pts[i];
    double d2max = 0.0;
    for (Py_ssize_t i = 0; i < nv; i++) {
        double xi[3];
        for (int k = 0; k < 3; k++) xi[k] = ((double)pts[i].c[k] * 0.5) * sp[k];
        for (Py_ssize_t j = i + 1; j < nv; j++) {
            double d = 0.0;
            for (int k = 0; k < 3; k++) {
                double t = xi[k] - ((double)pts[j].c[k] * 0.5) * sp[k];
                d += t * t;
            }
            if (d > d2max) d2max = d;
        }
    }
    result = Py_BuildValue("dddn", volume, area, sqrt(d2max), nv);
done:
    PyMem_Free(pts); PyMem_Free(F); PyMem_Free(used);
    PyBuffer_Release(&bm);
    return result;
}

/* ----- interpolation ---------------------------------------------------------------------------------------- */

/* linear_along(a, (outer, n, inner), i0, i1, w, out): out[o, i, k] = (a[o, i1[i], k] - a[o, i0[i], k]) w[i]
   + a[o, i0[i], k], for a float64 array viewed as (outer, n, inner) and out as (outer, len(w), inner): one pass of
   preprocess._linear_along with the same indices, weights and arithmetic (so the same numbers). */
static PyObject *linear_along(PyObject *self, PyObject *args) {
    PyObject *o_a, *o_i0, *o_i1, *o_w, *o_out;
    Py_ssize_t d[3];
    if (!PyArg_ParseTuple(args, "O(nnn)OOOO", &o_a, &d[0], &d[1], &d[2], &o_i0, &o_i1, &o_w, &o_out)) return NULL;
    Py_ssize_t total = checked_size(d, 3, 1, "shape");
    if (total < 0) return NULL;
    Py_buffer ba, b0, b1, bw, bo;
    if (get_buf_any(o_w, &bw, F64, 0, "w") < 0) return NULL;
    Py_ssize_t m = bw.len / 8;
    if (get_buf(o_a, &ba, F64, total, 0, "a") < 0) { PyBuffer_Release(&bw); return NULL; }
    if (get_buf(o_i0, &b0, I64, m, 0, "i0") < 0) { PyBuffer_Release(&bw); PyBuffer_Release(&ba); return NULL; }
    if (get_buf(o_i1, &b1, I64, m, 0, "i1") < 0) {
        PyBuffer_Release(&bw); PyBuffer_Release(&ba); PyBuffer_Release(&b0); return NULL;
    }
    if (get_buf(o_out, &bo, F64, d[0] * m * d[2], 1, "out") < 0) {
        PyBuffer_Release(&bw); PyBuffer_Release(&ba); PyBuffer_Release(&b0); PyBuffer_Release(&b1); return NULL;
    }
    const int64_t *i0 = b0.buf, *i1 = b1.buf;
    const double *a = ba.buf, *w = bw.buf;
    double *out = bo.buf;
    PyObject *result = Py_None;
    for (Py_ssize_t i = 0; i < m; i++)
        if (i0[i] < 0 || i0[i] >= d[1] || i1[i] < 0 || i1[i] >= d[1]) {
            PyErr_SetString(PyExc_ValueError, "interpolation index out of range");
            result = NULL;
            goto done;
        }
    Py_ssize_t n = d[1], inner = d[2];
    if (inner == 1) { /* along the last axis: a gather per output value */
        for (Py_ssize_t o = 0; o < d[0]; o++) {
            const double *row = a + o * n;
            double *r = out + o * m;
            for (Py_ssize_t i = 0; i < m; i++) {
                double lo = row[i0[i]];
                r[i] = (row[i1[i]] - lo) * w[i] + lo;
            }
        }
    } else {
        for (Py_ssize_t o = 0; o < d[0]; o++)
            for (Py_ssize_t i = 0; i < m; i++) {
                const double *lo = a + (o * n + i0[i]) * inner, *hi = a + (o * n + i1[i]) * inner;
                double *r = out + (o * m + i) * inner, wi = w[i];
                for (Py_ssize_t k = 0; k < inner; k++) r[k] = (hi[k] - lo[k]) * wi + lo[k];
            }
    }
    Py_INCREF(result);
done:
    PyBuffer_Release(&bw); PyBuffer_Release(&ba); PyBuffer_Release(&b0); PyBuffer_Release(&b1); PyBuffer_Release(&bo);
    return result;
}

/* ----- intensity statistics: NumPy's pairwise sums of derived terms --------------------------------------- */

/* The terms summed: the value, or with d = x - c: d d, (d d) d, (d d) (d d), |d| (as the NumPy expressions
   dev * dev, dev2 * dev, dev2 * dev2, abs(dev) compute them). */
enum term { T_X, T_D2, T_D3, T_D4, T_ABS };

static inline double term_of(double x, double c, enum term t) {
    double d = x - c, d2 = d * d;
    switch (t) {
    case T_X: return x;
    case T_D2: return d2;
    case T_D3: return d2 * d;
    case T_D4: return d2 * d2;
    case T_ABS: return fabs(d);
    }
    return 0.0;
}

/* NumPy's pairwise summation (numpy/_core/src/umath/loops_utils.h: blocks of at most 128 summed with eight
   accumulators, halves split at multiples of 8), so sum(terms) equals numpy's np.sum of the term array. */
static double pw_sum(const double *a, Py_ssize_t n, double c, enum term t) {
    if (n < 8) {
        double res = 0.0;
        for (Py_ssize_t i = 0; i < n; i++) res += term_of(a[i], c, t);
        return res;
    }
    if (n <= 128) {
        double r[8];
        Py_ssize_t i;
        for (int j = 0; j < 8; j++) r[j] = term_of(a[j], c, t);
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += term_of(a[i + j], c, t);
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += term_of(a[i], c, t);
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pw_sum(a, n2, c, t) + pw_sum(a + n2, n - n2, c, t);
}

/* term_sums(x, lo, hi, center, terms) -> tuple of sums over x[lo:hi], one per character of terms:
   'x' the values, '2' / '3' / '4' the powers of d = x - center, 'a' |d|; each as NumPy sums the term array. */
static PyObject *term_sums(PyObject *self, PyObject *args) {
    PyObject *o_x;
    Py_ssize_t lo, hi;
    double c;
    const char *terms;
    if (!PyArg_ParseTuple(args, "Onnds", &o_x, &lo, &hi, &c, &terms)) return NULL;
    Py_buffer bx;
    if (get_buf_any(o_x, &bx, F64, 0, "x") < 0) return NULL;
    Py_ssize_t n = bx.len / 8;
    if (lo < 0 || hi < lo || hi > n) {
        PyBuffer_Release(&bx);
        return PyErr_Format(PyExc_ValueError, "range %zd:%zd outside the %zd values", lo, hi, n);
    }
    Py_ssize_t nt = (Py_ssize_t)strlen(terms);
    PyObject *out = PyTuple_New(nt);
    if (!out) { PyBuffer_Release(&bx); return NULL; }
    const double *x = (const double *)bx.buf + lo;
    for (Py_ssize_t k = 0; k < nt; k++) {
        enum term t;
        switch (terms[k]) {
        case 'x': t = T_X; break;
        case '2': t = T_D2; break;
        case '3': t = T_D3; break;
        case '4': t = T_D4; break;
        case 'a': t = T_ABS; break;
        default:
            Py_DECREF(out); PyBuffer_Release(&bx);
            return PyErr_Format(PyExc_ValueError, "unknown term '%c' (use x, 2, 3, 4, a)", terms[k]);
        }
        PyObject *v = PyFloat_FromDouble(pw_sum(x, hi - lo, c, t));
        if (!v) { Py_DECREF(out); PyBuffer_Release(&bx); return NULL; }
        PyTuple_SET_ITEM(out, k, v);
    }
    PyBuffer_Release(&bx);
    return out;
}

/* ----- module ----------------------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"moran_rows", moran_rows, METH_VARARGS, "mask, deviations and squared deviations rows for the pair sums"},
    {"fill_slab", fill_slab, METH_VARARGS, "copy a block of x-frequencies of the spectrum into a zero-padded slab"},
    {"split_slab", split_slab, METH_VARARGS, "first radix-2 step along z of a slab, in place"},
    {"slab_sums", slab_sums, METH_VARARGS, "kernel-weighted cross-spectrum sums over a slab"},
    {"morph_scan", morph_scan, METH_VARARGS, "moments, intensity sums and corner-pattern counts of a mask"},
    {"hull_points", hull_points, METH_VARARGS, "convex hull candidate points of a mask's marching-cubes mesh"},
    {"hull_measures", hull_measures, METH_VARARGS, "volume, area and diameter of that convex hull"},
    {"term_sums", term_sums, METH_VARARGS, "NumPy-identical pairwise sums of powers / absolute deviations"},
    {"linear_along", linear_along, METH_VARARGS, "linear interpolation along one axis (a separable pass)"},
    {"sphere_means", sphere_means, METH_VARARGS, "means over a sphere (kernel) around the voxels of a mask"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cmorph", "nmkit compiled morphology kernels", -1, methods};

PyMODINIT_FUNC PyInit__cmorph(void) { return PyModule_Create(&module); }
