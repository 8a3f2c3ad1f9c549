#include "kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <string>

#include <Eigen/Core>

namespace kidrr::ops {

namespace {

using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const Mat>;
using MMap = Eigen::Map<Mat>;

constexpr float kNormEps = 1e-8f;      // l2norm: x / (sqrt(sum x^2) + 1e-8), as the function bodies
constexpr size_t kBlockRows = 128;     // rows per block: a block's scores and products stay in L2

// One scratch buffer per thread and purpose, reused across blocks and runs. 64-byte aligned, always:
// Eigen peels vectorised reductions by address, so a buffer's alignment must not depend on which
// thread runs a block, or concurrent runs would differ from serial ones in the last bit.
struct Scratch {
    float* data = nullptr;
    size_t size = 0;
    ~Scratch() { std::free(data); }
};

float* scratch(Scratch& buf, size_t count) {
    if (buf.size < count) {
        std::free(buf.data);
        buf.data = static_cast<float*>(std::aligned_alloc(64, ((count * sizeof(float) + 63) / 64) * 64));
        if (!buf.data) {
            buf.size = 0;
            throw std::bad_alloc();
        }
        buf.size = count;
    }
    return buf.data;
}

void l2norm_rows(float* x, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; ++r) {
        float* row = x + r * cols;
        float sum = 0.f;
        for (size_t k = 0; k < cols; ++k) sum += row[k] * row[k];
        const float inv = 1.f / (std::sqrt(sum) + kNormEps);
        for (size_t k = 0; k < cols; ++k) row[k] *= inv;
    }
}

// Softmax along columns / rows of logits where masked entries are already -inf (they become 0); a
// column or row with no finite entry gives NaN, as Softmax over all -inf does in the function body.
void softmax_columns(MMap& x) {
    const Eigen::RowVectorXf mx = x.colwise().maxCoeff();
    x = (x.rowwise() - mx).array().exp().matrix();
    const Eigen::RowVectorXf inv = x.colwise().sum().cwiseInverse();
    x.array().rowwise() *= inv.array();
}

void softmax_rows(MMap& x) {
    const Eigen::VectorXf mx = x.rowwise().maxCoeff();
    x = (x.colwise() - mx).array().exp().matrix();
    const Eigen::VectorXf inv = x.rowwise().sum().cwiseInverse();
    x.array().colwise() *= inv.array();
}

}  // namespace

void serial_for(size_t count, const std::function<void(size_t)>& fn) {
    for (size_t i = 0; i < count; ++i) fn(i);
}

// ---- CrossAttention -----------------------------------------------------------------------------
// Per context set and block of query sets: scores (C x rows) in one product, then leaky ReLU, mask,
// l2norm, masked softmax over C while they are in cache, then attended (rows x D) in a second
// product written straight into the output, l2-normalised in place.
void cross_attention(const CrossAttentionArgs& a, float* out, const ParallelFor& pfor) {
    if (a.bq == 0 || a.bc == 0 || a.q == 0 || a.d == 0) return;
    const size_t sets_per_block = std::max<size_t>(1, kBlockRows / a.q);
    const size_t blocks = (a.bq + sets_per_block - 1) / sets_per_block;
    pfor(a.bc * blocks, [&](size_t item) {
        static thread_local Scratch buf_scores, buf_norm;
        const size_t ci = item / blocks, b0 = (item % blocks) * sets_per_block;
        const size_t b1 = std::min(a.bq, b0 + sets_per_block);
        const size_t rows = (b1 - b0) * a.q, C = a.c;
        const float* ctx = a.context + ci * C * a.d;
        const float* mask = a.mask + ci * C;
        float* scores = scratch(buf_scores, C * rows);
        MMap sc(scores, C, rows);
        sc.noalias() = CMap(ctx, C, a.d) * CMap(a.query + b0 * a.q * a.d, rows, a.d).transpose();
        for (size_t c = 0; c < C; ++c) {
            float* row = scores + c * rows;
            const float mk = mask[c];
            for (size_t r = 0; r < rows; ++r) {
                float v = row[r];
                v = v >= 0.f ? v : v * a.leaky_slope;
                row[r] = v * mk;
            }
        }
        if (a.norm_over_queries) {  // over the Q queries of one set, per context row
            for (size_t c = 0; c < C; ++c)
                for (size_t g = 0; g < rows; g += a.q) l2norm_rows(scores + c * rows + g, 1, a.q);
        } else {                    // over the context rows, per query
            float* sums = scratch(buf_norm, rows);
            std::fill(sums, sums + rows, 0.f);
            for (size_t c = 0; c < C; ++c)
                for (size_t r = 0; r < rows; ++r) sums[r] += scores[c * rows + r] * scores[c * rows + r];
            for (size_t r = 0; r < rows; ++r) sums[r] = 1.f / (std::sqrt(sums[r]) + kNormEps);
            for (size_t c = 0; c < C; ++c)
                for (size_t r = 0; r < rows; ++r) scores[c * rows + r] *= sums[r];
        }
        // softmax over C (columns) of lambda x where the mask holds, -inf elsewhere; Eigen's packet exp
        const float ninf = -std::numeric_limits<float>::infinity();
        for (size_t c = 0; c < C; ++c) {
            if (mask[c] != 0.f) sc.row(c) *= a.smooth_lambda;
            else sc.row(c).setConstant(ninf);
        }
        softmax_columns(sc);
        float* dst = out + (ci * a.bq + b0) * a.q * a.d;
        MMap(dst, rows, a.d).noalias() = sc.transpose() * CMap(ctx, C, a.d);
        l2norm_rows(dst, rows, a.d);
    });
}

// ---- SimilarityVector ---------------------------------------------------------------------------
std::string Broadcast::make(const std::vector<int64_t>& x_lead, const std::vector<int64_t>& y_lead, Broadcast& b) {
    const size_t rank = std::max(x_lead.size(), y_lead.size());
    auto dim = [rank](const std::vector<int64_t>& s, size_t axis) -> int64_t {
        size_t off = rank - s.size();
        return axis < off ? 1 : s[axis - off];
    };
    b.out_lead.assign(rank, 1);
    b.x_stride.assign(rank, 0);
    b.y_stride.assign(rank, 0);
    for (size_t k = 0; k < rank; ++k) {
        int64_t dx = dim(x_lead, k), dy = dim(y_lead, k);
        if (dx != dy && dx != 1 && dy != 1)
            return "axis " + std::to_string(k) + " has " + std::to_string(dx) + " and " + std::to_string(dy);
        b.out_lead[k] = dx == 1 ? dy : dx;
    }
    int64_t sx = 1, sy = 1;
    for (size_t k = rank; k-- > 0;) {
        int64_t dx = dim(x_lead, k), dy = dim(y_lead, k);
        b.x_stride[k] = dx == 1 ? 0 : sx;
        b.y_stride[k] = dy == 1 ? 0 : sy;
        sx *= dx;
        sy *= dy;
    }
    b.rows = 1;
    for (int64_t v : b.out_lead) b.rows *= static_cast<size_t>(v);
    return "";
}

// Per block of result rows: (x - y)^2 gathered once into a scratch block, one product with W, then
// bias and l2norm on the block as it leaves the product.
void similarity_vector(const SimilarityVectorArgs& a, float* out, const ParallelFor& pfor) {
    const Broadcast& bc = *a.bc;
    if (bc.rows == 0 || a.s == 0) return;
    const size_t blocks = (bc.rows + kBlockRows - 1) / kBlockRows;
    const size_t rank = bc.out_lead.size();
    pfor(blocks, [&](size_t item) {
        static thread_local Scratch buf_sq;
        const size_t r0 = item * kBlockRows, r1 = std::min(bc.rows, r0 + kBlockRows), rows = r1 - r0;
        float* sq = scratch(buf_sq, rows * a.d);
        for (size_t r = r0; r < r1; ++r) {
            size_t rest = r, xo = 0, yo = 0;
            for (size_t k = rank; k-- > 0;) {
                const size_t idx = rest % static_cast<size_t>(bc.out_lead[k]);
                rest /= static_cast<size_t>(bc.out_lead[k]);
                xo += idx * static_cast<size_t>(bc.x_stride[k]);
                yo += idx * static_cast<size_t>(bc.y_stride[k]);
            }
            const float* x = a.x + xo * a.d;
            const float* y = a.y + yo * a.d;
            float* dst = sq + (r - r0) * a.d;
            for (size_t k = 0; k < a.d; ++k) {
                const float diff = x[k] - y[k];
                dst[k] = diff * diff;
            }
        }
        float* dst = out + r0 * a.s;
        MMap o(dst, rows, a.s);
        o.noalias() = CMap(sq, rows, a.d) * CMap(a.weight_t, a.d, a.s);
        o.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(a.bias, a.s);
        l2norm_rows(dst, rows, a.s);
    });
}

// ---- RelationStep -------------------------------------------------------------------------------
// Per block of pairs: u = rows M + c for the whole block in one product; per pair the (Q x N)
// logits, masked softmax, the gamma mix with the previous adjacency, and A s; then the update
// projection of the whole block in one product, ReLU and the row mask as it is written.
void relation_step(const RelationStepArgs& a, float* s_out, float* adj, const ParallelFor& pfor) {
    const size_t pairs = a.n * a.m, Q = a.q, N = a.nodes, S = a.s_dim;
    if (pairs == 0 || Q == 0 || S == 0) return;
    const size_t pairs_per_block = std::max<size_t>(1, kBlockRows / Q);
    const size_t blocks = (pairs + pairs_per_block - 1) / pairs_per_block;
    const float gamma = a.gamma, one_minus = 1.f - a.gamma;
    pfor(blocks, [&](size_t item) {
        static thread_local Scratch buf_u, buf_mixed;
        const size_t p0 = item * pairs_per_block, p1 = std::min(pairs, p0 + pairs_per_block);
        const size_t rows = (p1 - p0) * Q;
        float* u = scratch(buf_u, rows * S);
        float* mixed = scratch(buf_mixed, rows * S);
        MMap um(u, rows, S);
        um.noalias() = CMap(a.rows + p0 * Q * S, rows, S) * CMap(a.rel_w, S, S);
        um.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(a.rel_b, S);
        for (size_t p = p0; p < p1; ++p) {
            const size_t i = p / a.m, j = p % a.m;
            const float* sp = a.s + p * N * S;
            float* ap = adj + p * Q * N;
            MMap am(ap, Q, N);
            // Per-pair products are tiny (Q x S x N): coefficient-based, no GEMM packing.
            am.noalias() = CMap(u + (p - p0) * Q * S, Q, S).lazyProduct(CMap(sp, N, S).transpose());
            const float* nm = a.node_mask + j * N;
            for (size_t k = 0; k < N; ++k)
                if (nm[k] == 0.f) am.col(k).setConstant(-std::numeric_limits<float>::infinity());
            softmax_rows(am);
            const float* prev = a.prev + i * a.prev_stride[0] + j * a.prev_stride[1];
            for (size_t qi = 0; qi < Q; ++qi) {
                float* row = ap + qi * N;
                const float* pr = prev + qi * a.prev_stride[2];
                for (size_t k = 0; k < N; ++k) row[k] = gamma * pr[k * a.prev_stride[3]] + one_minus * row[k];
            }
            MMap(mixed + (p - p0) * Q * S, Q, S).noalias() = am.lazyProduct(CMap(sp, N, S));
        }
        float* dst = s_out + p0 * Q * S;
        MMap o(dst, rows, S);
        o.noalias() = CMap(mixed, rows, S) * CMap(a.upd_w, S, S);
        o.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(a.upd_b, S);
        for (size_t p = p0; p < p1; ++p) {
            const float* rm = a.row_mask + (p % a.m) * Q;
            for (size_t qi = 0; qi < Q; ++qi) {
                float* row = dst + ((p - p0) * Q + qi) * S;
                for (size_t k = 0; k < S; ++k) row[k] = std::max(row[k], 0.f) * rm[qi];
            }
        }
    });
}

}  // namespace kidrr::ops
