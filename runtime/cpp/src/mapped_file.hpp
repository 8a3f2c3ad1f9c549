// A read-only memory map of a whole file (POSIX mmap): galleries are read in place, page by page,
// so opening one costs neither time nor memory in proportion to its size.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace kidrr {

class MappedFile {
public:
    // Throws Error(KIDRR_ERR_INPUT) naming the path if it cannot be opened or mapped, or is not a
    // regular file (a link, with no_symlink).
    explicit MappedFile(const std::string& path, bool no_symlink = false);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    std::string_view bytes() const { return {static_cast<const char*>(data_), size_}; }
    size_t size() const { return size_; }

private:
    void* data_ = nullptr;
    size_t size_ = 0;
};

}  // namespace kidrr
