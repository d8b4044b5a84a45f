/* The CPU training step's fused kernels (harness.model.native compiles this file once per machine;
 * harness.model.cpu_kernels calls it through ctypes and keeps torch's operations as the fallback).
 *
 * Each kernel does in one pass over memory what took torch several: dropout with its mask, GELU in
 * its sigmoid form, the attention weights' softmax with their dropout, and the head's cross-entropy,
 * each with its backward. Every result is defined by this source alone: plain IEEE
 * single-precision operations in a fixed order (compiled with -ffp-contract=off and without
 * -ffast-math, so no fused multiply-adds and no reassociation), sums over fixed lanes, and an exp of
 * our own; so a result does not depend on the vector width the compiler picks, nor on the machine.
 *
 * Dropout masks are numpy's Philox4x64-10 stream, word for word as harness.model.cpu_kernels.keep_mask
 * draws them: block n of (key, counter) is philox(counter + 1 + n, [key, 0]), each 64-bit word four
 * little-endian 16-bit words, and an entry is kept when its word is at least `threshold`. A
 * sequence's words start at counter step sequence x ceil(words per sequence / 16).
 */
#include <math.h> /* INFINITY, NAN */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8     /* partial sums per reduction: a fixed order whatever the vector width */
#define BLOCK 256   /* elements per block of the elementwise kernels: stays in L1 */
#define WORDS 16    /* 16-bit words per Philox block */

/* ---- Philox4x64-10 ---------------------------------------------------------------------------- */

static void philox_block(uint64_t counter, uint64_t key, uint16_t out[WORDS]) {
    uint64_t x0 = counter, x1 = 0, x2 = 0, x3 = 0, k0 = key, k1 = 0;
    for (int round = 0; round < 10; round++) {
        if (round) {
            k0 += 0x9E3779B97F4A7C15ULL;
            k1 += 0xBB67AE8584CAA73BULL;
        }
        unsigned __int128 p0 = (unsigned __int128)0xD2E7470EE14C6C93ULL * x0;
        unsigned __int128 p1 = (unsigned __int128)0xCA5A826395121157ULL * x2;
        x0 = (uint64_t)(p1 >> 64) ^ x1 ^ k0;
        x1 = (uint64_t)p1;
        x2 = (uint64_t)(p0 >> 64) ^ x3 ^ k1;
        x3 = (uint64_t)p0;
    }
    uint64_t words[4] = {x0, x1, x2, x3};
    memcpy(out, words, sizeof words); /* little-endian, as numpy's view(np.uint16) */
}

/* Words [first, first + n) of the stream that starts at counter step `base`: whole blocks straight
   into out, the partial ones at either end through a copy. */
static void mask_words(uint64_t key, uint64_t base, int64_t first, int64_t n, uint16_t *out) {
    uint16_t block[WORDS];
    uint64_t b = base + 1 + (uint64_t)(first / WORDS);
    int64_t at = first % WORDS;
    if (at && n > 0) {
        int64_t take = WORDS - at < n ? WORDS - at : n;
        philox_block(b++, key, block);
        memcpy(out, block + at, (size_t)take * sizeof *out);
        out += take;
        n -= take;
    }
    for (; n >= WORDS; n -= WORDS, out += WORDS)
        philox_block(b++, key, out);
    if (n > 0) {
        philox_block(b, key, block);
        memcpy(out, block, (size_t)n * sizeof *out);
    }
}

static uint64_t sequence_base(int64_t sequence, int64_t per_sequence) {
    return (uint64_t)sequence * (uint64_t)((per_sequence + WORDS - 1) / WORDS);
}

/* ---- exp -------------------------------------------------------------------------------------- */

/* exp(x) within about 2 ulp (Cephes' expf: Cody-Waite reduction, degree-6 polynomial), 0 below
   -87.3 (where expf is subnormal) and exp(87) above 87; branch-free, so loops over it vectorise. */
static inline float exp_(float x) {
    float zero = x < -87.3f ? 0.0f : 1.0f;
    x = x < -87.3f ? -87.3f : x;
    x = x > 87.0f ? 87.0f : x;
    float t = x * 1.44269504088896341f + 12582912.0f; /* 1.5 x 2^23: its low bits hold round(x log2(e)) */
    float n = t - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000u + 127u) << 23; /* 2^n, n in [-126, 126], built in unsigned bits (no UB) */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale * zero;
}

/* log(x) for finite x > 0 within about 2 ulp (Cephes' logf), for the same reason as exp_. */
static float log_(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    int32_t e = ((bits >> 23) & 0xff) - 126;       /* x = m 2^e, m in [0.5, 1) */
    bits = (bits & 0x807fffff) | (126 << 23);
    float m;
    memcpy(&m, &bits, sizeof m);
    if (m < 0.70710678118654752f) {
        e -= 1;
        m = m + m - 1.0f;
    } else {
        m = m - 1.0f;
    }
    float z = m * m, fe = (float)e;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y += -2.12194440e-4f * fe;
    y += -0.5f * z;
    return m + y + 0.693359375f * fe;
}

static float lanes_sum(const float acc[LANES]) {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* The largest of x[0..n), n >= 1 (exact in any order; fixed lanes let the loop vectorise). */
static float row_max(const float *x, int64_t n) {
    float top[LANES];
    for (int k = 0; k < LANES; k++)
        top[k] = x[0];
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++)
            top[k] = x[j + k] > top[k] ? x[j + k] : top[k];
    for (int k = 0; j < n; j++, k++)
        top[k] = x[j] > top[k] ? x[j] : top[k];
    for (int k = 1; k < LANES; k++)
        top[0] = top[k] > top[0] ? top[k] : top[0];
    return top[0];
}

static float row_dot(const float *x, const float *y, int64_t n) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++)
            acc[k] += x[j + k] * y[j + k];
    for (int k = 0; j < n; j++, k++)
        acc[k] += x[j] * y[j];
    return lanes_sum(acc);
}

/* out[j] = exp(alpha x[j] - shift) for j < n, and their sum over fixed lanes; the tail is one more
   vector whose lanes past n are exp(-inf) = 0, so no scalar loop. */
static float exp_sum(const float *x, float alpha, float shift, int64_t n, float *out) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) {
            out[j + k] = exp_(alpha * x[j + k] - shift);
            acc[k] += out[j + k];
        }
    if (j < n) {
        float tail[LANES];
        for (int k = 0; k < LANES; k++)
            tail[k] = j + k < n ? alpha * x[j + k] - shift : -INFINITY;
        for (int k = 0; k < LANES; k++) {
            tail[k] = exp_(tail[k]);
            acc[k] += tail[k];
        }
        memcpy(out + j, tail, (size_t)(n - j) * sizeof *out);
    }
    return lanes_sum(acc);
}

/* ---- dropout ---------------------------------------------------------------------------------- */

/* y = x * mask with mask = scale where the entry is kept, else 0, over `sequences` blocks of
   per_sequence entries; sequence s is first_sequence + s of its step. */
void harness_dropout(const float *restrict x, float *restrict y, float *restrict mask, int64_t sequences,
                     int64_t per_sequence, uint64_t key, int64_t first_sequence, uint32_t threshold, float scale) {
    uint16_t words[BLOCK];
    for (int64_t s = 0; s < sequences; s++) {
        uint64_t base = sequence_base(first_sequence + s, per_sequence);
        for (int64_t o = 0; o < per_sequence; o += BLOCK) {
            int64_t n = per_sequence - o < BLOCK ? per_sequence - o : BLOCK;
            mask_words(key, base, o, n, words);
            int64_t at = s * per_sequence + o;
            for (int64_t i = 0; i < n; i++) {
                float m = words[i] >= threshold ? scale : 0.0f;
                mask[at + i] = m;
                y[at + i] = x[at + i] * m;
            }
        }
    }
}

/* ---- GELU(tanh) = x sigmoid(2u), u = C (x + A x^3) ---------------------------------------------- */

#define GELU_2C 1.5957691216057308f /* 2 sqrt(2 / pi) */
#define GELU_A 0.044715f

/* y = x s with s = sigmoid(2u); s is kept for the backward unless it is NULL. */
void harness_gelu(const float *restrict x, float *restrict y, float *restrict s, int64_t n) {
    float e[BLOCK];
    for (int64_t o = 0; o < n; o += BLOCK) {
        int64_t m = n - o < BLOCK ? n - o : BLOCK;
        const float *xo = x + o;
        for (int64_t i = 0; i < m; i++) {
            float xi = xo[i];
            e[i] = exp_(-((xi * xi * (GELU_2C * GELU_A) + GELU_2C) * xi));
        }
        for (int64_t i = 0; i < m; i++) {
            float si = 1.0f / (1.0f + e[i]);
            e[i] = si;
            y[o + i] = xo[i] * si;
        }
        if (s)
            memcpy(s + o, e, (size_t)m * sizeof *e);
    }
}

/* dx = g (s + x s (1 - s) 2u'), 2u' = 2C (1 + 3A x^2) */
void harness_gelu_backward(const float *restrict x, const float *restrict s, const float *restrict g,
                           float *restrict dx, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i], si = s[i];
        float x_du = (xi * xi * (3.0f * GELU_2C * GELU_A) + GELU_2C) * xi;
        dx[i] = ((1.0f - si) * si * x_du + si) * g[i];
    }
}

/* ---- attention weights with dropout ----------------------------------------------------------- */

/* For (sequences x heads, T, T) scores q k^T: each row i's weights softmax(alpha x scores) over its
   allowed columns [lo[i], hi[i]) (0 elsewhere), and kept = the weights where the mask keeps them
   (no dropout where kept is NULL). A sequence's mask is its heads x T x T words, entry (h, i, j) word
   (h T + i) T + j. Returns 0, or 1 where it could not allocate a row's words (nothing computed). */
int32_t harness_attention_weights(const float *restrict scores, float *restrict weights, float *restrict kept,
                                  int64_t sequences, int64_t heads, int64_t T, const int32_t *lo, const int32_t *hi,
                                  float alpha, uint64_t key, int64_t first_sequence, uint32_t threshold) {
    uint16_t *words = malloc((size_t)(T > 0 ? T : 1) * sizeof *words);
    if (!words)
        return 1;
    for (int64_t s = 0; s < sequences; s++) {
        uint64_t base = sequence_base(first_sequence + s, heads * T * T);
        for (int64_t h = 0; h < heads; h++) {
            for (int64_t i = 0; i < T; i++) {
                int64_t row = ((s * heads + h) * T + i) * T, a = lo[i], b = hi[i];
                const float *sr = scores + row;
                float *wr = weights + row;
                float top = alpha * row_max(sr + a, b - a); /* = the largest alpha x score: alpha > 0 */
                float inv = 1.0f / exp_sum(sr + a, alpha, top, b - a, wr + a);
                int64_t j;
                for (j = 0; j < a; j++)
                    wr[j] = 0.0f;
                for (j = b; j < T; j++)
                    wr[j] = 0.0f;
                if (!kept) {
                    for (j = a; j < b; j++)
                        wr[j] *= inv;
                    continue;
                }
                float *kr = kept + row;
                mask_words(key, base, (h * T + i) * T + a, b - a, words);
                for (j = 0; j < a; j++)
                    kr[j] = 0.0f;
                for (j = a; j < b; j++) {
                    wr[j] *= inv;
                    kr[j] = words[j - a] >= threshold ? wr[j] : 0.0f;
                }
                for (j = b; j < T; j++)
                    kr[j] = 0.0f;
            }
        }
    }
    free(words);
    return 0;
}

/* In place, the gradient of kept (rows x T) becomes the gradient of the scaled scores:
   kept g - weights sum_j kept_j g_j over the allowed columns (dropout's and softmax's backward), 0 elsewhere. */
void harness_attention_weights_backward(float *restrict grad, const float *restrict weights,
                                        const float *restrict kept, int64_t rows, int64_t T, const int32_t *lo,
                                        const int32_t *hi) {
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = r % T, a = lo[i], b = hi[i];
        float *gr = grad + r * T;
        const float *wr = weights + r * T, *kr = kept + r * T;
        float total = row_dot(kr + a, gr + a, b - a);
        for (int64_t j = a; j < b; j++)
            gr[j] = kr[j] * gr[j] - wr[j] * total;
        for (int64_t j = 0; j < a; j++)
            gr[j] = 0.0f;
        for (int64_t j = b; j < T; j++)
            gr[j] = 0.0f;
    }
}

/* ---- the head's cross-entropy ----------------------------------------------------------------- */

/* For (rows, width) logits of which the first `vocab` columns are the vocabulary: each row's loss
   log-sum-exp - logits[target]. With `probabilities`, the logits become the softmax in place (0 in
   the padding), which is all the backward needs. A NaN logit makes its row's loss NaN (the sum of
   exponentials is then NaN, which no comparison passes). Returns -1; else nothing is computed and it
   returns the first row whose target is not in the vocabulary, -2 where it could not allocate a
   row's exponentials, or -3 unless 1 <= vocab <= width. */
int64_t harness_cross_entropy(float *restrict logits, const int64_t *restrict targets, float *restrict losses,
                              int64_t rows, int64_t width, int64_t vocab, int32_t probabilities) {
    if (vocab < 1 || vocab > width)
        return -3;
    for (int64_t r = 0; r < rows; r++)
        if (targets[r] < 0 || targets[r] >= vocab)
            return r;
    float *e = malloc((size_t)vocab * sizeof *e);
    if (!e)
        return -2;
    for (int64_t r = 0; r < rows; r++) {
        float *lr = logits + r * width;
        float top = row_max(lr, vocab);
        float sum = exp_sum(lr, 1.0f, top, vocab, e);
        losses[r] = sum >= 1.0f ? top + log_(sum) - lr[targets[r]] : NAN; /* the top's own term is 1 */
        if (probabilities) {
            float inv = 1.0f / sum;
            for (int64_t j = 0; j < vocab; j++)
                lr[j] = e[j] * inv;
            for (int64_t j = vocab; j < width; j++)
                lr[j] = 0.0f;
        }
    }
    free(e);
    return -1;
}

/* In place, the softmax becomes the loss's gradient: (softmax - one-hot(target)) x scale. */
void harness_cross_entropy_backward(float *restrict probabilities, const int64_t *restrict targets, int64_t rows,
                                    int64_t width, float scale) {
    for (int64_t r = 0; r < rows; r++) {
        float *pr = probabilities + r * width;
        for (int64_t j = 0; j < width; j++)
            pr[j] *= scale;
        pr[targets[r]] -= scale;
    }
}
