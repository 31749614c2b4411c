// DLPack interchange for the bindings layer: reading capsules that torch, JAX, CuPy and NumPy export, and
// exporting buffers the core owns so that any of them can import the result without a copy.
//
// The structs below follow the DLPack specification's memory layout (v0.8 "legacy" capsules named "dltensor"
// and v1.x versioned capsules named "dltensor_versioned"). Only the fields the specification fixes are used.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "python/buffer_pool.hpp"
#include "base/dtype.hpp"

namespace pccl::dl {

struct Device { int32_t type; int32_t id; };
struct DataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct Tensor {
    void* data;
    Device device;
    int32_t ndim;
    DataType dtype;
    int64_t* shape;
    int64_t* strides;  // in elements; null means compact row-major
    uint64_t byte_offset;
};
struct Managed {  // legacy
    Tensor tensor;
    void* manager_ctx;
    void (*deleter)(Managed*);
};
struct Version { uint32_t major; uint32_t minor; };
struct ManagedVersioned {
    Version version;
    void* manager_ctx;
    void (*deleter)(ManagedVersioned*);
    uint64_t flags;
    Tensor tensor;
};

constexpr int32_t kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13, kROCM = 10;
constexpr uint8_t kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kComplex = 5, kBool = 6;
constexpr uint64_t kFlagReadOnly = 1, kFlagIsCopied = 2;

// A tensor imported from a capsule. It owns the producer's managed tensor and calls its deleter when dropped
// (with the GIL held, since deleters of Python producers touch Python objects; never during interpreter
// shutdown, where a leak is safer than a crash).
class View {
public:
    static std::unique_ptr<View> from_capsule(pybind11::capsule capsule);
    ~View();
    View(const View&) = delete;
    View& operator=(const View&) = delete;

    uintptr_t data() const;
    std::vector<int64_t> shape() const;
    std::vector<int64_t> strides() const;  // in elements, filled in when the producer left them null
    std::string dtype_name() const;        // "float32", "bfloat16", ... or a description of an unsupported one
    int dtype_code() const;                // the core's DType code, or -1 when the core cannot reduce it
    size_t itemsize() const { return size_t(t_->dtype.bits) / 8; }
    int64_t size() const;
    bool compact() const;  // row-major without gaps: the core can use the bytes as they are
    bool readonly() const { return readonly_; }
    bool versioned() const { return managed_v_ != nullptr; }
    std::pair<int32_t, int32_t> device() const { return {t_->device.type, t_->device.id}; }

private:
    View() = default;
    Tensor* t_ = nullptr;
    Managed* managed_ = nullptr;
    ManagedVersioned* managed_v_ = nullptr;
    bool readonly_ = false;
};

// A host buffer the core owns, exported through __dlpack__ (legacy or versioned, as the consumer asks).
class HostBuffer : public std::enable_shared_from_this<HostBuffer> {
public:
    // New memory for the shape, from the pool when one is given (its pages may hold an earlier result).
    HostBuffer(std::vector<int64_t> shape, int dtype_code, BufferPool* pool = nullptr);
    // Adopts memory the core allocated (64-byte aligned, at least the shape's bytes).
    HostBuffer(std::vector<int64_t> shape, int dtype_code, std::shared_ptr<uint8_t> data, size_t nbytes)
        : shape_(std::move(shape)), dtype_(dtype_code), nbytes_(nbytes), data_(std::move(data)) {}
    // The same memory seen as another dtype of the same width (bfloat16 words as uint16 for NumPy).
    static std::shared_ptr<HostBuffer> alias(const std::shared_ptr<HostBuffer>& other, int dtype_code);
    // The same memory seen with another shape of the same number of elements.
    static std::shared_ptr<HostBuffer> reshaped(const std::shared_ptr<HostBuffer>& other, std::vector<int64_t> shape);
    uintptr_t data() const { return reinterpret_cast<uintptr_t>(data_.get()); }
    size_t nbytes() const { return nbytes_; }
    const std::vector<int64_t>& shape() const { return shape_; }
    int dtype_code() const { return dtype_; }
    // A capsule whose managed tensor keeps this buffer alive until the consumer's deleter runs.
    pybind11::capsule export_capsule(bool versioned);

private:
    std::vector<int64_t> shape_;
    int dtype_;
    size_t nbytes_ = 0;
    std::shared_ptr<uint8_t> data_;
};

DataType dl_dtype_of(DType t);

}  // namespace pccl::dl
