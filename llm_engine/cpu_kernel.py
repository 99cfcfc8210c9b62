"""Small AVX2 kernels for decode on CPU, built on first use: int8-weight matrix x vector
products, paged decode attention, RMSNorm, rope, and ``decode_one``, which chains them through
every layer for a decode step's new tokens (one call per step, not ~15 per layer): up to eight
sequences on int8 weights, any number where the AVX512-BF16 library's GEMM takes over.

    y[m, n] = scale[n] * sum_k x[m, k] * q[n, k]  (+ bias[n]);  x, y float32, q int8

Decode multiplies one activation row by every weight once per step, so its cost is reading
the weights. torch's CPU kernels for that are compute-bound here (``_weight_int8pack_mm`` with
bf16 activations: ~3.5 G weights/s per core) or read 2 bytes a weight (fbgemm fp16). This one
sign-extends int8 to fp32 and runs FMAs on fp32 activations: ~10 G weights/s per core on the
Zen 3 box, 2-3x the int8pack kernel at one row, and closer to fp32 math (activations stay fp32).

It is C compiled with the system ``gcc`` into a cache directory (about a second, once per
source version) and called through ``ctypes``. It runs on torch's own OpenMP runtime (it links
the ``libgomp`` torch ships), so it shares torch's thread team instead of starting a second one.
Anything missing (no gcc, no AVX2, a torch without a bundled libgomp) means :func:`load`
returns ``None`` and callers keep torch's kernels.

A second library, :func:`load_bf16`, holds :func:`prefill_attention`: a prefill chunk's causal
attention over its paged context with AVX512-BF16 dot products (``vdpbf16ps``, float32 sums),
for CPUs that have them and models whose projections already prefill in bf16. Appending a
41-token turn to 900 tokens of history, torch's SDPA (float32, after gathering the context
with a mask) took ~1.0 ms a layer on 2 threads, a third of the whole prefill; this takes ~0.36.
It copies each KV head's keys as bf16 rows and packs its values into pairs once per call;
every task (16 query rows of one KV head's GQA group) then runs two passes: the scores of
each key against its 16 rows as one vector (the key broadcast, the rows' queries packed),
then the softmax-weighted sum of V, with no running rescale. Its dot products run at ~95% of
the CPU's one ``vdpbf16ps`` a cycle; the softmax and the packing take the rest. The same
library holds the rest of prefill on such CPUs: :func:`gemm_bf16`, the projections' GEMM
(bf16 pairs, the same broadcast loop), and :func:`add_norm` and :func:`silu_mul`, which keep
the activations between the GEMMs in bf16; ``prefill_layers`` (:class:`PrefillLayers`) runs
the forward's whole layer loop over them in one call. And a :func:`paged_decode` of its own
for bf16 pools (:func:`decode_attention` picks it): a decode query has only its GQA group's
few rows, so there the keys lie along the lanes, 16 keys' dot products summed across lanes at
once, and p V takes two keys' V rows at a time as bf16 pairs. Its float32 AVX2 twin spent three uops
widening bf16 for every FMA and ran at ~25 GFLOP/s; this one is 2-3.5x faster (48 sequences
at 350 tokens of context, 30 layers' pools: 1.6 -> 0.8 ms a layer, then bound by memory; the
pool's blocks cross 4 KB pages, where the hardware prefetcher stops, so it reads each task's
rows ahead itself, with loads: Zen 5 left its prefetch instructions idle, see ``touch``).
With AVX512-VNNI, its ``q8_linear_vnni`` serves ``decode_one``'s
projections from two sequences: each activation row rounded to int16 at its own scale, one
``vpdpwssd`` multiplies 32 int8 weights, where the AVX2 kernel's widening to float made two
rows compute-bound (and it ran three as two passes over the weights).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

# Both libraries start with this (see _load): the headers, where a context position lives in
# the paged pool, and how a split decode's chunks merge.
_PRELUDE = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One layer's weights for the C layer loops (decode_one, the bf16 library's prefill_layers):
   int8 rows with float32 scales (see q8_linear), and the same weights as bf16 pairs for the
   bf16 library's GEMM (pack_pairs), or NULL. */
typedef struct {
    const int8_t *qkv, *o, *gate_up, *down;
    const float *qkv_scale, *o_scale, *gate_up_scale, *down_scale;
    const uint32_t *qkv_bf, *o_bf, *gate_up_bf, *down_bf;
    const float *qkv_bias;  /* or NULL */
    const float *mlp_norm, *next_norm;  /* next: the next layer's attention norm, or the final */
} Layer;

/* A paged_decode (either library's: the one that serves the pool). */
typedef int (*attention_fn)(const float *, long, const void *, const long *, const long *,
                            float *, long, long, long, long, long, long, float, int, int);

/* The pool slot of context position pos through a block table. The pool holds float32 or
   (bf = 1) bfloat16 and is indexed by element. */
static inline long slot_of(const long *table, long bs, long pos) {
    return table[pos / bs] * bs + pos % bs;
}

typedef struct {
    long per, chunks;  /* positions per chunk, chunks per context */
} Split;

/* How a decode splits its contexts (flash-decoding), the longest being `longest` positions:
   into chunks enough for ~4 tasks a thread (each context gives `units` tasks per chunk), each
   at least 64 positions and a whole number of `align`. */
static inline Split split_context(long longest, long units, int nthreads, long align) {
    long C = (4 * nthreads + units - 1) / units, most = (longest + 63) / 64;
    C = C < most ? C : most;
    C = C < 1 ? 1 : C;
    long per = ((longest + C - 1) / C + align - 1) / align * align;
    per = per < align ? align : per;
    C = (longest + per - 1) / per;
    return (Split){per, C < 1 ? 1 : C};
}

/* A decode split into C chunks of one head's context (flash-decoding): pc [C][D + 2] holds
   each chunk's unnormalised output, its max score and its sum of exponentials (0 for an
   empty chunk) -> o [D], the softmax-weighted output of the whole context. Not inlined:
   inside the bf16 decode's parallel region it made that ~10% slower. */
static __attribute__((noinline)) void merge_chunks(const float *pc, long C, long D, float *o) {
    long P = D + 2;
    float mx = -INFINITY, sum = 0.f;
    for (long c = 0; c < C; c++)
        if (pc[c * P + D + 1] > 0.f && pc[c * P + D] > mx) mx = pc[c * P + D];
    for (long d = 0; d < D; d++) o[d] = 0.f;
    for (long c = 0; c < C; c++) {
        const float *p = pc + c * P;
        if (p[D + 1] <= 0.f) continue;
        float w = expf(p[D] - mx);
        sum += w * p[D + 1];
        for (long d = 0; d < D; d++) o[d] += w * p[d];
    }
    for (long d = 0; d < D; d++) o[d] /= sum;
}
"""

_SOURCE = r"""
static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline __m256 w8(const int8_t *p) {  /* 8 int8 -> 8 float */
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline float tail(const float *x, const int8_t *w, long k, long K) {
    float s = 0.f;
    for (; k < K; k++) s += x[k] * (float)w[k];
    return s;
}

/* One output n for rows m..m+R-1 of x (R = 1, 2 or 4): the weight row is converted once
   per 8 elements and used by every row. R * C = 8 running sums (C vectors of 8 weights a
   step): an FMA's result is needed 4 cycles later and two issue a cycle, so fewer sums in
   flight leave the FMA units idle (4 sums ran at half the speed). */
static inline __attribute__((always_inline)) void dot_rows(const float *x, const int8_t *w,
                                                           long K, float *out, int R, int C) {
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
    long k = 0;
    for (; k + 8 * C <= K; k += 8 * C)
        for (int c = 0; c < C; c++) {
            __m256 v = w8(w + k + 8 * c);
            for (int r = 0; r < R; r++)
                a[r * C + c] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + r * K + k + 8 * c),
                                               a[r * C + c]);
        }
    for (; k + 8 <= K; k += 8) {  /* whole vectors left over */
        __m256 v = w8(w + k);
        for (int r = 0; r < R; r++)
            a[r * C] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + r * K + k), a[r * C]);
    }
    for (int r = 0; r < R; r++) {
        __m256 sum = a[r * C];
        for (int c = 1; c < C; c++) sum = _mm256_add_ps(sum, a[r * C + c]);
        out[r] = hsum(sum) + tail(x + r * K, w, k, K);
    }
}

void q8_linear(const float *x, const int8_t *w, const float *scale, const float *bias,
               float *y, long M, long N, long K, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long n = 0; n < N; n++) {
        const int8_t *wr = w + n * K;
        float s = scale[n], b = bias ? bias[n] : 0.f, r[4];
        for (long m = 0; m < M;) {
            int R = M - m >= 4 ? 4 : M - m >= 2 ? 2 : 1;
            if (R == 4) dot_rows(x + m * K, wr, K, r, 4, 2);
            else if (R == 2) dot_rows(x + m * K, wr, K, r, 2, 4);
            else dot_rows(x + m * K, wr, K, r, 1, 4);
            for (int i = 0; i < R; i++) y[(m + i) * N + n] = r[i] * s + b;
            m += R;
        }
    }
}

/* e^x for x <= 88 (softmax after subtracting the max; SwiGLU), 8 lanes: Cephes' expf
   polynomial, to ~1.2e-7 relative. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_cvtps_epi32(n);
    e = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* The K/V pool holds float32, or bfloat16 (bf = 1: a float32's top 16 bits), indexed by
   element: 8 values from element i as float32. */
static inline __m256 kv8(const void *kv, long i, int bf) {
    if (!bf) return _mm256_loadu_ps((const float *)kv + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)kv + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* n floats into the pool from element i, rounded to nearest even where it holds bf16. */
static void kv_store(void *kv, long i, const float *x, long n, int bf) {
    if (!bf) {
        memcpy((float *)kv + i, x, (size_t)n * sizeof(float));
        return;
    }
    uint16_t *o = (uint16_t *)kv + i;
    for (long j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, x + j, 4);
        o[j] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

#define GM 3 /* query heads of a GQA group per pass: with 4 keys or 4 slabs, 12 sums in registers */

/* The scores of 4 keys (pool elements kb + j row, j < 4) against GN query heads (q + g D):
   s[g ss + j]. Each 8-float slab of a key is widened once for all GN heads. */
static inline __attribute__((always_inline)) void scores4(const float *q, const void *kv,
        long kb, long row, long D, int bf, int GN, float scale, float *s, long ss) {
    __m256 acc[GM][4];
    for (int g = 0; g < GN; g++)
        for (int j = 0; j < 4; j++) acc[g][j] = _mm256_setzero_ps();
    for (long d = 0; d < D; d += 8) {
        __m256 k[4];
        for (int j = 0; j < 4; j++) k[j] = kv8(kv, kb + j * row + d, bf);
        for (int g = 0; g < GN; g++) {
            __m256 qv = _mm256_loadu_ps(q + g * D + d);
            for (int j = 0; j < 4; j++) acc[g][j] = _mm256_fmadd_ps(qv, k[j], acc[g][j]);
        }
    }
    for (int g = 0; g < GN; g++) {  /* one reduction for the 4 keys */
        __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(acc[g][0], acc[g][1]),
                                  _mm256_hadd_ps(acc[g][2], acc[g][3]));
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        _mm_storeu_ps(s + g * ss, _mm_mul_ps(r, _mm_set1_ps(scale)));
    }
}

/* scores4 of one key. */
static inline __attribute__((always_inline)) void scores1(const float *q, const void *kv,
        long kb, long D, int bf, int GN, float scale, float *s, long ss) {
    __m256 acc[GM];
    for (int g = 0; g < GN; g++) acc[g] = _mm256_setzero_ps();
    for (long d = 0; d < D; d += 8) {
        __m256 k = kv8(kv, kb + d, bf);
        for (int g = 0; g < GN; g++)
            acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + d), k, acc[g]);
    }
    for (int g = 0; g < GN; g++) s[g * ss] = hsum(acc[g]) * scale;
}

/* s[g ss + t - t0] = scale * q_g . k_t for positions [t0, t1) of a block table and GN query
   heads (q + g D); the KV head's K columns start at pool element k. */
static inline __attribute__((always_inline)) void scores_of(const float *q, const void *kv,
        long k, const long *tab, long t0, long t1, long bs, long row, long D, float scale,
        int bf, int GN, float *s, long ss) {
    for (long t = t0; t < t1;) {
        long kb = k + slot_of(tab, bs, t) * row;
        long n = bs - t % bs, i = 0;
        n = n < t1 - t ? n : t1 - t;
        if (t + n < t1) {  /* the next block's K and V columns (from k + Hkv D) to L2: blocks */
            long es = bf ? 2 : 4, m = bs < t1 - t - n ? bs : t1 - t - n;  /* cross 4 KB pages */
            const char *p = (const char *)kv + (k + slot_of(tab, bs, t + n) * row) * es;
            for (long j = 0; j < m; j++, p += row * es)
                for (long c = 0; c < D * es; c += 64) {
                    _mm_prefetch(p + c, _MM_HINT_T1);
                    _mm_prefetch(p + row / 2 * es + c, _MM_HINT_T1);  /* V: Hkv D further */
                }
        }
        for (; i + 4 <= n; i += 4)
            scores4(q, kv, kb + i * row, row, D, bf, GN, scale, s + t - t0 + i, ss);
        for (; i < n; i++) scores1(q, kv, kb + i * row, D, bf, GN, scale, s + t - t0 + i, ss);
        t += n;
    }
}

/* s = exp(s - max(s)) in place; returns the sum, *mx the max. */
static float softmax_terms(float *s, long n, float *mx) {
    float m = -INFINITY, sum = 0.f;
    for (long t = 0; t < n; t++) m = s[t] > m ? s[t] : m;
    __m256 mv = _mm256_set1_ps(m), sv = _mm256_setzero_ps();
    long t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
        _mm256_storeu_ps(s + t, e);
        sv = _mm256_add_ps(sv, e);
    }
    sum = hsum(sv);
    for (; t < n; t++) {
        s[t] = expf(s[t] - m);
        sum += s[t];
    }
    *mx = m;
    return sum;
}

/* o_g = sum_t p_g[t - t0] * v_t (p_g = p + g ps, o_g = o + g os) over positions [t0, t1) of a
   block table, for GN query heads and W 8-float slabs of V from pool element v: each slab of
   a V row is widened once for all GN heads. */
static inline __attribute__((always_inline)) void wsum_slabs(const float *p, long ps,
        const void *kv, long v, const long *tab, long t0, long t1, long bs, long row, int bf,
        int GN, int W, float *o, long os) {
    __m256 acc[GM][4];
    for (int g = 0; g < GN; g++)
        for (int j = 0; j < W; j++) acc[g][j] = _mm256_setzero_ps();
    for (long t = t0; t < t1;) {
        long vr = v + slot_of(tab, bs, t) * row;
        long n = bs - t % bs;
        n = n < t1 - t ? n : t1 - t;
        for (long i = 0; i < n; i++, vr += row) {
            __m256 x[4];
            for (int j = 0; j < W; j++) x[j] = kv8(kv, vr + 8 * j, bf);
            for (int g = 0; g < GN; g++) {
                __m256 pv = _mm256_set1_ps(p[g * ps + t - t0 + i]);
                for (int j = 0; j < W; j++) acc[g][j] = _mm256_fmadd_ps(pv, x[j], acc[g][j]);
            }
        }
        t += n;
    }
    for (int g = 0; g < GN; g++)
        for (int j = 0; j < W; j++) _mm256_storeu_ps(o + g * os + 8 * j, acc[g][j]);
}

/* One KV head's GN query heads over positions [t0, t1): scores, softmax terms and the
   unnormalised p V of each head g into pm + g os ([D] then its max score and sum). */
static inline __attribute__((always_inline)) void attend_heads(const float *q, const void *kv,
        long kh, long Hkv, const long *tab, long t0, long t1, long bs, long D, float scale,
        int bf, int GN, float *s, long ss, float *pm, long os) {
    long row = 2 * Hkv * D, v = (Hkv + kh) * D, d = 0;
    scores_of(q, kv, kh * D, tab, t0, t1, bs, row, D, scale, bf, GN, s, ss);
    for (int g = 0; g < GN; g++)
        pm[g * os + D + 1] = softmax_terms(s + g * ss, t1 - t0, pm + g * os + D);
    for (; d + 32 <= D; d += 32)
        wsum_slabs(s, ss, kv, v + d, tab, t0, t1, bs, row, bf, GN, 4, pm + d, os);
    for (; d < D; d += 8)
        wsum_slabs(s, ss, kv, v + d, tab, t0, t1, bs, row, bf, GN, 1, pm + d, os);
}

/* One query token per sequence against its context in the paged pool (split like
   flash-decoding). q: row b at q + b * q_stride, heads [H, D]; pool: [slots, 2, Hkv, D] (K then
   V), float32 or (bf) bfloat16; tables: [B, nb] block ids; lens: [B] context lengths (the new
   token included, stored); out: [B, H, D]; D a multiple of 8.
   A task is one KV head of one sequence over one chunk of its context, for the head's whole
   GQA group, three query heads at a time: each slab of a K or V row is widened from bf16 once
   for the three (widening had cost two uops per FMA), and comes from memory once. Few
   sequences split their context into chunks so that every thread has work; each chunk leaves
   its max score, its sum of exponentials and its unnormalised output, and a second pass
   merges the chunks. Returns 0, or -1 when its buffers could not be allocated. */
int paged_decode(const float *q, long q_stride, const void *pool, const long *tables,
                  const long *lens, float *out, long B, long H, long Hkv, long D, long nb,
                  long bs, float scale, int bf, int nthreads) {
    long G = H / Hkv, longest = 0, P = D + 2;
    for (long b = 0; b < B; b++) longest = lens[b] > longest ? lens[b] : longest;
    Split sp = split_context(longest, B * Hkv, nthreads, 1);
    long C = sp.chunks, per = sp.per;
    float *part = malloc((size_t)(B * H * C * P) * sizeof(float));
    if (part == NULL) return -1;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float *s = malloc((size_t)(GM * per) * sizeof(float));
        if (s == NULL) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (long task = 0; task < B * Hkv * C; task++) {
            if (s == NULL) continue;
            long b = task / (Hkv * C), kh = task / C % Hkv, c = task % C;
            long t0 = c * per, t1 = t0 + per < lens[b] ? t0 + per : lens[b];
            const long *tab = tables + b * nb;
            for (long g0 = 0; g0 < G; g0 += GM) {  /* GM query heads of the group at a time */
                long h = kh * G + g0, os = C * P;
                int gn = G - g0 < GM ? (int)(G - g0) : GM;
                float *pm = part + ((b * H + h) * C + c) * P;
                const float *qh = q + b * q_stride + h * D;
                if (t1 <= t0) {  /* an empty chunk of a shorter context */
                    for (int g = 0; g < gn; g++) {
                        pm[g * os + D] = -INFINITY;
                        pm[g * os + D + 1] = 0.f;
                    }
                    continue;
                }
                switch (gn) {  /* a constant head count keeps the sums in registers */
                    case 3: attend_heads(qh, pool, kh, Hkv, tab, t0, t1, bs, D, scale, bf, 3, s,
                                         per, pm, os); break;
                    case 2: attend_heads(qh, pool, kh, Hkv, tab, t0, t1, bs, D, scale, bf, 2, s,
                                         per, pm, os); break;
                    default: attend_heads(qh, pool, kh, Hkv, tab, t0, t1, bs, D, scale, bf, 1, s,
                                          per, pm, os);
                }
            }
        }
        free(s);
        #pragma omp for schedule(static)
        for (long bh = 0; bh < B * H; bh++) merge_chunks(part + bh * C * P, C, D, out + bh * D);
    }
    free(part);
    return failed ? -1 : 0;
}

/* act [B, inter] = silu(gate) * up of gu [B, 2 inter] (gate, then up), silu(g) = g / (1 + e^-g)
   as torch computes it (e^-g capped at e^88). libm's expf, one at a time, cost ~7% of a
   decode step. */
static void swiglu(const float *gu, float *act, long B, long inter, int nthreads) {
    const __m256 one = _mm256_set1_ps(1.f), cap = _mm256_set1_ps(88.f);
    #pragma omp parallel for num_threads(nthreads) if (B >= 8) schedule(static)
    for (long b = 0; b < B; b++) {
        const float *g = gu + b * 2 * inter, *u = g + inter;
        float *a = act + b * inter;
        long i = 0;
        for (; i + 8 <= inter; i += 8) {
            __m256 x = _mm256_loadu_ps(g + i);
            __m256 e = exp8(_mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), cap));
            __m256 silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(a + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
        }
        for (; i < inter; i++) a[i] = g[i] / (1.f + expf(-g[i])) * u[i];
    }
}

/* x: [rows, dim]; x += r first when r is given; out = w * (x / sqrt(mean(x^2) + eps)). */
void rms_norm(float *x, const float *r, const float *w, float *out, long rows, long dim,
              float eps) {
    for (long i = 0; i < rows; i++) {
        float *xi = x + i * dim, *oi = out + i * dim, ss = 0.f;
        if (r) {
            const float *ri = r + i * dim;
            #pragma omp simd
            for (long d = 0; d < dim; d++) xi[d] += ri[d];
        }
        #pragma omp simd reduction(+:ss)
        for (long d = 0; d < dim; d++) ss += xi[d] * xi[d];
        float inv = 1.f / sqrtf(ss / (float)dim + eps);
        #pragma omp simd
        for (long d = 0; d < dim; d++) oi[d] = w[d] * (xi[d] * inv);
    }
}

/* In place on the first `heads` heads of each row of x (row stride `stride`, heads [D]):
   x = x * cos + rotate_half(x) * sin, cos/sin rows of table [2, max_len, D] at pos[row]. */
void rope(float *x, long rows, long stride, long heads, long D, const float *table,
          long max_len, const long *pos) {
    long half = D / 2;
    for (long i = 0; i < rows; i++) {
        const float *c = table + pos[i] * D, *s = table + (max_len + pos[i]) * D;
        for (long h = 0; h < heads; h++) {
            float *xh = x + i * stride + h * D;
            #pragma omp simd
            for (long d = 0; d < half; d++) {
                float a = xh[d], b = xh[d + half];
                xh[d] = a * c[d] - b * s[d];
                xh[d + half] = b * c[d + half] + a * s[d + half];
            }
        }
    }
}

typedef int (*linear_fn)(const float *, const int8_t *, const float *, const float *, float *,
                         long, long, long, int);
typedef void (*gemm_fn)(const float *, const uint32_t *, const float *, float *, uint16_t *,
                        long, long, long, int);

/* How decode_one runs its projections: int8 rows (q8_linear, or `wide` from 2 rows), or from
   gemm_rows rows the bf16 library's GEMM over the layers' bf16 pairs, x rounded into xb. */
typedef struct {
    linear_fn wide;
    gemm_fn gemm;
    long gemm_rows;
    uint16_t *xb;
} Projector;

/* q8_linear, or for 2+ rows `wide` where given (the bf16 library's q8_linear_vnni): from 2
   rows q8_linear is bound by widening int8 to float. Decode steps at 400 tokens of context,
   same process, q8_linear vs wide: Zen 4, 1 row 5.36 vs 5.97 ms, 2 rows 8.31 vs 8.22, 3 rows
   10.75 vs 8.37; Zen 5 (whole 512-bit units), 2 rows 5.58 / 6.09 / 5.83 vs 4.91 / 5.78 / 5.30
   (alternating processes). Returns 0, or -1 when `wide` ran out of memory. */
static int project(const Projector *pr, const float *x, const int8_t *w, const float *scale,
                   const uint32_t *wb, const float *bias, float *y, long M, long N, long K,
                   int nthreads) {
    if (pr->gemm && wb && M >= pr->gemm_rows) {
        pr->gemm(x, wb, bias, y, pr->xb, M, N, K, nthreads);
        return 0;
    }
    if (pr->wide && M >= 2) return pr->wide(x, w, scale, bias, y, M, N, K, nthreads);
    q8_linear(x, w, scale, bias, y, M, N, K, nthreads);
    return 0;
}

/* One new token of each of B sequences through every layer, with the kernels above and no
   trip back to Python between them (each op's call overhead, ~60 us a layer, was a fifth of a
   step). x: [B, hidden] the residual stream (in: the embeddings, out: the last residual);
   h: [B, hidden] in: RMSNorm(x) with layer 0's norm, out: the final norm's output. pool: layer
   0's K/V pool (float32, or bf16 with bf), layers layer_stride elements apart; per sequence
   pos: the token's position, slot: where its K/V go, lens: pos + 1, tables: [B, nb] block
   tables. bf_attention: the bf16 library's paged_decode, for a bf16 pool, or NULL (this
   library's); wide: its q8_linear_vnni for 2+ sequences, or NULL (q8_linear); gemm: its
   linear_bf16, for gemm_rows sequences or more, or NULL. scratch: B ((2 H + 2 Hkv) D +
   3 inter + hidden + max(hidden, H D, inter) / 2) floats. The same math as
   Transformer.forward (q, k, v heads in one matmul, K then V in the pool). Returns 0, or -1
   when attention or `wide` ran out of memory. */
int decode_one(const Layer *layers, long L, float *x, float *h, long B, long hidden,
                long inter, long H, long Hkv, long D, const float *rope_table, long max_len,
                const long *pos, void *pool, long layer_stride, const long *slot,
                const long *lens, const long *tables, long nb, long bs, float eps, int bf,
                attention_fn bf_attention, linear_fn wide, gemm_fn gemm, long gemm_rows,
                float *scratch, int nthreads) {
    attention_fn attention = bf && bf_attention ? bf_attention : paged_decode;
    long nq = (H + 2 * Hkv) * D, row = 2 * Hkv * D;
    float *qkv = scratch, *attn = qkv + B * nq, *gu = attn + B * H * D, *act = gu + B * 2 * inter;
    float *tmp = act + B * inter, scale = 1.f / sqrtf((float)D);
    Projector pr = {wide, gemm, gemm_rows, (uint16_t *)(tmp + B * hidden)};
    for (long l = 0; l < L; l++) {
        const Layer *w = layers + l;
        void *p = (char *)pool + l * layer_stride * (bf ? 2 : 4);
        if (project(&pr, h, w->qkv, w->qkv_scale, w->qkv_bf, w->qkv_bias, qkv, B, nq, hidden,
                    nthreads))
            return -1;
        rope(qkv, B, nq, H + Hkv, D, rope_table, max_len, pos);
        for (long b = 0; b < B; b++) kv_store(p, slot[b] * row, qkv + b * nq + H * D, row, bf);
        if (attention(qkv, nq, p, tables, lens, attn, B, H, Hkv, D, nb, bs, scale, bf, nthreads))
            return -1;
        if (project(&pr, attn, w->o, w->o_scale, w->o_bf, NULL, tmp, B, hidden, H * D, nthreads))
            return -1;
        rms_norm(x, tmp, w->mlp_norm, h, B, hidden, eps);
        if (project(&pr, h, w->gate_up, w->gate_up_scale, w->gate_up_bf, NULL, gu, B, 2 * inter,
                    hidden, nthreads))
            return -1;
        swiglu(gu, act, B, inter, nthreads);
        if (project(&pr, act, w->down, w->down_scale, w->down_bf, NULL, tmp, B, hidden, inter,
                    nthreads))
            return -1;
        rms_norm(x, tmp, w->next_norm, h, B, hidden, eps);
    }
    return 0;
}
"""


# Prefill attention in bfloat16 products with float32 sums (AVX512-BF16), a library of its own:
# it is built with AVX-512 flags, and only where the CPU has them.
_BF16_SOURCE = r"""
#define R 16  /* query rows per task: their scores against one key are one 16-lane vector */
#define KB 16 /* keys per register block of the scores */
#define RG 8  /* rows per register block of p V: 16 accumulators with two 16-wide column tiles */

/* e^x for x <= 0, 16 lanes, to 2.1e-4 relative: 2^n 2^f with a cubic fit of 2^f on
   [-1/2, 1/2] (relative error weighted). Every caller rounds the result, or what it scales,
   to bf16 (2^-9, ten times coarser); the quartic it replaced (5.6e-5) cost 1-2 % more of
   prefill attention (46 rows over 900 and 1,900 keys, 30 layers, same process, the order
   alternated: 5.45 -> 5.36 and 11.05 -> 10.95 ms). */
static inline __m512 exp16(__m512 x) {
    __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)),
                             _mm512_set1_ps(1.44269504088896341f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(5.485438e-2f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4182249e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9324851e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.99998755f));
    return _mm512_scalef_ps(p, n);
}

/* 32 floats -> 32 bf16 in order (16 pairs). */
static inline __m512i bf16x32(const float *x) {
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
}

/* The softmax terms e^(s - mx) of key j's scores s against R rows, 0 where a row does not
   see key j (lim: the keys each row sees). */
static inline __m512 term(const float *s, __m512 mx, __m512i lim, long j) {
    __mmask16 seen = _mm512_cmpgt_epi32_mask(lim, _mm512_set1_epi32((int)j));
    return _mm512_maskz_mov_ps(seen, exp16(_mm512_sub_ps(_mm512_load_ps(s), mx)));
}

/* 32 bf16, a[0..15] then b[0..15] -> the 16 pairs (a[i], b[i]). */
static inline __m512i interleave(__m512i c) {
    const __m512i il = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                        24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                        16, 0);
    return _mm512_permutexvar_epi16(il, c);
}

/* Two vectors of 16 floats a, b -> the 16 bf16 pairs (a[i], b[i]). */
static inline __m512i pairs(__m512 a, __m512 b) {
    return interleave((__m512i)_mm512_cvtne2ps_pbh(b, a));
}

/* 16 values of a V row (from pool element r, or none: r < 0) at column d, as bf16. */
static inline __m256i v16(const void *kv, long r, long d, int bf) {
    if (r < 0) return _mm256_setzero_si256();
    if (bf) return _mm256_loadu_si256((const __m256i *)((const uint16_t *)kv + r + d));
    return (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps((const float *)kv + r + d));
}

/* The pool elements where keys [16 t, 16 t + 16)'s rows start (-1 past S): one division for
   the tile, not one per key. */
static void tile_rows(const long *table, long bs, long row, long t, long S, long *at) {
    long pos = 16 * t, blk = pos / bs, in = pos % bs;
    for (int j = 0; j < 16; j++, pos++) {
        at[j] = pos < S ? (table[blk] * bs + in) * row : -1;
        if (++in == bs) in = 0, blk++;
    }
}

/* V of one KV head (columns v.. of each row), a tile's 16 keys (rows at, -1: none): for each
   pair of keys and 16 dimensions, the pairs (v_2i[d], v_2i+1[d]) as one vector:
   dst [8][D/16][16] uint32. */
static void pack_v(const void *kv, long v, const long *at, long D, int bf, uint32_t *dst) {
    for (long i = 0; i < 8; i++) {
        long v0 = at[2 * i] < 0 ? -1 : at[2 * i] + v;
        long v1 = at[2 * i + 1] < 0 ? -1 : at[2 * i + 1] + v;
        for (long d = 0; d < D; d += 16) {
            __m256i a = v16(kv, v0, d, bf), b = v16(kv, v1, d, bf);
            __m512i c = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);  /* a, then b */
            _mm512_storeu_si512(dst + (i * D + d), interleave(c));
        }
    }
}

/* K of one KV head (columns k.. of each row), a tile's 16 keys (rows at, -1: none) as bf16
   rows of D, zero for none: dst [16][D] uint16. */
static void copy_k(const void *kv, long k, const long *at, long D, int bf, uint16_t *dst) {
    for (long j = 0; j < 16; j++)
        for (long d = 0; d < D; d += 32) {
            __m512i x = _mm512_setzero_si512();
            if (at[j] >= 0 && bf) x = _mm512_loadu_si512((const uint16_t *)kv + at[j] + k + d);
            else if (at[j] >= 0) x = bf16x32((const float *)kv + at[j] + k + d);
            _mm512_storeu_si512(dst + j * D + d, x);
        }
}

/* acc[b] = the scores of key b (row b of kr: P pairs of bf16) against R query rows (Q: P
   vectors of R pairs). */
static inline __attribute__((always_inline)) void scores(const uint32_t *kr, const uint32_t *Q,
                                                          long P, __m512 *acc) {
    for (int b = 0; b < KB; b++) acc[b] = _mm512_setzero_ps();
    for (long p = 0; p < P; p++) {
        __m512bh qv = (__m512bh)_mm512_loadu_si512(Q + p * R);
        for (int b = 0; b < KB; b++) {
            __m512bh kb = (__m512bh)_mm512_set1_epi32((int)kr[b * P + p]);
            acc[b] = _mm512_dpbf16_ps(acc[b], kb, qv);
        }
    }
}

/* Causal attention of the T newest tokens of one sequence over its S = start + T context in
   the paged pool (their K/V already stored), bf16 products with float32 sums.
   q: token t's heads at q + t * q_stride, [H, D]; pool: [slots, 2, Hkv, D] float32 or (bf)
   bfloat16; table: block ids; out: [T, H, D]. D a multiple of 32, at most 256. Returns 0, or
   -1 when its buffers could not be allocated.
   Rows are (token, query head) pairs of one KV head's group: row r is token r / G of head
   kh G + r % G. A task takes R of them: the scores of each key against its R rows are one
   vector (K is broadcast, Q is packed), so its softmax runs down the keys lane by lane. */
int prefill_attention(const float *q, long q_stride, const void *pool, const long *table,
                       long start, long T, float *out, long H, long Hkv, long D, long bs,
                       float scale, int bf, int nthreads) {
    long S = start + T, Sp = (S + 15) / 16 * 16, G = H / Hkv, P = D / 2, row = 2 * Hkv * D;
    long rows = G * T, tiles = (rows + R - 1) / R, nt = Sp / 16, tasks = Hkv * tiles;
    uint16_t *kc = aligned_alloc(64, (size_t)(Hkv * Sp * D) * 2);     /* [Hkv][Sp][D] */
    uint32_t *vp = aligned_alloc(64, (size_t)(Hkv * Sp * P) * 4);     /* [Hkv][Sp/2][D] */
    uint32_t *qp = aligned_alloc(64, (size_t)(tasks * P * R) * 4);    /* [tasks][P][R] */
    int failed = kc == NULL || vp == NULL || qp == NULL;
    if (failed) {
        free(kc);
        free(vp);
        free(qp);
        return -1;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        #pragma omp for schedule(static)
        for (long t = 0; t < nt; t++) {  /* a tile of 16 keys, every head: whole rows in turn */
            long at[16], next[16], es = bf ? 2 : 4;
            tile_rows(table, bs, row, t, S, at);
            tile_rows(table, bs, row, t + 1, S, next);
            for (int j = 0; j < 16 && next[j] >= 0; j++)  /* the next tile's rows to L2: */
                for (long c = 0; c < row * es; c += 64)  /* blocks cross 4 KB pages */
                    _mm_prefetch((const char *)pool + next[j] * es + c, _MM_HINT_T1);
            for (long kh = 0; kh < Hkv; kh++) {
                long k0 = (kh * Sp + 16 * t) * D;  /* key 16 t of head kh: D bf16 = P pairs */
                copy_k(pool, kh * D, at, D, bf, kc + k0);
                pack_v(pool, (Hkv + kh) * D, at, D, bf, vp + k0 / 2);
            }
        }
        #pragma omp for schedule(static)
        for (long task = 0; task < tasks; task++) {  /* Q as pairs of dimensions x R rows */
            long kh = task / tiles, r0 = task % tiles * R;
            uint32_t tmp[R * 128];
            for (long r = 0; r < R; r++) {
                uint32_t *dst = tmp + r * P;
                if (r0 + r >= rows) {
                    memset(dst, 0, (size_t)P * 4);
                    continue;
                }
                const float *qr = q + (r0 + r) / G * q_stride + (kh * G + (r0 + r) % G) * D;
                float x[32];
                for (long d = 0; d < D; d += 32) {
                    for (int j = 0; j < 32; j++) x[j] = qr[d + j] * scale;
                    _mm512_storeu_si512(dst + d / 2, bf16x32(x));
                }
            }
            __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
            __m512i idx = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)P));
            uint32_t *dst = qp + task * P * R;
            for (long p = 0; p < P; p++)
                _mm512_storeu_si512(dst + p * R, _mm512_i32gather_epi32(idx, tmp + p, 4));
        }
        float *s = aligned_alloc(64, (size_t)(Sp * R) * 4);         /* [keys][R] */
        uint32_t *pb = aligned_alloc(64, (size_t)(Sp / 2 * R) * 4); /* [key pairs][R] */
        if (s == NULL || pb == NULL) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (long task = 0; task < tasks; task++) {
            if (s == NULL || pb == NULL) continue;
            long kh = task / tiles, r0 = task % tiles * R;
            long last = r0 + R - 1 < rows - 1 ? r0 + R - 1 : rows - 1;
            long n = (start + last / G + 1 + 15) / 16 * 16;  /* the last row's keys, rounded up */
            int lim[R];  /* keys each row sees (none past the last row) */
            for (int r = 0; r < R; r++)
                lim[r] = r0 + r < rows ? (int)(start + (r0 + r) / G + 1) : 0;
            __m512i limv = _mm512_loadu_si512(lim);
            const uint16_t *K = kc + kh * Sp * D;
            const uint32_t *Q = qp + task * P * R, *V = vp + kh * Sp * P;
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (long j = 0; j < n; j += KB) {  /* scores: KB keys x R rows */
                __m512 acc[KB];
                const uint32_t *kr = (const uint32_t *)(K + j * D);
                switch (P) {  /* a constant row length keeps the keys' addresses in the code */
                    case 32: scores(kr, Q, 32, acc); break;
                    case 64: scores(kr, Q, 64, acc); break;
                    case 16: scores(kr, Q, 16, acc); break;
                    case 128: scores(kr, Q, 128, acc); break;
                    default: scores(kr, Q, P, acc);
                }
                for (int b = 0; b < KB; b++) {
                    __mmask16 seen = _mm512_cmpgt_epi32_mask(limv, _mm512_set1_epi32((int)(j + b)));
                    mx = _mm512_mask_max_ps(mx, seen, mx, acc[b]);
                    _mm512_store_ps(s + (j + b) * R, acc[b]);
                }
            }
            __m512 sum = _mm512_setzero_ps();
            for (long j = 0; j < n; j += 2) {  /* softmax terms, as bf16 pairs of keys */
                __m512 e0 = term(s + j * R, mx, limv, j);
                __m512 e1 = term(s + (j + 1) * R, mx, limv, j + 1);
                sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
                _mm512_store_si512(pb + j / 2 * R, pairs(e0, e1));
            }
            float inv[R];  /* 1 / sum, 0 for rows that see no key (past the last row) */
            __mmask16 some = _mm512_cmp_ps_mask(sum, _mm512_setzero_ps(), _CMP_GT_OQ);
            _mm512_storeu_ps(inv, _mm512_maskz_div_ps(some, _mm512_set1_ps(1.f), sum));
            for (long g = 0; g < R && r0 + g < rows; g += RG) {
                for (long d = 0; d < D; d += 32) {  /* out = p V: RG rows x 32 dimensions */
                    __m512 acc[RG][2];
                    for (int r = 0; r < RG; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
                    for (long i = 0; i < n / 2; i++) {
                        const uint32_t *vr = V + i * D + d;
                        __m512bh a = (__m512bh)_mm512_loadu_si512(vr);
                        __m512bh b = (__m512bh)_mm512_loadu_si512(vr + 16);
                        for (int r = 0; r < RG; r++) {
                            __m512bh pr = (__m512bh)_mm512_set1_epi32((int)pb[i * R + g + r]);
                            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], pr, a);
                            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], pr, b);
                        }
                    }
                    for (int r = 0; r < RG && r0 + g + r < rows; r++) {
                        long rr = r0 + g + r;
                        float *o = out + (rr / G * H + kh * G + rr % G) * D + d;
                        __m512 iv = _mm512_set1_ps(inv[g + r]);
                        _mm512_storeu_ps(o, _mm512_mul_ps(acc[r][0], iv));
                        _mm512_storeu_ps(o + 16, _mm512_mul_ps(acc[r][1], iv));
                    }
                }
            }
        }
        free(s);
        free(pb);
    }
    free(kc);
    free(vp);
    free(qp);
    return failed ? -1 : 0;
}

/* Lane j = the sum of v[j]'s 16 lanes: a tree of 15 shuffle-adds, then one permute back to
   key order (the tree leaves key 4 i + k in lane 4 k + i). */
static inline __m512 sum16(const __m512 *v) {
    __m512 c[8], e[4], g[2];
    for (int i = 0; i < 8; i++)  /* 256-bit halves: keys 2i, 2i+1 -> 8 partial sums each */
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)  /* 128-bit lanes: key 4 i + k -> lane k, 4 partial sums */
        e[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        g[i] = _mm512_add_ps(_mm512_shuffle_ps(e[2 * i], e[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(e[2 * i], e[2 * i + 1], 0xEE));
    __m512 r = _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], 0x88),
                             _mm512_shuffle_ps(g[0], g[1], 0xDD));
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(order, r);
}

/* The scores of 16 keys (bf16 rows kr[j] + off, D = 32 P32) against one query head (P32
   vectors of 32 bf16, scaled): one 16-lane vector. */
static inline __attribute__((always_inline)) __m512 qk16(const uint16_t *const *kr, long off,
                                                          const __m512bh *qv, long P32) {
    __m512 acc[16];
    for (int j = 0; j < 16; j++) {
        acc[j] = _mm512_setzero_ps();
        for (long p = 0; p < P32; p++) {
            __m512bh k = (__m512bh)_mm512_loadu_si512(kr[j] + off + 32 * p);
            acc[j] = _mm512_dpbf16_ps(acc[j], k, qv[p]);
        }
    }
    return sum16(acc);
}

/* acc[g][c] += the GN query heads' probabilities (bf16 pairs of keys, pb + g * pstride) times
   V columns [off + 16 c, off + 16 c + 16) of the key rows vr, over npairs pairs of keys. Each
   pair's two V rows are interleaved into (v_2i[d], v_2i+1[d]) pairs in registers. */
static inline __attribute__((always_inline)) void pv_tile(const uint16_t *const *vr, long off,
        const uint32_t *pb, long pstride, long npairs, int GN, int CN, __m512i lo, __m512i hi,
        __m512 acc[4][4]) {
    for (int g = 0; g < GN; g++)
        for (int c = 0; c < CN; c++) acc[g][c] = _mm512_setzero_ps();
    for (long i = 0; i < npairs; i++) {
        const uint16_t *a = vr[2 * i] + off, *b = vr[2 * i + 1] + off;
        __m512bh x[4];
        for (int c = 0; c < CN; c += 2) {
            __m512i va = _mm512_loadu_si512(a + 16 * c), vb = _mm512_loadu_si512(b + 16 * c);
            x[c] = (__m512bh)_mm512_permutex2var_epi16(va, lo, vb);
            x[c + 1] = (__m512bh)_mm512_permutex2var_epi16(va, hi, vb);
        }
        for (int g = 0; g < GN; g++) {
            __m512bh p = (__m512bh)_mm512_set1_epi32((int)pb[g * pstride + i]);
            for (int c = 0; c < CN; c++) acc[g][c] = _mm512_dpbf16_ps(acc[g][c], p, x[c]);
        }
    }
}

/* pv_tile with constant tile sizes (the sums stay in registers): gn heads, cn vectors. */
static void pv(const uint16_t *const *vr, long off, const uint32_t *pb, long pstride,
               long npairs, int gn, int cn, __m512i lo, __m512i hi, __m512 acc[4][4]) {
    switch (gn * 8 + cn) {
        case 36: pv_tile(vr, off, pb, pstride, npairs, 4, 4, lo, hi, acc); break;
        case 28: pv_tile(vr, off, pb, pstride, npairs, 3, 4, lo, hi, acc); break;
        case 20: pv_tile(vr, off, pb, pstride, npairs, 2, 4, lo, hi, acc); break;
        case 12: pv_tile(vr, off, pb, pstride, npairs, 1, 4, lo, hi, acc); break;
        case 34: pv_tile(vr, off, pb, pstride, npairs, 4, 2, lo, hi, acc); break;
        case 26: pv_tile(vr, off, pb, pstride, npairs, 3, 2, lo, hi, acc); break;
        case 18: pv_tile(vr, off, pb, pstride, npairs, 2, 2, lo, hi, acc); break;
        default: pv_tile(vr, off, pb, pstride, npairs, 1, 2, lo, hi, acc);
    }
}

/* The first n of 16 lanes (none for n <= 0, all for n >= 16). */
static inline __mmask16 first(long n) {
    return n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* Load one byte of each cache line of p[0, bytes): the lines come in from memory together.
   Decode attention read its rows at 20-23 GB/s of the ~47 a streaming sum reads here (Zen 5,
   2 threads) while it prefetched the next 16 keys' rows to L2 (prefetcht1) a group ahead;
   prefetching a task's whole rows at its start changed nothing, loading them took it to
   30-37 GB/s. 30 layers' pools, same process, order alternated, before -> after: 48
   sequences of 360 tokens 17.7 -> 12.0 ms, 16 of 360 5.8 -> 4.2, 8 of 900 7.6 -> 6.0, 4 of
   2,000 8.6 -> 6.6, 1 of 4,000 4.0 -> 3.0; 1 of 900 (already split over both threads) and
   short contexts unchanged. With blocks scattered over the pool: 48 x 360 20.3 -> 13.4. */
static inline void touch(const void *p, long bytes) {
    for (long e = 0; e < bytes; e += 64) (void)*((volatile const char *)p + e);
}

/* Bytes of K/V rows decode attention reads ahead of its scores (see touch): within L2. */
#define DECODE_AHEAD (512 * 1024)

/* paged_decode of the AVX2 library (same arguments, same result up to rounding) over a bf16
   pool (bf must be 1) with bf16 products and float32 sums, as prefill_attention: one query
   token per sequence, split like flash-decoding. Returns 0, -1 when its buffers could not be
   allocated, -2 for a float32 pool or a D that is not a multiple of 32.
   A task is one sequence over one chunk of its context, every head: its 16-key groups'
   rows are read once from memory (whole rows, in order), then from cache for each head. The
   scores of 16 keys against one head are 16 vectors of 32-wide dot products summed across
   lanes together (sum16); p V takes two keys' V rows at a time, interleaved into pairs. */
int paged_decode(const float *q, long q_stride, const void *pool, const long *tables,
                 const long *lens, float *out, long B, long H, long Hkv, long D, long nb,
                 long bs, float scale, int bf, int nthreads) {
    if (!bf || D % 32 != 0) return -2;
    long G = H / Hkv, row = 2 * Hkv * D, P32 = D / 32, P = D + 2, longest = 0;
    for (long b = 0; b < B; b++) longest = lens[b] > longest ? lens[b] : longest;
    Split sp = split_context(longest, B, nthreads, 32);  /* whole 32-key groups */
    long C = sp.chunks, per = sp.per;
    float *part = C > 1 ? malloc((size_t)(B * H * C * P) * sizeof(float)) : NULL;
    uint16_t *zero = calloc((size_t)row, 2);  /* the row of a key past the context */
    __m512bh *qb = aligned_alloc(64, (size_t)(B * H * P32) * 64);
    if ((C > 1 && part == NULL) || zero == NULL || qb == NULL) {
        free(part);
        free(zero);
        free(qb);
        return -1;
    }
    for (long b = 0; b < B; b++)  /* scaled queries as bf16 */
        for (long h = 0; h < H; h++)
            for (long p = 0; p < P32; p++) {
                const float *x = q + b * q_stride + h * D + 32 * p;
                __m512 s = _mm512_set1_ps(scale);
                __m512 x0 = _mm512_mul_ps(_mm512_loadu_ps(x), s);
                qb[(b * H + h) * P32 + p] = _mm512_cvtne2ps_pbh(
                    _mm512_mul_ps(_mm512_loadu_ps(x + 16), s), x0);
            }
    uint16_t il[64];  /* lanes of the (a[d], b[d]) pairs of 16 dimensions d, low then high */
    for (int i = 0; i < 32; i++) il[i] = (uint16_t)((i & 1) * 32 + i / 2), il[32 + i] = il[i] + 16;
    __m512i lo = _mm512_loadu_si512(il), hi = _mm512_loadu_si512(il + 32);
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float *s = aligned_alloc(64, (size_t)(H * per) * 4);          /* [H][per] scores */
        uint32_t *pb = aligned_alloc(64, (size_t)(H * per / 2) * 4);  /* [H][per/2] p pairs */
        const uint16_t **kr = malloc((size_t)per * sizeof(*kr));     /* each key's row */
        if (s == NULL || pb == NULL || kr == NULL) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (long task = 0; task < B * C; task++) {
            if (s == NULL || pb == NULL || kr == NULL) continue;
            long b = task / C, c = task % C, t0 = c * per;
            long t1 = t0 + per < lens[b] ? t0 + per : lens[b], n = t1 - t0;
            if (n <= 0) {  /* an empty chunk of a shorter context */
                for (long h = 0; h < H; h++) {
                    float *pm = part + ((b * H + h) * C + c) * P;
                    pm[D] = -INFINITY;
                    pm[D + 1] = 0.f;
                }
                continue;
            }
            long np = (n + 31) / 32 * 32, blk = t0 / bs, in = t0 % bs;
            const long *tab = tables + b * nb;
            for (long i = 0; i < np; i++) {
                kr[i] = i < n ? (const uint16_t *)pool + (tab[blk] * bs + in) * row : zero;
                if (++in == bs) in = 0, blk++;
            }
            const __m512bh *qs = qb + b * H * P32;
            long ahead = DECODE_AHEAD / (row * 2);  /* keys read ahead of the scores */
            for (long i = 0; i < ahead && i < n; i++) touch(kr[i], row * 2);
            for (long j = 0; j < np; j += 16) {  /* scores: 16 keys, every head */
                __mmask16 valid = first(n - j);
                for (long i = j + ahead; i < j + ahead + 16 && i < n; i++) touch(kr[i], row * 2);
                for (long h = 0; h < H; h++) {
                    __m512 v;
                    long off = h / G * D;
                    switch (P32) {  /* a constant row length keeps the sums in registers */
                        case 2: v = qk16(kr + j, off, qs + h * P32, 2); break;
                        case 4: v = qk16(kr + j, off, qs + h * P32, 4); break;
                        case 1: v = qk16(kr + j, off, qs + h * P32, 1); break;
                        case 3: v = qk16(kr + j, off, qs + h * P32, 3); break;
                        default: v = qk16(kr + j, off, qs + h * P32, P32);
                    }
                    v = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), valid, v);
                    _mm512_store_ps(s + h * per + j, v);
                }
            }
            float mxs[H], sums[H];
            for (long h = 0; h < H; h++) {  /* softmax terms as bf16 pairs of keys */
                float *sh = s + h * per;
                __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
                for (long j = 0; j < np; j += 16) mx = _mm512_max_ps(mx, _mm512_load_ps(sh + j));
                mx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
                for (long j = 0; j < np; j += 32) {
                    __m512 e0 = exp16(_mm512_sub_ps(_mm512_load_ps(sh + j), mx));
                    __m512 e1 = exp16(_mm512_sub_ps(_mm512_load_ps(sh + j + 16), mx));
                    sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
                    __m512i pairs = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);  /* keys in order */
                    _mm512_store_si512(pb + h * per / 2 + j / 2, pairs);
                }
                mxs[h] = _mm512_reduce_max_ps(mx);
                sums[h] = _mm512_reduce_add_ps(sum);
            }
            for (long kh = 0; kh < Hkv; kh++)  /* out = p V: up to 4 heads x 64 dimensions */
                for (long g0 = 0; g0 < G; g0 += 4)
                    for (long d0 = 0; d0 < D; d0 += 64) {
                        int gn = G - g0 < 4 ? (int)(G - g0) : 4, cn = D - d0 < 64 ? 2 : 4;
                        long h0 = kh * G + g0, off = (Hkv + kh) * D + d0;
                        const uint32_t *ph = pb + h0 * per / 2;
                        __m512 acc[4][4];
                        pv(kr, off, ph, per / 2, np / 2, gn, cn, lo, hi, acc);
                        for (int g = 0; g < gn; g++) {
                            long h = h0 + g;
                            float *o;
                            __m512 w = _mm512_set1_ps(1.f);
                            if (C == 1) {
                                o = out + (b * H + h) * D + d0;
                                w = _mm512_set1_ps(1.f / sums[h]);
                            } else {
                                o = part + ((b * H + h) * C + c) * P + d0;
                                if (d0 == 0) o[D] = mxs[h], o[D + 1] = sums[h];
                            }
                            for (int k = 0; k < cn; k++)
                                _mm512_storeu_ps(o + 16 * k, _mm512_mul_ps(acc[g][k], w));
                        }
                    }
        }
        free(s);
        free(pb);
        free(kr);
        if (C > 1) {
            #pragma omp for schedule(static)
            for (long bh = 0; bh < B * H; bh++)
                merge_chunks(part + bh * C * P, C, D, out + bh * D);
        }
    }
    free(part);
    free(zero);
    free(qb);
    return failed ? -1 : 0;
}

/* 16 bf16 from p, as floats. */
static inline __m512 widen16(const uint16_t *p) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* x: [rows, dim] float32; x += r first when r is given (bf16, as a bf16 GEMM returns it);
   out = w * (x / sqrt(mean(x^2) + eps)), as bf16 (ob) for the next GEMM, or float32. dim a
   multiple of 16. */
void add_norm(float *x, const uint16_t *r, const float *w, void *out, int ob, long rows,
              long dim, float eps, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) if (rows * dim >= 1 << 16)
    for (long i = 0; i < rows; i++) {
        float *xi = x + i * dim;
        __m512 ss = _mm512_setzero_ps();
        for (long d = 0; d < dim; d += 16) {
            __m512 v = _mm512_loadu_ps(xi + d);
            if (r) {
                v = _mm512_add_ps(v, widen16(r + i * dim + d));
                _mm512_storeu_ps(xi + d, v);
            }
            ss = _mm512_fmadd_ps(v, v, ss);
        }
        __m512 inv = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(ss) / (float)dim + eps));
        for (long d = 0; d < dim; d += 16) {
            __m512 y = _mm512_mul_ps(_mm512_loadu_ps(w + d),
                                     _mm512_mul_ps(_mm512_loadu_ps(xi + d), inv));
            if (ob)
                _mm256_storeu_si256((__m256i *)((uint16_t *)out + i * dim + d),
                                    (__m256i)_mm512_cvtneps_pbh(y));
            else
                _mm512_storeu_ps((float *)out + i * dim + d, y);
        }
    }
}

/* SwiGLU's activation over a bf16 GEMM's output: gu [rows, 2 inter] (gate, then up) ->
   out [rows, inter] = silu(gate) * up, computed in float32, stored as bf16 for the next
   GEMM. inter a multiple of 16. */
void silu_mul(const uint16_t *gu, uint16_t *out, long rows, long inter, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) if (rows * inter >= 1 << 16)
    for (long i = 0; i < rows; i++) {
        const uint16_t *g = gu + i * 2 * inter, *u = g + inter;
        for (long d = 0; d < inter; d += 16) {
            __m512 x = widen16(g + d);
            __m512 a = _mm512_abs_ps(x);  /* silu(x) = x / (1 + e^-x), from e^-|x| <= 1 */
            __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), a));
            __m512 num = _mm512_mask_mul_ps(x, _mm512_cmp_ps_mask(x, a, _CMP_NEQ_UQ), x, e);
            __m512 y = _mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.f), e));
            y = _mm512_mul_ps(y, widen16(u + d));
            _mm256_storeu_si256((__m256i *)(out + i * inter + d), (__m256i)_mm512_cvtneps_pbh(y));
        }
    }
}

/* w [N, K] bf16 -> [N/32][K/2][32] uint32: for each tile of 32 output columns and each pair
   of input dimensions p, the 32 columns' (w[n][2p], w[n][2p+1]). N a multiple of 32, K even. */
void pack_pairs(const uint16_t *w, long N, long K, uint32_t *dst) {
    long P = K / 2;
    for (long n = 0; n < N; n++) {
        const uint32_t *row = (const uint32_t *)(w + n * K);
        uint32_t *col = dst + n / 32 * P * 32 + n % 32;
        for (long p = 0; p < P; p++) col[p * 32] = row[p];
    }
}

/* RB rows of a (bf16, lda apart) times one 32-column tile wt of a packed weight, P pairs
   deep -> float32 cf or bf16 cb (rows ldc apart). Each row's pair is broadcast against the
   tile's two 16-column vectors: 2 loads and RB broadcasts feed 2 RB dot products. With pf,
   each step also prefetches the line(s) at pf + p * pf_step / 256 (pf_step <= 128 * 256). */
static inline __attribute__((always_inline)) void gemm_rows(const uint16_t *a, long lda,
        const uint32_t *wt, long P, int RB, float *cf, uint16_t *cb, long ldc, const char *pf,
        long pf_step) {
    __m512 acc[8][2];
    const uint32_t *ar[8];
    for (int r = 0; r < RB; r++) {
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        ar[r] = (const uint32_t *)(a + r * lda);
    }
    for (long p = 0; p < P; p++) {
        if (pf) {
            const char *at = pf + ((p * pf_step) >> 8);
            _mm_prefetch(at, _MM_HINT_T1);
            if (pf_step > 64 * 256) _mm_prefetch(at + 64, _MM_HINT_T1);
        }
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(wt + p * 32);
        __m512bh w1 = (__m512bh)_mm512_loadu_si512(wt + p * 32 + 16);
        for (int r = 0; r < RB; r++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)ar[r][p]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, w0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, w1);
        }
    }
    for (int r = 0; r < RB; r++) {
        if (cf) {
            _mm512_storeu_ps(cf + r * ldc, acc[r][0]);
            _mm512_storeu_ps(cf + r * ldc + 16, acc[r][1]);
        } else {
            __m512i y = (__m512i)_mm512_cvtne2ps_pbh(acc[r][1], acc[r][0]);
            _mm512_storeu_si512(cb + r * ldc, y);
        }
    }
}

/* c [M, N] = a [M, K] (bf16 rows, lda apart) x w^T (packed by pack_pairs), float32 sums,
   stored as float32 (cf) or bf16 (cb). Threads split the column tiles; rows go in blocks of
   up to 8 (16 accumulators): two blocks take 8 and the rest, three or more split the rows
   evenly. Each block is a pass over the tile, and a small one runs at its dot products'
   latency, not their rate: blocks of 8 with the rest as 4, 2, 1 took (SmolLM2's 30 layers,
   same process, order alternated) 9.2 ms at 15 rows against 7.1 as 8 + 7, 12.2 at 46 rows
   (8 x 5, 4, 2) against 11.0 (8, 8, 8, 8, 7, 7), 13.9 at 51 against 12.2. With two blocks,
   the first streams the tile from memory and is best the larger: 12 rows as 6 + 6 took 7.05
   ms against 6.66 as 8 + 4. A tile's first row block waits for it to come from memory,
   the later ones find it in cache: from three blocks, those later ones prefetch the next tile,
   a part each. On Zen 5 (twice Zen 4's bf16 rate) the GEMM had become half bound by memory:
   SmolLM2's 30 layers (212 MB, cold), same process, 24 rows 9.34 -> 7.13 ms, 48 rows 14.35 ->
   11.84 (hot weights: 11.34), 128 rows 31.69 -> 28.77, 256 rows 59.11 -> 56.00; 16 rows
   (two blocks, the whole next tile at once) lost 8 %, so it gets none. */
void gemm_bf16(const uint16_t *a, long lda, const uint32_t *w, float *cf, uint16_t *cb,
               long M, long N, long K, int nthreads) {
    long P = K / 2, blocks = (M + 7) / 8;
    long base = blocks >= 3 ? M / blocks : 8, extra = blocks >= 3 ? M % blocks : 0;
    long part = blocks >= 3 ? P * 128 / (blocks - 1) : 0, step = part * 256 / P;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long t = 0; t < N / 32; t++) {
        const uint32_t *wt = w + t * P * 32;
        for (long j = 0, m = 0; j < blocks; j++) {
            const uint16_t *am = a + m * lda;
            float *cfm = cf ? cf + m * N + t * 32 : NULL;
            uint16_t *cbm = cb ? cb + m * N + t * 32 : NULL;
            int rb = (int)(j + 1 == blocks ? M - m : base + (j < extra));
            const char *pf = NULL;  /* block j >= 1 prefetches part j - 1 of the next tile */
            if (blocks >= 3 && j >= 1) pf = (const char *)(wt + P * 32) + (j - 1) * part;
            switch (rb) {  /* a constant row count keeps the sums in registers */
                case 8: gemm_rows(am, lda, wt, P, 8, cfm, cbm, N, pf, step); break;
                case 7: gemm_rows(am, lda, wt, P, 7, cfm, cbm, N, pf, step); break;
                case 6: gemm_rows(am, lda, wt, P, 6, cfm, cbm, N, pf, step); break;
                case 5: gemm_rows(am, lda, wt, P, 5, cfm, cbm, N, pf, step); break;
                case 4: gemm_rows(am, lda, wt, P, 4, cfm, cbm, N, pf, step); break;
                case 3: gemm_rows(am, lda, wt, P, 3, cfm, cbm, N, pf, step); break;
                case 2: gemm_rows(am, lda, wt, P, 2, cfm, cbm, N, pf, step); break;
                default: gemm_rows(am, lda, wt, P, 1, cfm, cbm, N, pf, step);
            }
            m += rb;
        }
    }
}

/* n floats -> n bf16, rounded to nearest even (as torch rounds them). */
static void to_bf16(const float *x, uint16_t *dst, long n) {
    for (long i = 0; i < n; i += 16) {
        __mmask16 in = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(in, x + i));
        _mm256_mask_storeu_epi16(dst + i, in, (__m256i)v);
    }
}

/* y [M, N] += bias [N], where there is one. */
static void add_bias(float *y, const float *bias, long M, long N) {
    if (bias)
        for (long m = 0; m < M; m++)
            for (long n = 0; n < N; n++) y[m * N + n] += bias[n];
}

/* y [M, N] = x [M, K] (float32, rounded to bf16 into xb: [M, K] scratch) times a packed
   weight (pack_pairs) + bias (or NULL): decode_one's projections from many rows, where the
   GEMM runs at 2-3x q8_linear_vnni's rate (SmolLM2's 30 layers, same process: 8 rows 4.7 vs
   7.2 ms, 16 rows 6.9 vs 15.5, 48 rows 12.4 vs 39.1). */
void linear_bf16(const float *x, const uint32_t *w, const float *bias, float *y, uint16_t *xb,
                 long M, long N, long K, int nthreads) {
    to_bf16(x, xb, M * K);
    gemm_bf16(xb, K, w, y, NULL, M, N, K, nthreads);
    add_bias(y, bias, M, N);
}

/* The sums of four vectors' 16 lanes: (sum a, sum b, sum c, sum d). */
static inline __m128 sum4x16(__m512 a, __m512 b, __m512 c, __m512 d) {
    /* 128-bit quarters: (a0 + a2, a1 + a3, b0 + b2, b1 + b3), the same for c and d */
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88),  /* a, b, c, d quarters */
                             _mm512_shuffle_f32x4(ab, cd, 0xDD));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));  /* each quarter: one vector's sum */
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), t));
}

/* 32-element steps each int32 sum of q8_dots takes before it becomes float: a step adds at
   most 2 * 127 * 32767 to a lane, so 128 (plus the last few) stay far below 2^31. */
#define Q8_STEPS 128

/* For RB rows of xq (int16, ld apart, zero past K) and one weight row w (int8), the sums
   over k of xq[r][k] w[k], each as a vector of partial sums: out[r]. Four steps of 32 run
   side by side (a vpdpwssd's result is needed ~4 cycles later). */
static inline __attribute__((always_inline)) void q8_dots(const int16_t *xq, long ld,
        const int8_t *w, long K, int RB, __m512 *out) {
    for (int r = 0; r < RB; r++) out[r] = _mm512_setzero_ps();
    for (long k0 = 0; k0 < K; k0 += 128 * Q8_STEPS) {
        long k1 = k0 + 128 * Q8_STEPS < K ? k0 + 128 * Q8_STEPS : K, k = k0;
        __m512i acc[4][4];
        for (int r = 0; r < RB; r++)
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_si512();
        for (; k + 128 <= k1; k += 128)
            for (int c = 0; c < 4; c++) {
                const __m256i *wk = (const __m256i *)(w + k + 32 * c);
                __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(wk));
                for (int r = 0; r < RB; r++) {
                    __m512i xv = _mm512_loadu_si512(xq + r * ld + k + 32 * c);
                    acc[r][c] = _mm512_dpwssd_epi32(acc[r][c], xv, wv);
                }
            }
        for (; k < k1; k += 32) {  /* the last steps, the very last one masked */
            __mmask32 m = k + 32 <= K ? 0xFFFFFFFFu : (__mmask32)((1ull << (K - k)) - 1);
            __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, w + k));
            for (int r = 0; r < RB; r++)
                acc[r][0] = _mm512_dpwssd_epi32(acc[r][0], _mm512_loadu_si512(xq + r * ld + k), wv);
        }
        for (int r = 0; r < RB; r++)
            for (int c = 0; c < 4; c++)
                out[r] = _mm512_add_ps(out[r], _mm512_cvtepi32_ps(acc[r][c]));
    }
}

/* y [M, N] = x [M, K] (float32) times q^T (int8 [N, K], scale [N] per row) + bias, as the
   AVX2 library's q8_linear, but each row of x is first rounded to int16 at its own scale (its
   largest value to 32767: SmolLM2's teacher-forced KL to the float model, int8 weights, 4.62e-3
   against 4.66e-3 with float activations) so that one vpdpwssd multiplies 32 weights: two uops
   a 32 weights where widening them to float took twelve. That kernel is bound by those uops
   from 2 rows; this one reads the weights once for up to 4 rows, and past 4 it is bound by
   reloading each row's x for every output. Returns 0, or -1 without memory. */
int q8_linear_vnni(const float *x, const int8_t *w, const float *scale, const float *bias,
                   float *y, long M, long N, long K, int nthreads) {
    long ld = (K + 31) / 32 * 32;
    int16_t *xq = aligned_alloc(64, (size_t)(M * ld) * 2);
    float *sx = malloc((size_t)M * sizeof(float));
    if (xq == NULL || sx == NULL) {
        free(xq);
        free(sx);
        return -1;
    }
    for (long m = 0; m < M; m++) {  /* each row to int16 at its own scale */
        const float *xr = x + m * K;
        __m512 mv = _mm512_setzero_ps();
        long k = 0;
        for (; k + 16 <= K; k += 16)
            mv = _mm512_max_ps(mv, _mm512_abs_ps(_mm512_loadu_ps(xr + k)));
        float mx = _mm512_reduce_max_ps(mv);
        for (; k < K; k++) mx = fabsf(xr[k]) > mx ? fabsf(xr[k]) : mx;
        float s = mx > 0.f ? mx / 32767.f : 1.f;
        __m512 inv = _mm512_set1_ps(1.f / s);
        int16_t *dst = xq + m * ld;
        for (k = 0; k < ld; k += 16) {
            __mmask16 in = k + 16 <= K ? 0xFFFF : k < K ? (__mmask16)((1u << (K - k)) - 1) : 0;
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(in, xr + k), inv));
            _mm256_store_si256((__m256i *)(dst + k), _mm512_cvtsepi32_epi16(v));
        }
        sx[m] = s;
    }
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long n0 = 0; n0 < N; n0 += 4) {
        int nw = N - n0 < 4 ? (int)(N - n0) : 4;
        for (long m = 0; m < M;) {
            int rb = M - m >= 4 ? 4 : (int)(M - m);
            __m512 v[4][4];  /* [row][output] */
            for (int j = 0; j < 4; j++) {
                __m512 o[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                               _mm512_setzero_ps()};
                if (j < nw) {
                    const int16_t *xm = xq + m * ld;
                    const int8_t *wn = w + (n0 + j) * K;
                    switch (rb) {  /* a constant row count keeps the sums in registers */
                        case 4: q8_dots(xm, ld, wn, K, 4, o); break;
                        case 3: q8_dots(xm, ld, wn, K, 3, o); break;
                        case 2: q8_dots(xm, ld, wn, K, 2, o); break;
                        default: q8_dots(xm, ld, wn, K, 1, o);
                    }
                }
                for (int r = 0; r < 4; r++) v[r][j] = o[r];
            }
            for (int r = 0; r < rb; r++) {
                float d[4];
                _mm_storeu_ps(d, sum4x16(v[r][0], v[r][1], v[r][2], v[r][3]));
                for (int j = 0; j < nw; j++) {
                    long n = n0 + j;
                    y[(m + r) * N + n] = d[j] * sx[m + r] * scale[n] + (bias ? bias[n] : 0.f);
                }
            }
            m += rb;
        }
    }
    free(xq);
    free(sx);
    return 0;
}

/* A part of a step's rows: `rows` decodes, one token of a sequence each, through `decode`
   (a paged_decode: the one that serves the pool), with tables [rows, nb] and lens; or, with
   decode NULL, a prefill chunk of `rows` tokens after `start` of one sequence's context,
   table [nb], through prefill_attention. */
typedef void (*rope_fn)(float *, long, long, long, long, const float *, long, const long *);
typedef struct {
    attention_fn decode;
    const long *tables, *lens;
    long rows, start, nb;
} Part;

/* The scratch prefill_layers takes for N rows, in bytes: q/k/v and attention in float32,
   then attention, a GEMM's output, gate/up and SwiGLU in bf16, each 64-byte aligned. */
static long aligned64(long bytes) { return (bytes + 63) / 64 * 64; }
long prefill_scratch(long N, long hidden, long inter, long H, long Hkv, long D) {
    long nq = (H + 2 * Hkv) * D;
    return aligned64(N * nq * 4) + aligned64(N * H * D * 4) + aligned64(N * H * D * 2) +
           aligned64(N * hidden * 2) + aligned64(N * 2 * inter * 2) + aligned64(N * inter * 2);
}

/* Transformer.forward's layer loop where every projection is this library's bf16 GEMM, in
   one call instead of ~15 Python calls a layer, the same ops in the same order with the same
   roundings (its results are the loop's, bit for bit): q/k/v (float32, + bias), rope (the
   AVX2 library's), K/V into the pool (rounded to nearest even where it is bf16), each part's
   attention, then o, gate/up, SwiGLU and down with bf16 activations between them (add_norm,
   silu_mul). x: [N, hidden] the residual stream, in place; h: [N, hidden] bf16, RMSNorm(x)
   with layer 0's norm; out: [N, hidden] float32, the final norm's output. pool: layer 0's
   K/V, layers layer_stride elements apart; pos, slot: each row's position and pool slot.
   keep: the rows whose output is wanted, ascending (nkeep of them; nkeep < 0: all): past
   the last layer's K/V nothing reads the others, so there it attends and projects only
   those (a chunk whose last row alone is wanted attends that row alone), and out holds them
   in order. scratch: prefill_scratch bytes, 64-byte aligned. Returns 0, or an attention's
   error. */
int prefill_layers(const Layer *layers, long L, float *x, uint16_t *h, float *out, long N,
                   long hidden, long inter, long H, long Hkv, long D, rope_fn rope,
                   const float *rope_table, long max_len, const long *pos, void *pool,
                   long layer_stride, const long *slot, const Part *parts, long nparts, long bs,
                   float eps, float scale, int bf, const long *keep, long nkeep, char *scratch,
                   int nthreads) {
    long nq = (H + 2 * Hkv) * D, HD = H * D, row = 2 * Hkv * D, es = bf ? 2 : 4;
    float *qkv = (float *)scratch;
    float *attn = (float *)((char *)qkv + aligned64(N * nq * 4));
    uint16_t *ab = (uint16_t *)((char *)attn + aligned64(N * HD * 4));
    uint16_t *r = (uint16_t *)((char *)ab + aligned64(N * HD * 2));
    uint16_t *gu = (uint16_t *)((char *)r + aligned64(N * hidden * 2));
    uint16_t *act = (uint16_t *)((char *)gu + aligned64(N * 2 * inter * 2));
    for (long l = 0; l < L; l++) {
        const Layer *w = layers + l;
        char *p = (char *)pool + l * layer_stride * es;
        gemm_bf16(h, hidden, w->qkv_bf, qkv, NULL, N, nq, hidden, nthreads);
        add_bias(qkv, w->qkv_bias, N, nq);
        rope(qkv, N, nq, H + Hkv, D, rope_table, max_len, pos);
        for (long n = 0; n < N; n++) {  /* K then V heads, as the pool holds them */
            const float *kv = qkv + n * nq + HD;
            if (!bf) {
                memcpy((float *)p + slot[n] * row, kv, (size_t)row * 4);
                continue;
            }
            to_bf16(kv, (uint16_t *)p + slot[n] * row, row);
        }
        int last = l + 1 == L, some = last && nkeep >= 0;  /* only the kept rows from here */
        for (long i = 0, n0 = 0, k = 0; i < nparts; n0 += parts[i].rows, i++) {
            const Part *pt = parts + i;
            long rows = pt->rows, first = n0, kept = 0;  /* its rows to attend, from first */
            for (; some && k < nkeep && keep[k] < n0 + rows; k++) kept++;
            if (some && kept == 0) continue;
            if (some && kept == 1 && keep[k - 1] == n0 + rows - 1 && !pt->decode)
                first = n0 + rows - 1, rows = 1;  /* a chunk's last row alone */
            const float *q = qkv + first * nq;
            float *o = attn + first * HD;
            long start = pt->start + (first - n0);
            int status = pt->decode
                ? pt->decode(q, nq, p, pt->tables, pt->lens, o, rows, H, Hkv, D, pt->nb, bs,
                             scale, bf, nthreads)
                : prefill_attention(q, nq, p, pt->tables, start, rows, o, H, Hkv, D, bs, scale,
                                    bf, nthreads);
            if (status) return status;
        }
        long M = N;
        if (some) {  /* the kept rows of attention and of the residual stream, in order */
            for (long i = 0; i < nkeep; i++) {
                if (keep[i] == i) continue;
                memcpy(attn + i * HD, attn + keep[i] * HD, (size_t)HD * 4);
                memcpy(x + i * hidden, x + keep[i] * hidden, (size_t)hidden * 4);
            }
            M = nkeep;
        }
        to_bf16(attn, ab, M * HD);  /* o's input */
        gemm_bf16(ab, HD, w->o_bf, NULL, r, M, hidden, HD, nthreads);
        add_norm(x, r, w->mlp_norm, h, 1, M, hidden, eps, nthreads);
        gemm_bf16(h, hidden, w->gate_up_bf, NULL, gu, M, 2 * inter, hidden, nthreads);
        silu_mul(gu, act, M, inter, nthreads);
        gemm_bf16(act, inter, w->down_bf, NULL, r, M, hidden, inter, nthreads);
        add_norm(x, r, w->next_norm, last ? (void *)out : (void *)h, !last, M, hidden, eps,
                 nthreads);
    }
    return 0;
}
"""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "parley" / "kernels"


_FLAGS = ["-mavx2", "-mfma"]
_BF16_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma"]
_BF16_FLAGS += ["-mavx512vnni"]  # q8_linear_vnni: every CPU with AVX512-BF16 has it


def _build(source: str, flags: list[str], gomp: Path, target: Path) -> None:
    """Compile ``source`` into ``target`` (written atomically: parallel builders may race)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "kernel.c", Path(tmp) / "kernel.so"
        src.write_text(source)
        cmd = ["gcc", "-O3", *flags, "-fopenmp", "-shared", "-fPIC", str(src), "-o", str(out)]
        cmd += [f"-L{gomp.parent}", f"-Wl,-rpath,{gomp.parent}", "-l:libgomp.so.1"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        os.replace(out, target)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the C signatures (ctypes converts ints and pointers by them)."""
    p, n, f, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
    lib.q8_linear.argtypes = [p, p, p, p, p, n, n, n, i]
    lib.paged_decode.argtypes = [p, n, p, p, p, p, n, n, n, n, n, n, f, i, i]
    lib.rms_norm.argtypes = [p, p, p, p, n, n, f]
    lib.rope.argtypes = [p, n, n, n, n, p, n, p]
    lib.decode_one.argtypes = [
        p, n, p, p, n, n, n, n, n, n, p, n,  # layers .. max_len
        p, p, n, p, p, p, n, n, f, i, p, p, p, n, p, i,  # pos .. nthreads
    ]  # fmt: skip
    for fn in (lib.q8_linear, lib.rms_norm, lib.rope):
        fn.restype = None
    lib.paged_decode.restype = lib.decode_one.restype = ctypes.c_int
    return lib


def _bind_bf16(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, n, f, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
    lib.prefill_attention.argtypes = [p, n, p, p, n, n, p, n, n, n, n, f, i, i]
    lib.paged_decode.argtypes = [p, n, p, p, p, p, n, n, n, n, n, n, f, i, i]
    lib.prefill_attention.restype = lib.paged_decode.restype = ctypes.c_int
    lib.add_norm.argtypes = [p, p, p, p, i, n, n, f, i]
    lib.silu_mul.argtypes = [p, p, n, n, i]
    lib.add_norm.restype = lib.silu_mul.restype = None
    lib.pack_pairs.argtypes = [p, n, n, p]
    lib.gemm_bf16.argtypes = [p, n, p, p, p, n, n, n, i]
    lib.pack_pairs.restype = lib.gemm_bf16.restype = None
    lib.q8_linear_vnni.argtypes = [p, p, p, p, p, n, n, n, i]
    lib.q8_linear_vnni.restype = ctypes.c_int
    lib.linear_bf16.argtypes = [p, p, p, p, p, n, n, n, i]
    lib.linear_bf16.restype = None
    lib.prefill_scratch.argtypes = [n, n, n, n, n, n]
    lib.prefill_scratch.restype = n
    lib.prefill_layers.argtypes = [p, n, p, p, p, n, n, n, n, n, n, p, p, n, p, p, n, p, p, n,
                                   n, f, f, i, p, n, p, i]  # fmt: skip
    lib.prefill_layers.restype = ctypes.c_int
    return lib


def _load(name: str, source: str, flags: list[str], capable: bool) -> ctypes.CDLL | None:
    """Build ``source`` (after ``_PRELUDE``) once into the cache and open it; None where it
    cannot run here."""
    source = _PRELUDE + source
    gomp = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not (capable and gomp.exists() and shutil.which("gcc")):
        return None
    digest = hashlib.sha256((source + " ".join(flags) + str(gomp)).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{name}-{digest}.so"
    try:
        if not target.exists():
            _build(source, flags, gomp, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        logging.getLogger(__name__).warning("CPU kernel %s unavailable: %s", name, err)
        return None


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or ``None`` where it cannot run (see the module doc)."""
    capable = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    lib = _load("q8", _SOURCE, _FLAGS, capable)
    return None if lib is None else _bind(lib)


@functools.cache
def load_bf16() -> ctypes.CDLL | None:
    """The AVX512-BF16 prefill attention (:func:`prefill_attention`), or ``None`` where the
    CPU has no native bf16 dot products (or nothing to build it with)."""
    capable = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    lib = _load("attn-bf16", _BF16_SOURCE, _BF16_FLAGS, capable)
    return None if lib is None else _bind_bf16(lib)


@functools.cache
def q8_wide() -> ctypes.CDLL | None:
    """The library whose ``q8_linear_vnni`` (int16 activations, AVX512-VNNI) serves decode's
    int8 projections from two rows, or ``None`` where the CPU lacks it."""
    capable = bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())
    return load_bf16() if capable else None


def q8_linear(
    lib: ctypes.CDLL, x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None, wide: bool = False
) -> Tensor:
    """x: [M, K] float32 contiguous; q: [N, K] int8; scale, bias: [N] float32 -> [M, N].
    ``wide``: ``lib`` is :func:`q8_wide`'s, and its ``q8_linear_vnni`` runs it."""
    M, K = x.shape
    N = q.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    b = None if bias is None else bias.data_ptr()
    args = (x.data_ptr(), q.data_ptr(), scale.data_ptr(), b, y.data_ptr(), M, N, K)
    if wide:
        _check(lib.q8_linear_vnni(*args, torch.get_num_threads()), "q8_linear_vnni")
    else:
        lib.q8_linear(*args, torch.get_num_threads())
    return y


# What the kernels read the K/V pool as: float32, or bfloat16 (half the bytes per token;
# decode converts it back to float32 with a shift, prefill multiplies it as it is).
KV_DTYPES = (torch.float32, torch.bfloat16)


def _bf16(pool: Tensor) -> int:
    """The kernels' ``bf`` flag for ``pool``."""
    assert pool.dtype in KV_DTYPES, pool.dtype
    return int(pool.dtype == torch.bfloat16)


def _check(status: int, name: str) -> None:
    """A kernel's status: its scratch buffers come from malloc, which may fail."""
    if status == -2:
        raise ValueError(f"cpu_kernel.{name}: takes a bf16 pool and heads of 32 n dimensions")
    if status != 0:
        raise MemoryError(f"cpu_kernel.{name}: out of memory for its scratch buffers")


def paged_decode(
    lib: ctypes.CDLL, q: Tensor, pool: Tensor, tables: Tensor, lens: Tensor, block_size: int
) -> Tensor:
    """One query token per sequence over the paged pool, with ``lib``'s kernel: the AVX2 one
    (:func:`load`, float32 products) or the AVX512-BF16 one (:func:`load_bf16`: a bf16 pool and
    D a multiple of 32, bf16 products); :func:`decode_attention` picks.

    q: [B, 1, H, D] float32 (rows may be strided, heads contiguous); pool: [num_blocks,
    block_size, 2, Hkv, D] float32 or bfloat16 (:data:`KV_DTYPES`), contiguous; tables: [B, nb]
    int64; lens: [B] int64 -> [B, 1, H * D] float32. D must be a multiple of 8
    (:func:`decode_fits`).
    """
    B, _, H, D = q.shape
    Hkv = pool.shape[3]
    assert decode_fits(D) and q.stride(3) == 1 and q.stride(2) == D and pool.is_contiguous()
    out = torch.empty(B, 1, H * D, dtype=torch.float32)
    _check(lib.paged_decode(
        q.data_ptr(), q.stride(0), pool.data_ptr(), tables.data_ptr(), lens.data_ptr(),
        out.data_ptr(), B, H, Hkv, D, tables.shape[1], block_size, D**-0.5, _bf16(pool),
        torch.get_num_threads(),
    ), "paged_decode")  # fmt: skip
    return out


def decode_fits(head_dim: int) -> bool:
    """Whether :func:`paged_decode` takes this head size (whole 8-float vectors)."""
    return head_dim % 8 == 0


def decode_attention(pool_dtype: torch.dtype, head_dim: int) -> ctypes.CDLL | None:
    """The library whose :func:`paged_decode` serves a pool of this dtype: over bf16 (the keys
    are bf16 already), :func:`bf16_decode`'s where there is one (bf16 products like prefill's,
    2-3.5x faster); else the AVX2 one; None where neither runs."""
    if pool_dtype == torch.bfloat16 and (lib := bf16_decode(head_dim)) is not None:
        return lib
    return load() if decode_fits(head_dim) else None


def bf16_decode(head_dim: int) -> ctypes.CDLL | None:
    """The AVX512-BF16 library, whose :func:`paged_decode` serves bf16 pools of this head
    size, where the CPU has it and the head size fits; else None."""
    return load_bf16() if prefill_fits(head_dim) else None


def prefill_attention(
    lib: ctypes.CDLL, q: Tensor, pool: Tensor, table: Tensor, start: int, block_size: int
) -> Tensor:
    """Causal attention of one sequence's ``T`` newest tokens over its ``start + T`` context
    in the paged pool (their K/V already stored), with bfloat16 products and float32 sums.

    q: [1, T, H, D] float32 (rows may be strided, heads contiguous); pool: [num_blocks,
    block_size, 2, Hkv, D] float32 or bfloat16, contiguous; table: [nb] int64, the blocks
    holding the context -> [1, T, H * D]. D must be a multiple of 32 up to 256
    (:func:`prefill_fits`).
    """
    _, T, H, D = q.shape
    assert prefill_fits(D) and q.stride(3) == 1 and q.stride(2) == D and pool.is_contiguous()
    assert table.dtype == torch.int64 and table.is_contiguous()
    assert table.numel() * block_size >= start + T
    out = torch.empty(1, T, H * D, dtype=torch.float32)
    _check(lib.prefill_attention(
        q.data_ptr(), q.stride(1), pool.data_ptr(), table.data_ptr(), start, T, out.data_ptr(),
        H, pool.shape[3], D, block_size, D**-0.5, _bf16(pool), torch.get_num_threads(),
    ), "prefill_attention")  # fmt: skip
    return out


def prefill_fits(head_dim: int) -> bool:
    """Whether :func:`prefill_attention` takes this head size (whole 32-wide bf16 tiles)."""
    return head_dim % 32 == 0 and head_dim <= 256


# Sequences decoded together on int8 weights through ``decode_one`` (more go through torch's
# ops, unless its projections run on this module's bf16 GEMM: see below). Its int8
# kernel is compute-bound from 2 rows on; torch's path (fbgemm fp16 below 8 rows, oneDNN bf16
# from 8) reads 2 bytes a weight. Whole decode steps of SmolLM2 at 361 tokens of context,
# bf16 pool, 2 threads, same process (Zen 4): B=1 5.4 vs 7.5 ms, 2: 7.3 vs 14.9, 3: 10.7 vs
# 15.8, 4: 13.0 vs 16.9, 6: 19.7 vs 23.2, 8: 26.4 vs 27.9; torch's GEMM wins from 12. Where
# the projections run on this module's bf16 GEMM instead, it wins from 4 rows
# (``quant.GEMM_BF16_MIN_ROWS``) and decode_one's int8 rows stop below that, unless they run
# on ``q8_linear_vnni`` from 2 rows (:func:`q8_wide`): then decode_one vs the layer loop on the
# bf16 GEMM, 360 tokens of context: B=4 8.8 vs 13.2 ms, 6: 12.6 vs 15.4, 8: 16.0 vs 16.2.
DECODE_MAX_BATCH = 8
# Where the layers have bf16 pairs for the bf16 library's GEMM, decode_one runs their
# projections on it from DECODE_MAX_BATCH + 1 sequences (at 8 the int8 rows still tie it:
# whole forwards, same process, 11.7 vs 11.7 ms; at 5, 8.9 vs 11.4) and takes any batch: the
# layer loop had spent ~300 Python calls a step around the same GEMM. Whole forwards (head
# included) at 360 tokens of context, Zen 5, same process, interleaved, layer loop vs one
# call: 9 sequences 16.2 vs 14.2 ms a step, 16: 18.1 vs 16.3, 48: 37.4 vs 36.6.
DECODE_GEMM_MAX_BATCH = 1 << 16


class _Layer(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_void_p)
        for name in (
            "qkv", "o", "gate_up", "down", "qkv_scale", "o_scale", "gate_up_scale",
            "down_scale", "qkv_bf", "o_bf", "gate_up_bf", "down_bf", "qkv_bias", "mlp_norm",
            "next_norm",
        )
    ]  # fmt: skip


@dataclass(slots=True)
class LayerTensors:
    """What ``decode_one`` reads of a layer: int8 weights [N, K] with float32 scales [N],
    and where its projections may run on the bf16 GEMM, the same weights packed for it
    (:func:`pack_pairs`; q/k/v, o, gate/up, down)."""

    qkv: tuple[Tensor, Tensor]
    o: tuple[Tensor, Tensor]
    gate_up: tuple[Tensor, Tensor]
    down: tuple[Tensor, Tensor]
    qkv_bias: Tensor | None  # float32 [N]
    mlp_norm: Tensor
    next_norm: Tensor  # the next layer's attention norm, or the final norm
    packed: tuple[Tensor, Tensor, Tensor, Tensor] | None = None


def _layer_structs(layers: list[LayerTensors], packed: bool) -> ctypes.Array[_Layer]:
    """The C ``Layer`` of each layer: its tensors' addresses, the bf16 pairs where
    ``packed`` (NULL elsewhere)."""
    structs = (_Layer * len(layers))()
    for slot, t in zip(structs, layers, strict=True):
        for name in ("qkv", "o", "gate_up", "down"):
            weight, scale = getattr(t, name)
            assert weight.dtype == torch.int8 and scale.dtype == torch.float32
            setattr(slot, name, weight.data_ptr())
            setattr(slot, f"{name}_scale", scale.data_ptr())
        if packed and t.packed is not None:
            for name, pairs in zip(("qkv", "o", "gate_up", "down"), t.packed, strict=True):
                setattr(slot, f"{name}_bf", pairs.data_ptr())
        slot.qkv_bias = None if t.qkv_bias is None else t.qkv_bias.data_ptr()
        slot.mlp_norm, slot.next_norm = t.mlp_norm.data_ptr(), t.next_norm.data_ptr()
    return structs


class DecodeOne:
    """``decode_one`` bound to a model's tensors (they must outlive it): one call per step
    runs every layer for up to ``max_batch`` sequences' new tokens. All tensors float32
    (weights int8, or bf16 pairs), CPU, contiguous. From ``gemm_rows`` sequences, where every
    layer carries packed bf16 weights, the projections run on ``gemm_lib``'s bf16 GEMM, and
    ``max_batch`` defaults to any batch (else to :data:`DECODE_MAX_BATCH`)."""

    def __init__(
        self, lib: ctypes.CDLL, layers: list[LayerTensors], shape: tuple[int, ...], eps: float,
        rope: Tensor, bf16_lib: ctypes.CDLL | None = None, max_batch: int | None = None,
        wide_lib: ctypes.CDLL | None = None, gemm_lib: ctypes.CDLL | None = None,
        gemm_rows: int = DECODE_MAX_BATCH + 1,
    ) -> None:  # fmt: skip
        self._lib, self._eps, self._rope = lib, eps, rope
        # over a bf16 pool, attention runs the bf16 library's paged_decode where there is one;
        # from two sequences, the projections its q8_linear_vnni where given (see q8_wide)
        self._bf_attention = _address(bf16_lib, "paged_decode")
        self._wide = _address(wide_lib, "q8_linear_vnni")
        packed = all(t.packed is not None for t in layers)
        self._gemm = _address(gemm_lib, "linear_bf16") if packed else None
        self._gemm_rows = gemm_rows
        if max_batch is None:  # without the GEMM, the layer loop's linear() runs many rows
            max_batch = DECODE_MAX_BATCH if self._gemm is None else DECODE_GEMM_MAX_BATCH
        self.max_batch = max_batch
        self._hidden, self._inter, self._H, self._Hkv, self._D = shape
        assert decode_fits(self._D)
        self._layers = _layer_structs(layers, packed=self._gemm is not None)
        H, Hkv, D, hidden, inter = self._H, self._Hkv, self._D, self._hidden, self._inter
        # floats a sequence needs: q/k/v, attention, gate/up, SwiGLU, a residual's worth, and
        # (as bf16, two to a float) the widest input a GEMM rounds
        widest = max(hidden, H * D, inter)
        self._per_row = (2 * H + 2 * Hkv) * D + 3 * inter + hidden + (widest + 1) // 2
        self._scratch = torch.empty(0)  # grown to the largest batch so far (see __call__)

    def __call__(
        self, x: Tensor, h: Tensor, pool: Tensor, pos: Tensor, slots: Tensor, tables: Tensor,
        lens: Tensor,
    ) -> None:  # fmt: skip
        """In place: x [B, 1, hidden] the residual stream, h [B, 1, hidden] RMSNorm(x) for
        layer 0 -> the final norm's output. pool: [L, num_blocks, block_size, 2, Hkv, D]
        float32 or bfloat16; pos: [B, 1], slots, lens: [B] int64; tables: [B, nb] int64 block
        tables."""
        B = x.shape[0]
        assert self.max_batch >= B
        assert pool.is_contiguous() and tables.is_contiguous() and pos.is_contiguous()
        if self._scratch.numel() < B * self._per_row:  # once per new largest batch
            self._scratch = torch.empty(min(2 * B, self.max_batch) * self._per_row)
        _check(self._lib.decode_one(
            self._layers, len(self._layers), x.data_ptr(), h.data_ptr(), B, self._hidden,
            self._inter, self._H, self._Hkv, self._D, self._rope.data_ptr(), self._rope.shape[1],
            pos.data_ptr(), pool.data_ptr(), pool.stride(0), slots.data_ptr(), lens.data_ptr(),
            tables.data_ptr(), tables.shape[-1], pool.shape[2], self._eps, _bf16(pool),
            self._bf_attention, self._wide, self._gemm, self._gemm_rows,
            self._scratch.data_ptr(), torch.get_num_threads(),
        ), "decode_one")  # fmt: skip


class _Part(ctypes.Structure):
    _fields_ = [
        ("decode", ctypes.c_void_p), ("tables", ctypes.c_void_p), ("lens", ctypes.c_void_p),
        ("rows", ctypes.c_long), ("start", ctypes.c_long), ("nb", ctypes.c_long),
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class StepPart:
    """A part of a step's rows, as :class:`PrefillLayers` attends it: ``rows`` decodes, one
    token of a sequence each, through ``decode``'s :func:`paged_decode` (block tables
    ``[rows, nb]``, ``lens``); or, with ``decode`` None, a prefill chunk of ``rows`` tokens
    after ``start`` of one sequence's context through :func:`prefill_attention` (its table
    ``[nb]``). Tables and lens: int64, contiguous."""

    rows: int
    tables: Tensor
    start: int = 0
    decode: ctypes.CDLL | None = None
    lens: Tensor | None = None


class PrefillLayers:
    """``prefill_layers`` of the bf16 library bound to a model's tensors (they must outlive
    it): the forward's layer loop in one call where every projection runs on its bf16 GEMM,
    with the loop's results bit for bit. Per layer the loop made ~15 Python calls around the
    C kernels while the other thread waited: a fifth of a 51-token prefill's time. SmolLM2,
    Zen 5, 2 threads, same process, loop vs one call: a 51-token turn over 36 tokens of
    context 18.0 vs 15.7 ms, over 926 24.5 vs 21.9; bench/llm.py's conversation rounds 1 and
    10, 16.7 -> 14.4 and 23.2 -> 20.4 ms; its batch of 50, 491 -> 532 tok/s."""

    def __init__(
        self, lib: ctypes.CDLL, rope_lib: ctypes.CDLL, layers: list[LayerTensors],
        shape: tuple[int, ...], eps: float, rope: Tensor,
    ) -> None:  # fmt: skip
        self._lib, self._eps, self._rope = lib, eps, rope
        self._rope_fn = _address(rope_lib, "rope")
        self._hidden, self._inter, self._H, self._Hkv, self._D = shape
        assert prefill_fits(self._D) and activations_fit(self._hidden, self._inter)
        assert all(t.packed is not None for t in layers)
        self._layers = _layer_structs(layers, packed=True)
        self._scratch = torch.empty(0, dtype=torch.uint8)  # grown to the most rows so far

    def __call__(
        self, x: Tensor, h: Tensor, pool: Tensor, pos: Tensor, slots: Tensor,
        parts: list[StepPart], keep: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """x: [..., hidden] float32 the residual stream (in place); h: the same shape in
        bf16, RMSNorm(x) with layer 0's norm; pool: [L, num_blocks, block_size, 2, Hkv, D];
        pos, slots: each row's position and pool slot (int64); parts: the rows in order;
        keep: the rows whose output is wanted (int64, ascending, of the flattened rows), or
        None for all -> the final norm's output of those rows, float32: [len(keep), hidden],
        or x's shape."""
        N = x.numel() // self._hidden
        assert x.dtype == torch.float32 and h.dtype == torch.bfloat16
        assert x.is_contiguous() and h.is_contiguous() and pool.is_contiguous()
        assert pos.numel() == slots.numel() == N == sum(p.rows for p in parts)
        lib, D = self._lib, self._D
        need = lib.prefill_scratch(N, self._hidden, self._inter, self._H, self._Hkv, D)
        if self._scratch.numel() < need:
            self._scratch = torch.empty(need, dtype=torch.uint8)
        cparts = (_Part * len(parts))()
        for c, part in zip(cparts, parts, strict=True):
            c.decode = _address(part.decode, "paged_decode")
            c.tables = part.tables.data_ptr()
            c.lens = None if part.lens is None else part.lens.data_ptr()
            c.rows, c.start, c.nb = part.rows, part.start, part.tables.shape[-1]
        pos, slots = pos.reshape(-1).contiguous(), slots.contiguous()
        if keep is not None:
            keep = keep.contiguous()
            assert keep.dtype == torch.int64 and keep.dim() == 1
            assert keep.numel() == 0 or (int(keep[0]) >= 0 and int(keep[-1]) < N)
        out = torch.empty_like(x) if keep is None else x.new_empty(keep.numel(), self._hidden)
        _check(lib.prefill_layers(
            self._layers, len(self._layers), x.data_ptr(), h.data_ptr(), out.data_ptr(), N,
            self._hidden, self._inter, self._H, self._Hkv, D, self._rope_fn,
            self._rope.data_ptr(), self._rope.shape[1], pos.data_ptr(), pool.data_ptr(),
            pool.stride(0), slots.data_ptr(), cparts, len(parts), pool.shape[2], self._eps,
            D**-0.5, _bf16(pool), None if keep is None else keep.data_ptr(),
            -1 if keep is None else keep.numel(), self._scratch.data_ptr(),
            torch.get_num_threads(),
        ), "prefill_layers")  # fmt: skip
        return out


def _address(lib: ctypes.CDLL | None, name: str) -> int | None:
    """The address of ``lib``'s function ``name`` (for a C caller), or None without ``lib``."""
    return None if lib is None else ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


def rms_norm(lib: ctypes.CDLL, x: Tensor, r: Tensor | None, w: Tensor, eps: float) -> Tensor:
    """``x += r`` in place (when given), then RMSNorm(x) * w. x, r: [..., dim] contiguous
    float32; w: [dim] -> a new [..., dim]."""
    assert x.is_contiguous() and (r is None or r.is_contiguous())
    out = torch.empty_like(x)
    dim = x.shape[-1]
    rp = None if r is None else r.data_ptr()
    lib.rms_norm(x.data_ptr(), rp, w.data_ptr(), out.data_ptr(), x.numel() // dim, dim, eps)
    return out


def gemm_fits(n: int, k: int) -> bool:
    """Whether :func:`gemm_bf16` takes an [n, k] weight (whole 32-column tiles, pairs)."""
    return n % 32 == 0 and k % 2 == 0


def pack_pairs(lib: ctypes.CDLL, w: Tensor) -> Tensor:
    """w: [N, K] float -> bf16 pairs for :func:`gemm_bf16`: [N/32, K/2, 32] int32."""
    N, K = w.shape
    assert gemm_fits(N, K)
    wb = w.to(torch.bfloat16).contiguous()
    out = torch.empty(N // 32, K // 2, 32, dtype=torch.int32)
    lib.pack_pairs(wb.data_ptr(), N, K, out.data_ptr())
    return out


def gemm_bf16(lib: ctypes.CDLL, x: Tensor, w: Tensor, dtype: torch.dtype) -> Tensor:
    """x [..., K] (cast to bf16) times the packed weight w ([N/32, K/2, 32], from
    :func:`pack_pairs`) transposed, float32 sums -> [..., N] in ``dtype`` (float32 or bf16).

    oneDNN's bf16 GEMM ran these shapes at 265-367 GFLOP/s from 8 to 52 rows (SmolLM2's four
    projections, 2 threads, Zen 4), this at 392-448: the CPU's one ``vdpbf16ps`` a cycle."""
    K = x.shape[-1]
    N = w.shape[0] * 32
    assert w.shape[1] * 2 == K and dtype in (torch.float32, torch.bfloat16)
    a = x.reshape(-1, K).to(torch.bfloat16).contiguous()
    out = torch.empty(a.shape[0], N, dtype=dtype)
    cf, cb = (out.data_ptr(), None) if dtype == torch.float32 else (None, out.data_ptr())
    lib.gemm_bf16(a.data_ptr(), K, w.data_ptr(), cf, cb, a.shape[0], N, K,
                  torch.get_num_threads())  # fmt: skip
    return out.view(*x.shape[:-1], N)


def activations_fit(hidden: int, inter: int) -> bool:
    """Whether :func:`add_norm` and :func:`silu_mul` take a model's hidden and intermediate
    sizes (whole 16-float vectors)."""
    return hidden % 16 == 0 and inter % 16 == 0


def add_norm(
    lib: ctypes.CDLL, x: Tensor, r: Tensor | None, w: Tensor, eps: float, out_bf16: bool
) -> Tensor:
    """``x += r`` in place (when given: bfloat16, a bf16 GEMM's output), then RMSNorm(x) * w
    as bfloat16 (``out_bf16``: the next GEMM's input) or float32. x: [..., dim] float32
    contiguous, dim a multiple of 16; w: [dim] float32 -> a new [..., dim]."""
    assert x.is_contiguous() and x.dtype == torch.float32 and x.shape[-1] % 16 == 0
    assert r is None or (r.dtype == torch.bfloat16 and r.is_contiguous() and r.shape == x.shape)
    out = torch.empty_like(x, dtype=torch.bfloat16 if out_bf16 else torch.float32)
    dim = x.shape[-1]
    rp = None if r is None else r.data_ptr()
    lib.add_norm(x.data_ptr(), rp, w.data_ptr(), out.data_ptr(), int(out_bf16),
                 x.numel() // dim, dim, eps, torch.get_num_threads())  # fmt: skip
    return out


def silu_mul(lib: ctypes.CDLL, gate_up: Tensor) -> Tensor:
    """SwiGLU's activation of a bf16 GEMM's output: [..., 2 * inter] (gate, then up) ->
    silu(gate) * up [..., inter] in bfloat16, computed in float32. inter a multiple of 16."""
    assert gate_up.dtype == torch.bfloat16 and gate_up.is_contiguous()
    inter = gate_up.shape[-1] // 2
    assert inter % 16 == 0
    out = torch.empty(*gate_up.shape[:-1], inter, dtype=torch.bfloat16)
    rows = gate_up.numel() // (2 * inter)
    lib.silu_mul(gate_up.data_ptr(), out.data_ptr(), rows, inter, torch.get_num_threads())
    return out


def rope_(lib: ctypes.CDLL, x: Tensor, heads: int, table: Tensor, pos: Tensor) -> None:
    """In place on heads [0, heads) of x: [rows, n_heads, D] (rows may be strided);
    table: [2, max_len, D] float32 cos and sin; pos: [rows] int64."""
    rows, _, D = x.shape
    assert x.stride(2) == 1 and x.stride(1) == D and table.is_contiguous() and pos.is_contiguous()
    lib.rope(x.data_ptr(), rows, x.stride(0), heads, D, table.data_ptr(), table.shape[1],
             pos.data_ptr())  # fmt: skip
