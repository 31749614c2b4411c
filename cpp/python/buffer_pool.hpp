// Recycled host memory for results returned as new arrays.
//
// How this works: a fresh 256 MiB result costs more to allocate and fault in (a page fault and a zeroed page
// per 4 KiB, then unmapping it again when the array dies) than moving it over loopback. So a communicator
// hands out result buffers from a pool: a buffer's memory goes back to the pool when the last array viewing it
// is freed (the shared_ptr deleter behind every DLPack export), and the next result of a similar size takes it,
// its pages already mapped. Blocks below kMinPooled bytes are not worth it and come from the allocator.
//
// Bounds: the pool holds at most max_bytes of memory nobody uses (the oldest returned block is freed first when
// a return would exceed it; a block larger than max_bytes is never kept), and release() frees everything held
// and makes later returns free their memory. Memory the user still holds is the user's and is never counted.
// A block serves a request of at most its size and at least 7/8 of it, so small arrays never pin large blocks.
#pragma once
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>

namespace pccl::dl {

class BufferPool : public std::enable_shared_from_this<BufferPool> {
public:
    static constexpr size_t kMinPooled = size_t(1) << 20;
    static constexpr size_t kGranule = size_t(64) << 10;  // capacities are rounded up to this

    explicit BufferPool(size_t max_bytes) : max_bytes_(max_bytes) {}
    ~BufferPool();
    BufferPool(const BufferPool&) = delete;
    BufferPool& operator=(const BufferPool&) = delete;

    // 64-byte aligned memory for nbytes (at least 64 bytes), recycled when the pool holds a block that fits.
    std::shared_ptr<uint8_t> take(size_t nbytes);
    // Frees every block held; later returns free their memory instead of keeping it.
    void release();

    struct Stats { size_t held_bytes, max_bytes; uint64_t reused, allocated; };
    Stats stats() const;

private:
    struct Block { uint8_t* data; size_t capacity; };
    void give_back(uint8_t* data, size_t capacity);

    const size_t max_bytes_;
    mutable std::mutex mu_;
    std::list<Block> free_;  // oldest return first
    size_t held_ = 0;
    uint64_t reused_ = 0, allocated_ = 0;
    bool released_ = false;
};

// Plain 64-byte aligned memory owned by a shared_ptr (XLA imports aligned CPU buffers without copying them).
std::shared_ptr<uint8_t> aligned_block(size_t nbytes);

}  // namespace pccl::dl
