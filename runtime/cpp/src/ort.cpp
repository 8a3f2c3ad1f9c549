#include "ort.hpp"

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "error.hpp"

#ifndef KIDRR_DEFAULT_ORT_LIBRARY
#define KIDRR_DEFAULT_ORT_LIBRARY ""
#endif

namespace kidrr {

namespace {

bool is_file(const std::string& p) {
    struct stat st;
    return !p.empty() && ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Ask the Python that has onnxruntime installed where its library is (the wheel's capi/ folder).
std::string library_from_python() {
    const char* py = std::getenv("KIDRR_PYTHON");
    std::string cmd = std::string(py && *py ? py : "python3") +
                      " -c \"import glob,os,onnxruntime as o;"
                      "print((sorted(glob.glob(os.path.join(os.path.dirname(o.__file__),'capi','libonnxruntime.so*')))+[''])[0])\""
                      " 2>/dev/null";
    std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), &::pclose);
    if (!pipe) return "";
    char buf[4096];
    std::string out;
    while (std::fgets(buf, sizeof buf, pipe.get())) out += buf;
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out;
}

// (path, where it came from) in order: explicit, env, build-time default, python now.
std::pair<std::string, std::string> locate_library(const std::string& explicit_path) {
    if (!explicit_path.empty()) return {explicit_path, "kidrr_options.ort_library"};
    if (const char* env = std::getenv("KIDRR_ORT_LIBRARY"); env && *env) return {env, "$KIDRR_ORT_LIBRARY"};
    if (is_file(KIDRR_DEFAULT_ORT_LIBRARY)) return {KIDRR_DEFAULT_ORT_LIBRARY, "the onnxruntime wheel found at build time"};
    std::string found = library_from_python();
    if (!found.empty()) return {found, "the onnxruntime wheel of python3"};
    throw Error(KIDRR_ERR_BACKEND,
                "cannot find libonnxruntime.so: pip install onnxruntime, or set $KIDRR_ORT_LIBRARY / "
                "kidrr_options.ort_library to its path");
}

std::mutex g_mutex;
std::weak_ptr<OrtRuntime> g_runtime;

}  // namespace

std::shared_ptr<OrtRuntime> OrtRuntime::acquire(const std::string& explicit_path) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (auto live = g_runtime.lock()) {
        if (!explicit_path.empty() && explicit_path != live->path_)
            throw Error(KIDRR_ERR_BACKEND, "ONNX Runtime is already loaded from " + live->path_ +
                                               " in this process; cannot also load " + explicit_path);
        return live;
    }
    auto [path, source] = locate_library(explicit_path);
    auto rt = std::make_shared<OrtRuntime>();
    rt->path_ = path;
    // RTLD_LOCAL: keep ORT's symbols out of the global namespace (the host may load its own copy).
    rt->lib_ = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!rt->lib_) {
        const char* why = ::dlerror();
        throw Error(KIDRR_ERR_BACKEND, "cannot load ONNX Runtime from " + path + " (" + source + "): " + (why ? why : "?"));
    }
    using GetApiBase = const OrtApiBase* (*)();
    auto get_base = reinterpret_cast<GetApiBase>(::dlsym(rt->lib_, "OrtGetApiBase"));
    if (!get_base) throw Error(KIDRR_ERR_BACKEND, path + " has no OrtGetApiBase: not an ONNX Runtime library");
    const OrtApiBase* base = get_base();
    rt->version_ = base->GetVersionString();
    // ORT 1.x serves API version x; ask for at most what the headers know and what the library has.
    unsigned major = 0, minor = 0;
    if (std::sscanf(rt->version_.c_str(), "%u.%u", &major, &minor) != 2 || major != 1)
        throw Error(KIDRR_ERR_BACKEND, "ONNX Runtime " + rt->version_ + " at " + path + " is not a 1.x release; kidrr needs 1.x");
    uint32_t want = std::min<uint32_t>(ORT_API_VERSION, minor);
    if (want < kMinOrtApi)
        throw Error(KIDRR_ERR_BACKEND, "ONNX Runtime " + rt->version_ + " at " + path + " is too old: kidrr needs API " +
                                           std::to_string(kMinOrtApi) + " (1." + std::to_string(kMinOrtApi) + ") or newer");
    rt->api_ = base->GetApi(want);
    if (!rt->api_)
        throw Error(KIDRR_ERR_BACKEND, "ONNX Runtime " + rt->version_ + " refused API version " + std::to_string(want));
    rt->api_version_ = want;
    rt->check(rt->api_->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "kidrr", &rt->env_), "creating the ONNX Runtime environment");
    g_runtime = rt;
    return rt;
}

OrtRuntime::~OrtRuntime() {
    if (env_) api_->ReleaseEnv(env_);
    // The library stays loaded: unloading ONNX Runtime while its thread pools wind down is unsafe,
    // and a later bundle reuses it through dlopen's own reference count.
}

void OrtRuntime::check(OrtStatus* status, const std::string& what) const {
    if (!status) return;
    std::string msg = api_->GetErrorMessage(status);
    OrtErrorCode code = api_->GetErrorCode(status);
    api_->ReleaseStatus(status);
    kidrr_status k = (code == ORT_INVALID_ARGUMENT || code == ORT_INVALID_GRAPH || code == ORT_NO_SUCHFILE ||
                      code == ORT_NO_MODEL || code == ORT_INVALID_PROTOBUF)
                         ? KIDRR_ERR_BUNDLE
                         : KIDRR_ERR_BACKEND;
    if (what.rfind("running", 0) == 0) k = KIDRR_ERR_BACKEND;
    throw Error(k, "ONNX Runtime failed " + what + ": " + msg);
}

std::string find_ops_library() {
    if (const char* env = std::getenv("KIDRR_OPS_LIBRARY"); env && *env) {
        std::string v = env;
        return (v == "off" || v == "0" || v == "none" || v == "bodies") ? "" : v;
    }
    Dl_info info{};
    if (::dladdr(reinterpret_cast<void*>(&find_ops_library), &info) && info.dli_fname) {
        std::string self = info.dli_fname;
        size_t slash = self.rfind('/');
        std::string candidate = (slash == std::string::npos ? std::string(".") : self.substr(0, slash)) + "/libkidrr_ops.so";
        if (is_file(candidate)) return candidate;
    }
    return "";
}

Session::Session(std::shared_ptr<OrtRuntime> ort, const std::string& model_path, int intra_op_threads,
                 const std::string& ops_library)
    : ort_(std::move(ort)), path_(model_path) {
    if (!ops_library.empty()) {
        try {
            open(intra_op_threads, ops_library);
            kernels_ = "fused (" + ops_library + ")";
        } catch (const Error& e) {
            // Another ONNX Runtime's build, another CPU, a broken file: same scores from the function bodies.
            static std::once_flag said;
            std::call_once(said, [&] {
                std::fprintf(stderr, "kidrr: %s not used (%s); scoring with the function bodies (same scores, slower). "
                             "Rebuild runtime/cpp or set KIDRR_OPS_LIBRARY=off to silence this\n",
                             ops_library.c_str(), e.what());
            });
            kernels_ = "function bodies (" + ops_library + " failed to load)";
        }
    }
    if (!session_) open(intra_op_threads, "");
    ort_->check(ort_->api()->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &cpu_), "creating CPU memory info");
}

void Session::open(int intra_op_threads, const std::string& ops_library) {
    const OrtApi* api = ort_->api();
    OrtSessionOptions* opts = nullptr;
    ort_->check(api->CreateSessionOptions(&opts), "creating session options");
    std::unique_ptr<OrtSessionOptions, void (*)(OrtSessionOptions*)> opts_guard(opts, api->ReleaseSessionOptions);
    if (intra_op_threads > 0) ort_->check(api->SetIntraOpNumThreads(opts, intra_op_threads), "setting threads");
    ort_->check(api->SetSessionGraphOptimizationLevel(opts, ORT_ENABLE_ALL), "setting the optimisation level");
    // Idle workers sleep between runs, as in the Python runtime: a spinning worker holds the core the
    // gallery reads and the next graph need (python -m kidrr.bench.spin_compare; docs/runtime.md).
    ort_->check(api->AddSessionConfigEntry(opts, "session.intra_op.allow_spinning", "0"), "setting thread spinning");
    if (!ops_library.empty())
        ort_->check(api->RegisterCustomOpsLibrary_V2(opts, ops_library.c_str()), "registering " + ops_library);
    ort_->check(api->CreateSession(ort_->env(), path_.c_str(), opts, &session_), "loading " + path_);
}

Session::~Session() {
    if (cpu_) ort_->api()->ReleaseMemoryInfo(cpu_);
    if (session_) ort_->api()->ReleaseSession(session_);
}

std::vector<FloatTensor> Session::run(const std::vector<InputTensor>& inputs, const std::vector<std::string>& outputs) const {
    const OrtApi* api = ort_->api();
    auto release_value = [api](OrtValue* v) { if (v) api->ReleaseValue(v); };
    std::vector<std::unique_ptr<OrtValue, decltype(release_value)>> in_values;
    std::vector<const char*> in_names;
    std::vector<const OrtValue*> in_ptrs;
    for (const InputTensor& t : inputs) {
        OrtValue* v = nullptr;
        // ORT only reads inputs; the API takes void* for historical reasons.
        ort_->check(api->CreateTensorWithDataAsOrtValue(cpu_, const_cast<void*>(t.data), t.bytes, t.shape.data(),
                                                        t.shape.size(), t.type, &v),
                    "wrapping input " + t.name);
        in_values.emplace_back(v, release_value);
        in_names.push_back(t.name.c_str());
        in_ptrs.push_back(v);
    }
    std::vector<const char*> out_names;
    for (const std::string& n : outputs) out_names.push_back(n.c_str());
    std::vector<OrtValue*> out_raw(outputs.size(), nullptr);
    OrtStatus* st = api->Run(session_, nullptr, in_names.data(), in_ptrs.data(), in_ptrs.size(), out_names.data(),
                             out_names.size(), out_raw.data());
    std::vector<std::unique_ptr<OrtValue, decltype(release_value)>> out_values;
    for (OrtValue* v : out_raw) out_values.emplace_back(v, release_value);
    ort_->check(st, "running " + path_);

    std::vector<FloatTensor> result(outputs.size());
    for (size_t i = 0; i < outputs.size(); ++i) {
        OrtTensorTypeAndShapeInfo* info = nullptr;
        ort_->check(api->GetTensorTypeAndShape(out_values[i].get(), &info), "reading output " + outputs[i]);
        std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> guard(info, api->ReleaseTensorTypeAndShapeInfo);
        ONNXTensorElementDataType type;
        size_t dims = 0, count = 0;
        ort_->check(api->GetTensorElementType(info, &type), "reading output type");
        if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
            throw Error(KIDRR_ERR_BUNDLE, path_ + ": output " + outputs[i] + " is not float32; the C runtime reads float32 outputs only");
        ort_->check(api->GetDimensionsCount(info, &dims), "reading output rank");
        result[i].shape.resize(dims);
        ort_->check(api->GetDimensions(info, result[i].shape.data(), dims), "reading output shape");
        ort_->check(api->GetTensorShapeElementCount(info, &count), "reading output size");
        float* data = nullptr;
        ort_->check(api->GetTensorMutableData(out_values[i].get(), reinterpret_cast<void**>(&data)), "reading output data");
        result[i].data.assign(data, data + count);
    }
    return result;
}

}  // namespace kidrr
