#include "log.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace pccl {

namespace {
int level() {
    static const int lvl = [] {
        const char* v = std::getenv("PCCL_ARRAYS_LOG");
        if (v == nullptr) return 2;
        if (!std::strcmp(v, "debug")) return 0;
        if (!std::strcmp(v, "info")) return 1;
        if (!std::strcmp(v, "warn")) return 2;
        if (!std::strcmp(v, "error")) return 3;
        return 4;
    }();
    return lvl;
}
void emit(int lvl, const char* tag, const std::string& msg) {
    if (lvl < level()) return;
    static std::mutex mu;
    std::lock_guard<std::mutex> g(mu);
    std::fprintf(stderr, "[pccl_arrays %s] %s\n", tag, msg.c_str());
    std::fflush(stderr);
}
}  // namespace

void log_debug(const std::string& msg) { emit(0, "debug", msg); }
void log_info(const std::string& msg) { emit(1, "info", msg); }
void log_warn(const std::string& msg) { emit(2, "warn", msg); }

}  // namespace pccl
