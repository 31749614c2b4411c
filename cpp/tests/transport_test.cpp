// The ring all-reduce and the state transfer over the in-memory transport (transport/memory.hpp): peers are
// threads, connections byte queues, and a connection can fail, stall or change a byte at a chosen offset. Each
// fault must end the operation with a typed error on every peer within its deadline, the input must stay as it
// was, and nothing past the fault may reach a destination (what the caller would publish after a commit).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "kernels/reduce.hpp"
#include "peer/ring.hpp"
#include "peer/state_transfer.hpp"
#include "tests/check.hpp"
#include "tests/memory_peers.hpp"
#include "transport/memory.hpp"

using namespace pccl;

namespace {

struct PeerRun {
    std::vector<float> input, result;
    ErrorKind kind = ErrorKind::kPeerLost;
    std::string error;  // empty: the stripe finished
    double seconds = 0;
};

// `world` peers (ids 1..world) all-reduce (sum) `count` floats over `stripes` connections each; peer r's input
// is r+1+i*0.25 at element i. progress_s: the data deadline.
std::vector<PeerRun> ring_sum(MemoryNetwork& net, uint32_t world, size_t count, uint32_t stripes, double progress_s,
                              size_t piece_bytes = 4096) {
    std::vector<PeerRun> runs(world);
    const std::vector<wire::PeerInfo> ring = test::memory_peers(world);
    std::vector<std::thread> threads;
    for (uint32_t r = 0; r < world; r++) {
        runs[r].input.resize(count);
        for (size_t i = 0; i < count; i++) runs[r].input[i] = float(r + 1) + float(i) * 0.25f;
        runs[r].result.assign(count, -1.0f);
        threads.emplace_back([&, r] {
            auto source = net.endpoint(r + 1);
            RingPlan plan;
            plan.units = count;
            plan.unit_bytes = plan.last_unit_bytes = sizeof(float);
            plan.world = world;
            plan.rank = r;
            plan.stripes = stripes;
            plan.piece_bytes = piece_bytes;
            RingWork work;
            work.fold = [](uint8_t* acc, const uint8_t* own, size_t, size_t n, uint32_t) {
                reduce_into(DType::kFloat32, ReduceOp::kSum, acc, own, n);
            };
            RingLinks links{source.get(), 0, ring[(r + 1) % world], ring[(r + world - 1) % world], 5.0, progress_s};
            OpControl ctl(42);
            runs[r].seconds = test::run_stripes(stripes, [&](uint32_t j, StripeBytes* bytes) {
                run_stripe(plan, j, work, reinterpret_cast<const uint8_t*>(runs[r].input.data()),
                           reinterpret_cast<uint8_t*>(runs[r].result.data()), links, ctl, bytes);
            });
            ctl.failed(&runs[r].kind, &runs[r].error);
        });
    }
    for (auto& t : threads) t.join();
    return runs;
}

bool inputs_untouched(const std::vector<PeerRun>& runs) {
    for (size_t r = 0; r < runs.size(); r++)
        for (size_t i = 0; i < runs[r].input.size(); i++)
            if (runs[r].input[i] != float(r + 1) + float(i) * 0.25f) return false;
    return true;
}

}  // namespace

TEST(ring_over_memory_sums_bit_identically) {
    auto net = MemoryNetwork::create(8 << 10);  // small queues: writers block, as on a full socket
    const auto runs = ring_sum(*net, 3, 10007, 2, 10.0);
    for (const auto& run : runs) CHECK_EQ(run.error, std::string());
    for (size_t i = 0; i < 10007; i += 997) {
        const float want = 1.0f + float(i) * 0.25f + 2.0f + float(i) * 0.25f + 3.0f + float(i) * 0.25f;
        CHECK(std::abs(runs[0].result[i] - want) <= 1e-3f * want);
    }
    CHECK(std::memcmp(runs[0].result.data(), runs[1].result.data(), 10007 * 4) == 0);
    CHECK(std::memcmp(runs[0].result.data(), runs[2].result.data(), 10007 * 4) == 0);
    CHECK(inputs_untouched(runs));
}

TEST(ring_over_sealed_memory_links_sums_too) {
    auto net = MemoryNetwork::create(8 << 10, crypto::Key{}, true);
    const auto runs = ring_sum(*net, 2, 3000, 1, 10.0);
    CHECK_EQ(runs[0].error, std::string());
    CHECK_EQ(runs[1].error, std::string());
    CHECK(std::memcmp(runs[0].result.data(), runs[1].result.data(), 3000 * 4) == 0);
}

TEST(a_connection_failing_at_a_chosen_byte_fails_the_ring_everywhere) {
    auto net = MemoryNetwork::create(8 << 10);
    net->inject(1, 2, 0, Fault{Fault::kFail, 5000});  // peer 1 -> peer 2 dies 5000 bytes in, mid-piece
    const auto runs = ring_sum(*net, 3, 20000, 1, 1.0);
    CHECK_EQ(runs[1].kind, ErrorKind::kPeerLost);  // the receiver of the broken connection
    CHECK(runs[1].error.find("from peer 1") != std::string::npos && runs[1].error.find("broke") != std::string::npos);
    CHECK_EQ(runs[0].kind, ErrorKind::kPeerLost);  // its sender
    CHECK(!runs[0].error.empty());
    CHECK_EQ(runs[2].kind, ErrorKind::kPeerLost);  // the third peer: at its data deadline, no later
    CHECK(!runs[2].error.empty());
    for (const auto& run : runs) CHECK(run.seconds < 5.0);
    CHECK(inputs_untouched(runs));
}

TEST(a_stalled_connection_ends_at_the_progress_deadline) {
    auto net = MemoryNetwork::create(8 << 10);
    net->inject(2, 3, 0, Fault{Fault::kStall, 3000});
    const auto runs = ring_sum(*net, 3, 20000, 1, 0.5);
    for (const auto& run : runs) {
        CHECK_EQ(run.kind, ErrorKind::kPeerLost);
        CHECK(!run.error.empty());
        CHECK(run.seconds < 3.0);
    }
    CHECK(runs[2].error.find("no progress") != std::string::npos &&
          runs[2].error.find("nothing arrived from peer 2") != std::string::npos);
}

TEST(a_changed_byte_is_caught_on_a_sealed_link) {
    auto net = MemoryNetwork::create(8 << 10, crypto::Key{}, false);
    net->inject(1, 2, 0, Fault{Fault::kCorrupt, 200});  // inside the first piece's payload
    const auto runs = ring_sum(*net, 2, 4000, 1, 1.0);
    CHECK_EQ(runs[1].kind, ErrorKind::kPeerLost);  // retryable; nothing of the piece was folded
    CHECK(runs[1].error.find("integrity") != std::string::npos);
    CHECK(inputs_untouched(runs));
}

TEST(a_changed_header_byte_is_a_protocol_error_on_a_plain_link) {
    auto net = MemoryNetwork::create(8 << 10);
    net->inject(1, 2, 0, Fault{Fault::kCorrupt, 16 + 12});  // the first piece's stripe field
    const auto runs = ring_sum(*net, 2, 4000, 1, 1.0);
    CHECK_EQ(runs[1].kind, ErrorKind::kProtocol);
    CHECK(runs[1].error.find("unexpected data frame") != std::string::npos);
}

namespace {
struct Transfer {
    std::string error;
    ErrorKind kind = ErrorKind::kPeerLost;
    std::vector<uint8_t> got;
};

// Holder 1 sends `n` bytes (two entries) to receiver 2 over `stripes` connections of the state slot.
Transfer transfer(MemoryNetwork& net, size_t n, uint32_t stripes, double progress_s) {
    std::vector<uint8_t> a(n / 3), b(n - n / 3);
    std::iota(a.begin(), a.end(), uint8_t(1));
    std::iota(b.begin(), b.end(), uint8_t(100));
    Stream src{{a.data(), b.data()}, {a.size(), b.size()}};
    Transfer out;
    out.got.assign(n, 0);
    Stream dst{{out.got.data(), out.got.data() + a.size()}, {a.size(), b.size()}};
    auto holder = net.endpoint(1), receiver = net.endpoint(2);
    OpControl send_ctl(7), recv_ctl(7);
    std::atomic<uint64_t> sent{0}, received{0};
    std::vector<std::thread> threads;
    for (uint32_t j = 0; j < stripes; j++) {
        uint64_t lo, hi;
        stripe_range(0, n, stripes, j, &lo, &hi);
        threads.emplace_back([&, j, lo, hi] {
            send_stream(src, lo, hi, TransferLink{holder.get(), {2, "mem", 2}, j, 5.0, progress_s, 1000}, send_ctl, &sent);
        });
        threads.emplace_back([&, j, lo, hi] {
            recv_stream(dst, lo, hi, TransferLink{receiver.get(), {1, "", 0}, j, 5.0, progress_s, 1000}, recv_ctl, &received);
        });
    }
    for (auto& t : threads) t.join();
    recv_ctl.failed(&out.kind, &out.error);
    return out;
}
}  // namespace

TEST(state_transfer_over_memory_moves_every_byte) {
    auto net = MemoryNetwork::create(4 << 10);
    const auto t = transfer(*net, 30000, 3, 5.0);
    CHECK_EQ(t.error, std::string());
    for (size_t i = 0; i < 10000; i++) CHECK_EQ(t.got[i], uint8_t(1 + i));
    for (size_t i = 10000; i < 30000; i++) CHECK_EQ(t.got[i], uint8_t(100 + (i - 10000)));
}

TEST(state_transfer_failing_at_a_chosen_byte_is_lost_and_stops_there) {
    auto net = MemoryNetwork::create(4 << 10);
    net->inject(1, 2, 1, Fault{Fault::kFail, 2500});  // stripe 1: bytes [10000, 20000) of the stream
    const auto t = transfer(*net, 30000, 3, 1.0);
    CHECK_EQ(t.kind, ErrorKind::kPeerLost);
    CHECK(t.error.find("receiving state from peer 1 on connection 1") != std::string::npos);
    // Stripe 1's pieces are 1000 bytes behind 40 header bytes each, and a piece's payload lands as it arrives:
    // the 2500 bytes that crossed are two whole pieces and 380 bytes of the third. Exactly those reached the
    // (fresh) buffer; everything past them is as it was. The sync drops the buffer: nothing is published.
    for (size_t i = 10000; i < 12380; i++) CHECK_EQ(t.got[i], uint8_t(100 + (i - 10000)));
    CHECK(std::all_of(t.got.begin() + 12380, t.got.begin() + 20000, [](uint8_t v) { return v == 0; }));
}
