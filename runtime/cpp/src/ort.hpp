// ONNX Runtime loaded at run time with dlopen + OrtGetApiBase, never linked: any library whose API
// version is at least kMinOrtApi works, whatever version the headers came from.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <onnxruntime/onnxruntime_c_api.h>

namespace kidrr {

constexpr uint32_t kMinOrtApi = 14;  // every OrtApi function used here exists since 1.14 (opset 18)

// The process-wide library + environment. Created by the first bundle, released with the last.
class OrtRuntime {
public:
    // explicit_path may be empty. Throws Error(KIDRR_ERR_BACKEND) saying which path failed and why.
    static std::shared_ptr<OrtRuntime> acquire(const std::string& explicit_path);
    ~OrtRuntime();
    const OrtApi* api() const { return api_; }
    OrtEnv* env() const { return env_; }
    const std::string& version() const { return version_; }
    const std::string& path() const { return path_; }
    uint32_t api_version() const { return api_version_; }
    // Throws Error(code) with ORT's message if status is an error; releases it either way.
    void check(OrtStatus* status, const std::string& what) const;

    OrtRuntime(const OrtRuntime&) = delete;
    OrtRuntime& operator=(const OrtRuntime&) = delete;
    OrtRuntime() = default;

private:
    void* lib_ = nullptr;
    const OrtApi* api_ = nullptr;
    OrtEnv* env_ = nullptr;
    std::string version_, path_;
    uint32_t api_version_ = 0;
};

// A float32 or int64 input: a borrowed buffer and its shape.
struct InputTensor {
    std::string name;
    ONNXTensorElementDataType type;
    std::vector<int64_t> shape;
    const void* data;
    size_t bytes;
};

struct FloatTensor {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

class Session {
public:
    // ops_library: libkidrr_ops to register for this session (empty: none). If it cannot be used the
    // session runs the function bodies and kernels() says why (the scores are the same).
    Session(std::shared_ptr<OrtRuntime> ort, const std::string& model_path, int intra_op_threads,
            const std::string& ops_library = "");
    ~Session();
    // Runs the graph; every output must be float32. Safe to call from several threads at once.
    std::vector<FloatTensor> run(const std::vector<InputTensor>& inputs, const std::vector<std::string>& outputs) const;
    const std::string& kernels() const { return kernels_; }
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

private:
    void open(int intra_op_threads, const std::string& ops_library);
    std::shared_ptr<OrtRuntime> ort_;
    OrtSession* session_ = nullptr;
    OrtMemoryInfo* cpu_ = nullptr;
    std::string path_, kernels_ = "function bodies";
};

// The fused kernels library for an fp32 similarity graph: $KIDRR_OPS_LIBRARY (off: none), else
// libkidrr_ops.so beside the module holding this code (libkidrr.so or the program); "" if none.
std::string find_ops_library();

}  // namespace kidrr
