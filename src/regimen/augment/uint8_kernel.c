/* Per-sample RandAugment ops on uint8 NCHW images with Pillow's semantics (NEAREST geometry), image by image.
 *
 * The compiled counterpart of regimen/augment/op_groups.py: the same results bit for bit (tests compare both with
 * Pillow and with each other). Python prepares everything that depends on the parameters only (op kinds, the
 * static lookup tables of Solarize/Posterize/Brightness, the 16.16 fixed-point maps of the geometric ops, float32
 * enhancement factors); this file does the per-pixel work and the per-image statistics (AutoContrast's extremes,
 * Equalize's histograms, Contrast's mean grey level) in one pass over the batch, so a call costs one foreign call
 * instead of hundreds of tensor ops, and each op touches each byte once.
 *
 * Floating-point arithmetic is float32 for blends and float64 for AutoContrast, as in the Python code; compile with
 * -ffp-contract=off so that no multiply-add is fused (numpy and torch round after every operation).
 *
 * Speed: with GCC on x86-64 Linux, the pixel loops are compiled for AVX-512, AVX2 and baseline SSE2 and the
 * dynamic loader picks the best the CPU has (target_clones); the same C code gives the same results in every clone.
 * Hand-written AVX-512 routes, used on CPUs with AVX-512 F/BW/VL/VBMI: table lookups by two 128-entry byte
 * permutes per 64 bytes, and Rotate/ShearY by masked 32-bit gathers with the indices computed in registers (not on
 * AMD CPUs, where those gathers are slower than scalar loads). regimen_set_simd(0) switches them off, (2) forces the
 * gathers on; the tests compare the routes, and a -DREGIMEN_PORTABLE build (plain C loops only, what other CPUs,
 * architectures and compilers run) with the default build.
 *
 * The second half of the file is the float32 counterpart (regimen_apply_ops_float32): the continuous ops of
 * functional.py on float32 images in [0, 1], with the same geometry maps. One C file holds both (the design allows
 * exactly one compiled source); its name predates the float32 half.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* REGIMEN_PORTABLE builds the plain C loops only (tests compare them with the default build) */
#if !defined(REGIMEN_PORTABLE) && defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define HAVE_AVX512 1
#include <immintrin.h>
#else
#define CLONES
#define HAVE_AVX512 0
#endif

static int use_avx512 = -1;  /* the hand-written AVX-512 routes; -1: not decided yet */
static int use_gather = 0;   /* of those, the AVX-512 gathers (Rotate/ShearY): slower than scalar loads on AMD Zen */

/* Hand-written SIMD routes: 0 off, 1 where they pay off (table lookups on CPUs with AVX-512 VBMI; gathers too,
 * except on AMD CPUs, whose AVX-512 gathers are microcoded and measured 3-7x slower than scalar loads at 224x224),
 * 2 all of them wherever the CPU has the instructions (for tests). Returns whether the AVX-512 routes are in use. */
int regimen_set_simd(int mode) {
#if HAVE_AVX512
    __builtin_cpu_init();
    use_avx512 = mode && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl");
    use_gather = use_avx512 && (mode == 2 || !__builtin_cpu_is("amd"));
#else
    (void)mode;
    use_avx512 = 0;
    use_gather = 0;
#endif
    return use_avx512;
}

enum {
    KIND_IDENTITY = 0,
    KIND_TABLE = 1,        /* a static per-image table (Solarize, Posterize, Brightness) */
    KIND_AUTOCONTRAST = 2,
    KIND_EQUALIZE = 3,
    KIND_CONTRAST = 4,
    KIND_COLOR = 5,        /* the identity on 1-channel images */
    KIND_SHARPNESS = 6,
    KIND_GEOMETRIC = 7     /* TranslateX/Y, ShearX/Y, Rotate: a fixed-point map */
};

typedef struct {
    int64_t c, h, w, plane;
    const uint8_t *fill;
    int32_t *index;        /* scratch: a source index per pixel (h w values) */
    uint8_t *plane_copy;   /* scratch: one plane and a fill level (h w + 1 values, 3 more readable) */
    const uint8_t *input_end;                        /* end of the caller's images */
    const uint8_t *scratch_start, *scratch_end;      /* our buffers, all followed by >= 3 readable bytes */
} Shape;

static inline uint8_t blend_pixel(float degenerate, float factor, uint8_t x) {
    /* Pillow's Image.blend in float32: d + f (x - d), clipped to [0, 255], truncated */
    float v = degenerate + factor * ((float)x - degenerate);
    v = v < 0.0f ? 0.0f : v;
    v = v > 255.0f ? 255.0f : v;
    return (uint8_t)(int32_t)v;
}

#if HAVE_AVX512
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static int64_t lookup_vbmi(const uint8_t *src, uint8_t *dst, int64_t count, const uint8_t *table) {
    /* returns how many leading values it did (whole 64-byte blocks) */
    const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
    const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
    int64_t i = 0;
    for (; i + 64 <= count; i += 64) {
        __m512i x = _mm512_loadu_si512(src + i);
        __m512i low = _mm512_permutex2var_epi8(t0, x, t1);   /* levels 0-127: bit 6 picks t0/t1 */
        __m512i high = _mm512_permutex2var_epi8(t2, x, t3);  /* levels 128-255 */
        _mm512_storeu_si512(dst + i, _mm512_mask_blend_epi8(_mm512_movepi8_mask(x), low, high));
    }
    return i;
}
#endif

static void lookup(const uint8_t *src, uint8_t *dst, int64_t count, const uint8_t *table) {
    int64_t i = 0;
#if HAVE_AVX512
    if (use_avx512) i = lookup_vbmi(src, dst, count, table);
#endif
    for (; i < count; i++) dst[i] = table[src[i]];
}

static void identity_table(uint8_t *table) {
    for (int i = 0; i < 256; i++) table[i] = (uint8_t)i;
}

CLONES static void autocontrast_table(const uint8_t *plane, int64_t count, uint8_t *table) {
    uint8_t lo = 255, hi = 0;
    for (int64_t i = 0; i < count; i++) {
        uint8_t v = plane[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (hi <= lo) {
        identity_table(table);
        return;
    }
    double scale = 255.0 / (double)(hi - lo);
    double offset = -(double)lo * scale;
    for (int i = 0; i < 256; i++) {
        double v = (double)i * scale + offset;
        v = v < 0.0 ? 0.0 : v;  /* trunc then clip == clip then trunc for values in (-1, 256) */
        int64_t t = (int64_t)v;
        table[i] = (uint8_t)(t > 255 ? 255 : t);
    }
}

CLONES static void equalize_table(const uint8_t *plane, int64_t count, uint8_t *table) {
    /* four interleaved sub-histograms (consecutive equal levels do not wait on each other's increments), eight
     * levels per 64-bit load; counts fit 32 bits (planes have fewer than 2^31 pixels) */
    uint32_t parts[4][256];
    memset(parts, 0, sizeof(parts));
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
        uint64_t v;
        memcpy(&v, plane + i, 8);
        parts[0][v & 255]++;
        parts[1][(v >> 8) & 255]++;
        parts[2][(v >> 16) & 255]++;
        parts[3][(v >> 24) & 255]++;
        parts[0][(v >> 32) & 255]++;
        parts[1][(v >> 40) & 255]++;
        parts[2][(v >> 48) & 255]++;
        parts[3][v >> 56]++;
    }
    for (; i < count; i++) parts[0][plane[i]]++;
    int64_t hist[256];
    for (int level = 0; level < 256; level++) {
        hist[level] = (int64_t)parts[0][level] + parts[1][level] + parts[2][level] + parts[3][level];
    }
    int top = -1, occupied = 0;
    for (int level = 0; level < 256; level++) {
        if (hist[level] > 0) {
            top = level;
            occupied++;
        }
    }
    int64_t step = top < 0 ? 0 : (count - hist[top]) / 255;
    if (occupied <= 1 || step == 0) {
        identity_table(table);
        return;
    }
    uint32_t below = 0, half = (uint32_t)(step / 2), divisor = (uint32_t)step;  /* 32-bit division is faster */
    for (int level = 0; level < 256; level++) {
        uint32_t v = (half + below) / divisor;
        table[level] = (uint8_t)(v > 255 ? 255 : v);
        below += (uint32_t)hist[level];
    }
}

static inline uint8_t grey(uint8_t r, uint8_t g, uint8_t b) {
    /* Pillow's convert('L') */
    return (uint8_t)((19595 * (int32_t)r + 38470 * (int32_t)g + 7471 * (int32_t)b + 0x8000) >> 16);
}

CLONES static void contrast(const uint8_t *src, uint8_t *dst, const Shape *s, float factor) {
    int64_t total = 0;
    if (s->c == 1) {
        for (int64_t i = 0; i < s->plane; i++) total += src[i];
    } else {
        const uint8_t *r = src, *g = src + s->plane, *b = src + 2 * s->plane;
        for (int64_t i = 0; i < s->plane; i++) total += grey(r[i], g[i], b[i]);
    }
    double mean = (double)total / (double)s->plane;
    float degenerate = (float)(int64_t)(mean + 0.5);  /* Pillow: int(mean + 0.5); mean >= 0 */
    uint8_t table[256];
    for (int i = 0; i < 256; i++) table[i] = blend_pixel(degenerate, factor, (uint8_t)i);
    lookup(src, dst, s->c * s->plane, table);
}

/* Blends run in long loops simple enough for the compiler to vectorise. */
CLONES static void color_pixels(const uint8_t *restrict r, const uint8_t *restrict g, const uint8_t *restrict b,
                                uint8_t *restrict out_r, uint8_t *restrict out_g, uint8_t *restrict out_b,
                                int64_t count, float factor) {
    /* one pass: Pillow's convert('L') grey level, then the three channels blended with it */
    for (int64_t i = 0; i < count; i++) {
        float level = (float)grey(r[i], g[i], b[i]);
        out_r[i] = blend_pixel(level, factor, r[i]);
        out_g[i] = blend_pixel(level, factor, g[i]);
        out_b[i] = blend_pixel(level, factor, b[i]);
    }
}

static void color(const uint8_t *src, uint8_t *dst, const Shape *s, float factor) {
    const int64_t p = s->plane;
    color_pixels(src, src + p, src + 2 * p, dst, dst + p, dst + 2 * p, p, factor);
}

CLONES static void sharpen_interior(const uint8_t *restrict in, uint8_t *restrict out, int64_t first, int64_t last,
                                    int64_t w, float factor) {
    /* blend with Pillow's SMOOTH at flat positions first..last-1: the weighted 3x3 sum / 13, rounded half up (exact
     * in 16-bit integers); one long loop over the flattened plane (short per-row loops would spend much of their
     * time in scalar remainders), the wrapped-around edge columns are overwritten after */
    for (int64_t i = first; i < last; i++) {
        uint16_t sum = (uint16_t)(in[i - w - 1] + in[i - w] + in[i - w + 1] + in[i - 1] + 5 * in[i] + in[i + 1]
                                  + in[i + w - 1] + in[i + w] + in[i + w + 1]);
        out[i] = blend_pixel((float)(uint8_t)((uint16_t)(2 * sum + 13) / 26), factor, in[i]);
    }
}

static void sharpness(const uint8_t *src, uint8_t *dst, const Shape *s, float factor) {
    const int64_t h = s->h, w = s->w, p = s->plane;
    if (h < 3 || w < 3) {  /* Pillow copies every pixel: the degenerate image is the image */
        memcpy(dst, src, (size_t)(s->c * p));
        return;
    }
    for (int64_t ch = 0; ch < s->c; ch++) {
        const uint8_t *in = src + ch * p;
        uint8_t *out = dst + ch * p;
        sharpen_interior(in, out, w + 1, p - w - 1, w, factor);
        /* the degenerate image keeps the border pixels, where blend(x, x, f) == x */
        memcpy(out, in, (size_t)w + 1);
        memcpy(out + p - w - 1, in + p - w - 1, (size_t)w + 1);
        for (int64_t y = 1; y < h - 1; y++) {
            out[y * w] = in[y * w];
            out[y * w + w - 1] = in[y * w + w - 1];
        }
    }
}

static void fill_row(uint8_t *dst, int64_t count, uint8_t value) {
    memset(dst, value, (size_t)count);
}

#if HAVE_AVX512
__attribute__((target("avx512f,avx512bw")))
static int64_t gather_avx512(const uint8_t *plane, const int32_t *index, uint8_t *out, int64_t count) {
    /* 16 unaligned 32-bit loads per instruction, low bytes kept (the plane has 3 readable bytes past its end) */
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512i at = _mm512_loadu_si512(index + i);
        __m512i words = _mm512_i32gather_epi32(at, (const void *)plane, 1);
        _mm_storeu_si128((__m128i *)(out + i), _mm512_cvtepi32_epi8(words));
    }
    return i;
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
static void warp_avx512(const uint8_t *plane, uint8_t *out, int32_t h, int32_t w, int32_t x0, int32_t a, int32_t b,
                        int32_t y0, int32_t c, int32_t d, uint8_t fill) {
    /* 16 output pixels at a time: source column/row in 32-bit fixed point (the caller checked they fit), a mask
     * of the pixels inside the image, and a masked gather of 32-bit words whose low byte is the source level
     * (pixels outside keep the fill level); the plane must have 3 readable bytes after its end */
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step_x = _mm512_set1_epi32(a), step_y = _mm512_set1_epi32(c);
    const __m512i width = _mm512_set1_epi32(w), height = _mm512_set1_epi32(h), level = _mm512_set1_epi32(fill);
    for (int32_t y = 0; y < h; y++) {
        const __m512i start_x = _mm512_set1_epi32(x0 + b * y), start_y = _mm512_set1_epi32(y0 + d * y);
        uint8_t *row_out = out + (int64_t)y * w;
        for (int32_t x = 0; x < w; x += 16) {
            const __mmask16 live = w - x >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - x)) - 1u);
            const __m512i xs = _mm512_add_epi32(_mm512_set1_epi32(x), lanes);
            const __m512i col = _mm512_srai_epi32(_mm512_add_epi32(start_x, _mm512_mullo_epi32(step_x, xs)), 16);
            const __m512i row = _mm512_srai_epi32(_mm512_add_epi32(start_y, _mm512_mullo_epi32(step_y, xs)), 16);
            const __mmask16 inside = live & _mm512_cmplt_epu32_mask(col, width) & _mm512_cmplt_epu32_mask(row, height);
            const __m512i at = _mm512_add_epi32(_mm512_mullo_epi32(row, width), col);
            const __m512i words = _mm512_mask_i32gather_epi32(level, inside, at, (const void *)plane, 1);
            _mm_mask_storeu_epi8(row_out + x, live, _mm512_cvtepi32_epi8(words));
        }
    }
}
#endif

static void gather(const uint8_t *plane, const int32_t *index, uint8_t *out, int64_t count) {
    int64_t i = 0;
#if HAVE_AVX512
    if (use_gather) i = gather_avx512(plane, index, out, count);
#endif
    for (; i < count; i++) out[i] = plane[index[i]];
}

/* Source indices of a map into a plane (row * w + col), or h w (the appended fill level) outside the image. */
static int fits_int32(int64_t start, int64_t step_x, int64_t step_y, int64_t w, int64_t h) {
    int64_t bound = llabs(start) + llabs(step_x) * w + llabs(step_y) * h;
    return bound < ((int64_t)1 << 31);
}

CLONES static void source_index32(int32_t *index, int64_t h, int64_t w, int32_t x0, int32_t a, int32_t b,
                                  int32_t y0, int32_t c, int32_t d) {
    const int32_t width = (int32_t)w, height = (int32_t)h, outside = (int32_t)(h * w);
    for (int32_t y = 0; y < height; y++) {
        const int32_t xx = x0 + b * y, yy = y0 + d * y;
        int32_t *row_index = index + (int64_t)y * w;
        for (int32_t x = 0; x < width; x++) {
            int32_t col = (xx + a * x) >> 16, row = (yy + c * x) >> 16;
            int inside = (uint32_t)col < (uint32_t)width && (uint32_t)row < (uint32_t)height;
            row_index[x] = inside ? row * width + col : outside;
        }
    }
}

static void source_index64(int32_t *index, int64_t h, int64_t w, int64_t x0, int64_t a, int64_t b, int64_t y0,
                           int64_t c, int64_t d) {
    for (int64_t y = 0; y < h; y++) {
        const int64_t xx = x0 + b * y, yy = y0 + d * y;
        for (int64_t x = 0; x < w; x++) {
            int64_t col = (xx + a * x) >> 16, row = (yy + c * x) >> 16;
            int inside = (uint64_t)col < (uint64_t)w && (uint64_t)row < (uint64_t)h;
            index[y * w + x] = (int32_t)(inside ? row * w + col : h * w);
        }
    }
}

/* output (x, y) reads column (X0 + A x + B y) >> 16 and row (Y0 + C x + D y) >> 16 (arithmetic shifts) */
static void geometric(const uint8_t *src, uint8_t *dst, const Shape *s, const int64_t *m) {
    const int64_t h = s->h, w = s->w, p = s->plane;
    const int64_t x0 = m[0], a = m[1], b = m[2], y0 = m[3], c = m[4], d = m[5];
    if (a == 65536 && c == 0) {  /* TranslateX/Y, ShearX: each output row is a shifted segment of one source row */
        for (int64_t y = 0; y < h; y++) {
            int64_t row = (y0 + d * y) >> 16;
            int64_t shift = (x0 + b * y) >> 16;  /* column = x + shift */
            int64_t lo = shift < 0 ? -shift : 0, hi = w - shift < w ? w - shift : w;  /* x range inside */
            for (int64_t ch = 0; ch < s->c; ch++) {
                uint8_t *o = dst + ch * p + y * w;
                if (row < 0 || row >= h || lo >= hi) {
                    fill_row(o, w, s->fill[ch]);
                    continue;
                }
                fill_row(o, lo, s->fill[ch]);
                memcpy(o + lo, src + ch * p + row * w + lo + shift, (size_t)(hi - lo));
                fill_row(o + hi, w - hi, s->fill[ch]);
            }
        }
        return;
    }
    const int small = fits_int32(x0, a, b, w, h) && fits_int32(y0, c, d, w, h);
#if HAVE_AVX512
    if (use_gather && small) {  /* indices computed in registers, masked 32-bit gathers straight from the plane */
        for (int64_t ch = 0; ch < s->c; ch++) {
            const uint8_t *plane = src + ch * p;
            uintptr_t at = (uintptr_t)plane, scratch = (uintptr_t)s->scratch_start;
            int ours = at >= scratch && at < (uintptr_t)s->scratch_end;
            if (!ours && at + (uintptr_t)(p + 3) > (uintptr_t)s->input_end) {  /* 3 bytes past it are not ours */
                memcpy(s->plane_copy, plane, (size_t)p);
                plane = s->plane_copy;
            }
            warp_avx512(plane, dst + ch * p, (int32_t)h, (int32_t)w, (int32_t)x0, (int32_t)a, (int32_t)b,
                        (int32_t)y0, (int32_t)c, (int32_t)d, s->fill[ch]);
        }
        return;
    }
#endif
    /* otherwise: a source index per pixel (shared by the channels), then a gather per channel from a copy of the
     * plane with the fill level appended at index `p` (no branch in the gather) */
    int32_t *index = s->index;
    if (small) {
        source_index32(index, h, w, (int32_t)x0, (int32_t)a, (int32_t)b, (int32_t)y0, (int32_t)c, (int32_t)d);
    } else {
        source_index64(index, h, w, x0, a, b, y0, c, d);
    }
    for (int64_t ch = 0; ch < s->c; ch++) {
        uint8_t *plane = s->plane_copy;
        memcpy(plane, src + ch * p, (size_t)p);
        plane[p] = s->fill[ch];
        gather(plane, index, dst + ch * p, p);
    }
}

static void apply_op(int32_t kind, const uint8_t *src, uint8_t *dst, const Shape *s, float factor,
                     const uint8_t *table, const int64_t *map) {
    uint8_t own[256];
    switch (kind) {
    case KIND_TABLE:
        lookup(src, dst, s->c * s->plane, table);
        break;
    case KIND_AUTOCONTRAST:
        for (int64_t ch = 0; ch < s->c; ch++) {
            autocontrast_table(src + ch * s->plane, s->plane, own);
            lookup(src + ch * s->plane, dst + ch * s->plane, s->plane, own);
        }
        break;
    case KIND_EQUALIZE:
        for (int64_t ch = 0; ch < s->c; ch++) {
            equalize_table(src + ch * s->plane, s->plane, own);
            lookup(src + ch * s->plane, dst + ch * s->plane, s->plane, own);
        }
        break;
    case KIND_CONTRAST:
        contrast(src, dst, s, factor);
        break;
    case KIND_COLOR:
        if (s->c == 3) {
            color(src, dst, s, factor);
        } else {  /* Pillow: the Color enhancement of an L image is the identity */
            memcpy(dst, src, (size_t)(s->c * s->plane));
        }
        break;
    case KIND_SHARPNESS:
        sharpness(src, dst, s, factor);
        break;
    default:
        geometric(src, dst, s, map);
        break;
    }
}

/* Image i of images (n, c, h, w) gets ops kinds[i, 0..k-1] in order; the result goes to out (same shape, not
 * overlapping images). factors (n, k) float32, tables (n, k, 256), maps (n, k, 6) int64 fixed point, fill (c).
 * Returns 0, or -1 if scratch memory could not be allocated (out is then unspecified). */
int regimen_apply_ops_uint8(const uint8_t *images, uint8_t *out, int64_t n, int64_t c, int64_t h, int64_t w,
                            int64_t k, const int32_t *kinds, const float *factors, const uint8_t *tables,
                            const int64_t *maps, const uint8_t *fill) {
    const int64_t size = c * h * w;
    if (n == 0 || size == 0) return 0;
    if (use_avx512 < 0) regimen_set_simd(1);
    uint8_t *scratch = (uint8_t *)malloc((size_t)(2 * size + h * w + 4));
    int32_t *index = (int32_t *)malloc((size_t)(h * w) * sizeof(int32_t));
    if (scratch == NULL || index == NULL) {
        free(scratch);
        free(index);
        return -1;
    }
    Shape s = {c, h, w, h * w, fill, index, scratch + 2 * size, images + n * size, scratch, scratch + 2 * size};
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *current = images + i * size;
        uint8_t *result = out + i * size;
        int64_t last = -1;  /* the last position that is not Identity writes straight into the result */
        for (int64_t j = 0; j < k; j++) {
            if (kinds[i * k + j] != KIND_IDENTITY) last = j;
        }
        for (int64_t j = 0; j <= last; j++) {
            const int64_t at = i * k + j;
            if (kinds[at] == KIND_IDENTITY) continue;
            uint8_t *target = j == last ? result : (current == scratch ? scratch + size : scratch);
            apply_op(kinds[at], current, target, &s, factors[at], tables + at * 256, maps + at * 6);
            current = target;
        }
        if (last < 0) memcpy(result, current, (size_t)size);
    }
    free(scratch);
    free(index);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------------
 * float32 images in [0, 1]: the continuous ops of regimen/augment/functional.py (the float branch of each op),
 * reproduced operation for operation in float32 (levels L = x * 255, blends d + f (L - d) clipped to [0, 255],
 * divided by 255), so the result equals the torch implementation's up to the order of a double-precision sum
 * (Contrast's mean). Geometry uses the same 16.16 fixed-point maps as the uint8 ops (NEAREST), so the float and
 * uint8 results read the same source pixels. Equalize and Posterize quantise to 8-bit levels (round half to even,
 * as torch.round) by their nature. */

enum {
    FKIND_IDENTITY = 0,
    FKIND_AUTOCONTRAST = 1,
    FKIND_EQUALIZE = 2,
    FKIND_CONTRAST = 3,    /* factor: the enhancement factor */
    FKIND_COLOR = 4,       /* factor; the identity on 1-channel images */
    FKIND_SHARPNESS = 5,   /* factor */
    FKIND_GEOMETRIC = 6,   /* map */
    FKIND_SOLARIZE = 7,    /* factor: the threshold in [0, 1] units */
    FKIND_POSTERIZE = 8,   /* factor: the number of bits kept, 1-8 */
    FKIND_BRIGHTNESS = 9   /* factor */
};

typedef struct {
    int64_t c, h, w, plane;
    const float *fill;
    int32_t *index;        /* scratch: a source index per pixel (h w values) */
    float *plane_copy;     /* scratch: one plane and a fill value (h w + 1 values) */
    uint8_t *levels;       /* scratch: one plane quantised to 8-bit levels (h w values) */
} FShape;

static inline float finish_level(float v) {
    /* functional._finish: clip levels to [0, 255], back to [0, 1] */
    v = v < 0.0f ? 0.0f : v;
    v = v > 255.0f ? 255.0f : v;
    return v / 255.0f;
}

static inline float blend_level(float degenerate, float factor, float level) {
    return finish_level(degenerate + factor * (level - degenerate));
}

static inline float grey_level(float r, float g, float b) {
    /* functional._grey_levels of float images: ITU-R 601 weights on levels, clipped to [0, 255] */
    float v = 0.299f * (r * 255.0f) + 0.587f * (g * 255.0f);
    v = v + 0.114f * (b * 255.0f);
    v = v < 0.0f ? 0.0f : v;
    return v > 255.0f ? 255.0f : v;
}

static inline float quantise_level(float x) {
    /* functional._quantize: round(x * 255) half to even, clipped to [0, 255] (as a float) */
    float v = __builtin_rintf(x * 255.0f);
    v = v < 0.0f ? 0.0f : v;
    return v > 255.0f ? 255.0f : v;
}

CLONES static void quantise_plane(const float *restrict src, uint8_t *restrict dst, int64_t count) {
    for (int64_t i = 0; i < count; i++) dst[i] = (uint8_t)(int32_t)quantise_level(src[i]);
}

CLONES static void levels_to_float(const uint8_t *restrict levels, float *restrict dst, int64_t count) {
    /* functional._from_uint8: a level as float32 / 255 */
    for (int64_t i = 0; i < count; i++) dst[i] = (float)levels[i] / 255.0f;
}

CLONES static void autocontrast_float(const float *restrict src, float *restrict dst, int64_t count) {
    /* the extremes, found in 16 lanes on the bit patterns as int32: for floats >= 0 (the images are in [0, 1]) the
     * integer order is the float order, and integer minima vectorise (float ones would need -ffast-math); -0.0 is
     * the smallest pattern and equals 0 in the arithmetic below */
    int32_t lo16[16], hi16[16];
    int32_t first;
    memcpy(&first, src, sizeof(first));
    for (int j = 0; j < 16; j++) lo16[j] = hi16[j] = first;
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
        int32_t v[16];
        memcpy(v, src + i, sizeof(v));
        for (int j = 0; j < 16; j++) {
            lo16[j] = v[j] < lo16[j] ? v[j] : lo16[j];
            hi16[j] = v[j] > hi16[j] ? v[j] : hi16[j];
        }
    }
    for (; i < count; i++) {
        int32_t v;
        memcpy(&v, src + i, sizeof(v));
        lo16[0] = v < lo16[0] ? v : lo16[0];
        hi16[0] = v > hi16[0] ? v : hi16[0];
    }
    int32_t lo_bits = lo16[0], hi_bits = hi16[0];
    for (int j = 1; j < 16; j++) {
        lo_bits = lo16[j] < lo_bits ? lo16[j] : lo_bits;
        hi_bits = hi16[j] > hi_bits ? hi16[j] : hi_bits;
    }
    float lo, hi;
    memcpy(&lo, &lo_bits, sizeof(lo));
    memcpy(&hi, &hi_bits, sizeof(hi));
    const float span = hi - lo;
    if (span <= 0.0f) {  /* a constant channel is unchanged */
        memcpy(dst, src, (size_t)count * sizeof(float));
        return;
    }
    for (i = 0; i < count; i++) {
        float v = (src[i] - lo) / span;
        v = v < 0.0f ? 0.0f : v;
        dst[i] = v > 1.0f ? 1.0f : v;
    }
}

CLONES static void scale_blend_float(const float *restrict src, float *restrict dst, int64_t count, float degenerate,
                                     float factor) {
    /* blend with a constant degenerate level (Brightness: 0, Contrast: the mean grey level) */
    for (int64_t i = 0; i < count; i++) dst[i] = blend_level(degenerate, factor, src[i] * 255.0f);
}

CLONES static double level_sum(const float *restrict r, const float *restrict g, const float *restrict b,
                               int64_t count) {
    /* the sum of the grey levels (of r alone when g is NULL) in double, in 8 partial sums over blocks of 64 float32
     * grey levels (vectorised; torch sums in yet another order, so the mean may differ from its in the last bits) */
    double part[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    float levels[64];
    for (int64_t start = 0; start < count; start += 64) {
        const int64_t m = count - start < 64 ? count - start : 64;
        if (g == NULL) {
            for (int64_t j = 0; j < m; j++) levels[j] = r[start + j] * 255.0f;
        } else {
            for (int64_t j = 0; j < m; j++) levels[j] = grey_level(r[start + j], g[start + j], b[start + j]);
        }
        for (int64_t j = m; j < 64; j++) levels[j] = 0.0f;
        for (int j = 0; j < 64; j += 8) {
            for (int l = 0; l < 8; l++) part[l] += (double)levels[j + l];
        }
    }
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

static void contrast_float(const float *src, float *dst, const FShape *s, float factor) {
    /* blend with the mean grey level (float32 levels summed in double) */
    const float *g = s->c == 1 ? NULL : src + s->plane, *b = s->c == 1 ? NULL : src + 2 * s->plane;
    const float mean = (float)(level_sum(src, g, b, s->plane) / (double)s->plane);
    scale_blend_float(src, dst, s->c * s->plane, mean, factor);
}

CLONES static void color_float(const float *restrict r, const float *restrict g, const float *restrict b,
                               float *restrict out_r, float *restrict out_g, float *restrict out_b, int64_t count,
                               float factor) {
    for (int64_t i = 0; i < count; i++) {
        const float level = grey_level(r[i], g[i], b[i]);
        out_r[i] = blend_level(level, factor, r[i] * 255.0f);
        out_g[i] = blend_level(level, factor, g[i] * 255.0f);
        out_b[i] = blend_level(level, factor, b[i] * 255.0f);
    }
}

CLONES static void solarize_float(const float *restrict src, float *restrict dst, int64_t count, float threshold) {
    for (int64_t i = 0; i < count; i++) dst[i] = src[i] < threshold ? src[i] : 1.0f - src[i];
}

CLONES static void posterize_float(const float *restrict src, float *restrict dst, int64_t count, int32_t mask) {
    for (int64_t i = 0; i < count; i++) {
        int32_t level = (int32_t)__builtin_rintf(src[i] * 255.0f);  /* _quantize: round half to even, clip */
        level = level < 0 ? 0 : level;
        level = level > 255 ? 255 : level;
        dst[i] = (float)(level & mask) / 255.0f;
    }
}

CLONES static void sharpen_float_rows(const float *restrict in, float *restrict out, int64_t h, int64_t w,
                                      float factor) {
    /* functional._smooth_levels without rounding: row sums of three levels, sums of three row sums, + 4 x the
     * centre (exact: a power of two), times float32(1/13); then the blend; the border rows/columns keep L */
    const float thirteenth = (float)(1.0 / 13.0);
    for (int64_t y = 1; y < h - 1; y++) {
        const float *up = in + (y - 1) * w, *mid = in + y * w, *down = in + (y + 1) * w;
        float *o = out + y * w;
        o[0] = finish_level(mid[0] * 255.0f);
        o[w - 1] = finish_level(mid[w - 1] * 255.0f);
        for (int64_t x = 1; x < w - 1; x++) {
            const float a = up[x - 1] * 255.0f + up[x] * 255.0f + up[x + 1] * 255.0f;
            const float b = mid[x - 1] * 255.0f + mid[x] * 255.0f + mid[x + 1] * 255.0f;
            const float c = down[x - 1] * 255.0f + down[x] * 255.0f + down[x + 1] * 255.0f;
            const float level = mid[x] * 255.0f;
            const float smooth = (a + b + c + 4.0f * level) * thirteenth;
            o[x] = blend_level(smooth, factor, level);
        }
    }
}

CLONES static void finish_levels(const float *restrict src, float *restrict dst, int64_t count) {
    for (int64_t i = 0; i < count; i++) dst[i] = finish_level(src[i] * 255.0f);
}

static void sharpness_float(const float *src, float *dst, const FShape *s, float factor) {
    const int64_t h = s->h, w = s->w, p = s->plane;
    if (h < 3 || w < 3) {  /* every pixel is a border pixel: blend(L, L, f) == L */
        finish_levels(src, dst, s->c * p);
        return;
    }
    for (int64_t ch = 0; ch < s->c; ch++) {
        const float *in = src + ch * p;
        float *out = dst + ch * p;
        finish_levels(in, out, w);
        finish_levels(in + p - w, out + p - w, w);
        sharpen_float_rows(in, out, h, w, factor);
    }
}

#if HAVE_AVX512
__attribute__((target("avx512f,avx512vl")))
static void warp_float_avx512(const float *plane, float *out, int32_t h, int32_t w, int32_t x0, int32_t a,
                              int32_t b, int32_t y0, int32_t c, int32_t d, float fill) {
    /* as warp_avx512, gathering 32-bit floats (no bytes read past the plane); the fixed-point source coordinates
     * advance by 16 steps per block instead of being multiplied out (the caller checked they fit 32 bits) */
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i ramp_x = _mm512_mullo_epi32(_mm512_set1_epi32(a), lanes);
    const __m512i ramp_y = _mm512_mullo_epi32(_mm512_set1_epi32(c), lanes);
    const __m512i block_x = _mm512_set1_epi32(16 * a), block_y = _mm512_set1_epi32(16 * c);
    const __m512i width = _mm512_set1_epi32(w), height = _mm512_set1_epi32(h);
    const __m512 level = _mm512_set1_ps(fill);
    for (int32_t y = 0; y < h; y++) {
        __m512i fx = _mm512_add_epi32(_mm512_set1_epi32(x0 + b * y), ramp_x);
        __m512i fy = _mm512_add_epi32(_mm512_set1_epi32(y0 + d * y), ramp_y);
        float *row_out = out + (int64_t)y * w;
        for (int32_t x = 0; x < w; x += 16) {
            const __mmask16 live = w - x >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - x)) - 1u);
            const __m512i col = _mm512_srai_epi32(fx, 16);
            const __m512i row = _mm512_srai_epi32(fy, 16);
            const __mmask16 inside = live & _mm512_cmplt_epu32_mask(col, width) & _mm512_cmplt_epu32_mask(row, height);
            const __m512i at = _mm512_add_epi32(_mm512_mullo_epi32(row, width), col);
            const __m512 values = _mm512_mask_i32gather_ps(level, inside, at, plane, 4);
            _mm512_mask_storeu_ps(row_out + x, live, values);
            fx = _mm512_add_epi32(fx, block_x);
            fy = _mm512_add_epi32(fy, block_y);
        }
    }
}
#endif

static void geometric_float(const float *src, float *dst, const FShape *s, const int64_t *m) {
    const int64_t h = s->h, w = s->w, p = s->plane;
    const int64_t x0 = m[0], a = m[1], b = m[2], y0 = m[3], c = m[4], d = m[5];
    if (a == 65536 && c == 0) {  /* TranslateX/Y, ShearX: row segments */
        for (int64_t y = 0; y < h; y++) {
            int64_t row = (y0 + d * y) >> 16;
            int64_t shift = (x0 + b * y) >> 16;
            int64_t lo = shift < 0 ? -shift : 0, hi = w - shift < w ? w - shift : w;
            for (int64_t ch = 0; ch < s->c; ch++) {
                float *o = dst + ch * p + y * w;
                const float value = s->fill[ch];
                if (row < 0 || row >= h || lo >= hi) {
                    for (int64_t x = 0; x < w; x++) o[x] = value;
                    continue;
                }
                for (int64_t x = 0; x < lo; x++) o[x] = value;
                memcpy(o + lo, src + ch * p + row * w + lo + shift, (size_t)(hi - lo) * sizeof(float));
                for (int64_t x = hi; x < w; x++) o[x] = value;
            }
        }
        return;
    }
    const int small = fits_int32(x0, a, b, w, h) && fits_int32(y0, c, d, w, h);
#if HAVE_AVX512
    if (use_gather && small) {
        for (int64_t ch = 0; ch < s->c; ch++) {
            warp_float_avx512(src + ch * p, dst + ch * p, (int32_t)h, (int32_t)w, (int32_t)x0, (int32_t)a,
                              (int32_t)b, (int32_t)y0, (int32_t)c, (int32_t)d, s->fill[ch]);
        }
        return;
    }
#endif
    int32_t *index = s->index;
    if (small) {
        source_index32(index, h, w, (int32_t)x0, (int32_t)a, (int32_t)b, (int32_t)y0, (int32_t)c, (int32_t)d);
    } else {
        source_index64(index, h, w, x0, a, b, y0, c, d);
    }
    for (int64_t ch = 0; ch < s->c; ch++) {
        float *plane = s->plane_copy;
        memcpy(plane, src + ch * p, (size_t)p * sizeof(float));
        plane[p] = s->fill[ch];
        float *o = dst + ch * p;
        for (int64_t i = 0; i < p; i++) o[i] = plane[index[i]];
    }
}

static void apply_op_float(int32_t kind, const float *src, float *dst, const FShape *s, float factor,
                           const int64_t *map) {
    const int64_t p = s->plane, all = s->c * s->plane;
    uint8_t table[256];
    switch (kind) {
    case FKIND_AUTOCONTRAST:
        for (int64_t ch = 0; ch < s->c; ch++) autocontrast_float(src + ch * p, dst + ch * p, p);
        break;
    case FKIND_EQUALIZE:
        for (int64_t ch = 0; ch < s->c; ch++) {
            /* 8-bit levels, Pillow's table looked up in bytes (VBMI permutes where available), then level / 255:
             * no float table lookup, which compilers turn into gathers (slow on some CPUs) */
            quantise_plane(src + ch * p, s->levels, p);
            equalize_table(s->levels, p, table);
            lookup(s->levels, s->levels, p, table);
            levels_to_float(s->levels, dst + ch * p, p);
        }
        break;
    case FKIND_CONTRAST:
        contrast_float(src, dst, s, factor);
        break;
    case FKIND_COLOR:
        if (s->c == 3) {
            color_float(src, src + p, src + 2 * p, dst, dst + p, dst + 2 * p, p, factor);
        } else {
            memcpy(dst, src, (size_t)all * sizeof(float));
        }
        break;
    case FKIND_SHARPNESS:
        sharpness_float(src, dst, s, factor);
        break;
    case FKIND_SOLARIZE:
        solarize_float(src, dst, all, factor);
        break;
    case FKIND_POSTERIZE:
        {
            const int32_t bits = factor < 1.0f ? 1 : (factor > 8.0f ? 8 : (int32_t)factor);  /* callers pass 1-8 */
            posterize_float(src, dst, all, 256 - (1 << (8 - bits)));
        }
        break;
    case FKIND_BRIGHTNESS:
        scale_blend_float(src, dst, all, 0.0f, factor);
        break;
    default:
        geometric_float(src, dst, s, map);
        break;
    }
}

/* The float32 counterpart of regimen_apply_ops_uint8: images (n, c, h, w) in [0, 1] (the caller checked: AutoContrast
 * relies on it), kinds (n, k) FKIND_*,
 * factors (n, k) float32 (see the enum), maps (n, k, 6) int64 fixed point, fill (c) float32 in [0, 1].
 * Returns 0, or -1 if scratch memory could not be allocated. */
int regimen_apply_ops_float32(const float *images, float *out, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                              const int32_t *kinds, const float *factors, const int64_t *maps, const float *fill) {
    const int64_t size = c * h * w;
    if (n == 0 || size == 0) return 0;
    if (use_avx512 < 0) regimen_set_simd(1);
    float *scratch = (float *)malloc((size_t)(2 * size + h * w + 1) * sizeof(float));
    int32_t *index = (int32_t *)malloc((size_t)(h * w) * sizeof(int32_t));
    uint8_t *levels = (uint8_t *)malloc((size_t)(h * w));
    if (scratch == NULL || index == NULL || levels == NULL) {
        free(scratch);
        free(index);
        free(levels);
        return -1;
    }
    FShape s = {c, h, w, h * w, fill, index, scratch + 2 * size, levels};
    for (int64_t i = 0; i < n; i++) {
        const float *current = images + i * size;
        float *result = out + i * size;
        int64_t last = -1;
        for (int64_t j = 0; j < k; j++) {
            if (kinds[i * k + j] != FKIND_IDENTITY) last = j;
        }
        for (int64_t j = 0; j <= last; j++) {
            const int64_t at = i * k + j;
            if (kinds[at] == FKIND_IDENTITY) continue;
            float *target = j == last ? result : (current == scratch ? scratch + size : scratch);
            apply_op_float(kinds[at], current, target, &s, factors[at], maps + at * 6);
            current = target;
        }
        if (last < 0) memcpy(result, current, (size_t)size * sizeof(float));
    }
    free(scratch);
    free(index);
    free(levels);
    return 0;
}
