// Reading NumPy .npy arrays and the uncompressed .npz archives np.savez writes (the Python
// runtime's gallery file, runtime/gallery.py). Only what galleries need: little-endian float32,
// and unicode scalars ('<U') for the format/bundle_id tags. No pickles, ever.
//
// Every file is treated as hostile: sizes are overflow-checked and compared with the bytes the
// file really holds before anything is allocated, zip members are checked against their CRC-32
// (as Python's zipfile does), and every malformed field is an Error(KIDRR_ERR_INPUT) naming it.
#pragma once
#include <cstdint>

#include "kidrr.h"
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace kidrr {

struct NpyArray {
    std::string descr;            // e.g. "<f4", "<U15"
    std::vector<size_t> shape;
    std::string data;             // raw bytes, C order; exactly count() * item size

    const float* floats() const { return reinterpret_cast<const float*>(data.data()); }
    size_t count() const;                // element count (checked when the array was parsed)
    std::string unicode_scalar() const;  // a '<U' 0-d array as UTF-8 (Error if it is not one)
};

// The header alone: dtype, shape, where the data starts and how many bytes it must hold
// (overflow-checked). Dtypes: <f4 <f2 |i1 <i8 <u8 and <U<n>.
struct NpyHeader {
    std::string descr;
    std::vector<size_t> shape;
    size_t data_offset = 0, item_size = 0, data_bytes = 0;
};
NpyHeader parse_npy_header(std::string_view bytes, const std::string& what);

// Throw Error(KIDRR_ERR_INPUT) naming `what` on a malformed or unsupported array.
NpyArray parse_npy(std::string_view bytes, const std::string& what);
// name (without ".npy") -> array, for stored (uncompressed) members only; CRC-32 checked.
std::map<std::string, NpyArray> parse_npz(std::string_view bytes, const std::string& what);

// The whole file; Error(code) if it cannot be read or is larger than max_bytes (checked on the
// file's size before anything is allocated).
// Opens path read-only only if it is a regular file: a FIFO or device is refused after an open that
// cannot block (O_NONBLOCK, then fstat on the descriptor), a folder likewise; with no_symlink (files
// inside a folder kidrr owns, such as a gallery's) a symbolic link is refused without being followed.
// Returns the descriptor (the caller closes it) and sets *size; throws Error(code) naming the path.
int open_regular(const std::string& path, bool no_symlink, kidrr_status code, size_t* size);

// A whole regular file (open_regular), at most max_bytes (checked before the buffer is made).
// no_symlink: the file is inside a folder kidrr owns (a gallery), where a link is refused, not followed.
std::string read_file_bytes(const std::string& path, size_t max_bytes = SIZE_MAX, kidrr_status code = KIDRR_ERR_INPUT,
                            bool no_symlink = false);
inline NpyArray read_npy(const std::string& path) { return parse_npy(read_file_bytes(path), path); }
inline std::map<std::string, NpyArray> read_npz(const std::string& path) { return parse_npz(read_file_bytes(path), path); }

}  // namespace kidrr
