// The harness checked by itself (check.hpp): tests named passes_* must pass and tests named fails_* must each
// fail, so a broken CHECK, CHECK_EQ or CHECK_THROWS_KIND cannot make every other native test pass silently.
// cpp/tests/CMakeLists.txt runs this file three ways: the passing tests alone (exit 0), the failing ones
// alone (a non-zero exit is the pass), and all of them, whose output must end with the right counts and show
// CHECK_EQ's values.
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/check.hpp"

using pccl::CoreError;
using pccl::ErrorKind;

TEST(passes_every_kind_of_check) {
    CHECK(1 + 1 == 2);
    CHECK_EQ(uint8_t(200), 200);
    CHECK_EQ(true, 1 < 2);
    CHECK_EQ('a', 'a');
    CHECK_EQ(pccl::ErrorKind::kProtocol, pccl::ErrorKind::kProtocol);
    CHECK_EQ(0.5, 0.5f);
    CHECK_EQ(std::string("ab"), "ab");
    CHECK_EQ((std::vector<int>{1, 2}), (std::vector<int>{1, 2}));
    CHECK_THROWS_KIND(throw CoreError(ErrorKind::kProtocol, "x"), kProtocol);
}

TEST(fails_check) { CHECK(1 + 1 == 3); }
TEST(fails_eq_printing_both_values) { CHECK_EQ(3, 4); }
TEST(fails_eq_on_signedness) { CHECK_EQ(-1, uint32_t(0xffffffff)); }
TEST(fails_throws_kind_without_a_throw) { CHECK_THROWS_KIND(1 + 1, kProtocol); }
TEST(fails_throws_kind_with_another_kind) { CHECK_THROWS_KIND(throw CoreError(ErrorKind::kTimeout, "x"), kProtocol); }
TEST(fails_throws_kind_with_another_exception) { CHECK_THROWS_KIND(throw std::runtime_error("x"), kProtocol); }
TEST(fails_when_an_exception_leaves_the_test) { throw std::runtime_error("boom"); }
