// The fused kernels (src/ops/kernels.cpp) on fuzzed shapes, masks, broadcasts and values, against a
// plain loop written from the ops' function bodies. A sanitizer report or a mismatch is a finding.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels.hpp"

namespace {

struct Bytes {
    const uint8_t* p;
    size_t n, i = 0;
    uint8_t next() { return i < n ? p[i++] : 0; }
    size_t dim(size_t max) { return 1 + next() % max; }
    float value() { return (static_cast<int>(next()) - 128) / 32.f; }
    std::vector<float> values(size_t count) {
        std::vector<float> v(count);
        for (float& x : v) x = value();
        return v;
    }
    std::vector<float> mask(size_t count) {
        std::vector<float> v(count);
        for (float& x : v) x = (next() % 4) ? 1.f : 0.f;
        return v;
    }
};

void check(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
    for (size_t i = 0; i < got.size(); ++i) {
        if (std::isnan(want[i]) && std::isnan(got[i])) continue;
        if (!(std::fabs(got[i] - want[i]) <= 1e-4f * (1.f + std::fabs(want[i])))) {
            std::fprintf(stderr, "%s: element %zu is %g, reference %g\n", what, i, got[i], want[i]);
            std::abort();
        }
    }
}

void l2norm(float* x, size_t count, size_t stride) {
    float s = 0.f;
    for (size_t k = 0; k < count; ++k) s += x[k * stride] * x[k * stride];
    const float norm = std::sqrt(s) + 1e-8f;
    for (size_t k = 0; k < count; ++k) x[k * stride] /= norm;
}

void softmax(float* x, const float* keep, size_t count, size_t stride) {
    float mx = -INFINITY, sum = 0.f;
    for (size_t k = 0; k < count; ++k)
        if (keep[k] != 0.f) mx = std::fmax(mx, x[k * stride]);
    for (size_t k = 0; k < count; ++k) {
        x[k * stride] = keep[k] != 0.f ? std::exp(x[k * stride] - mx) : (mx == -INFINITY ? NAN : 0.f);
        sum += x[k * stride];
    }
    for (size_t k = 0; k < count; ++k) x[k * stride] /= sum;
}

void fuzz_cross_attention(Bytes& b) {
    const size_t bq = b.dim(5), q = b.dim(6), bc = b.dim(5), c = b.dim(6), d = b.dim(9);
    const bool over_q = b.next() & 1;
    auto query = b.values(bq * q * d), context = b.values(bc * c * d), mask = b.mask(bc * c);
    kidrr::ops::CrossAttentionArgs a{query.data(), context.data(), mask.data(), bq, q, bc, c, d, 9.f, 0.1f, over_q};
    std::vector<float> got(bc * bq * q * d), want(got.size(), 0.f);
    kidrr::ops::cross_attention(a, got.data(), kidrr::ops::serial_for);
    for (size_t i = 0; i < bc; ++i) {
        std::vector<float> s(c * bq * q);  // (C, Bq, Q)
        for (size_t k = 0; k < c; ++k)
            for (size_t r = 0; r < bq * q; ++r) {
                float v = 0.f;
                for (size_t e = 0; e < d; ++e) v += context[(i * c + k) * d + e] * query[r * d + e];
                v = v >= 0.f ? v : 0.1f * v;
                s[k * bq * q + r] = v * mask[i * c + k];
            }
        if (over_q) {
            for (size_t k = 0; k < c; ++k)
                for (size_t g = 0; g < bq; ++g) l2norm(&s[k * bq * q + g * q], q, 1);
        } else {
            for (size_t r = 0; r < bq * q; ++r) l2norm(&s[r], c, bq * q);
        }
        for (float& v : s) v *= 9.f;
        for (size_t r = 0; r < bq * q; ++r) softmax(&s[r], &mask[i * c], c, bq * q);
        for (size_t r = 0; r < bq * q; ++r) {
            float* o = &want[(i * bq * q + r) * d];
            for (size_t k = 0; k < c; ++k)
                for (size_t e = 0; e < d; ++e) o[e] += s[k * bq * q + r] * context[(i * c + k) * d + e];
            l2norm(o, d, 1);
        }
    }
    check(got, want, "CrossAttention");
}

void fuzz_similarity_vector(Bytes& b) {
    // x (A, 1, B, D) against y (1, M, B, D) or (B, D): every broadcasting case the graph uses
    const size_t A = b.dim(4), M = b.dim(4), B = b.dim(5), d = b.dim(9), s = b.dim(7);
    const bool short_y = b.next() & 1;
    std::vector<int64_t> xl{int64_t(A), 1, int64_t(B)}, yl = short_y ? std::vector<int64_t>{int64_t(B)}
                                                                     : std::vector<int64_t>{1, int64_t(M), int64_t(B)};
    kidrr::ops::Broadcast bc;
    if (!kidrr::ops::Broadcast::make(xl, yl, bc).empty()) std::abort();
    auto x = b.values(A * B * d), y = b.values((short_y ? 1 : M) * B * d), w = b.values(d * s), bias = b.values(s);
    kidrr::ops::SimilarityVectorArgs a{x.data(), y.data(), w.data(), bias.data(), d, s, &bc};
    std::vector<float> got(bc.rows * s), want(got.size());
    kidrr::ops::similarity_vector(a, got.data(), kidrr::ops::serial_for);
    const size_t mm = short_y ? 1 : M;
    for (size_t i = 0; i < A; ++i)
        for (size_t j = 0; j < mm; ++j)
            for (size_t k = 0; k < B; ++k) {
                float* o = &want[((i * mm + j) * B + k) * s];
                const float* xr = &x[(i * B + k) * d];
                const float* yr = &y[((short_y ? 0 : j) * B + k) * d];
                for (size_t t = 0; t < s; ++t) {
                    float v = bias[t];
                    for (size_t e = 0; e < d; ++e) v += (xr[e] - yr[e]) * (xr[e] - yr[e]) * w[e * s + t];
                    o[t] = v;
                }
                l2norm(o, s, 1);
            }
    check(got, want, "SimilarityVector");
}

void fuzz_relation_step(Bytes& b) {
    const size_t n = b.dim(4), m = b.dim(4), N = b.dim(7), S = b.dim(8);
    const size_t Q = (b.next() & 1) ? 1 : N;
    const int prev_kind = b.next() % 3;  // scalar, full (n, m, Q, N), or (m, 1, N)
    const float gamma = (b.next() % 5) / 4.f;
    auto rows = b.values(n * m * Q * S), s = b.values(n * m * N * S), nm = b.mask(m * N), rm = b.mask(m * Q);
    for (size_t j = 0; j < m; ++j) nm[j * N] = 1.f;  // the graph's first nodes (the globals) are always real
    auto rw = b.values(S * S), rb = b.values(S), uw = b.values(S * S), ub = b.values(S);
    std::vector<float> prev = b.values(prev_kind == 0 ? 1 : prev_kind == 1 ? n * m * Q * N : m * N);
    kidrr::ops::RelationStepArgs a{};
    a.rows = rows.data(); a.s = s.data(); a.node_mask = nm.data(); a.row_mask = rm.data(); a.prev = prev.data();
    const int64_t strides[3][4] = {{0, 0, 0, 0}, {int64_t(m * Q * N), int64_t(Q * N), int64_t(N), 1}, {0, int64_t(N), 0, 1}};
    for (int k = 0; k < 4; ++k) a.prev_stride[k] = strides[prev_kind][k];
    a.rel_w = rw.data(); a.rel_b = rb.data(); a.upd_w = uw.data(); a.upd_b = ub.data();
    a.n = n; a.m = m; a.q = Q; a.nodes = N; a.s_dim = S; a.gamma = gamma;
    std::vector<float> got_s(n * m * Q * S), got_a(n * m * Q * N), want_s(got_s.size()), want_a(got_a.size());
    kidrr::ops::relation_step(a, got_s.data(), got_a.data(), kidrr::ops::serial_for);
    for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < m; ++j) {
            const size_t p = i * m + j;
            for (size_t qi = 0; qi < Q; ++qi) {
                std::vector<float> u(S);
                for (size_t t = 0; t < S; ++t) {
                    u[t] = rb[t];
                    for (size_t e = 0; e < S; ++e) u[t] += rows[(p * Q + qi) * S + e] * rw[e * S + t];
                }
                float* ad = &want_a[(p * Q + qi) * N];
                for (size_t k = 0; k < N; ++k) {
                    ad[k] = 0.f;
                    for (size_t e = 0; e < S; ++e) ad[k] += u[e] * s[(p * N + k) * S + e];
                }
                softmax(ad, &nm[j * N], N, 1);
                for (size_t k = 0; k < N; ++k) {
                    const float pv = prev[i * a.prev_stride[0] + j * a.prev_stride[1] + qi * a.prev_stride[2] + k * a.prev_stride[3]];
                    ad[k] = gamma * pv + (1.f - gamma) * ad[k];
                }
                std::vector<float> mixed(S, 0.f);
                for (size_t k = 0; k < N; ++k)
                    for (size_t e = 0; e < S; ++e) mixed[e] += ad[k] * s[(p * N + k) * S + e];
                for (size_t t = 0; t < S; ++t) {
                    float v = ub[t];
                    for (size_t e = 0; e < S; ++e) v += mixed[e] * uw[e * S + t];
                    want_s[(p * Q + qi) * S + t] = std::fmax(v, 0.f) * rm[j * Q + qi];
                }
            }
        }
    check(got_a, want_a, "RelationStep adj");
    check(got_s, want_s, "RelationStep s_out");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Bytes b{data, size};
    switch (b.next() % 3) {
        case 0: fuzz_cross_attention(b); break;
        case 1: fuzz_similarity_vector(b); break;
        default: fuzz_relation_step(b); break;
    }
    return 0;
}
