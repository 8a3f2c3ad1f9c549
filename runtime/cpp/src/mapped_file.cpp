#include "mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "error.hpp"

namespace kidrr {

MappedFile::MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(KIDRR_ERR_INPUT, "cannot open " + path + " (" + std::strerror(errno) + ")");
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error(KIDRR_ERR_INPUT, path + " is not a regular file");
    }
    size_ = size_t(st.st_size);
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
