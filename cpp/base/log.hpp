// Log lines of the core. The level comes from PCCL_ARRAYS_LOG (debug, info, warn, error, off, in any case;
// default warn, so dropped connections and evictions are visible without noise; an unknown value keeps warn
// and says so in the first line). Lines go to stderr until a drain is attached: pccl_arrays attaches one at
// import and hands them to Python's logging (logger "pccl_arrays"), from a thread of its own, so core threads
// never touch Python.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace pccl {
void log_debug(const std::string& msg);
void log_info(const std::string& msg);
void log_warn(const std::string& msg);
void log_error(const std::string& msg);

int log_level();  // 0 debug, 1 info, 2 warn, 3 error, 4 off
// From now on lines are queued (at most 4096; older ones are dropped and counted) for log_take().
void log_attach_drain();
// Waits up to timeout_s for queued lines and takes them all: (level, text).
std::vector<std::pair<int, std::string>> log_take(double timeout_s);
}  // namespace pccl
