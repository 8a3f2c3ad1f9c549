// libkidrr_ops: the similarity graph's `kidrr` ops (CrossAttention, SimilarityVector, RelationStep)
// as ONNX Runtime custom-op kernels, fp32. ONNX Runtime runs a registered kernel instead of inlining
// the op's model-local function body; the body stays the fallback (library absent, refused, or another
// precision) and the parity reference. Loaded with SessionOptions.register_custom_ops_library (Python)
// or RegisterCustomOpsLibrary_V2 (the C ABI); entry point RegisterCustomOps, as ONNX Runtime expects.
//
// Written against the plain C API (no C++ wrapper, no exception crosses into ONNX Runtime) and
// negotiated down to the library's API version, so one build serves any ONNX Runtime >= 1.17 (the
// first with KernelContext_ParallelFor, which runs the blocks on the session's own intra-op pool).
#include <onnxruntime/onnxruntime_c_api.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "kernels.hpp"

namespace {

constexpr uint32_t kMinApi = 17;
const OrtApi* g_api = nullptr;
uint32_t g_api_version = 0;

struct Failure {
    OrtErrorCode code;
    std::string what;
};

struct Tensor {
    const float* data = nullptr;
    std::vector<int64_t> shape;
};

Tensor input(OrtKernelContext* ctx, size_t index, const char* name) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = g_api->KernelContext_GetInput(ctx, index, &v)) {
        g_api->ReleaseStatus(st);
        throw Failure{ORT_FAIL, std::string("cannot read input ") + name};
    }
    if (!v) throw Failure{ORT_INVALID_ARGUMENT, std::string("input ") + name + " is missing"};
    OrtTensorTypeAndShapeInfo* info = nullptr;
    Tensor t;
    OrtStatus* st = g_api->GetTensorTypeAndShape(v, &info);
    size_t rank = 0;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    if (!st) st = g_api->GetTensorElementType(info, &type);
    if (!st) st = g_api->GetDimensionsCount(info, &rank);
    if (!st) {
        t.shape.resize(rank);
        st = g_api->GetDimensions(info, t.shape.data(), rank);
    }
    if (info) g_api->ReleaseTensorTypeAndShapeInfo(info);
    void* data = nullptr;  // read only; the API of 1.17..1.21 has no const accessor
    if (!st) st = g_api->GetTensorMutableData(const_cast<OrtValue*>(v), &data);
    t.data = static_cast<const float*>(data);
    if (st) {
        g_api->ReleaseStatus(st);
        throw Failure{ORT_FAIL, std::string("cannot read input ") + name};
    }
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        throw Failure{ORT_INVALID_ARGUMENT, std::string("input ") + name + " is not float32: these kernels serve fp32 graphs"};
    return t;
}

float* output(OrtKernelContext* ctx, size_t index, const std::vector<int64_t>& shape) {
    OrtValue* v = nullptr;
    float* data = nullptr;
    OrtStatus* st = g_api->KernelContext_GetOutput(ctx, index, shape.data(), shape.size(), &v);
    if (!st) st = g_api->GetTensorMutableData(v, reinterpret_cast<void**>(&data));
    if (st) {
        std::string msg = g_api->GetErrorMessage(st);
        g_api->ReleaseStatus(st);
        throw Failure{ORT_FAIL, "cannot allocate output " + std::to_string(index) + ": " + msg};
    }
    return data;
}

std::string dims(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (s.size() == 1 ? ",)" : ")");
}

void expect(bool ok, const char* op, const std::string& what) {
    if (!ok) throw Failure{ORT_INVALID_ARGUMENT, std::string("kidrr.") + op + ": " + what};
}

void expect_rank(const Tensor& t, size_t rank, const char* op, const char* name) {
    expect(t.shape.size() == rank, op, std::string(name) + " has shape " + dims(t.shape) + ", expected rank " +
                                           std::to_string(rank));
    for (int64_t v : t.shape) expect(v >= 0, op, std::string(name) + " has a negative dimension");
}

// The session's intra-op pool, through the context; exceptions stay on this side.
kidrr::ops::ParallelFor pool(OrtKernelContext* ctx) {
    return [ctx](size_t count, const std::function<void(size_t)>& fn) {
        struct Job {
            const std::function<void(size_t)>* fn;
            std::mutex mu;
            std::string error;
        } job{&fn, {}, {}};
        auto trampoline = [](void* data, size_t i) {
            auto* j = static_cast<Job*>(data);
            try {
                (*j->fn)(i);
            } catch (const std::exception& e) {
                std::lock_guard<std::mutex> lock(j->mu);
                if (j->error.empty()) j->error = e.what();
            }
        };
        if (OrtStatus* st = g_api->KernelContext_ParallelFor(ctx, trampoline, count, 0, &job)) {
            std::string msg = g_api->GetErrorMessage(st);
            g_api->ReleaseStatus(st);
            throw Failure{ORT_FAIL, "parallel run failed: " + msg};
        }
        if (!job.error.empty()) throw Failure{ORT_FAIL, "kernel failed: " + job.error};
    };
}

// ---- the ops ------------------------------------------------------------------------------------
struct Kernel {
    virtual ~Kernel() = default;
    virtual void compute(OrtKernelContext* ctx) = 0;
};

float float_attr(const OrtKernelInfo* info, const char* name) {
    float v = 0.f;
    if (OrtStatus* st = g_api->KernelInfoGetAttribute_float(info, name, &v)) {
        g_api->ReleaseStatus(st);
        throw Failure{ORT_INVALID_ARGUMENT, std::string("attribute ") + name + " is missing"};
    }
    return v;
}

struct CrossAttention : Kernel {
    float lam, slope;
    bool over_queries;
    explicit CrossAttention(const OrtKernelInfo* info) {
        lam = float_attr(info, "smooth_lambda");
        slope = float_attr(info, "leaky_slope");
        int64_t axes[4] = {0, 0, 0, 0};
        size_t count = 4;
        OrtStatus* st = g_api->KernelInfoGetAttributeArray_int64(info, "norm_axes", axes, &count);
        if (st) {
            g_api->ReleaseStatus(st);
            throw Failure{ORT_INVALID_ARGUMENT, "kidrr.CrossAttention: attribute norm_axes is missing"};
        }
        // [3]: over the queries (both layouts); [1] (gemm layout) or [2] (batched): over the context.
        expect(count == 1 && (axes[0] == 3 || axes[0] == 1 || axes[0] == 2), "CrossAttention",
               "norm_axes must be [3], [1] or [2]");
        over_queries = axes[0] == 3;
    }
    void compute(OrtKernelContext* ctx) override {
        Tensor q = input(ctx, 0, "query"), c = input(ctx, 1, "context"), m = input(ctx, 2, "context_mask");
        expect_rank(q, 3, "CrossAttention", "query");
        expect_rank(c, 3, "CrossAttention", "context");
        expect_rank(m, 2, "CrossAttention", "context_mask");
        expect(q.shape[2] == c.shape[2], "CrossAttention", "query " + dims(q.shape) + " and context " + dims(c.shape) +
                                                               " differ in their last axis");
        expect(m.shape[0] == c.shape[0] && m.shape[1] == c.shape[1], "CrossAttention",
               "context_mask " + dims(m.shape) + " does not match context " + dims(c.shape));
        kidrr::ops::CrossAttentionArgs a{q.data, c.data, m.data, size_t(q.shape[0]), size_t(q.shape[1]),
                                         size_t(c.shape[0]), size_t(c.shape[1]), size_t(q.shape[2]), lam, slope,
                                         over_queries};
        float* out = output(ctx, 0, {c.shape[0], q.shape[0], q.shape[1], q.shape[2]});
        kidrr::ops::cross_attention(a, out, pool(ctx));
    }
};

struct SimilarityVector : Kernel {
    explicit SimilarityVector(const OrtKernelInfo*) {}
    void compute(OrtKernelContext* ctx) override {
        Tensor x = input(ctx, 0, "x"), y = input(ctx, 1, "y"), w = input(ctx, 2, "weight_t"), b = input(ctx, 3, "bias");
        expect(!x.shape.empty() && !y.shape.empty() && x.shape.back() == y.shape.back(), "SimilarityVector",
               "x " + dims(x.shape) + " and y " + dims(y.shape) + " must share their last axis");
        expect_rank(w, 2, "SimilarityVector", "weight_t");
        expect_rank(b, 1, "SimilarityVector", "bias");
        const int64_t d = x.shape.back(), s = w.shape[1];
        expect(w.shape[0] == d && b.shape[0] == s, "SimilarityVector",
               "weight_t " + dims(w.shape) + " / bias " + dims(b.shape) + " do not fit inputs of size " + std::to_string(d));
        kidrr::ops::Broadcast bc;
        std::string why = kidrr::ops::Broadcast::make({x.shape.begin(), x.shape.end() - 1},
                                                      {y.shape.begin(), y.shape.end() - 1}, bc);
        expect(why.empty(), "SimilarityVector", "x " + dims(x.shape) + " and y " + dims(y.shape) + " do not broadcast: " + why);
        std::vector<int64_t> out_shape = bc.out_lead;
        out_shape.push_back(s);
        float* out = output(ctx, 0, out_shape);
        kidrr::ops::SimilarityVectorArgs a{x.data, y.data, w.data, b.data, size_t(d), size_t(s), &bc};
        kidrr::ops::similarity_vector(a, out, pool(ctx));
    }
};

struct RelationStep : Kernel {
    float gamma;
    explicit RelationStep(const OrtKernelInfo* info) : gamma(float_attr(info, "gamma")) {}
    void compute(OrtKernelContext* ctx) override {
        const char* op = "RelationStep";
        Tensor rows = input(ctx, 0, "rows"), s = input(ctx, 1, "s"), nm = input(ctx, 2, "node_mask"),
               rm = input(ctx, 3, "row_mask"), prev = input(ctx, 4, "prev_adj"), rw = input(ctx, 5, "relation_weight"),
               rb = input(ctx, 6, "relation_bias"), uw = input(ctx, 7, "update_weight_t"), ub = input(ctx, 8, "update_bias");
        expect_rank(rows, 4, op, "rows");
        expect_rank(s, 4, op, "s");
        expect_rank(nm, 2, op, "node_mask");
        expect_rank(rm, 2, op, "row_mask");
        const int64_t n = s.shape[0], m = s.shape[1], N = s.shape[2], S = s.shape[3], Q = rows.shape[2];
        expect(rows.shape[0] == n && rows.shape[1] == m && rows.shape[3] == S, op,
               "rows " + dims(rows.shape) + " does not match s " + dims(s.shape));
        expect(nm.shape[0] == m && nm.shape[1] == N, op, "node_mask " + dims(nm.shape) + " does not match s " + dims(s.shape));
        expect(rm.shape[0] == m && rm.shape[1] == Q, op, "row_mask " + dims(rm.shape) + " does not match rows " + dims(rows.shape));
        for (const Tensor* t : {&rw, &uw}) expect(t->shape.size() == 2 && t->shape[0] == S && t->shape[1] == S, op,
                                                 "a weight has shape " + dims(t->shape) + ", expected (S, S) with S = " + std::to_string(S));
        for (const Tensor* t : {&rb, &ub}) expect(t->shape.size() == 1 && t->shape[0] == S, op,
                                                 "a bias has shape " + dims(t->shape) + ", expected (S,)");
        const int64_t target[4] = {n, m, Q, N};
        expect(prev.shape.size() <= 4, op, "prev_adj " + dims(prev.shape) + " has more than 4 axes");
        kidrr::ops::RelationStepArgs a{};
        const size_t off = 4 - prev.shape.size();
        int64_t stride = 1;
        for (size_t k = 4; k-- > 0;) {
            const int64_t dim = k < off ? 1 : prev.shape[k - off];
            expect(dim == target[k] || dim == 1, op, "prev_adj " + dims(prev.shape) + " does not broadcast to (n, m, Q, N)");
            a.prev_stride[k] = dim == 1 ? 0 : stride;
            stride *= dim;
        }
        a.rows = rows.data; a.s = s.data; a.node_mask = nm.data; a.row_mask = rm.data; a.prev = prev.data;
        a.rel_w = rw.data; a.rel_b = rb.data; a.upd_w = uw.data; a.upd_b = ub.data;
        a.n = size_t(n); a.m = size_t(m); a.q = size_t(Q); a.nodes = size_t(N); a.s_dim = size_t(S); a.gamma = gamma;
        float* s_out = output(ctx, 0, {n, m, Q, S});
        float* adj = output(ctx, 1, {n, m, Q, N});
        kidrr::ops::relation_step(a, s_out, adj, pool(ctx));
    }
};

// ---- OrtCustomOp plumbing -----------------------------------------------------------------------
OrtStatus* to_status(OrtErrorCode code, const std::string& what) { return g_api->CreateStatus(code, what.c_str()); }

template <typename K>
OrtStatus* guarded(K&& body) {
    try {
        body();
        return nullptr;
    } catch (const Failure& f) {
        return to_status(f.code, f.what);
    } catch (const std::exception& e) {
        return to_status(ORT_FAIL, std::string("kidrr ops: ") + e.what());
    } catch (...) {
        return to_status(ORT_FAIL, "kidrr ops: unknown error");
    }
}

struct Op : OrtCustomOp {
    const char* name;
    size_t inputs, outputs;
    Kernel* (*make)(const OrtKernelInfo*);
};

template <typename K>
Kernel* make_kernel(const OrtKernelInfo* info) { return new K(info); }

Op make_op(const char* name, size_t inputs, size_t outputs, Kernel* (*make)(const OrtKernelInfo*)) {
    Op op;
    std::memset(static_cast<OrtCustomOp*>(&op), 0, sizeof(OrtCustomOp));
    op.name = name;
    op.inputs = inputs;
    op.outputs = outputs;
    op.make = make;
    op.version = g_api_version;
    op.GetName = [](const OrtCustomOp* o) { return static_cast<const Op*>(o)->name; };
    op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return "CPUExecutionProvider"; };
    op.GetInputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    op.GetInputTypeCount = [](const OrtCustomOp* o) { return static_cast<const Op*>(o)->inputs; };
    op.GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    op.GetOutputTypeCount = [](const OrtCustomOp* o) { return static_cast<const Op*>(o)->outputs; };
    op.KernelDestroy = [](void* k) { delete static_cast<Kernel*>(k); };
    op.GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    op.CreateKernelV2 = [](const OrtCustomOp* o, const OrtApi*, const OrtKernelInfo* info, void** kernel) {
        *kernel = nullptr;
        return guarded([&] { *kernel = static_cast<const Op*>(o)->make(info); });
    };
    op.KernelComputeV2 = [](void* k, OrtKernelContext* ctx) {
        return guarded([&] { static_cast<Kernel*>(k)->compute(ctx); });
    };
    op.GetStartVersion = [](const OrtCustomOp*) { return 1; };
    op.GetEndVersion = [](const OrtCustomOp*) { return INT_MAX; };
    return op;
}

// Live as long as this library is loaded: ONNX Runtime keeps it loaded while a session that
// registered it exists and unloads it after, when these are freed (no leak per load).
std::once_flag g_ops_once;
std::vector<Op> g_ops;
OrtCustomOpDomain* g_domain = nullptr;
struct DomainOwner {
    ~DomainOwner() {
        if (g_domain && g_api) g_api->ReleaseCustomOpDomain(g_domain);
    }
} g_domain_owner;

}  // namespace

OrtStatus* kidrr_register_ops(OrtSessionOptions* options, const OrtApiBase* base, const char* cpu_problem) {
    if (!base) return nullptr;  // nothing to report through
    unsigned major = 0, minor = 0;
    const char* version = base->GetVersionString();
    std::sscanf(version ? version : "", "%u.%u", &major, &minor);
    const uint32_t want = std::min<uint32_t>(ORT_API_VERSION, minor);
    const OrtApi* api = base->GetApi(std::max<uint32_t>(1, std::min<uint32_t>(want, ORT_API_VERSION)));
    if (!api) return nullptr;
    if (major != 1 || want < kMinApi)
        return api->CreateStatus(ORT_NOT_IMPLEMENTED, (std::string("libkidrr_ops needs ONNX Runtime 1.") +
                                                       std::to_string(kMinApi) + " or newer; this one is " +
                                                       (version ? version : "?") + ". The function bodies are used").c_str());
    if (cpu_problem)
        return api->CreateStatus(ORT_NOT_IMPLEMENTED, (std::string("libkidrr_ops: ") + cpu_problem +
                                                       ". The function bodies are used").c_str());
    if (g_api && g_api != api)
        return api->CreateStatus(ORT_FAIL, "libkidrr_ops is already registered with another ONNX Runtime in this process");
    OrtStatus* st = nullptr;
    std::call_once(g_ops_once, [&] {
        g_api = api;
        g_api_version = want;
        g_ops = {make_op("CrossAttention", 3, 1, make_kernel<CrossAttention>),
                 make_op("SimilarityVector", 4, 1, make_kernel<SimilarityVector>),
                 make_op("RelationStep", 9, 2, make_kernel<RelationStep>)};
        st = api->CreateCustomOpDomain("kidrr", &g_domain);
        for (Op& op : g_ops)
            if (!st) st = api->CustomOpDomain_Add(g_domain, &op);
    });
    if (st) return st;
    if (!g_domain) return api->CreateStatus(ORT_FAIL, "libkidrr_ops failed to set up its domain earlier in this process");
    return api->AddCustomOpDomain(options, g_domain);
}
