// The native tests' harness: plain C++, no framework.
//
// How this works. TEST(name) { ... } defines a function and registers it, by a static object's constructor,
// in a list that main() (check.cpp, linked into every test executable) runs in file order. A failed CHECK,
// CHECK_EQ, CHECK_THROWS_KIND or FAIL(message) prints the file, line and what it saw, marks the running test
// failed and lets it go on; an exception that leaves a test fails it too. main() takes an optional argument, a
// substring of the test names to run (`kernels_test quant`), or `--list`; it ends with the line
// "N passed, N failed" and exits non-zero when a test failed or when the filter matched nothing. Each file of
// cpp/tests/ is its own executable, registered with ctest by cpp/tests/CMakeLists.txt.
#pragma once
#include <concepts>
#include <cstdint>
#include <exception>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "base/error.hpp"

namespace pccl::check {

using TestFn = void (*)();
struct Registrar {
    Registrar(const char* name, TestFn fn);
};

// Records a failed check of the running test (printed at once).
void fail(const char* file, int line, const std::string& what);

// A value in words, for CHECK_EQ: numbers (bytes as numbers, not characters), strings quoted, bools, enums as
// their code, vectors element by element (the first 16), anything else that streams, or a placeholder.
template <class T> std::string show(const T& v);

template <class T> std::string show_vector(const std::vector<T>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size() && i < 16; i++) s += (i ? ", " : "") + show(v[i]);
    if (v.size() > 16) s += ", ... (" + std::to_string(v.size()) + " elements)";
    return s + "]";
}

template <class T> struct is_vector : std::false_type {};
template <class T, class A> struct is_vector<std::vector<T, A>> : std::true_type {};

template <class T> std::string show(const T& v) {
    if constexpr (std::is_same_v<T, bool>) {
        return v ? "true" : "false";
    } else if constexpr (std::is_enum_v<T>) {
        return std::to_string(static_cast<int64_t>(v));
    } else if constexpr (std::is_integral_v<T>) {
        return std::to_string(v);  // uint8_t and char as numbers
    } else if constexpr (std::is_floating_point_v<T>) {
        std::ostringstream o;
        o.precision(17);
        o << v;
        return o.str();
    } else if constexpr (std::is_convertible_v<T, std::string>) {
        return "\"" + std::string(v) + "\"";
    } else if constexpr (is_vector<T>::value) {
        return show_vector(v);
    } else if constexpr (requires(std::ostream& o) { o << v; }) {
        std::ostringstream o;
        o << v;
        return o.str();
    } else {
        return "<a value that cannot be printed>";
    }
}

// Integers that std::cmp_equal takes (not bool, not the character types).
template <class T> concept PlainInteger = std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char> &&
                                          !std::is_same_v<T, wchar_t> && !std::is_same_v<T, char8_t> &&
                                          !std::is_same_v<T, char16_t> && !std::is_same_v<T, char32_t>;

template <class A, class B> void check_eq(const A& a, const B& b, const char* ta, const char* tb, const char* file, int line) {
    bool equal;
    if constexpr (PlainInteger<A> && PlainInteger<B>) equal = std::cmp_equal(a, b);  // -1 is not 0xffffffff
    else equal = a == b;
    if (!equal) fail(file, line, std::string("CHECK_EQ(") + ta + ", " + tb + "): " + show(a) + " != " + show(b));
}

inline void check_kind(const pccl::CoreError& e, pccl::ErrorKind want, const char* expr, const char* file, int line) {
    if (e.kind() != want)
        fail(file, line, std::string(expr) + " threw CoreError of kind " + pccl::error_kind_name(e.kind()) + " (" + e.what() +
                             "), expected kind " + pccl::error_kind_name(want));
}

}  // namespace pccl::check

#define PCCL_CHECK_CAT2(a, b) a##b
#define PCCL_CHECK_CAT(a, b) PCCL_CHECK_CAT2(a, b)

// TEST(name) { body }: a test; name is an identifier, unique in its file.
#define TEST(name)                                                                                          \
    static void PCCL_CHECK_CAT(test_, name)();                                                              \
    static const ::pccl::check::Registrar PCCL_CHECK_CAT(registrar_, name){#name, &PCCL_CHECK_CAT(test_, name)}; \
    static void PCCL_CHECK_CAT(test_, name)()

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) ::pccl::check::fail(__FILE__, __LINE__, "CHECK(" #cond ")");   \
    } while (0)

// Compares with ==; on failure prints both values.
#define CHECK_EQ(a, b) ::pccl::check::check_eq((a), (b), #a, #b, __FILE__, __LINE__)

// A failure described by the test itself (a std::string), for checks the macros above do not express.
#define FAIL(message) ::pccl::check::fail(__FILE__, __LINE__, (message))

// expr must throw pccl::CoreError of the given ErrorKind (written without the enum's name: kProtocol).
#define CHECK_THROWS_KIND(expr, kind)                                                                       \
    do {                                                                                                    \
        try {                                                                                               \
            (void)(expr);                                                                                   \
            ::pccl::check::fail(__FILE__, __LINE__, #expr " did not throw (expected CoreError " #kind ")"); \
        } catch (const ::pccl::CoreError& pccl_check_e) {                                                   \
            ::pccl::check::check_kind(pccl_check_e, ::pccl::ErrorKind::kind, #expr, __FILE__, __LINE__);    \
        } catch (const std::exception& pccl_check_e) {                                                      \
            ::pccl::check::fail(__FILE__, __LINE__,                                                         \
                                std::string(#expr " threw another exception: ") + pccl_check_e.what());     \
        }                                                                                                   \
    } while (0)
