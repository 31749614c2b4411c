#include "workers.hpp"

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
