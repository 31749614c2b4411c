#include "base/workers.hpp"

#include <algorithm>
#include <cstring>

namespace pccl {

Workers::~Workers() {
    {
        std::lock_guard<std::mutex> g(mu_);
        stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
}

void Workers::run(uint32_t n, const std::function<void(uint32_t)>& task) {
    if (n > 1) {
        std::lock_guard<std::mutex> g(mu_);
        while (threads_.size() + 1 < n) {
            const uint32_t index = uint32_t(threads_.size()) + 1;
            threads_.emplace_back([this, index] { loop(index); });
        }
        task_ = &task;
        active_ = n - 1;
        pending_ = n - 1;
        generation_++;
    }
    wake_.notify_all();
    task(0);
    if (n > 1) {
        std::unique_lock<std::mutex> lk(mu_);
        done_.wait(lk, [this] { return pending_ == 0; });
        task_ = nullptr;
    }
}

void Workers::copy(void* dst, const void* src, size_t bytes, uint32_t ways) {
    constexpr size_t kMinPart = size_t(1) << 20;
    ways = uint32_t(std::max<size_t>(1, std::min<size_t>(ways, bytes / kMinPart)));
    const size_t part = (bytes / ways + 63) / 64 * 64;
    run(ways, [&](uint32_t i) {
        const size_t first = std::min(bytes, size_t(i) * part), last = std::min(bytes, first + part);
        if (last > first) std::memcpy(static_cast<uint8_t*>(dst) + first, static_cast<const uint8_t*>(src) + first, last - first);
    });
}

void Workers::loop(uint32_t index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
        wake_.wait(lk, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        if (index > active_) continue;  // not needed for this operation
        const auto* task = task_;
        lk.unlock();
        (*task)(index);
        lk.lock();
        if (--pending_ == 0) done_.notify_all();
    }
}

}  // namespace pccl
