// One declaration per message. How this works: a message's fields are listed once, as an X-macro of
// X(type, name, default, limit) lines (messages.hpp), and PCCL_WIRE_STRUCT turns that list into
//   - the struct itself (an aggregate: members with their defaults, ==), and
//   - visit_fields(v, m): calls v(name, m.field, limit) for every field in declaration order.
// Everything that must agree on a message's fields is a visitor: encode and decode below (the byte layout is
// the declaration order), the Python dict conversion of the test module (cpp/python/schema_dicts.cpp), and the
// schema table the tests compare with docs/protocol.md. Adding a field is one line in messages.hpp plus its use.
//
// Field types: u8/u16/u32/u64, std::string (≤ kMaxString bytes of UTF-8), Bytes32 (32 raw bytes), another
// declared struct, or a std::vector of any of these (a u32 count, then the elements). `limit` bounds what a
// decoder accepts: the largest value of an integer, the most elements of a list (kAny: no bound beyond the
// payload's length). Rules between fields (a hash for every fetched entry, begin ≤ end) are a `check(const T&)`
// overload beside the struct, run after the struct is decoded.
#pragma once
#include <concepts>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "wire/codec.hpp"

namespace pccl::wire {

constexpr uint64_t kAny = std::numeric_limits<uint64_t>::max();

#define PCCL_WIRE_MEMBER(type, name, init, limit) type name = init;
#define PCCL_WIRE_VISIT(type, name, init, limit) v(#name, m.name, uint64_t(limit));
#define PCCL_WIRE_STRUCT(Name, FIELDS)                                                    \
    struct Name {                                                                         \
        FIELDS(PCCL_WIRE_MEMBER)                                                          \
        bool operator==(const Name&) const = default;                                     \
    };                                                                                    \
    template <class V, class M>                                                           \
        requires std::same_as<std::remove_const_t<M>, Name>                               \
    void visit_fields(V& v, M& m) {                                                       \
        (void)v;                                                                          \
        (void)m;                                                                          \
        FIELDS(PCCL_WIRE_VISIT)                                                           \
    }                                                                                     \
    inline const char* struct_name(const Name*) { return #Name; }

// Whether T was declared with PCCL_WIRE_STRUCT.
template <class T> concept WireStruct = requires(const T* p) { { struct_name(p) } -> std::convertible_to<const char*>; };
template <class T> struct IsVector : std::false_type {};
template <class T> struct IsVector<std::vector<T>> : std::true_type { using Element = T; };

// Cross-field rules of a struct; structs without rules have none.
template <class T> void check(const T&) {}

template <class T> void encode(Writer& w, const T& m);
template <class T> T decode(Reader& r);

namespace detail {

struct EncodeField {
    Writer& w;
    template <class T> void operator()(const char*, const T& value, uint64_t) { put(value); }
    template <class T> void put(const T& value) {
        if constexpr (std::is_same_v<T, uint8_t>) w.u8(value);
        else if constexpr (std::is_same_v<T, uint16_t>) w.u16(value);
        else if constexpr (std::is_same_v<T, uint32_t>) w.u32(value);
        else if constexpr (std::is_same_v<T, uint64_t>) w.u64(value);
        else if constexpr (std::is_same_v<T, std::string>) w.str(value);
        else if constexpr (std::is_same_v<T, Bytes32>) w.raw(value.data(), value.size());
        else if constexpr (IsVector<T>::value) {
            w.u32(uint32_t(value.size()));
            for (const auto& e : value) put(e);
        } else {
            static_assert(WireStruct<T>, "a wire field is an integer, a string, Bytes32, a struct or a list");
            encode(w, value);
        }
    }
};

struct DecodeField {
    Reader& r;
    const char* owner;
    template <class T> void operator()(const char* name, T& value, uint64_t limit) { value = get<T>(name, limit); }
    template <class T> T get(const char* name, uint64_t limit) {
        if constexpr (std::is_integral_v<T>) {
            T v;
            if constexpr (sizeof(T) == 1) v = r.u8();
            else if constexpr (sizeof(T) == 2) v = r.u16();
            else if constexpr (sizeof(T) == 4) v = r.u32();
            else v = r.u64();
            if (uint64_t(v) > limit)
                malformed(std::string(owner) + "." + name + " is " + std::to_string(uint64_t(v)) + ", at most " +
                          std::to_string(limit));
            return v;
        } else if constexpr (std::is_same_v<T, std::string>) {
            return r.str();
        } else if constexpr (std::is_same_v<T, Bytes32>) {
            Bytes32 b;
            r.raw(b.data(), b.size());
            return b;
        } else if constexpr (IsVector<T>::value) {
            const size_t n = r.count(size_t(std::min<uint64_t>(limit, std::numeric_limits<uint32_t>::max())));
            T out;
            out.reserve(n);  // n ≤ the bytes left: every element takes at least one byte
            for (size_t i = 0; i < n; i++) out.push_back(get<typename IsVector<T>::Element>(name, kAny));
            return out;
        } else {
            static_assert(WireStruct<T>, "a wire field is an integer, a string, Bytes32, a struct or a list");
            return decode<T>(r);
        }
    }
};

}  // namespace detail

template <class T> void encode(Writer& w, const T& m) {
    detail::EncodeField e{w};
    visit_fields(e, m);
}

template <class T> T decode(Reader& r) {
    T m{};
    detail::DecodeField d{r, struct_name(&m)};
    visit_fields(d, m);
    check(m);
    return m;
}

}  // namespace pccl::wire
