// The result buffer pool (buffer_pool.hpp has how it works).
#include "python/buffer_pool.hpp"

#include <algorithm>
#include <cstdlib>
#include <new>

namespace pccl::dl {

namespace {
uint8_t* allocate(size_t bytes) {
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64)));
    if (!p) throw std::bad_alloc();
    return p;
}
}  // namespace

std::shared_ptr<uint8_t> aligned_block(size_t nbytes) {
    return std::shared_ptr<uint8_t>(allocate(nbytes), [](uint8_t* q) { std::free(q); });
}

BufferPool::~BufferPool() {
    for (const Block& b : free_) std::free(b.data);
}

std::shared_ptr<uint8_t> BufferPool::take(size_t nbytes) {
    if (nbytes < kMinPooled || nbytes > max_bytes_) return aligned_block(nbytes);
    const size_t capacity = (nbytes + kGranule - 1) / kGranule * kGranule;
    uint8_t* data = nullptr;
    size_t got = capacity;
    {
        std::lock_guard<std::mutex> g(mu_);
        if (released_) return aligned_block(nbytes);
        // The smallest block that fits and is not more than 8/7 of the request.
        auto best = free_.end();
        for (auto it = free_.begin(); it != free_.end(); ++it)
            if (it->capacity >= capacity && it->capacity / 8 * 7 <= capacity &&
                (best == free_.end() || it->capacity < best->capacity))
                best = it;
        if (best != free_.end()) {
            data = best->data;
            got = best->capacity;
            held_ -= got;
            free_.erase(best);
            reused_++;
        } else {
            allocated_++;
        }
    }
    if (!data) data = allocate(capacity);
    std::weak_ptr<BufferPool> pool = weak_from_this();
    return std::shared_ptr<uint8_t>(data, [pool, got](uint8_t* q) {
        if (auto p = pool.lock()) p->give_back(q, got);
        else std::free(q);
    });
}

void BufferPool::give_back(uint8_t* data, size_t capacity) {
    std::list<Block> evicted;
    {
        std::lock_guard<std::mutex> g(mu_);
        if (released_ || capacity > max_bytes_) {
            evicted.push_back({data, capacity});
        } else {
            while (held_ + capacity > max_bytes_ && !free_.empty()) {
                held_ -= free_.front().capacity;
                evicted.splice(evicted.end(), free_, free_.begin());
            }
            free_.push_back({data, capacity});
            held_ += capacity;
        }
    }
    for (const Block& b : evicted) std::free(b.data);  // outside the lock: unmapping large blocks takes a while
}

void BufferPool::release() {
    std::list<Block> held;
    {
        std::lock_guard<std::mutex> g(mu_);
        released_ = true;
        held.swap(free_);
        held_ = 0;
    }
    for (const Block& b : held) std::free(b.data);
}

BufferPool::Stats BufferPool::stats() const {
    std::lock_guard<std::mutex> g(mu_);
    return {held_, max_bytes_, reused_, allocated_};
}

}  // namespace pccl::dl
