#include "mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "error.hpp"
#include "npy.hpp"

namespace kidrr {

MappedFile::MappedFile(const std::string& path, bool no_symlink) {
    const int fd = open_regular(path, no_symlink, KIDRR_ERR_INPUT, &size_);
    if (size_ > 0) {
        data_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (data_ == MAP_FAILED) {
            const int err = errno;
            ::close(fd);
            data_ = nullptr;
            throw Error(KIDRR_ERR_INPUT, "cannot map " + path + " (" + std::strerror(err) + ")");
        }
    }
    ::close(fd);  // the map keeps the file's pages, even if a writer unlinks it later
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(data_, size_);
}

}  // namespace kidrr
