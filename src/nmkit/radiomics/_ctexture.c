/* nmkit.radiomics._ctexture: IBSI texture matrices in one pass per family over a zero-framed grey level grid.

Every function takes the cropped grey levels with a one-voxel zero frame, flattened in C order (uint16, levels
1..lv-1 inside the intensity mask, 0 outside) and its padded shape (nz, ny, nx), and fills NumPy arrays allocated
by the caller (nmkit.radiomics.texture._native_matrices), which keeps the shapes of the NumPy path. Only interior
voxels are visited and the frame must be zero, so every neighbour read stays inside the buffer. The counts are the
NumPy path's exactly; the NGTDM sums add the same doubles in the same (ascending voxel) order.

Directions (dz, dy, dx) are those of texture._DIRECTIONS, in that order: the first four lie in the axial plane. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static const int DIRS[13][3] = {{0, 0, 1},  {0, 1, 1},  {0, 1, 0},   {0, 1, -1}, {1, 0, 0},
                                {1, 0, 1},  {1, 0, -1}, {1, 1, 0},   {1, -1, 0}, {1, 1, 1},
                                {1, 1, -1}, {1, -1, 1}, {1, -1, -1}};
#define N2D 4

/* ----- buffers ---------------------------------------------------------------------------------------------- */

/* kind: 'u8' uint8, 'u16' uint16, 'i64' int64, 'f64' double */
enum kind { U8, U16, I64, F64 };

static int format_is(const Py_buffer *v, enum kind k) {
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    if (f[0] == '\0' || f[1] != '\0') return 0;
    switch (k) {
    case U8: return v->itemsize == 1 && (f[0] == 'B' || f[0] == '?');
    case U16: return v->itemsize == 2 && f[0] == 'H';
    case I64: return v->itemsize == 8 && (f[0] == 'l' || f[0] == 'q');
    case F64: return v->itemsize == 8 && f[0] == 'd';
    }
    return 0;
}

static const char *kind_name(enum kind k) {
    static const char *names[] = {"uint8", "uint16", "int64", "float64"};
    return names[k];
}

/* A C-contiguous buffer of `n` items of kind `k` (writable when asked); 0 on success, -1 with an exception. */
static int get_buf(PyObject *obj, Py_buffer *view, enum kind k, Py_ssize_t n, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (!format_is(view, k)) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous %s array (format '%s', itemsize %zd)", what,
                     kind_name(k), view->format ? view->format : "?", view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    if (view->len != n * view->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s has %zd items, expected %zd", what, view->len / view->itemsize, n);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

typedef struct {
    Py_ssize_t nz, ny, nx, sy, sz, n;
} Grid;

static int parse_shape(Py_ssize_t nz, Py_ssize_t ny, Py_ssize_t nx, Grid *g) {
    if (nz < 3 || ny < 3 || nx < 3 || nz > (1 << 20) || ny > (1 << 20) || nx > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "padded shape must be at least 3 (and at most 2**20) along each axis");
        return -1;
    }
    g->nz = nz; g->ny = ny; g->nx = nx;
    g->sy = nx; g->sz = nx * ny; g->n = nz * ny * nx;
    if (g->n / nz / ny != nx || g->n > ((Py_ssize_t)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "padded shape too large");
        return -1;
    }
    return 0;
}

/* The frame is zero and every level is below lv: neighbour walks then stay in the buffer and bins in range. */
static int check_grid(const uint16_t *a, const Grid *g, Py_ssize_t lv) {
    for (Py_ssize_t z = 0; z < g->nz; z++)
        for (Py_ssize_t y = 0; y < g->ny; y++) {
            const uint16_t *row = a + z * g->sz + y * g->sy;
            int frame = (z == 0 || z == g->nz - 1 || y == 0 || y == g->ny - 1);
            if (frame) {
                for (Py_ssize_t x = 0; x < g->nx; x++)
                    if (row[x]) goto bad_frame;
            } else {
                if (row[0] || row[g->nx - 1]) goto bad_frame;
                for (Py_ssize_t x = 1; x < g->nx - 1; x++)
                    if (row[x] >= lv) {
                        PyErr_Format(PyExc_ValueError, "grey level %d >= lv = %zd", (int)row[x], lv);
                        return -1;
                    }
            }
        }
    return 0;
bad_frame:
    PyErr_SetString(PyExc_ValueError, "the grid's one-voxel frame must be zero");
    return -1;
}

static Py_ssize_t offset_of(const Grid *g, int d) { return DIRS[d][0] * g->sz + DIRS[d][1] * g->sy + DIRS[d][2]; }

/* Flat offsets of the 26 (three_d) or 8 in-plane neighbours; returns their number. */
static int neighbour_offsets(const Grid *g, int three_d, Py_ssize_t *off) {
    int k = 0;
    for (int dz = three_d ? -1 : 0; dz <= (three_d ? 1 : 0); dz++)
        for (int dy = -1; dy <= 1; dy++)
            for (int dx = -1; dx <= 1; dx++)
                if (dz || dy || dx) off[k++] = dz * g->sz + dy * g->sy + dx;
    return k;
}

/* ----- GLCM ------------------------------------------------------------------------------------------------- */

static const char glcm_doc[] =
    "glcm(grid, nz, ny, nx, ndir, per_slice, lv, out)\n\n"
    "Raw (unsymmetrised) co-occurrence counts including level 0: out (int64) holds first the 4 in-plane\n"
    "directions as (4, S, lv, lv) with S = nz - 2 slices when per_slice else 1, then directions 4..ndir-1 as\n"
    "(ndir - 4, lv, lv). Adds to out.";

static PyObject *glcm(PyObject *self, PyObject *args) {
    PyObject *go, *oo;
    Py_ssize_t nz, ny, nx, ndir, lv;
    int per_slice;
    Grid g;
    Py_buffer gb, ob;
    if (!PyArg_ParseTuple(args, "OnnnnpnO", &go, &nz, &ny, &nx, &ndir, &per_slice, &lv, &oo)) return NULL;
    if (parse_shape(nz, ny, nx, &g) < 0) return NULL;
    if ((ndir != 4 && ndir != 13) || lv < 1 || lv > 65536) {
        PyErr_SetString(PyExc_ValueError, "ndir must be 4 or 13 and 1 <= lv <= 65536");
        return NULL;
    }
    Py_ssize_t ns = per_slice ? nz - 2 : 1, l2 = lv * lv;
    if (get_buf(go, &gb, U16, g.n, 0, "grid") < 0) return NULL;
    if (get_buf(oo, &ob, I64, (N2D * ns + (ndir - N2D)) * l2, 1, "out") < 0) {
        PyBuffer_Release(&gb);
        return NULL;
    }
    const uint16_t *a = gb.buf;
    int64_t *out = ob.buf;
    if (check_grid(a, &g, lv) < 0) goto fail;
    Py_ssize_t off[13];
    for (int d = 0; d < ndir; d++) off[d] = offset_of(&g, d);
    Py_BEGIN_ALLOW_THREADS
    int64_t *cross = out + N2D * ns * l2;
    for (Py_ssize_t z = 1; z < nz - 1; z++) {
        int64_t *plane = out + (per_slice ? (z - 1) * l2 : 0);
        for (Py_ssize_t y = 1; y < ny - 1; y++) {
            Py_ssize_t i0 = z * g.sz + y * g.sy;
            for (Py_ssize_t i = i0 + 1; i < i0 + nx - 1; i++) {
                Py_ssize_t c = a[i];
                if (!c) continue;
                for (int d = 0; d < N2D; d++) plane[d * ns * l2 + c * lv + a[i + off[d]]]++;
                for (int d = N2D; d < ndir; d++) cross[(d - N2D) * l2 + c * lv + a[i + off[d]]]++;
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&gb);
    PyBuffer_Release(&ob);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&gb);
    PyBuffer_Release(&ob);
    return NULL;
}

/* ----- GLRLM ------------------------------------------------------------------------------------------------ */

static const char runs_doc[] =
    "runs(grid, nz, ny, nx, ndir, per_slice, lv, nr, out) -> longest run\n\n"
    "Run-length counts: out (int64, overwritten) as (4, S, lv, nr) for the in-plane directions (S = nz - 2\n"
    "when per_slice else 1), then (ndir - 4, lv, nr); column = run length. nr must exceed the longest interior\n"
    "extent.";

/* Without a branch per voxel and direction: in raster order every ROI voxel knows its position L in its run
   along d (1 + its predecessor's when the predecessor has the same level), and counts one run of length >= L;
   runs of length exactly L are then (>= L) - (>= L + 1). The positions live in a ring buffer of the last R
   voxels (R > the largest offset). */
static PyObject *runs(PyObject *self, PyObject *args) {
    PyObject *go, *oo;
    Py_ssize_t nz, ny, nx, ndir, lv, nr;
    int per_slice;
    Grid g;
    Py_buffer gb, ob;
    if (!PyArg_ParseTuple(args, "OnnnnpnnO", &go, &nz, &ny, &nx, &ndir, &per_slice, &lv, &nr, &oo)) return NULL;
    if (parse_shape(nz, ny, nx, &g) < 0) return NULL;
    Py_ssize_t longest_axis = nz > ny ? (nz > nx ? nz : nx) : (ny > nx ? ny : nx);
    if ((ndir != 4 && ndir != 13) || lv < 1 || lv > 65536 || nr < longest_axis - 1 || nr > 65535) {
        PyErr_SetString(PyExc_ValueError,
                        "ndir must be 4 or 13, 1 <= lv <= 65536 and the longest extent < nr < 65536");
        return NULL;
    }
    Py_ssize_t ns = per_slice ? nz - 2 : 1, ln = lv * nr, nmat = N2D * ns + (ndir - N2D);
    if (get_buf(go, &gb, U16, g.n, 0, "grid") < 0) return NULL;
    if (get_buf(oo, &ob, I64, nmat * ln, 1, "out") < 0) {
        PyBuffer_Release(&gb);
        return NULL;
    }
    const uint16_t *a = gb.buf;
    int64_t *out = ob.buf;
    PyObject *result = NULL;
    Py_ssize_t ring = 1;
    while (ring <= g.sz + g.sy + 1) ring <<= 1;
    uint16_t *pos = NULL;
    if (check_grid(a, &g, lv) < 0) goto done;
    pos = PyMem_Calloc((size_t)ring * 16, sizeof *pos);
    if (!pos) {
        PyErr_NoMemory();
        goto done;
    }
    memset(out, 0, (size_t)(nmat * ln) * sizeof *out);
    Py_ssize_t off[13], longest = 0;
    for (int d = 0; d < ndir; d++) off[d] = offset_of(&g, d);
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t rmask = ring - 1;
    int64_t *cross = out + N2D * ns * ln;
    for (Py_ssize_t z = 1; z < nz - 1; z++) {
        int64_t *plane = out + (per_slice ? (z - 1) * ln : 0);
        for (Py_ssize_t y = 1; y < ny - 1; y++) {
            Py_ssize_t i0 = z * g.sz + y * g.sy;
            for (Py_ssize_t i = i0 + 1; i < i0 + nx - 1; i++) {
                unsigned c = a[i];
                if (!c) continue;
                uint16_t *p = pos + (i & rmask) * 16;
                /* the predecessor's slot is only used when it has level c, i.e. was written in this call */
                for (int d = 0; d < N2D; d++) {
                    Py_ssize_t o = off[d];
                    unsigned same = -(unsigned)(a[i - o] == c);
                    unsigned L = 1u + (pos[((i - o) & rmask) * 16 + d] & same);
                    p[d] = (uint16_t)L;
                    plane[d * ns * ln + c * nr + L]++;
                }
                for (int d = N2D; d < ndir; d++) {
                    Py_ssize_t o = off[d];
                    unsigned same = -(unsigned)(a[i - o] == c);
                    unsigned L = 1u + (pos[((i - o) & rmask) * 16 + d] & same);
                    p[d] = (uint16_t)L;
                    cross[(d - N2D) * ln + c * nr + L]++;
                }
            }
        }
    }
    /* (>= L) to (== L), and the longest run */
    for (Py_ssize_t m = 0; m < nmat * lv; m++) {
        int64_t *row = out + m * nr;
        for (Py_ssize_t L = 1; L < nr; L++) {
            int64_t next = L + 1 < nr ? row[L + 1] : 0;
            row[L] -= next;
            if (row[L] && L > longest) longest = L;
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(longest);
done:
    PyMem_Free(pos);
    PyBuffer_Release(&gb);
    PyBuffer_Release(&ob);
    return result;
}

/* ----- NGTDM and NGLDM ---------------------------------------------------------------------------------------- */

static const char neighbours_doc[] =
    "neighbours(grid, nz, ny, nx, three_d, lv, s, n, dep)\n\n"
    "NGTDM and NGLDM at Chebyshev distance 1 (26 neighbours when three_d, else the 8 in-plane ones, per slice):\n"
    "s (float64, (S, lv)) sums |level - mean ROI neighbour level| over voxels with a ROI neighbour, n (int64,\n"
    "(S, lv)) counts them; dep (int64, (S, lv, nn + 1), nn = 27 or 9) counts 1 + equal neighbours. S = 1 when\n"
    "three_d, else nz - 2. Adds to the outputs.";

static PyObject *neighbours(PyObject *self, PyObject *args) {
    PyObject *go, *so, *no, *dob;
    Py_ssize_t nz, ny, nx, lv;
    int three_d;
    Grid g;
    Py_buffer gb, sb, nb, db;
    if (!PyArg_ParseTuple(args, "OnnnpnOOO", &go, &nz, &ny, &nx, &three_d, &lv, &so, &no, &dob)) return NULL;
    if (parse_shape(nz, ny, nx, &g) < 0) return NULL;
    if (lv < 1 || lv > 65536) {
        PyErr_SetString(PyExc_ValueError, "1 <= lv <= 65536");
        return NULL;
    }
    Py_ssize_t ns = three_d ? 1 : nz - 2, nn1 = three_d ? 28 : 10;
    if (get_buf(go, &gb, U16, g.n, 0, "grid") < 0) return NULL;
    if (get_buf(so, &sb, F64, ns * lv, 1, "s") < 0) goto f1;
    if (get_buf(no, &nb, I64, ns * lv, 1, "n") < 0) goto f2;
    if (get_buf(dob, &db, I64, ns * lv * nn1, 1, "dep") < 0) goto f3;
    const uint16_t *a = gb.buf;
    double *s = sb.buf;
    int64_t *n = nb.buf, *dep = db.buf;
    if (check_grid(a, &g, lv) < 0) goto f4;
    Py_ssize_t off[26];
    int k = neighbour_offsets(&g, three_d, off);
    Py_ssize_t w = nx - 2;
    int32_t *tot = PyMem_Malloc(3 * (size_t)w * sizeof *tot);
    if (!tot) {
        PyErr_NoMemory();
        goto f4;
    }
    int32_t *cnt = tot + w, *same = cnt + w;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t z = 1; z < nz - 1; z++) {
        Py_ssize_t sl = three_d ? 0 : z - 1;
        double *ss = s + sl * lv;
        int64_t *nn = n + sl * lv, *dd = dep + sl * lv * nn1;
        for (Py_ssize_t y = 1; y < ny - 1; y++) {
            const uint16_t *row = a + z * g.sz + y * g.sy + 1;
            /* neighbour sums, ROI neighbour counts and equal neighbours of the whole row, one offset at a time */
            for (Py_ssize_t x = 0; x < w; x++) tot[x] = cnt[x] = same[x] = 0;
            for (int m = 0; m < k; m++) {
                const uint16_t *nbr = row + off[m];
                for (Py_ssize_t x = 0; x < w; x++) {
                    int32_t v = nbr[x];
                    tot[x] += v;
                    cnt[x] += v != 0;
                    same[x] += v == (int32_t)row[x];
                }
            }
            for (Py_ssize_t x = 0; x < w; x++) {
                unsigned c = row[x];
                if (!c) continue;
                if (cnt[x]) {
                    ss[c] += fabs((double)c - (double)tot[x] / (double)cnt[x]);
                    nn[c]++;
                }
                dd[c * nn1 + 1 + same[x]]++;
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(tot);
    PyBuffer_Release(&db);
    PyBuffer_Release(&nb);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&gb);
    Py_RETURN_NONE;
f4:
    PyBuffer_Release(&db);
f3:
    PyBuffer_Release(&nb);
f2:
    PyBuffer_Release(&sb);
f1:
    PyBuffer_Release(&gb);
    return NULL;
}

/* ----- zones (GLSZM, GLDZM) --------------------------------------------------------------------------------- */

static int lowest_bit(unsigned mask) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctz(mask);
#else
    int b = 0;
    while (!(mask & 1u)) { mask >>= 1; b++; }
    return b;
#endif
}

static int32_t find_root(int32_t *parent, int32_t x) {
    while (parent[x] != x) {
        parent[x] = parent[parent[x]]; /* path halving keeps parent[x] <= x */
        x = parent[x];
    }
    return x;
}

/* Manhattan distance of every voxel to the nearest voxel outside the morphological mask (the frame counts as
   outside): the city-block distance is separable, so 1D two-sweep passes along x, y (and z when three_d);
   without z every slice is on its own. Equal to scipy's chamfer distance_transform_cdt with the 6- or
   in-plane 4-connected structure. */
static void edge_distance(const uint8_t *morph, const Grid *g, int three_d, int32_t *dist) {
    const int32_t far = INT32_MAX / 4;
    for (Py_ssize_t i = 0; i < g->n; i++) dist[i] = 0;
    for (Py_ssize_t z = 1; z < g->nz - 1; z++)
        for (Py_ssize_t y = 1; y < g->ny - 1; y++) {
            int32_t *d = dist + z * g->sz + y * g->sy;
            const uint8_t *m = morph + z * g->sz + y * g->sy;
            for (Py_ssize_t x = 1; x < g->nx - 1; x++) d[x] = m[x] ? far : 0;
            /* along x: the row's frame voxels are outside, so every distance becomes finite */
            for (Py_ssize_t x = 1; x < g->nx - 1; x++) {
                int32_t v = d[x - 1] + 1;
                if (v < d[x]) d[x] = v;
            }
            for (Py_ssize_t x = g->nx - 2; x >= 1; x--) {
                int32_t v = d[x + 1] + 1;
                if (v < d[x]) d[x] = v;
            }
        }
    Py_ssize_t nx = g->nx;
    for (Py_ssize_t z = 1; z < g->nz - 1; z++) { /* along y, whole rows at a time */
        int32_t *plane = dist + z * g->sz;
        for (Py_ssize_t y = 1; y < g->ny - 1; y++) {
            int32_t *d = plane + y * g->sy, *p = d - g->sy;
            for (Py_ssize_t x = 0; x < nx; x++) d[x] = p[x] + 1 < d[x] ? p[x] + 1 : d[x];
        }
        for (Py_ssize_t y = g->ny - 2; y >= 1; y--) {
            int32_t *d = plane + y * g->sy, *p = d + g->sy;
            for (Py_ssize_t x = 0; x < nx; x++) d[x] = p[x] + 1 < d[x] ? p[x] + 1 : d[x];
        }
    }
    if (!three_d) return;
    Py_ssize_t sz = g->sz;
    for (Py_ssize_t z = 1; z < g->nz - 1; z++) { /* along z, whole planes at a time */
        int32_t *d = dist + z * sz, *p = d - sz;
        for (Py_ssize_t i = 0; i < sz; i++) d[i] = p[i] + 1 < d[i] ? p[i] + 1 : d[i];
    }
    for (Py_ssize_t z = g->nz - 2; z >= 1; z--) {
        int32_t *d = dist + z * sz, *p = d + sz;
        for (Py_ssize_t i = 0; i < sz; i++) d[i] = p[i] + 1 < d[i] ? p[i] + 1 : d[i];
    }
}

static const char zones_doc[] =
    "zones(grid, morph, nz, ny, nx, three_d, size, level, slice, dist) -> number of zones\n\n"
    "Zones of equal grey level, 26-connected (three_d) or 8-connected within each slice. For each zone: voxel\n"
    "count, grey level, slice (0-based, within the frame; 0 when three_d) and minimum over its voxels of the\n"
    "Manhattan distance (6- or in-plane 4-connected) to the nearest voxel outside the morphological mask\n"
    "(uint8, same grid; the frame counts as outside), at least 1. The four int64 outputs need room for one zone\n"
    "per ROI voxel (their common length); zones are numbered in raster order of their first voxel.";

static PyObject *zones(PyObject *self, PyObject *args) {
    PyObject *go, *mo, *szo, *lvo, *slo, *dso;
    Py_ssize_t nz, ny, nx;
    int three_d;
    Grid g;
    Py_buffer gb, mb, b1, b2, b3, b4;
    PyObject *result = NULL;
    int32_t *dist = NULL, *lab = NULL;
    int32_t *parent = NULL;
    if (!PyArg_ParseTuple(args, "OOnnnpOOOO", &go, &mo, &nz, &ny, &nx, &three_d, &szo, &lvo, &slo, &dso))
        return NULL;
    if (parse_shape(nz, ny, nx, &g) < 0) return NULL;
    if (PyObject_GetBuffer(szo, &b1, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) return NULL;
    Py_ssize_t cap = b1.itemsize ? b1.len / b1.itemsize : 0;
    PyBuffer_Release(&b1);
    if (get_buf(go, &gb, U16, g.n, 0, "grid") < 0) return NULL;
    if (get_buf(mo, &mb, U8, g.n, 0, "morph") < 0) goto r1;
    if (get_buf(szo, &b1, I64, cap, 1, "size") < 0) goto r2;
    if (get_buf(lvo, &b2, I64, cap, 1, "level") < 0) goto r3;
    if (get_buf(slo, &b3, I64, cap, 1, "slice") < 0) goto r4;
    if (get_buf(dso, &b4, I64, cap, 1, "dist") < 0) goto r5;
    const uint16_t *a = gb.buf;
    const uint8_t *morph = mb.buf;
    int64_t *zsize = b1.buf, *zlevel = b2.buf, *zslice = b3.buf, *zdist = b4.buf;
    if (check_grid(a, &g, 65536) < 0) goto r6;
    Py_ssize_t nroi = 0;
    for (Py_ssize_t i = 0; i < g.n; i++) nroi += a[i] != 0;
    if (nroi > cap) {
        PyErr_Format(PyExc_ValueError, "zone outputs hold %zd zones but the ROI has %zd voxels", cap, nroi);
        goto r6;
    }
    if (g.n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "grid too large for zone labelling");
        goto r6;
    }
    dist = PyMem_Malloc(g.n * sizeof *dist);
    lab = PyMem_Calloc(g.n, sizeof *lab);
    parent = PyMem_Malloc(((size_t)nroi + 1) * sizeof *parent);
    if (!dist || !lab || !parent) {
        PyErr_NoMemory();
        goto r6;
    }
    Py_ssize_t nzone = 0;
    Py_BEGIN_ALLOW_THREADS
    edge_distance(morph, &g, three_d, dist);
    /* provisional labels in raster order, merged with the equal backward neighbours (union-find, a root is the
       smallest label of its tree, so a zone's root is the label of its first voxel) */
    Py_ssize_t off[13];
    int nback = three_d ? 13 : N2D;
    for (int d = 0; d < nback; d++) off[d] = offset_of(&g, d);
    int32_t next = 1;
    for (Py_ssize_t z = 1; z < nz - 1; z++)
        for (Py_ssize_t y = 1; y < ny - 1; y++)
            for (Py_ssize_t i = z * g.sz + y * g.sy + 1; i < z * g.sz + y * g.sy + nx - 1; i++) {
                uint16_t c = a[i];
                if (!c) continue;
                unsigned mask = 0;
                for (int d = 0; d < nback; d++) mask |= (unsigned)(a[i - off[d]] == c) << d;
                if (!mask) {
                    parent[next] = next;
                    lab[i] = next++;
                    continue;
                }
                int32_t r = find_root(parent, lab[i - off[lowest_bit(mask)]]);
                for (mask &= mask - 1; mask; mask &= mask - 1) {
                    int32_t r2 = find_root(parent, lab[i - off[lowest_bit(mask)]]);
                    if (r2 < r) { parent[r] = r2; r = r2; }
                    else if (r2 > r) parent[r2] = r;
                }
                lab[i] = r;
            }
    /* roots to zone numbers 0.. (parent[L] <= L: one increasing sweep flattens every tree) */
    for (int32_t L = 1; L < next; L++) {
        if (parent[L] == L) {
            zsize[nzone] = 0;
            zdist[nzone] = INT32_MAX;
            parent[L] = -(int32_t)(++nzone); /* zone number + 1, negated */
        } else {
            int32_t r = parent[parent[L]];
            parent[L] = r < 0 ? r : parent[r];
        }
    }
    for (Py_ssize_t z = 1; z < nz - 1; z++)
        for (Py_ssize_t y = 1; y < ny - 1; y++)
            for (Py_ssize_t i = z * g.sz + y * g.sy + 1; i < z * g.sz + y * g.sy + nx - 1; i++) {
                if (!a[i]) continue;
                Py_ssize_t zn = -(Py_ssize_t)parent[lab[i]] - 1;
                int64_t dj = dist[i] > 1 ? dist[i] : 1;
                zsize[zn]++;
                if (dj < zdist[zn]) zdist[zn] = dj;
                zlevel[zn] = a[i];
                zslice[zn] = three_d ? 0 : z - 1;
            }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(nzone);
r6:
    PyBuffer_Release(&b4);
r5:
    PyBuffer_Release(&b3);
r4:
    PyBuffer_Release(&b2);
r3:
    PyBuffer_Release(&b1);
r2:
    PyBuffer_Release(&mb);
r1:
    PyBuffer_Release(&gb);
    PyMem_Free(dist);
    PyMem_Free(lab);
    PyMem_Free(parent);
    return result;
}

static PyMethodDef methods[] = {
    {"glcm", glcm, METH_VARARGS, glcm_doc},
    {"runs", runs, METH_VARARGS, runs_doc},
    {"neighbours", neighbours, METH_VARARGS, neighbours_doc},
    {"zones", zones, METH_VARARGS, zones_doc},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctexture",
                                    "IBSI texture matrices (nmkit.radiomics.texture's compiled path)", -1, methods};

PyMODINIT_FUNC PyInit__ctexture(void) { return PyModule_Create(&module); }
