#include "base/log.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>

namespace pccl {

namespace {
constexpr size_t kMaxQueued = 4096;

struct Sink {
    std::mutex mu;
    std::condition_variable cv;
    bool drained = false;  // a drain is attached: queue instead of writing to stderr
    std::deque<std::pair<int, std::string>> queue;
    size_t dropped = 0;
};
Sink& sink() {
    static Sink s;
    return s;
}

const char* kTags[] = {"debug", "info", "warn", "error"};

// The level, and a complaint about PCCL_ARRAYS_LOG when its value is not one we know.
std::pair<int, std::string> parse_level() {
    const char* v = std::getenv("PCCL_ARRAYS_LOG");
    if (v == nullptr || *v == '\0') return {2, ""};
    std::string s(v);
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    for (int i = 0; i < 4; i++)
        if (s == kTags[i]) return {i, ""};
    if (s == "warning") return {2, ""};
    if (s == "off" || s == "none") return {4, ""};
    return {2, "PCCL_ARRAYS_LOG='" + std::string(v) + "' is not one of debug, info, warn, error, off: using warn"};
}

void emit(int lvl, const std::string& msg);

int level() {
    static const int lvl = [] {
        auto [l, complaint] = parse_level();
        if (!complaint.empty()) {
            Sink& s = sink();
            std::lock_guard<std::mutex> g(s.mu);
            s.queue.emplace_back(2, complaint);  // reported once, first, wherever lines go
        }
        return l;
    }();
    return lvl;
}

void flush_to_stderr_locked(Sink& s) {
    for (auto& [l, text] : s.queue) std::fprintf(stderr, "[pccl_arrays %s] %s\n", kTags[l], text.c_str());
    s.queue.clear();
    std::fflush(stderr);
}

void emit(int lvl, const std::string& msg) {
    if (lvl < level()) return;
    Sink& s = sink();
    std::lock_guard<std::mutex> g(s.mu);
    if (s.queue.size() >= kMaxQueued) {
        s.queue.pop_front();
        s.dropped++;
    }
    s.queue.emplace_back(lvl, msg);
    if (!s.drained) flush_to_stderr_locked(s);
    s.cv.notify_all();
}
}  // namespace

void log_debug(const std::string& msg) { emit(0, msg); }
void log_info(const std::string& msg) { emit(1, msg); }
void log_warn(const std::string& msg) { emit(2, msg); }
void log_error(const std::string& msg) { emit(3, msg); }

int log_level() { return level(); }

void log_attach_drain() {
    level();  // parse now, so a complaint about the variable is the first line the drain sees
    Sink& s = sink();
    std::lock_guard<std::mutex> g(s.mu);
    s.drained = true;
}

std::vector<std::pair<int, std::string>> log_take(double timeout_s) {
    Sink& s = sink();
    std::unique_lock<std::mutex> lk(s.mu);
    s.cv.wait_for(lk, std::chrono::duration<double>(timeout_s), [&] { return !s.queue.empty() || s.dropped; });
    std::vector<std::pair<int, std::string>> out(s.queue.begin(), s.queue.end());
    s.queue.clear();
    if (s.dropped) {
        out.emplace_back(2, std::to_string(s.dropped) + " log lines were dropped (more than " +
                                std::to_string(kMaxQueued) + " waited to be logged)");
        s.dropped = 0;
    }
    return out;
}

}  // namespace pccl
