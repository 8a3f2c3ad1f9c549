// Reading NumPy .npy arrays and the uncompressed .npz archives np.savez writes (the Python
// runtime's gallery file, runtime/gallery.py). Only what galleries need: little-endian float32,
// and unicode scalars ('<U') for the format/bundle_id tags. No pickles, ever.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kidrr {

struct NpyArray {
    std::string descr;            // e.g. "<f4", "<U15"
    std::vector<size_t> shape;
    std::string data;             // raw bytes, C order

    const float* floats() const { return reinterpret_cast<const float*>(data.data()); }
    size_t count() const;
    std::string unicode_scalar() const;  // a '<U' 0-d array as UTF-8
};

// Throw Error(KIDRR_ERR_INPUT) naming `what` on a malformed or unsupported file.
NpyArray parse_npy(const std::string& bytes, const std::string& what);
NpyArray read_npy(const std::string& path);
// name (without ".npy") -> array, for stored (uncompressed) members only.
std::map<std::string, NpyArray> read_npz(const std::string& path);

}  // namespace kidrr
