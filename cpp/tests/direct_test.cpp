// The direct all-reduce of quantized blocks (peer/direct.hpp) over the in-memory transport (transport/memory.hpp):
// peers are threads, connections byte queues that can fail, stall or change a byte at a chosen offset. A clean
// run must give every peer the bytes the kernels compute for the owners' sums; each fault must end the
// operation with a typed error on every peer within its deadline, and the inputs must stay as they were.
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kernels/quant.hpp"
#include "peer/direct.hpp"
#include "tests/check.hpp"
#include "tests/memory_peers.hpp"
#include "transport/memory.hpp"

using namespace pccl;

namespace {

constexpr uint32_t kBlock = 64;

QuantConfig four_bit_rotated() {
    QuantConfig q;
    q.kind = QuantKind::kMinMax4;
    q.block = kBlock;
    q.seed = 11;
    q.rotate = true;
    q.direct = true;
    return q;
}

float input_value(uint32_t rank, size_t i) { return std::sin(float(i) * 0.37f + float(rank)) * float(rank + 1); }

struct PeerRun {
    std::vector<float> input, decoded;
    std::vector<uint8_t> result;  // the quantized result
    ErrorKind kind = ErrorKind::kPeerLost;
    std::string error;  // empty: the operation finished
    double seconds = 0;
};

RingPlan plan_for(size_t count, const QuantConfig& q, uint32_t world, uint32_t rank, uint32_t stripes, size_t piece) {
    RingPlan plan;
    plan.units = quant_blocks(count, q.block);
    plan.unit_bytes = quant_block_bytes(q, q.block);
    plan.last_unit_bytes = quant_block_bytes(q, count % q.block ? count % q.block : q.block);
    plan.world = world;
    plan.rank = rank;
    plan.stripes = stripes;
    plan.piece_bytes = piece;
    return plan;
}

// `world` peers (ids 1..world) sum `count` floats, quantized as q, over `stripes` connections each: the host path
// (our contribution quantized as it leaves, the owner adding its exact input, final blocks decoded at once).
std::vector<PeerRun> direct_sum(MemoryNetwork& net, uint32_t world, size_t count, uint32_t stripes, double progress_s,
                                size_t piece_bytes = 1024) {
    const QuantConfig q = four_bit_rotated();
    std::vector<PeerRun> runs(world);
    const std::vector<wire::PeerInfo> peers = test::memory_peers(world);
    std::vector<std::thread> threads;
    for (uint32_t r = 0; r < world; r++) {
        runs[r].input.resize(count);
        for (size_t i = 0; i < count; i++) runs[r].input[i] = input_value(r, i);
        runs[r].decoded.assign(count, -1.0f);
        runs[r].result.assign(quantized_bytes(count, q), 0);
        threads.emplace_back([&, r] {
            auto source = net.endpoint(r + 1);
            const RingPlan plan = plan_for(count, q, world, r, stripes, piece_bytes);
            const float* x = runs[r].input.data();
            float* decoded = runs[r].decoded.data();
            DirectWork work;
            work.encode = [&, x](uint8_t* units, size_t first, size_t n) {
                quantize_blocks(x, DType::kFloat32, first, n, count, q, units);
            };
            work.finish = [&, decoded](uint8_t* units, size_t first, size_t n) {
                dequantize_blocks(units, first, n, count, q, DType::kFloat32, decoded, 1);
            };
            work.reduce = [&, x](uint8_t* out, const uint8_t* const* received, size_t first, size_t n) {
                reduce_owner(out, received, world - 1, nullptr, x + first * kBlock, DType::kFloat32, first, n, count,
                             q, 42);
            };
            DirectLinks links{source.get(), 0, peers, 5.0, progress_s};
            std::vector<uint8_t> mine(runs[r].result.size());
            std::vector<uint8_t> inbox((world - 1) * direct_inbox_bytes(plan));
            OpControl ctl(42);
            runs[r].seconds = test::run_stripes(stripes, [&](uint32_t j, StripeBytes* bytes) {
                run_direct_stripe(plan, j, work, mine.data(), inbox.data(), runs[r].result.data(), links, ctl, bytes);
            });
            ctl.failed(&runs[r].kind, &runs[r].error);
        });
    }
    for (auto& t : threads) t.join();
    return runs;
}

// What the owners compute, with the same kernels in one thread: chunk c (RingPlan::region) belongs to rank c,
// which adds its exact input and the others' quantized chunks in ring order from its successor.
std::vector<uint8_t> expected(const std::vector<PeerRun>& runs, size_t count) {
    const QuantConfig q = four_bit_rotated();
    const uint32_t world = uint32_t(runs.size());
    const RingPlan plan = plan_for(count, q, world, 0, 1, 1024);
    std::vector<uint8_t> out(quantized_bytes(count, q));
    std::vector<std::vector<uint8_t>> quantized(world, std::vector<uint8_t>(out.size()));
    for (uint32_t r = 0; r < world; r++) quantize(runs[r].input.data(), DType::kFloat32, count, q, quantized[r].data());
    for (uint32_t c = 0; c < world; c++) {
        size_t first, n;
        plan.region(c, 0, &first, &n);
        if (!n) continue;
        std::vector<const uint8_t*> received;
        for (uint32_t k = 1; k < world; k++) received.push_back(quantized[(c + k) % world].data() + plan.byte_offset(first));
        reduce_owner(out.data() + plan.byte_offset(first), received.data(), world - 1, nullptr,
                     runs[c].input.data() + first * kBlock, DType::kFloat32, first, n, count, q, 42);
    }
    return out;
}

bool inputs_untouched(const std::vector<PeerRun>& runs) {
    for (size_t r = 0; r < runs.size(); r++)
        for (size_t i = 0; i < runs[r].input.size(); i++)
            if (runs[r].input[i] != input_value(uint32_t(r), i)) return false;
    return true;
}

}  // namespace

TEST(direct_over_memory_gives_every_peer_the_owners_bytes) {
    auto net = MemoryNetwork::create(8 << 10);  // small queues: writers block, as on a full socket
    const size_t count = 64 * 97 + 13;          // a short last block; chunks of 24 or 25 blocks
    const auto runs = direct_sum(*net, 4, count, 2, 10.0);
    for (const auto& run : runs) CHECK_EQ(run.error, std::string());
    const auto want = expected(runs, count);
    std::vector<float> want_decoded(count);
    dequantize(want.data(), count, four_bit_rotated(), DType::kFloat32, want_decoded.data(), 1);
    for (const auto& run : runs) {
        CHECK(run.result == want);
        CHECK(std::memcmp(run.decoded.data(), want_decoded.data(), count * 4) == 0);
    }
    CHECK(inputs_untouched(runs));
}

TEST(direct_with_more_stripes_than_blocks_and_sealed_links) {
    auto net = MemoryNetwork::create(8 << 10, crypto::Key{}, true);
    const size_t count = 64 * 3 + 1;  // 4 blocks for 3 peers: some stripes of some chunks are empty
    const auto runs = direct_sum(*net, 3, count, 4, 10.0, 72);
    for (const auto& run : runs) CHECK_EQ(run.error, std::string());
    const auto want = expected(runs, count);
    for (const auto& run : runs) CHECK(run.result == want);
}

TEST(a_connection_failing_at_a_chosen_byte_fails_the_direct_all_reduce_everywhere) {
    auto net = MemoryNetwork::create(8 << 10);
    net->inject(1, 3, 0, Fault{Fault::kFail, 700});  // peer 1 -> peer 3 dies mid-piece
    const auto runs = direct_sum(*net, 4, 64 * 200, 1, 1.0);
    CHECK_EQ(runs[2].kind, ErrorKind::kPeerLost);  // the receiver of the broken connection, in words
    CHECK(runs[2].error.find("from peer 1") != std::string::npos && runs[2].error.find("broke") != std::string::npos);
    for (const auto& run : runs) {  // the others: at their data deadline, no later
        CHECK_EQ(run.kind, ErrorKind::kPeerLost);
        CHECK(!run.error.empty());
        CHECK(run.seconds < 5.0);
    }
    CHECK(inputs_untouched(runs));
}

TEST(a_stalled_connection_ends_the_direct_all_reduce_at_the_progress_deadline) {
    auto net = MemoryNetwork::create(8 << 10);
    net->inject(2, 1, 0, Fault{Fault::kStall, 300});
    const auto runs = direct_sum(*net, 3, 64 * 300, 1, 0.5);
    for (const auto& run : runs) {
        CHECK_EQ(run.kind, ErrorKind::kPeerLost);
        CHECK(run.seconds < 3.0);
    }
    CHECK(runs[0].error.find("no progress") != std::string::npos &&
          runs[0].error.find("nothing arrived from peer 2") != std::string::npos);
}

TEST(a_changed_header_byte_is_a_protocol_error_in_the_direct_all_reduce) {
    auto net = MemoryNetwork::create(8 << 10);
    net->inject(2, 1, 0, Fault{Fault::kCorrupt, 16 + 8});  // the first piece's step field
    const auto runs = direct_sum(*net, 2, 64 * 40, 1, 1.0);
    CHECK_EQ(runs[0].kind, ErrorKind::kProtocol);
    CHECK(runs[0].error.find("unexpected data frame from peer 2") != std::string::npos);
}

TEST(a_changed_byte_is_caught_on_a_sealed_direct_link) {
    auto net = MemoryNetwork::create(8 << 10, crypto::Key{}, false);
    net->inject(1, 2, 0, Fault{Fault::kCorrupt, 120});  // inside the first piece's payload
    const auto runs = direct_sum(*net, 2, 64 * 40, 1, 1.0);
    CHECK_EQ(runs[1].kind, ErrorKind::kPeerLost);  // retryable; nothing of the piece was summed
    CHECK(runs[1].error.find("integrity") != std::string::npos);
    CHECK(inputs_untouched(runs));
}
