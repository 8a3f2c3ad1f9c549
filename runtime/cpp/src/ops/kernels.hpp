// Fused CPU kernels of the similarity graph's `kidrr` ops (fp32), free of ONNX Runtime so the fuzzer
// and the unit tests can drive them alone. Each computes what the op's ONNX function body computes
// (export/kidrr_functions.py is the reference), in cache-sized blocks: one read of the inputs, one
// write of the outputs, the products through Eigen's GEMM, everything element-wise in between done
// while the block is in cache. Shapes are checked by the caller (ort_ops.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kidrr::ops {

// Runs fn(i) for i in [0, count); ONNX Runtime's intra-op pool in the custom op, a loop elsewhere.
using ParallelFor = std::function<void(size_t count, const std::function<void(size_t)>& fn)>;
void serial_for(size_t count, const std::function<void(size_t)>& fn);

struct CrossAttentionArgs {
    const float* query;    // (Bq, Q, D)
    const float* context;  // (Bc, C, D)
    const float* mask;     // (Bc, C): nonzero = a real context row
    size_t bq, q, bc, c, d;
    float smooth_lambda, leaky_slope;
    bool norm_over_queries;  // norm_axes [3]: l2norm over Q; [1]: over C
};
// out (Bc, Bq, Q, D)
void cross_attention(const CrossAttentionArgs& a, float* out, const ParallelFor& pfor);

// Row-broadcasting of two operands with a shared last axis, numpy rules over the leading axes.
struct Broadcast {
    std::vector<int64_t> out_lead;            // leading shape of the result
    std::vector<int64_t> x_stride, y_stride;  // per leading axis, in rows (0 where broadcast)
    size_t rows = 1;
    // Empty string if compatible, else why not.
    static std::string make(const std::vector<int64_t>& x_lead, const std::vector<int64_t>& y_lead, Broadcast& b);
};

struct SimilarityVectorArgs {
    const float* x;
    const float* y;
    const float* weight_t;  // (D, S)
    const float* bias;      // (S)
    size_t d, s;
    const Broadcast* bc;
};
// out (rows, S) = l2norm((x - y)^2 W + b)
void similarity_vector(const SimilarityVectorArgs& a, float* out, const ParallelFor& pfor);

struct RelationStepArgs {
    const float* rows;       // (P, Q, S), P = n * m pairs
    const float* s;          // (P, N, S)
    const float* node_mask;  // (m, N)
    const float* row_mask;   // (m, Q)
    const float* prev;       // broadcast to (P, Q, N) through prev_stride (elements; 0 where broadcast)
    int64_t prev_stride[4];  // over (n, m, Q, N)
    const float* rel_w;      // (S, S) folded query/key matrix
    const float* rel_b;      // (S)
    const float* upd_w;      // (S, S) update weight, transposed
    const float* upd_b;      // (S)
    size_t n, m, q, nodes, s_dim;
    float gamma;
};
// s_out (P, Q, S), adj (P, Q, N)
void relation_step(const RelationStepArgs& a, float* s_out, float* adj, const ParallelFor& pfor);

}  // namespace kidrr::ops
