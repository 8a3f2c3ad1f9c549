// RegisterCustomOps, the entry point ONNX Runtime calls. Compiled for the generic x86-64 so that a
// library built for AVX2 + FMA refuses politely (the function bodies are used) on a CPU without them
// instead of dying on an illegal instruction.
#include <onnxruntime/onnxruntime_c_api.h>

OrtStatus* kidrr_register_ops(OrtSessionOptions* options, const OrtApiBase* base, const char* cpu_problem);

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
    const char* problem = nullptr;
#if defined(KIDRR_OPS_ARCH) && (defined(__x86_64__) || defined(_M_X64))
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        problem = "built with -march=" KIDRR_OPS_ARCH " but this CPU lacks AVX2/FMA; rebuild with -DKIDRR_OPS_ARCH=";
#endif
    return kidrr_register_ops(options, base, problem);
}
