// A few threads kept across operations to run stripes 1..n-1 while the calling thread runs stripe 0, so an
// operation does not pay for starting threads.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pccl {

class Workers {
public:
    Workers() = default;
    ~Workers();
    Workers(const Workers&) = delete;
    Workers& operator=(const Workers&) = delete;
    // Runs task(0) here and task(1..n-1) on the workers; returns when all have returned.
    void run(uint32_t n, const std::function<void(uint32_t)>& task);

    // memcpy split over up to `ways` threads (this one included), in 64-byte aligned parts of at least 1 MiB.
    void copy(void* dst, const void* src, size_t bytes, uint32_t ways);

private:
    void loop(uint32_t index);
    std::mutex mu_;
    std::condition_variable wake_, done_;
    std::vector<std::thread> threads_;
    const std::function<void(uint32_t)>* task_ = nullptr;
    uint64_t generation_ = 0;
    uint32_t active_ = 0;    // workers taking part in the current generation (indices 1..active_)
    uint32_t pending_ = 0;   // of those, how many have not finished
    bool stopping_ = false;
};

}  // namespace pccl
