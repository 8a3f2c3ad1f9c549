// Overflow-checked size arithmetic. Every size computed from a file, a caller's argument or a
// shape goes through these, so a crafted header (say shape (2^62 + 1, 1, 256)) cannot wrap around
// into a small allocation that is then read or written out of bounds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "error.hpp"

namespace kidrr {

// a * b, or Error(code) naming `what` if it does not fit in size_t.
inline size_t mul_size(size_t a, size_t b, const std::string& what, kidrr_status code = KIDRR_ERR_INPUT) {
    size_t out;
    if (__builtin_mul_overflow(a, b, &out)) throw Error(code, what + ": size overflows (" + std::to_string(a) + " x " + std::to_string(b) + ")");
    return out;
}
inline size_t add_size(size_t a, size_t b, const std::string& what, kidrr_status code = KIDRR_ERR_INPUT) {
    size_t out;
    if (__builtin_add_overflow(a, b, &out)) throw Error(code, what + ": size overflows (" + std::to_string(a) + " + " + std::to_string(b) + ")");
    return out;
}
// The product of all dimensions (1 for a scalar).
inline size_t product(std::initializer_list<size_t> dims, const std::string& what, kidrr_status code = KIDRR_ERR_INPUT) {
    size_t out = 1;
    for (size_t d : dims) out = mul_size(out, d, what, code);
    return out;
}
inline size_t product(const std::vector<size_t>& dims, const std::string& what, kidrr_status code = KIDRR_ERR_INPUT) {
    size_t out = 1;
    for (size_t d : dims) out = mul_size(out, d, what, code);
    return out;
}
// ONNX Runtime shapes are int64: every dimension and the element count must fit.
inline int64_t to_dim(size_t d, const std::string& what) {
    if (d > size_t(INT64_MAX)) throw Error(KIDRR_ERR_INPUT, what + ": dimension " + std::to_string(d) + " is too large");
    return int64_t(d);
}

}  // namespace kidrr
