// The native tests' main(): runs the tests that TEST(name) registered (check.hpp says how the harness works).
#include "tests/check.hpp"

#include <cstdio>
#include <cstring>

namespace pccl::check {

namespace {
struct Test {
    const char* name;
    TestFn fn;
};
std::vector<Test>& registry() {
    static std::vector<Test> tests;  // built before main() by the registrars, in the order of the file
    return tests;
}
int failed_checks = 0;  // of the running test
}  // namespace

Registrar::Registrar(const char* name, TestFn fn) { registry().push_back(Test{name, fn}); }

void fail(const char* file, int line, const std::string& what) {
    failed_checks++;
    std::printf("  %s:%d: %s\n", file, line, what.c_str());
    std::fflush(stdout);
}

}  // namespace pccl::check

int main(int argc, char** argv) {
    using namespace pccl::check;
    const char* filter = argc > 1 ? argv[1] : "";
    if (std::strcmp(filter, "--list") == 0) {
        for (const auto& t : registry()) std::printf("%s\n", t.name);
        return 0;
    }
    int passed = 0, failed = 0;
    for (const auto& t : registry()) {
        if (!std::strstr(t.name, filter)) continue;
        failed_checks = 0;
        std::printf("%s\n", t.name);
        std::fflush(stdout);
        try {
            t.fn();
        } catch (const pccl::CoreError& e) {
            fail(__FILE__, __LINE__, std::string("CoreError of kind ") + pccl::error_kind_name(e.kind()) +
                                         " left the test: " + e.what());
        } catch (const std::exception& e) {
            fail(__FILE__, __LINE__, std::string("exception left the test: ") + e.what());
        } catch (...) {
            fail(__FILE__, __LINE__, "an exception of unknown type left the test");
        }
        if (failed_checks) {
            std::printf("FAILED %s (%d failed checks)\n", t.name, failed_checks);
            failed++;
        } else {
            passed++;
        }
    }
    if (passed + failed == 0) std::printf("no test name contains '%s'\n", filter);
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed || passed + failed == 0 ? 1 : 0;
}
