// The one exception type inside the library; the C boundary turns it into a status + message.
#pragma once
#include <stdexcept>
#include <string>

#include "kidrr.h"

namespace kidrr {

class Error : public std::runtime_error {
public:
    Error(kidrr_status code, const std::string& message) : std::runtime_error(message), code(code) {}
    kidrr_status code;
};

}  // namespace kidrr
