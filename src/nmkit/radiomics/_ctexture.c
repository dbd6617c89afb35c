/* nmkit.radiomics._ctexture: IBSI texture matrices and feature formulas (texture.py's compiled path).

Matrix kernels (bbox, pairs, zones, zone_columns, zone_counts, neighbours) take the cropped grey levels with a
one-voxel zero frame, flattened in C order (uint16, levels 1..lv-1 inside the intensity mask, 0 outside) and its
padded shape (nz, ny, nx), and fill NumPy arrays allocated by the caller (texture._native_matrices), which keeps
the NumPy path's shapes. Only interior voxels are visited and the frame must be zero (checked), so every
neighbour read stays inside the buffer; every buffer's format, contiguity and length is checked. Integer
counts equal the NumPy path's exactly; NGTDM sums add the same doubles in the same (ascending voxel) order.
Feature kernels (glcm_features, runlike_features, ngtdm_features) evaluate texture_features' formulas matrix by
matrix with compensated sums (agreement with NumPy's pairwise sums ~1e-15 relative).

Directions (dz, dy, dx) are those of texture._DIRECTIONS, in that order: the first four lie in the axial plane. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

static const int DIRS[13][3] = {{0, 0, 1},  {0, 1, 1},  {0, 1, 0},   {0, 1, -1}, {1, 0, 0},
                                {1, 0, 1},  {1, 0, -1}, {1, 1, 0},   {1, -1, 0}, {1, 1, 1},
                                {1, 1, -1}, {1, -1, 1}, {1, -1, -1}};
#define N2D 4

/* ----- buffers: format_is, get_buf, get_buf_any (shared with the other kernel module) ----------------------- */

#include "_cbuffers.h"

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

/* The frame is zero and every level is below lv: neighbour walks then stay in the buffer and bins in range.
   (Reductions without early exit, so that they vectorise.) */
static int check_grid(const uint16_t *a, const Grid *g, Py_ssize_t lv) {
    unsigned frame = 0, top = 0;
    for (Py_ssize_t z = 0; z < g->nz; z++)
        for (Py_ssize_t y = 0; y < g->ny; y++) {
            const uint16_t *row = a + z * g->sz + y * g->sy;
            if (z == 0 || z == g->nz - 1 || y == 0 || y == g->ny - 1) {
                unsigned any = 0;
                for (Py_ssize_t x = 0; x < g->nx; x++) any |= row[x];
                frame |= any;
            } else {
                unsigned mx = 0;
                for (Py_ssize_t x = 1; x < g->nx - 1; x++) mx = row[x] > mx ? row[x] : mx;
                frame |= (unsigned)row[0] | row[g->nx - 1];
                top = mx > top ? mx : top;
            }
        }
    if (frame) {
        PyErr_SetString(PyExc_ValueError, "the grid's one-voxel frame must be zero");
        return -1;
    }
    if ((Py_ssize_t)top >= lv) {
        PyErr_Format(PyExc_ValueError, "grey level %u >= lv = %zd", top, lv);
        return -1;
    }
    return 0;
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

/* ----- GLCM and GLRLM ---------------------------------------------------------------------------------------- */

/* The scan of pairs(). Counters of a slice's in-plane matrices are (slice, level, direction, value) and those
   of the cross-plane directions (level, direction, value), so that the counters one voxel touches lie within a
   few kilobytes. W: values per counter row (lv for co-occurrences, nr for run lengths). */
static Py_ssize_t counter_row(Py_ssize_t lv, Py_ssize_t ns, Py_ssize_t sl, Py_ssize_t c, int d) {
    return d < N2D ? (sl * lv + c) * N2D + d : N2D * ns * lv + c * (13 - N2D) + (d - N2D);
}

static void pairs_scan(const uint16_t *restrict a, const Grid *g, const Py_ssize_t *off, Py_ssize_t ndir,
                       int per_slice, Py_ssize_t lv, Py_ssize_t nr, Py_ssize_t rmask, uint16_t *restrict pos,
                       int32_t *restrict cm, int32_t *restrict rl) {
    Py_ssize_t ns = per_slice ? g->nz - 2 : 1, ncross = N2D * ns * lv;
    for (Py_ssize_t z = 1; z < g->nz - 1; z++) {
        Py_ssize_t sl = per_slice ? z - 1 : 0;
        for (Py_ssize_t y = 1; y < g->ny - 1; y++) {
            Py_ssize_t i0 = z * g->sz + y * g->sy;
            unsigned run = 0; /* along x the predecessor is the previous voxel: its position stays in a register */
            for (Py_ssize_t i = i0 + 1; i < i0 + g->nx - 1; i++) {
                unsigned c = a[i];
                if (!c) continue;
                uint16_t *p = pos + (i & rmask) * 16;
                unsigned prev[13], len[13];
                prev[0] = a[i - 1];
                run = len[0] = 1u + (run & -(unsigned)(prev[0] == c)); /* equal: i - 1 was the last ROI voxel */
                /* the predecessor's slot is only used when it has level c, i.e. was written in this call */
                for (int d = 1; d < ndir; d++) {
                    Py_ssize_t o = off[d];
                    prev[d] = a[i - o];
                    len[d] = 1u + (pos[((i - o) & rmask) * 16 + d] & -(unsigned)(prev[d] == c));
                }
                for (int d = 1; d < ndir; d++) p[d] = (uint16_t)len[d];
                Py_ssize_t r2 = (sl * lv + c) * N2D, r3 = ncross + c * (13 - N2D) - N2D;
                for (int d = 0; d < N2D; d++) {
                    cm[(r2 + d) * lv + prev[d]]++;
                    rl[(r2 + d) * nr + len[d]]++;
                }
                for (int d = N2D; d < ndir; d++) {
                    cm[(r3 + d) * lv + prev[d]]++;
                    rl[(r3 + d) * nr + len[d]]++;
                }
            }
        }
    }
}

static const char pairs_doc[] =
    "pairs(grid, nz, ny, nx, ndir, per_slice, lv, cm, rl, nvs) -> longest run\n\n"
    "GLCMs and GLRLMs along the first ndir (4 or 13) directions, both int64 without grey level 0 (ng = lv - 1),\n"
    "overwritten. Matrices: the 4 in-plane directions x S slices (S = nz - 2 when per_slice else 1: summed),\n"
    "direction-major, then directions 4..ndir-1. cm: (nmat, ng, ng) symmetric co-occurrence counts; rl: room\n"
    "for (nmat, ng, nz|ny|nx largest - 2), of which the first nmat * ng * longest hold (nmat, ng, longest)\n"
    "counts of run lengths 1..longest. nvs (int64, nz - 2): ROI voxels per slice.";

/* One raster pass, no branch per voxel and direction: every ROI voxel counts its pair with the predecessor
   along d, and knows its position L in its run along d (1 + the predecessor's when that has the same level);
   it counts one run of length >= L, and runs of length exactly L are (>= L) - (>= L + 1). Positions live in a
   ring buffer of the last R voxels (R > the largest offset). */
static PyObject *pairs(PyObject *self, PyObject *args) {
    PyObject *go, *co, *ro, *vo;
    Py_ssize_t nz, ny, nx, ndir, lv;
    int per_slice;
    Grid g;
    Py_buffer gb, cb, rb, vb;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "OnnnnpnOOO", &go, &nz, &ny, &nx, &ndir, &per_slice, &lv, &co, &ro, &vo))
        return NULL;
    if (parse_shape(nz, ny, nx, &g) < 0) return NULL;
    if ((ndir != 4 && ndir != 13) || lv < 2 || lv > 65536) {
        PyErr_SetString(PyExc_ValueError, "ndir must be 4 or 13 and 2 <= lv <= 65536");
        return NULL;
    }
    Py_ssize_t ext = (nz > ny ? (nz > nx ? nz : nx) : (ny > nx ? ny : nx)) - 2; /* longest possible run */
    if (ext > 65534) { /* run positions are uint16 */
        PyErr_SetString(PyExc_ValueError, "pairs: an axis longer than 65534 voxels");
        return NULL;
    }
    Py_ssize_t nr = ext + 1, ng = lv - 1;
    Py_ssize_t ns = per_slice ? nz - 2 : 1, nmat = N2D * ns + (ndir - N2D), l2 = lv * lv, ln = lv * nr;
    if (get_buf(go, &gb, U16, g.n, 0, "grid") < 0) return NULL;
    if (get_buf(co, &cb, I64, nmat * ng * ng, 1, "cm") < 0) goto r1;
    if (get_buf(ro, &rb, I64, nmat * ng * ext, 1, "rl") < 0) goto r2;
    if (get_buf(vo, &vb, I64, nz - 2, 1, "nvs") < 0) goto r3;
    const uint16_t *a = gb.buf;
    int64_t *cmo = cb.buf, *rlo = rb.buf, *nvs = vb.buf;
    uint16_t *pos = NULL;
    int32_t *cm = NULL, *rl = NULL;
    if (check_grid(a, &g, lv) < 0) goto done;
    Py_ssize_t ring = 1;
    while (ring <= g.sz + g.sy + 1) ring <<= 1;
    pos = PyMem_Calloc((size_t)ring * 16, sizeof *pos);
    cm = PyMem_Calloc((size_t)((N2D * ns + 13 - N2D) * l2), sizeof *cm);
    rl = PyMem_Calloc((size_t)((N2D * ns + 13 - N2D) * ln), sizeof *rl);
    if (!pos || !cm || !rl) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t off[13], longest = 0;
    for (int d = 0; d < ndir; d++) off[d] = offset_of(&g, d);
    Py_BEGIN_ALLOW_THREADS
    pairs_scan(a, &g, off, ndir, per_slice, lv, nr, ring - 1, pos, cm, rl);
    /* the longest run: the largest length with a (>= L) count */
    for (Py_ssize_t r = 0; r < (N2D * ns + 13 - N2D) * lv; r++)
        for (Py_ssize_t L = nr - 1; L > longest; L--)
            if (rl[r * nr + L]) {
                longest = L;
                break;
            }
    for (Py_ssize_t m = 0; m < nmat; m++) {
        /* output matrix m: in-plane direction-major (d * S + slice), then cross-plane */
        int d = m < N2D * ns ? (int)(m / ns) : (int)(m - N2D * ns + N2D);
        Py_ssize_t sl = m < N2D * ns ? m % ns : 0;
        /* symmetric GLCM without level 0 */
        int64_t *out = cmo + m * ng * ng;
        for (Py_ssize_t i = 1; i < lv; i++) {
            const int32_t *ri = cm + counter_row(lv, ns, sl, i, d) * lv;
            for (Py_ssize_t j = 1; j < lv; j++)
                out[(i - 1) * ng + (j - 1)] = (int64_t)ri[j] + cm[counter_row(lv, ns, sl, j, d) * lv + i];
        }
        /* runs: (>= L) to (== L), lengths 1..longest, written compactly (ng x longest per matrix) */
        for (Py_ssize_t i = 1; i < lv; i++) {
            const int32_t *row = rl + counter_row(lv, ns, sl, i, d) * nr;
            int64_t *o = rlo + (m * ng + (i - 1)) * longest;
            for (Py_ssize_t L = 1; L <= longest; L++) o[L - 1] = (int64_t)row[L] - (L + 1 < nr ? row[L + 1] : 0);
        }
    }
    for (Py_ssize_t z = 1; z < nz - 1; z++) {
        int64_t n = 0;
        for (Py_ssize_t y = 1; y < ny - 1; y++) {
            const uint16_t *row = a + z * g.sz + y * g.sy;
            for (Py_ssize_t x = 1; x < nx - 1; x++) n += row[x] != 0;
        }
        nvs[z - 1] = n;
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(longest);
done:
    PyMem_Free(pos);
    PyMem_Free(cm);
    PyMem_Free(rl);
    PyBuffer_Release(&vb);
r3:
    PyBuffer_Release(&rb);
r2:
    PyBuffer_Release(&cb);
r1:
    PyBuffer_Release(&gb);
    return result;
}

static const char bbox_doc[] =
    "bbox(levels, morph, nz, ny, nx) -> (z0, z1, y0, y1, x0, x1)\n\n"
    "The bounding box (half-open) of the voxels with a non-zero level (int32) or in the morphological mask\n"
    "(uint8/bool), both (nz, ny, nx); None when there is none.";

static PyObject *bbox(PyObject *self, PyObject *args) {
    PyObject *lo, *mo;
    Py_ssize_t nz, ny, nx;
    Py_buffer lb, mb;
    if (!PyArg_ParseTuple(args, "OOnnn", &lo, &mo, &nz, &ny, &nx)) return NULL;
    if (nz < 0 || ny < 0 || nx < 0 || (nz && ny && (ny > PY_SSIZE_T_MAX / nz || nx > PY_SSIZE_T_MAX / (nz * ny)))) {
        PyErr_SetString(PyExc_ValueError, "bad shape");
        return NULL;
    }
    Py_ssize_t n = nz * ny * nx;
    if (get_buf(lo, &lb, I32, n, 0, "levels") < 0) return NULL;
    if (get_buf(mo, &mb, U8, n, 0, "morph") < 0) {
        PyBuffer_Release(&lb);
        return NULL;
    }
    const int32_t *l = lb.buf;
    const uint8_t *m = mb.buf;
    Py_ssize_t z0 = nz, z1 = -1, y0 = ny, y1 = -1, x0 = nx, x1 = -1;
    uint8_t *col = PyMem_Calloc((size_t)(nx ? nx : 1), 1); /* columns with a voxel in any row */
    if (!col) {
        PyBuffer_Release(&mb);
        PyBuffer_Release(&lb);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    const Py_ssize_t w = nx; /* a copy the uint8 stores cannot alias */
    for (Py_ssize_t z = 0; z < nz; z++)
        for (Py_ssize_t y = 0; y < ny; y++) {
            const int32_t *lr = l + (z * ny + y) * w;
            const uint8_t *mr = m + (z * ny + y) * w;
            uint8_t any = 0;
            for (Py_ssize_t x = 0; x < w; x++) { /* no early exit: vectorised */
                uint8_t v = (uint8_t)((lr[x] != 0) | (mr[x] != 0));
                col[x] |= v;
                any |= v;
            }
            if (!any) continue;
            if (z < z0) z0 = z;
            z1 = z;
            if (y < y0) y0 = y;
            if (y > y1) y1 = y;
        }
    for (Py_ssize_t x = 0; x < nx; x++)
        if (col[x]) {
            if (x < x0) x0 = x;
            x1 = x;
        }
    Py_END_ALLOW_THREADS
    PyMem_Free(col);
    PyBuffer_Release(&mb);
    PyBuffer_Release(&lb);
    if (z1 < 0) Py_RETURN_NONE;
    return Py_BuildValue("nnnnnn", z0, z1 + 1, y0, y1 + 1, x0, x1 + 1);
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
            /* only the span of the row between its first and last ROI voxel */
            Py_ssize_t x0 = 0, x1 = w;
            while (x0 < w && !row[x0]) x0++;
            if (x0 == w) continue;
            while (!row[x1 - 1]) x1--;
            const uint16_t *span = row + x0;
            Py_ssize_t sw = x1 - x0;
            /* neighbour sums, ROI neighbour counts and equal neighbours of the span */
            Py_ssize_t xb = 0;
#ifdef __SSE2__
            /* blocks of 8 voxels whose sums stay in registers over the k offsets */
            const __m128i zero = _mm_setzero_si128();
            for (; xb + 8 <= sw; xb += 8) {
                const uint16_t *ctr = span + xb;
                __m128i c = _mm_loadu_si128((const __m128i *)ctr);
                __m128i lo = zero, hi = zero, zeros = zero, eqs = zero;
                for (int m = 0; m < k; m++) {
                    __m128i v = _mm_loadu_si128((const __m128i *)(ctr + off[m]));
                    lo = _mm_add_epi32(lo, _mm_unpacklo_epi16(v, zero));
                    hi = _mm_add_epi32(hi, _mm_unpackhi_epi16(v, zero));
                    zeros = _mm_sub_epi16(zeros, _mm_cmpeq_epi16(v, zero)); /* +1 per neighbour outside */
                    eqs = _mm_sub_epi16(eqs, _mm_cmpeq_epi16(v, c));        /* +1 per equal neighbour */
                }
                _mm_storeu_si128((__m128i *)(tot + xb), lo);
                _mm_storeu_si128((__m128i *)(tot + xb + 4), hi);
                uint16_t z16[8], e16[8];
                _mm_storeu_si128((__m128i *)z16, zeros);
                _mm_storeu_si128((__m128i *)e16, eqs);
                for (int j = 0; j < 8; j++) {
                    cnt[xb + j] = k - z16[j];
                    same[xb + j] = e16[j];
                }
            }
#endif
            for (Py_ssize_t x = xb; x < sw; x++) tot[x] = cnt[x] = same[x] = 0;
            for (int m = 0; m < k; m++) {
                const uint16_t *nbr = span + off[m];
                for (Py_ssize_t x = xb; x < sw; x++) {
                    int32_t v = nbr[x];
                    tot[x] += v;
                    cnt[x] += v != 0;
                    same[x] += v == (int32_t)span[x];
                }
            }
            for (Py_ssize_t x = 0; x < sw; x++) {
                unsigned c = span[x];
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

/* Manhattan distance of every voxel to the nearest voxel outside the morphological mask (the frame counts as
   outside): the city-block distance is separable, so 1D two-sweep passes along x, y (and z when three_d);
   without z every slice is on its own. Equal to scipy's chamfer distance_transform_cdt with the 6- or
   in-plane 4-connected structure. */
static void edge_distance(const uint8_t *morph, const Grid *g, int three_d, int32_t *dist) {
    for (Py_ssize_t i = 0; i < g->n; i++) dist[i] = 0;
    for (Py_ssize_t z = 1; z < g->nz - 1; z++)
        for (Py_ssize_t y = 1; y < g->ny - 1; y++) {
            int32_t *d = dist + z * g->sz + y * g->sy;
            const uint8_t *m = morph + z * g->sz + y * g->sy;
            /* along x, as running counts since the last outside voxel (the row's frame voxels are outside) */
            int32_t run = 0;
            for (Py_ssize_t x = 1; x < g->nx - 1; x++) {
                run = m[x] ? run + 1 : 0;
                d[x] = run;
            }
            run = 0;
            for (Py_ssize_t x = g->nx - 2; x >= 1; x--) {
                run = m[x] ? run + 1 : 0;
                d[x] = run < d[x] ? run : d[x];
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

/* A provisional zone label: union-find parent (a root is the smallest label of its tree, so a zone's root is
   the label of its first voxel in raster order), the grey level and slice of its zone, and the voxel count and
   minimum distance of the voxels that received this label. */
typedef struct {
    int32_t parent, dmin, level, slice;
    int64_t size;
} Zone;

static int32_t zone_root(Zone *z, int32_t x) {
    while (z[x].parent != x) {
        z[x].parent = z[z[x].parent].parent; /* path halving keeps parent <= label */
        x = z[x].parent;
    }
    return x;
}

/* Zones in one raster pass. Per row, a vector pass over the directions whose backward neighbour lies in an
   earlier row (12 in 3D, 3 in-plane) finds each voxel's equal neighbours (bit mask) and the AND and the OR of
   their labels (equal exactly when they all carry the same label, which they then are); labels of earlier rows
   live in a ring of ny + 2 rows (a row never wraps; a slot is only used for a neighbour of the same non-zero
   level, which this pass labelled). Then voxel by voxel, with the x-predecessor: no equal neighbour starts a
   label; one label among them is taken as it is (no search, the common case); several are merged
   (union-find). Counts and minimum distances are kept per label and summed into the roots at the end. Writes
   the zones in order of their first voxel; returns their number.
   work: 3 (nx) int32; lab: (ny + 2) nx int32; acc: nroi + 2 labels. */
static Py_ssize_t label_zones(const uint16_t *restrict a, const Grid *g, int three_d, const int32_t *restrict dist,
                              int32_t *restrict lab, int32_t *restrict work, Zone *restrict acc, int64_t *zsize,
                              int64_t *zlevel, int64_t *zslice, int64_t *zdist) {
    int nback = three_d ? 13 : N2D;
    const Py_ssize_t nx = g->nx, nrow = g->ny + 2;
    int32_t *restrict land = work, *restrict lor = work + nx, *restrict msk = work + 2 * nx;
    const int32_t *nlp[13]; /* per direction: the labels of the backward neighbours of the row, by x */
    int32_t next = 1;
    for (Py_ssize_t z = 1; z < g->nz - 1; z++)
        for (Py_ssize_t y = 1; y < g->ny - 1; y++) {
            const uint16_t *row = a + z * g->sz + y * g->sy;
            Py_ssize_t r0 = (z * g->ny + y) % nrow; /* this row's place in the ring */
            int32_t *restrict lr = lab + r0 * nx;
            Py_ssize_t x0 = 1, x1 = nx - 1; /* the span of the row's ROI voxels */
            while (x0 < x1 && !row[x0]) x0++;
            if (x0 == x1) continue;
            while (!row[x1 - 1]) x1--;
            for (Py_ssize_t x = x0; x < x1; x++) {
                land[x] = -1;
                lor[x] = 0;
                msk[x] = 0;
            }
            nlp[0] = lr - 1;
            for (int d = 1; d < nback; d++) {
                int dz = DIRS[d][0], dy = DIRS[d][1], dx = DIRS[d][2];
                Py_ssize_t rn = r0 - (dz * g->ny + dy); /* 0 < dz * ny + dy < nrow */
                rn += rn < 0 ? nrow : 0;
                const uint16_t *restrict nb = row - (dz * g->sz + dy * g->sy + dx);
                const int32_t *restrict nl = lab + rn * nx - dx;
                nlp[d] = nl;
                const int32_t bit = 1 << d;
                for (Py_ssize_t x = x0; x < x1; x++) {
                    int32_t eq = -(int32_t)(row[x] == nb[x]); /* all ones when equal */
                    int32_t l = nl[x];
                    msk[x] |= eq & bit;
                    land[x] &= l | ~eq;
                    lor[x] |= l & eq;
                }
            }
            for (Py_ssize_t x = x0; x < x1; x++) {
                unsigned c = row[x];
                if (!c) continue;
                Py_ssize_t i = z * g->sz + y * g->sy + x;
                int32_t dj = dist[i] > 1 ? dist[i] : 1;
                int32_t lo = land[x], hi = lor[x];
                unsigned mask = (unsigned)msk[x];
                if (row[x - 1] == c) {
                    int32_t l0 = lr[x - 1];
                    mask |= 1u;
                    lo &= l0;
                    hi |= l0;
                }
                int32_t L;
                if (!mask) {
                    acc[next] = (Zone){next, INT32_MAX, (int32_t)c, (int32_t)(three_d ? 0 : z - 1), 0};
                    L = next++;
                } else if (lo == hi) {
                    L = lo;
                } else { /* merge the zones of all equal neighbours */
                    int32_t first = nlp[lowest_bit(mask)][x];
                    int32_t r = zone_root(acc, first);
                    for (unsigned m = mask & (mask - 1); m; m &= m - 1) {
                        int32_t l = nlp[lowest_bit(m)][x];
                        if (l == first) continue;
                        int32_t r2 = zone_root(acc, l);
                        if (r2 < r) { acc[r].parent = r2; r = r2; }
                        else if (r2 > r) acc[r2].parent = r;
                    }
                    L = r;
                }
                acc[L].size++;
                acc[L].dmin = dj < acc[L].dmin ? dj : acc[L].dmin;
                lr[x] = L;
            }
        }
    /* labels into their roots (parent < label: one increasing sweep), roots in order */
    Py_ssize_t nzone = 0;
    for (int32_t L = 1; L < next; L++) {
        int32_t r = acc[L].parent;
        if (r != L) {
            r = acc[r].parent; /* already its root */
            acc[L].parent = r;
            acc[r].size += acc[L].size;
            if (acc[L].dmin < acc[r].dmin) acc[r].dmin = acc[L].dmin;
        }
    }
    for (int32_t L = 1; L < next; L++)
        if (acc[L].parent == L) {
            zsize[nzone] = acc[L].size;
            zlevel[nzone] = acc[L].level;
            zslice[nzone] = acc[L].slice;
            zdist[nzone] = acc[L].dmin;
            nzone++;
        }
    return nzone;
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
    Zone *acc = NULL;
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
    lab = PyMem_Calloc((size_t)((ny + 5) * nx), sizeof *lab); /* label ring, then 3 rows of work */
    acc = PyMem_Malloc(((size_t)nroi + 2) * sizeof *acc);
    if (!dist || !lab || !acc) {
        PyErr_NoMemory();
        goto r6;
    }
    Py_ssize_t nzone = 0;
    Py_BEGIN_ALLOW_THREADS
    edge_distance(morph, &g, three_d, dist);
    nzone = label_zones(a, &g, three_d, dist, lab, lab + (ny + 2) * nx, acc, zsize, zlevel, zslice, zdist);
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
    PyMem_Free(acc);
    return result;
}

/* ----- feature formulas ------------------------------------------------------------------------------------ */

/* The formulas of texture_features.glcm_features / runlike_features, matrix by matrix: the same terms (p = n / N,
   p log2 p, weights as reciprocals), summed in index order instead of NumPy's pairwise order. */

static double xlog2x(double p) { return p > 0 ? p * log2(p) : 0.0; }

/* Compensated (Kahan) sums: NumPy's pairwise sums err by ~log2(n) ulp, plain index-order sums by up to n ulp,
   which features with cancellation (correlation, information correlation) would magnify. */
typedef struct {
    double s, c;
} KSum;

/* p log2 p for p = n / total, cached for small counts n of one matrix (the same value, fewer log2 calls). */
#define XLOG_CACHE 512
typedef struct {
    double value[XLOG_CACHE];
    int64_t stamp[XLOG_CACHE]; /* the matrix the value belongs to, plus one */
} XlogCache;

static double xlog_count(XlogCache *cache, int64_t stamp, int64_t n, double p) {
    if (n >= XLOG_CACHE) return p * log2(p);
    if (cache->stamp[n] != stamp) {
        cache->value[n] = p * log2(p);
        cache->stamp[n] = stamp;
    }
    return cache->value[n];
}

static void kadd(KSum *k, double x) {
    double y = x - k->c, t = k->s + y;
    k->c = (t - k->s) - y;
    k->s = t;
}

static const char glcm_features_doc[] =
    "glcm_features(counts, k, ng, out)\n\n"
    "The 25 IBSI GLCM features (order of texture_features.GLCM_NAMES) of k symmetric non-empty count matrices\n"
    "(int64, (k, ng, ng)) into out (float64, (25, k)).";

static PyObject *glcm_feats(PyObject *self, PyObject *args) {
    PyObject *co, *oo;
    Py_ssize_t k, ng;
    Py_buffer cb, ob;
    if (!PyArg_ParseTuple(args, "OnnO", &co, &k, &ng, &oo)) return NULL;
    if (k < 0 || ng < 1 || ng > 65535) {
        PyErr_SetString(PyExc_ValueError, "k >= 0 and 1 <= ng <= 65535");
        return NULL;
    }
    if (get_buf(co, &cb, I64, k * ng * ng, 0, "counts") < 0) return NULL;
    if (get_buf(oo, &ob, F64, 25 * k, 1, "out") < 0) {
        PyBuffer_Release(&cb);
        return NULL;
    }
    KSum *work = PyMem_Malloc((size_t)(4 * ng + 1) * sizeof *work);
    double *pv = PyMem_Malloc((size_t)(4 * ng + 1) * sizeof *pv);
    XlogCache *cache = PyMem_Calloc(1, sizeof *cache);
    if (!work || !pv || !cache) {
        PyMem_Free(work);
        PyMem_Free(pv);
        PyMem_Free(cache);
        PyBuffer_Release(&ob);
        PyBuffer_Release(&cb);
        return PyErr_NoMemory();
    }
    const int64_t *counts = cb.buf;
    double *out = ob.buf;
    Py_BEGIN_ALLOW_THREADS
    KSum *kpi = work, *kpd = kpi + ng, *kps = kpd + ng; /* kps: 2 ng + 1 */
    double *pi = pv, *pd = pi + ng, *ps = pd + ng;
    for (Py_ssize_t m = 0; m < k; m++) {
        const int64_t *c = counts + m * ng * ng;
        int64_t total = 0;
        for (Py_ssize_t q = 0; q < ng * ng; q++) total += c[q];
        double n = (double)total, pmax = 0;
        KSum hxy = {0, 0}, energy = {0, 0}, autoc = {0, 0};
        memset(work, 0, (size_t)(4 * ng + 1) * sizeof *work);
        for (Py_ssize_t i = 0; i < ng; i++) {
            double gi = (double)(i + 1);
            for (Py_ssize_t j = 0; j < ng; j++) {
                if (!c[i * ng + j]) continue;
                double p = (double)c[i * ng + j] / n;
                kadd(&kpi[i], p);
                kadd(&kpd[i > j ? i - j : j - i], p);
                kadd(&kps[i + j + 2], p);
                kadd(&hxy, xlog_count(cache, m + 1, c[i * ng + j], p));
                kadd(&energy, p * p);
                if (p > pmax) pmax = p;
                kadd(&autoc, p * (gi * (double)(j + 1)));
            }
        }
        for (Py_ssize_t q = 0; q < 4 * ng + 1; q++) pv[q] = work[q].s;
        KSum mu = {0, 0}, m2 = {0, 0}, hx = {0, 0};
        for (Py_ssize_t i = 0; i < ng; i++) {
            double g = (double)(i + 1);
            kadd(&mu, pi[i] * g);
            kadd(&m2, pi[i] * (g * g));
            kadd(&hx, xlog2x(pi[i]));
        }
        double var = m2.s - mu.s * mu.s;
        if (!(var > 0)) var = 0.0;
        KSum davg = {0, 0}, dvar = {0, 0}, dent = {0, 0}, con = {0, 0}, idf = {0, 0}, idn = {0, 0}, idm = {0, 0},
             idmn = {0, 0}, ivar = {0, 0};
        for (Py_ssize_t d = 0; d < ng; d++) {
            double kd = (double)d, kn = kd / (double)ng;
            kadd(&davg, pd[d] * kd);
            kadd(&dent, xlog2x(pd[d]));
            kadd(&con, pd[d] * (kd * kd));
            kadd(&idf, pd[d] * (1.0 / (1.0 + kd)));
            kadd(&idn, pd[d] * (1.0 / (1.0 + kn)));
            kadd(&idm, pd[d] * (1.0 / (1.0 + kd * kd)));
            kadd(&idmn, pd[d] * (1.0 / (1.0 + kn * kn)));
            if (d) kadd(&ivar, pd[d] * (1.0 / (kd * kd)));
        }
        for (Py_ssize_t d = 0; d < ng; d++) kadd(&dvar, pd[d] * ((d - davg.s) * (d - davg.s)));
        KSum savg = {0, 0}, svar = {0, 0}, sent = {0, 0}, tend = {0, 0}, shade = {0, 0}, prom = {0, 0};
        for (Py_ssize_t q = 0; q < 2 * ng + 1; q++) {
            kadd(&savg, ps[q] * (double)q);
            kadd(&sent, xlog2x(ps[q]));
        }
        for (Py_ssize_t q = 0; q < 2 * ng + 1; q++) {
            double dv = (double)q - 2.0 * mu.s, dv2 = dv * dv;
            kadd(&svar, ps[q] * ((q - savg.s) * (q - savg.s)));
            kadd(&tend, ps[q] * dv2);
            kadd(&shade, ps[q] * dv2 * dv);
            kadd(&prom, ps[q] * dv2 * dv2);
        }
        double h = -hxy.s, hx1 = -hx.s, muv = mu.s, ac = autoc.s;
        double info2 = 1.0 - exp(-2.0 * (2.0 * hx1 - h));
        double v[25] = {pmax, muv, var, h, davg.s, dvar.s, -dent.s, savg.s, svar.s, -sent.s, energy.s, con.s,
                        davg.s, idf.s, idn.s, idm.s, idmn.s, ivar.s, var != 0 ? (ac - muv * muv) / var : 0.0, ac,
                        tend.s, shade.s, prom.s, hx1 != 0 ? (h - 2.0 * hx1) / hx1 : 0.0,
                        sqrt(info2 > 0 ? info2 : 0.0)};
        for (int f = 0; f < 25; f++) out[f * k + m] = v[f];
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(work);
    PyMem_Free(pv);
    PyMem_Free(cache);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&cb);
    Py_RETURN_NONE;
}

static const char runlike_features_doc[] =
    "runlike_features(counts, k, ng, nj, n_voxels, j_values, out)\n\n"
    "The 16 run-length-style features (texture_features.RUNLIKE_NAMES order) and the NGLDM energy of k\n"
    "non-empty count matrices (int64, (k, ng, nj)), column c holding j_values[c] (float64, >= 1); n_voxels\n"
    "(float64, (k,)). out: float64, (17, k).";

static PyObject *runlike_feats(PyObject *self, PyObject *args) {
    PyObject *co, *vo, *jo, *oo;
    Py_ssize_t k, ng, nj;
    Py_buffer cb, vb, jb, ob;
    if (!PyArg_ParseTuple(args, "OnnnOOO", &co, &k, &ng, &nj, &vo, &jo, &oo)) return NULL;
    if (k < 0 || ng < 1 || nj < 1) {
        PyErr_SetString(PyExc_ValueError, "k >= 0, ng >= 1 and nj >= 1");
        return NULL;
    }
    if (get_buf(co, &cb, I64, k * ng * nj, 0, "counts") < 0) return NULL;
    if (get_buf(vo, &vb, F64, k, 0, "n_voxels") < 0) goto e1;
    if (get_buf(jo, &jb, F64, nj, 0, "j_values") < 0) goto e2;
    if (get_buf(oo, &ob, F64, 17 * k, 1, "out") < 0) goto e3;
    double *work = PyMem_Malloc((size_t)(ng + 3 * nj) * sizeof *work);
    KSum *krj = PyMem_Malloc((size_t)nj * sizeof *krj);
    XlogCache *cache = PyMem_Calloc(1, sizeof *cache);
    if (!work || !krj || !cache) {
        PyMem_Free(work);
        PyMem_Free(krj);
        PyMem_Free(cache);
        PyErr_NoMemory();
        goto e4;
    }
    const int64_t *counts = cb.buf;
    const double *nvox = vb.buf, *jv = jb.buf;
    double *out = ob.buf;
    Py_BEGIN_ALLOW_THREADS
    double *ri = work, *rj = ri + ng, *inv_j2 = rj + nj, *j2 = inv_j2 + nj;
    for (Py_ssize_t c = 0; c < nj; c++) {
        j2[c] = jv[c] * jv[c];
        inv_j2[c] = 1.0 / j2[c];
    }
    for (Py_ssize_t m = 0; m < k; m++) {
        const int64_t *cm = counts + m * ng * nj;
        int64_t total = 0;
        for (Py_ssize_t q = 0; q < ng * nj; q++) total += cm[q];
        double ns = (double)total;
        KSum entr = {0, 0}, energy = {0, 0}, srlge = {0, 0}, srhge = {0, 0}, lrlge = {0, 0}, lrhge = {0, 0};
        memset(krj, 0, (size_t)nj * sizeof *krj);
        for (Py_ssize_t i = 0; i < ng; i++) {
            double g = (double)(i + 1), i2 = g * g, inv_i2 = 1.0 / i2;
            KSum r = {0, 0}, lo = {0, 0}, hi = {0, 0};
            for (Py_ssize_t c = 0; c < nj; c++) {
                int64_t v = cm[i * nj + c];
                if (!v) continue;
                double x = (double)v, p = x / ns;
                kadd(&r, x);
                kadd(&krj[c], x);
                kadd(&lo, x * inv_j2[c]);
                kadd(&hi, x * j2[c]);
                kadd(&entr, xlog_count(cache, m + 1, v, p));
                kadd(&energy, p * p);
            }
            ri[i] = r.s;
            kadd(&srlge, lo.s * inv_i2);
            kadd(&srhge, lo.s * i2);
            kadd(&lrlge, hi.s * inv_i2);
            kadd(&lrhge, hi.s * i2);
        }
        for (Py_ssize_t c = 0; c < nj; c++) rj[c] = krj[c].s;
        KSum sre = {0, 0}, lre = {0, 0}, lgre = {0, 0}, hgre = {0, 0}, glnu = {0, 0}, rlnu = {0, 0}, mui = {0, 0},
             muj = {0, 0}, glvar = {0, 0}, rlvar = {0, 0};
        for (Py_ssize_t i = 0; i < ng; i++) {
            double g = (double)(i + 1), i2 = g * g;
            kadd(&lgre, ri[i] * (1.0 / i2));
            kadd(&hgre, ri[i] * i2);
            kadd(&glnu, ri[i] * ri[i]);
            kadd(&mui, (ri[i] / ns) * g);
        }
        for (Py_ssize_t c = 0; c < nj; c++) {
            kadd(&sre, rj[c] * inv_j2[c]);
            kadd(&lre, rj[c] * j2[c]);
            kadd(&rlnu, rj[c] * rj[c]);
            kadd(&muj, (rj[c] / ns) * jv[c]);
        }
        for (Py_ssize_t i = 0; i < ng; i++) {
            double d = (double)(i + 1) - mui.s;
            kadd(&glvar, (ri[i] / ns) * (d * d));
        }
        for (Py_ssize_t c = 0; c < nj; c++) {
            double d = jv[c] - muj.s;
            kadd(&rlvar, (rj[c] / ns) * (d * d));
        }
        double v[17] = {sre.s / ns, lre.s / ns, lgre.s / ns, hgre.s / ns, srlge.s / ns, srhge.s / ns,
                        lrlge.s / ns, lrhge.s / ns, glnu.s / ns, glnu.s / (ns * ns), rlnu.s / ns,
                        rlnu.s / (ns * ns), ns / nvox[m], glvar.s, rlvar.s, -entr.s, energy.s};
        for (int f = 0; f < 17; f++) out[f * k + m] = v[f];
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(work);
    PyMem_Free(krj);
    PyMem_Free(cache);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&jb);
    PyBuffer_Release(&vb);
    PyBuffer_Release(&cb);
    Py_RETURN_NONE;
e4:
    PyBuffer_Release(&ob);
e3:
    PyBuffer_Release(&jb);
e2:
    PyBuffer_Release(&vb);
e1:
    PyBuffer_Release(&cb);
    return NULL;
}

static const char ngtdm_features_doc[] =
    "ngtdm_features(s, n, k, ng, out)\n\n"
    "The 5 IBSI NGTDM features (coarseness, contrast, busyness, complexity, strength) of k non-empty NGTDMs:\n"
    "s (float64, (k, ng)) summed absolute differences, n (int64, (k, ng)) counts; out: float64, (5, k).";

static PyObject *ngtdm_feats(PyObject *self, PyObject *args) {
    PyObject *so, *no, *oo;
    Py_ssize_t k, ng;
    Py_buffer sb, nb, ob;
    if (!PyArg_ParseTuple(args, "OOnnO", &so, &no, &k, &ng, &oo)) return NULL;
    if (k < 0 || ng < 1) {
        PyErr_SetString(PyExc_ValueError, "k >= 0 and ng >= 1");
        return NULL;
    }
    if (get_buf(so, &sb, F64, k * ng, 0, "s") < 0) return NULL;
    if (get_buf(no, &nb, I64, k * ng, 0, "n") < 0) goto e1;
    if (get_buf(oo, &ob, F64, 5 * k, 1, "out") < 0) goto e2;
    double *work = PyMem_Malloc((size_t)(4 * ng) * sizeof *work);
    Py_ssize_t *idx = PyMem_Malloc((size_t)ng * sizeof *idx);
    if (!work || !idx) {
        PyMem_Free(work);
        PyMem_Free(idx);
        PyErr_NoMemory();
        goto e3;
    }
    const double *sv = sb.buf;
    const int64_t *nv = nb.buf;
    double *out = ob.buf;
    Py_BEGIN_ALLOW_THREADS
    double *p = work, *ip = p + ng, *pss = ip + ng;
    for (Py_ssize_t m = 0; m < k; m++) {
        const double *sm = sv + m * ng;
        const int64_t *nm = nv + m * ng;
        int64_t tot = 0;
        for (Py_ssize_t i = 0; i < ng; i++) tot += nm[i];
        double nvc = (double)tot;
        Py_ssize_t ngp = 0;
        KSum ps = {0, 0}, ssum = {0, 0};
        for (Py_ssize_t i = 0; i < ng; i++) {
            p[i] = (double)nm[i] / nvc;
            ip[i] = p[i] * (double)(i + 1);
            pss[i] = p[i] * sm[i];
            if (p[i] > 0) idx[ngp++] = i;
            kadd(&ps, p[i] * sm[i]);
            kadd(&ssum, sm[i]);
        }
        KSum con = {0, 0}, busy = {0, 0}, cplx = {0, 0}, strg = {0, 0};
        for (Py_ssize_t a = 0; a < ngp; a++) /* pairs of present grey levels (the other terms are 0) */
            for (Py_ssize_t b = 0; b < ngp; b++) {
                Py_ssize_t i = idx[a], j = idx[b];
                double dg = (double)(i - j), psum = p[i] + p[j];
                kadd(&con, p[i] * p[j] * (dg * dg));
                kadd(&busy, fabs(ip[i] - ip[j]));
                kadd(&cplx, psum != 0 ? fabs(dg) * (pss[i] + pss[j]) / psum : 0.0);
                kadd(&strg, psum * (dg * dg));
            }
        double pairs_n = (double)ngp * (double)(ngp - 1);
        out[m] = ps.s > 0 ? 1.0 / ps.s : 1e6;
        out[k + m] = (pairs_n != 0 ? con.s / pairs_n : 0.0) * (ssum.s / nvc);
        out[2 * k + m] = ngp > 1 ? (busy.s != 0 ? ps.s / busy.s : 0.0) : 0.0;
        out[3 * k + m] = cplx.s / nvc;
        out[4 * k + m] = ssum.s != 0 ? strg.s / ssum.s : 0.0;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(work);
    PyMem_Free(idx);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&nb);
    PyBuffer_Release(&sb);
    Py_RETURN_NONE;
e3:
    PyBuffer_Release(&ob);
e2:
    PyBuffer_Release(&nb);
e1:
    PyBuffer_Release(&sb);
    return NULL;
}

static const char zone_columns_doc[] =
    "zone_columns(values, cols) -> number of columns\n\n"
    "The distinct values (int64, >= 0) in increasing order, written to cols (int64, at least as long as values).";

static PyObject *zone_columns(PyObject *self, PyObject *args) {
    PyObject *vo, *co;
    Py_buffer vb, cb;
    if (!PyArg_ParseTuple(args, "OO", &vo, &co)) return NULL;
    if (PyObject_GetBuffer(vo, &vb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    Py_ssize_t n = vb.itemsize ? vb.len / vb.itemsize : 0;
    PyBuffer_Release(&vb);
    if (get_buf(vo, &vb, I64, n, 0, "values") < 0) return NULL;
    if (PyObject_GetBuffer(co, &cb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) goto e1;
    Py_ssize_t ncap = cb.itemsize ? cb.len / cb.itemsize : 0;
    PyBuffer_Release(&cb);
    if (ncap < n) {
        PyErr_SetString(PyExc_ValueError, "cols is shorter than values");
        goto e1;
    }
    if (get_buf(co, &cb, I64, ncap, 1, "cols") < 0) goto e1;
    const int64_t *v = vb.buf;
    int64_t *cols = cb.buf, top = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (v[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "values must be >= 0");
            goto e2;
        }
        if (v[i] > top) top = v[i];
    }
    uint8_t *seen = PyMem_Calloc((size_t)top + 2, 1);
    if (!seen) {
        PyErr_NoMemory();
        goto e2;
    }
    for (Py_ssize_t i = 0; i < n; i++) seen[v[i]] = 1;
    Py_ssize_t u = 0;
    for (int64_t x = 0; x <= top; x++)
        if (seen[x]) cols[u++] = x;
    PyMem_Free(seen);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&vb);
    return PyLong_FromSsize_t(u);
e2:
    PyBuffer_Release(&cb);
e1:
    PyBuffer_Release(&vb);
    return NULL;
}

static const char zone_counts_doc[] =
    "zone_counts(rows, values, cols, nrows, out)\n\n"
    "out[row, column of value] += 1 for each zone (int64 rows in 0..nrows-1, values among cols, which are\n"
    "increasing); out: int64, (nrows, len(cols)).";

static PyObject *zone_counts(PyObject *self, PyObject *args) {
    PyObject *ro, *vo, *co, *oo;
    Py_ssize_t nrows;
    Py_buffer rb, vb, cb, ob;
    if (!PyArg_ParseTuple(args, "OOOnO", &ro, &vo, &co, &nrows, &oo)) return NULL;
    if (PyObject_GetBuffer(vo, &vb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    Py_ssize_t n = vb.itemsize ? vb.len / vb.itemsize : 0;
    PyBuffer_Release(&vb);
    if (PyObject_GetBuffer(co, &cb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    Py_ssize_t u = cb.itemsize ? cb.len / cb.itemsize : 0;
    PyBuffer_Release(&cb);
    if (nrows < 0) {
        PyErr_SetString(PyExc_ValueError, "nrows < 0");
        return NULL;
    }
    if (get_buf(ro, &rb, I64, n, 0, "rows") < 0) return NULL;
    if (get_buf(vo, &vb, I64, n, 0, "values") < 0) goto e1;
    if (get_buf(co, &cb, I64, u, 0, "cols") < 0) goto e2;
    if (get_buf(oo, &ob, I64, nrows * u, 1, "out") < 0) goto e3;
    const int64_t *row = rb.buf, *v = vb.buf, *cols = cb.buf;
    int64_t *out = ob.buf;
    int64_t top = -1;
    for (Py_ssize_t c = 0; c < u; c++)
        if (cols[c] < 0 || cols[c] <= top) {
            PyErr_SetString(PyExc_ValueError, "cols must be increasing and >= 0");
            goto e4;
        } else top = cols[c];
    int32_t *lut = PyMem_Malloc(((size_t)top + 2) * sizeof *lut); /* value -> column, -1 when absent */
    if (!lut) {
        PyErr_NoMemory();
        goto e4;
    }
    for (int64_t x = 0; x <= top; x++) lut[x] = -1;
    for (Py_ssize_t c = 0; c < u; c++) lut[cols[c]] = (int32_t)c;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t col = v[i] >= 0 && v[i] <= top ? lut[v[i]] : -1;
        if (row[i] < 0 || row[i] >= nrows || col < 0) {
            PyMem_Free(lut);
            PyErr_SetString(PyExc_ValueError, "a zone's row or value is out of range");
            goto e4;
        }
        out[row[i] * u + col]++;
    }
    PyMem_Free(lut);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&vb);
    PyBuffer_Release(&rb);
    Py_RETURN_NONE;
e4:
    PyBuffer_Release(&ob);
e3:
    PyBuffer_Release(&cb);
e2:
    PyBuffer_Release(&vb);
e1:
    PyBuffer_Release(&rb);
    return NULL;
}

static PyMethodDef methods[] = {
    {"pairs", pairs, METH_VARARGS, pairs_doc},
    {"bbox", bbox, METH_VARARGS, bbox_doc},
    {"neighbours", neighbours, METH_VARARGS, neighbours_doc},
    {"zones", zones, METH_VARARGS, zones_doc},
    {"zone_columns", zone_columns, METH_VARARGS, zone_columns_doc},
    {"zone_counts", zone_counts, METH_VARARGS, zone_counts_doc},
    {"glcm_features", glcm_feats, METH_VARARGS, glcm_features_doc},
    {"runlike_features", runlike_feats, METH_VARARGS, runlike_features_doc},
    {"ngtdm_features", ngtdm_feats, METH_VARARGS, ngtdm_features_doc},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctexture",
                                    "IBSI texture matrices (nmkit.radiomics.texture's compiled path)", -1, methods};

PyMODINIT_FUNC PyInit__ctexture(void) { return PyModule_Create(&module); }
