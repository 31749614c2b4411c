// Minimal logging to stderr. The level comes from PCCL_ARRAYS_LOG (debug, info, warn, error, off); the default
// is warn, so dropped connections and evictions are visible without noise.
#pragma once
#include <string>

namespace pccl {
void log_debug(const std::string& msg);
void log_info(const std::string& msg);
void log_warn(const std::string& msg);
}  // namespace pccl
