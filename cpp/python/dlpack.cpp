#include "python/dlpack.hpp"

#include <cstdlib>
#include <cstring>

#include "base/error.hpp"

namespace py = pybind11;

namespace pccl::dl {

namespace {

int core_code(const DataType& d) {
    if (d.lanes != 1) return -1;
    switch (d.code) {
        case kInt:
            switch (d.bits) { case 8: return int(DType::kInt8); case 16: return int(DType::kInt16);
                              case 32: return int(DType::kInt32); case 64: return int(DType::kInt64); }
            return -1;
        case kUInt:
            switch (d.bits) { case 8: return int(DType::kUInt8); case 16: return int(DType::kUInt16);
                              case 32: return int(DType::kUInt32); case 64: return int(DType::kUInt64); }
            return -1;
        case kFloat:
            switch (d.bits) { case 16: return int(DType::kFloat16); case 32: return int(DType::kFloat32);
                              case 64: return int(DType::kFloat64); }
            return -1;
        case kBfloat: return d.bits == 16 ? int(DType::kBFloat16) : -1;
        default: return -1;
    }
}

std::string describe(const DataType& d) {
    const char* kinds[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
    std::string kind = d.code < 7 ? kinds[d.code] : "code" + std::to_string(d.code);
    std::string s = kind + std::to_string(d.bits);
    if (d.lanes != 1) s += "x" + std::to_string(d.lanes);
    return s;
}

}  // namespace

std::unique_ptr<View> View::from_capsule(py::capsule capsule) {
    std::unique_ptr<View> v(new View());
    PyObject* cap = capsule.ptr();
    // The consumer renames a capsule it takes over, so the capsule's own destructor leaves the tensor to us.
    if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
        v->managed_v_ = static_cast<ManagedVersioned*>(PyCapsule_GetPointer(cap, "dltensor_versioned"));
        if (v->managed_v_->version.major != 1)
            throw CoreError(ErrorKind::kInvalidArgument,
                            "DLPack version " + std::to_string(v->managed_v_->version.major) + " is not supported");
        v->t_ = &v->managed_v_->tensor;
        v->readonly_ = (v->managed_v_->flags & kFlagReadOnly) != 0;
        PyCapsule_SetName(cap, "used_dltensor_versioned");
    } else if (PyCapsule_IsValid(cap, "dltensor")) {
        v->managed_ = static_cast<Managed*>(PyCapsule_GetPointer(cap, "dltensor"));
        v->t_ = &v->managed_->tensor;
        PyCapsule_SetName(cap, "used_dltensor");
    } else {
        throw CoreError(ErrorKind::kInvalidArgument, "not an unused DLPack capsule (already consumed?)");
    }
    if (v->t_->ndim < 0 || v->t_->ndim > 64) throw CoreError(ErrorKind::kInvalidArgument, "bad DLPack ndim");
    return v;
}

View::~View() {
#if PY_VERSION_HEX >= 0x030D0000
    const bool finalizing = Py_IsFinalizing();
#else
    const bool finalizing = _Py_IsFinalizing();
#endif
    if (Py_IsInitialized() == 0 || finalizing) return;  // at shutdown a leak beats a crash
    py::gil_scoped_acquire gil;
    if (managed_v_ && managed_v_->deleter) managed_v_->deleter(managed_v_);
    if (managed_ && managed_->deleter) managed_->deleter(managed_);
}

uintptr_t View::data() const { return reinterpret_cast<uintptr_t>(t_->data) + t_->byte_offset; }

std::vector<int64_t> View::shape() const { return std::vector<int64_t>(t_->shape, t_->shape + t_->ndim); }

std::vector<int64_t> View::strides() const {
    std::vector<int64_t> s(size_t(t_->ndim));
    if (t_->strides) {
        for (int i = 0; i < t_->ndim; i++) s[size_t(i)] = t_->strides[i];
        return s;
    }
    int64_t step = 1;
    for (int i = t_->ndim - 1; i >= 0; i--) {
        s[size_t(i)] = step;
        step *= t_->shape[i];
    }
    return s;
}

std::string View::dtype_name() const {
    int c = core_code(t_->dtype);
    return c >= 0 ? pccl::dtype_name(DType(c)) : describe(t_->dtype);
}

int View::dtype_code() const { return core_code(t_->dtype); }

int64_t View::size() const {
    int64_t n = 1;
    for (int i = 0; i < t_->ndim; i++) n *= t_->shape[i];
    return n;
}

bool View::compact() const {
    if (!t_->strides || size() == 0) return true;
    int64_t step = 1;
    for (int i = t_->ndim - 1; i >= 0; i--) {
        // a dimension of extent 1 may carry any stride
        if (t_->shape[i] != 1 && t_->strides[i] != step) return false;
        step *= t_->shape[i];
    }
    return true;
}

DataType dl_dtype_of(DType t) {
    switch (t) {
        case DType::kInt8: return {kInt, 8, 1};
        case DType::kUInt8: return {kUInt, 8, 1};
        case DType::kInt16: return {kInt, 16, 1};
        case DType::kUInt16: return {kUInt, 16, 1};
        case DType::kInt32: return {kInt, 32, 1};
        case DType::kUInt32: return {kUInt, 32, 1};
        case DType::kInt64: return {kInt, 64, 1};
        case DType::kUInt64: return {kUInt, 64, 1};
        case DType::kFloat16: return {kFloat, 16, 1};
        case DType::kBFloat16: return {kBfloat, 16, 1};
        case DType::kFloat32: return {kFloat, 32, 1};
        case DType::kFloat64: return {kFloat, 64, 1};
    }
    throw CoreError(ErrorKind::kInvalidArgument, "unknown dtype code");
}

HostBuffer::HostBuffer(std::vector<int64_t> shape, int dtype_code, BufferPool* pool)
    : shape_(std::move(shape)), dtype_(dtype_code) {
    if (dtype_code < 0 || dtype_code >= kDTypeCount) throw CoreError(ErrorKind::kInvalidArgument, "unknown dtype code");
    size_t n = 1;
    for (int64_t d : shape_) {
        if (d < 0) throw CoreError(ErrorKind::kInvalidArgument, "negative extent");
        n *= size_t(d);
    }
    nbytes_ = n * dtype_size(DType(dtype_code));
    data_ = pool ? pool->take(nbytes_) : aligned_block(nbytes_);
}

std::shared_ptr<HostBuffer> HostBuffer::alias(const std::shared_ptr<HostBuffer>& other, int dtype_code) {
    if (dtype_code < 0 || dtype_code >= kDTypeCount ||
        dtype_size(DType(dtype_code)) != dtype_size(DType(other->dtype_)))
        throw CoreError(ErrorKind::kInvalidArgument, "an alias must have a dtype of the same width");
    auto b = std::shared_ptr<HostBuffer>(new HostBuffer(*other));
    b->dtype_ = dtype_code;
    return b;
}

std::shared_ptr<HostBuffer> HostBuffer::reshaped(const std::shared_ptr<HostBuffer>& other, std::vector<int64_t> shape) {
    int64_t n = 1, had = 1;
    for (int64_t d : shape) n *= d;
    for (int64_t d : other->shape_) had *= d;
    if (n != had || std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; }))
        throw CoreError(ErrorKind::kInvalidArgument, "a reshaped buffer must keep its number of elements");
    auto b = std::shared_ptr<HostBuffer>(new HostBuffer(*other));
    b->shape_ = std::move(shape);
    return b;
}

namespace {
// What an exported managed tensor carries: a reference on the buffer plus shape and strides storage.
struct Export {
    std::shared_ptr<HostBuffer> owner;
    std::vector<int64_t> shape, strides;
    Managed managed{};
    ManagedVersioned managed_v{};
};

void fill(Tensor& t, Export* e, HostBuffer& b) {
    t.data = reinterpret_cast<void*>(b.data());
    t.device = Device{kCPU, 0};
    t.ndim = int32_t(e->shape.size());
    t.dtype = dl_dtype_of(DType(b.dtype_code()));
    t.shape = e->shape.data();
    t.strides = e->strides.data();
    t.byte_offset = 0;
}

// Capsule destructors: if the capsule still has its original name nobody consumed it, so we delete it.
void drop_legacy(PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
        auto* m = static_cast<Managed*>(PyCapsule_GetPointer(cap, "dltensor"));
        m->deleter(m);
    }
}
void drop_versioned(PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
        auto* m = static_cast<ManagedVersioned*>(PyCapsule_GetPointer(cap, "dltensor_versioned"));
        m->deleter(m);
    }
}
}  // namespace

py::capsule HostBuffer::export_capsule(bool versioned) {
    auto* e = new Export();
    e->owner = shared_from_this();
    e->shape = shape_;
    e->strides.resize(shape_.size());
    int64_t step = 1;
    for (size_t i = shape_.size(); i-- > 0;) {
        e->strides[i] = step;
        step *= shape_[i];
    }
    if (versioned) {
        e->managed_v.version = Version{1, 0};
        e->managed_v.manager_ctx = e;
        e->managed_v.deleter = [](ManagedVersioned* m) { delete static_cast<Export*>(m->manager_ctx); };
        e->managed_v.flags = 0;
        fill(e->managed_v.tensor, e, *this);
        return py::reinterpret_steal<py::capsule>(PyCapsule_New(&e->managed_v, "dltensor_versioned", drop_versioned));
    }
    e->managed.manager_ctx = e;
    e->managed.deleter = [](Managed* m) { delete static_cast<Export*>(m->manager_ctx); };
    fill(e->managed.tensor, e, *this);
    return py::reinterpret_steal<py::capsule>(PyCapsule_New(&e->managed, "dltensor", drop_legacy));
}

}  // namespace pccl::dl
