// broadcast, all_gather and reduce_scatter as the direct exchange runs them (peer/direct.hpp), over the in-memory
// transport (transport/memory.hpp): peers are threads, connections byte queues that can fail or stall at a
// chosen byte. A clean run must give every peer exactly what NumPy's definitions give (the root's bytes; the
// inputs stacked in ring order; its numpy.array_split chunk of the sum); a fault must end the operation with
// a typed error on every peer within its deadline, inputs untouched.
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kernels/reduce.hpp"
#include "peer/direct.hpp"
#include "tests/check.hpp"
#include "tests/memory_peers.hpp"
#include "transport/memory.hpp"

using namespace pccl;

namespace {

int32_t input_value(uint32_t rank, size_t i) { return int32_t((i * 7 + rank * 1000003) % 65521) - 30000; }

struct PeerRun {
    std::vector<int32_t> input, result;
    ErrorKind kind = ErrorKind::kPeerLost;
    std::string error;  // empty: the operation finished
    double seconds = 0;
};

struct Exchange {
    OpKind kind;
    uint32_t world;
    size_t count;         // elements of each peer's input
    size_t row = 1;       // reduce_scatter: elements per row
    uint32_t root = 0;    // broadcast
    uint32_t stripes = 2;
    double progress_s = 10.0;
};

// The plan a peer's communicator makes (collectives.cpp): units of one element, chunks of whole rows.
RingPlan plan_for(const Exchange& e, uint32_t rank) {
    RingPlan plan;
    plan.units = e.kind == OpKind::kAllGather ? e.world * e.count : e.count;
    plan.row_units = e.kind == OpKind::kAllGather ? std::max<size_t>(e.count, 1) : e.row;
    plan.world = e.world;
    plan.rank = rank;
    plan.stripes = e.stripes;
    plan.piece_bytes = 256;
    plan.unit_bytes = plan.last_unit_bytes = 4;
    return plan;
}

void chunk_of(const Exchange& e, uint32_t rank, size_t* first, size_t* len) {
    RingPlan whole = plan_for(e, rank);
    whole.stripes = 1;
    whole.region(rank, 0, first, len);
}

std::vector<PeerRun> run(MemoryNetwork& net, const Exchange& e) {
    std::vector<PeerRun> runs(e.world);
    const std::vector<wire::PeerInfo> peers = test::memory_peers(e.world);
    std::vector<std::thread> threads;
    for (uint32_t r = 0; r < e.world; r++) {
        PeerRun& me = runs[r];
        me.input.resize(e.count);
        for (size_t i = 0; i < e.count; i++) me.input[i] = input_value(r, i);
        size_t first, len;
        chunk_of(e, r, &first, &len);
        me.result.assign(e.kind == OpKind::kAllGather ? e.world * e.count : e.kind == OpKind::kReduceScatter ? len : e.count,
                         -1);
        threads.emplace_back([&, r, first] {
            const RingPlan plan = plan_for(e, r);
            DirectWork work;
            work.kind = e.kind;
            work.root = e.root;
            work.chunk_only = e.kind == OpKind::kReduceScatter;
            const uint8_t* in = reinterpret_cast<const uint8_t*>(me.input.data());
            auto* result = reinterpret_cast<uint8_t*>(me.result.data());
            if (e.kind == OpKind::kAllGather && e.count) std::memcpy(result + first * 4, in, e.count * 4);
            if (e.kind == OpKind::kBroadcast && r == e.root && e.count) std::memcpy(result, in, e.count * 4);
            const uint32_t world = e.world;
            if (e.kind == OpKind::kReduceScatter)
                work.reduce = [=](uint8_t* out, const uint8_t* const* received, size_t f, size_t n) {
                    std::memcpy(out, in + f * 4, n * 4);
                    for (uint32_t k = 0; k + 1 < world; k++) reduce_into(DType::kInt32, ReduceOp::kSum, out, received[k], n);
                };
            std::vector<uint8_t> inbox(work.reduce ? (world - 1) * direct_inbox_bytes(plan) : 0);
            auto source = net.endpoint(r + 1);
            DirectLinks links{source.get(), 0, peers, 5.0, e.progress_s};
            OpControl ctl(7);
            me.seconds = test::run_stripes(e.stripes, [&](uint32_t j, StripeBytes* bytes) {
                run_direct_stripe(plan, j, work, const_cast<uint8_t*>(in), inbox.empty() ? nullptr : inbox.data(),
                                  result, links, ctl, bytes);
            });
            ctl.failed(&me.kind, &me.error);
        });
    }
    for (auto& t : threads) t.join();
    return runs;
}

bool inputs_untouched(const std::vector<PeerRun>& runs) {
    for (size_t r = 0; r < runs.size(); r++)
        for (size_t i = 0; i < runs[r].input.size(); i++)
            if (runs[r].input[i] != input_value(uint32_t(r), i)) return false;
    return true;
}

void check_clean(const std::vector<PeerRun>& runs) {
    for (const auto& run : runs) CHECK_EQ(run.error, std::string());
    CHECK(inputs_untouched(runs));
}

}  // namespace

TEST(broadcast_gives_every_peer_the_roots_bytes) {
    for (uint32_t root : {0u, 2u}) {
        auto net = MemoryNetwork::create(4 << 10);  // small queues: writers block, as on a full socket
        const Exchange e{OpKind::kBroadcast, 4, 1001, 1, root, 3};
        const auto runs = run(*net, e);
        check_clean(runs);
        for (const auto& r : runs) CHECK(r.result == runs[root].input);
    }
}

TEST(all_gather_stacks_the_inputs_in_ring_order) {
    auto net = MemoryNetwork::create(4 << 10, crypto::Key{}, true);  // sealed links
    const Exchange e{OpKind::kAllGather, 3, 777, 1, 0, 2};
    const auto runs = run(*net, e);
    check_clean(runs);
    std::vector<int32_t> want;
    for (const auto& r : runs) want.insert(want.end(), r.input.begin(), r.input.end());
    for (const auto& r : runs) CHECK(r.result == want);
}

TEST(reduce_scatter_gives_each_peer_its_array_split_chunk_of_the_sum) {
    auto net = MemoryNetwork::create(4 << 10);
    const Exchange e{OpKind::kReduceScatter, 3, 10 * 37, 37, 0, 4};  // 10 rows of 37: chunks of 4, 3, 3 rows
    const auto runs = run(*net, e);
    check_clean(runs);
    const size_t rows[] = {4, 3, 3};
    size_t at = 0;
    for (uint32_t r = 0; r < 3; r++) {
        CHECK_EQ(runs[r].result.size(), rows[r] * 37);
        for (size_t i = 0; i < runs[r].result.size(); i++) {
            const int32_t want = runs[0].input[at + i] + runs[1].input[at + i] + runs[2].input[at + i];
            if (runs[r].result[i] != want) {
                FAIL("rank " + std::to_string(r) + " element " + std::to_string(i));
                break;
            }
        }
        at += rows[r] * 37;
    }
}

TEST(more_peers_than_rows_leaves_some_chunks_empty) {
    auto net = MemoryNetwork::create(4 << 10);
    const auto gathered = run(*net, Exchange{OpKind::kAllGather, 3, 0, 1, 0, 1});  // nothing to send at all
    check_clean(gathered);
    const auto scattered = run(*net, Exchange{OpKind::kReduceScatter, 4, 2 * 5, 5, 0, 2});  // 2 rows, 4 peers
    check_clean(scattered);
    CHECK_EQ(scattered[2].result.size(), size_t(0));
    CHECK_EQ(scattered[1].result[4], scattered[0].input[9] + scattered[1].input[9] + scattered[2].input[9] +
                                         scattered[3].input[9]);
}

TEST(a_connection_failing_mid_broadcast_fails_it_everywhere) {
    auto net = MemoryNetwork::create(4 << 10);
    net->inject(1, 3, 0, Fault{Fault::kFail, 900});  // the root (peer 1) -> peer 3 dies mid-piece
    Exchange e{OpKind::kBroadcast, 4, 64 * 1024, 1, 0, 1, 1.0};
    const auto runs = run(*net, e);
    CHECK(runs[2].error.find("from peer 1") != std::string::npos && runs[2].error.find("broke") != std::string::npos);
    for (const auto& r : runs) {  // the others: at their data deadline, no later
        CHECK_EQ(r.kind, ErrorKind::kPeerLost);
        CHECK(!r.error.empty());
        CHECK(r.seconds < 5.0);
    }
    CHECK(inputs_untouched(runs));
}

TEST(a_stalled_connection_ends_an_all_gather_at_the_progress_deadline) {
    auto net = MemoryNetwork::create(4 << 10);
    net->inject(2, 1, 0, Fault{Fault::kStall, 300});
    const auto runs = run(*net, Exchange{OpKind::kAllGather, 3, 32 * 1024, 1, 0, 1, 0.5});
    for (const auto& r : runs) {
        CHECK_EQ(r.kind, ErrorKind::kPeerLost);
        CHECK(r.seconds < 3.0);
    }
    CHECK(runs[0].error.find("nothing arrived from peer 2") != std::string::npos);
}

TEST(explicit_chunk_bounds_cut_the_chunks_and_the_stripes_cut_within_them) {
    RingPlan plan;  // the quantized reduce_scatter's bytes: chunks of 10, 0 and 7 units
    plan.units = 17;
    plan.world = 3;
    plan.stripes = 2;
    plan.bounds = {0, 10, 10, 17};
    size_t b, l;
    plan.region(0, 1, &b, &l);
    CHECK_EQ(b, size_t(5));
    CHECK_EQ(l, size_t(5));
    plan.region(1, 0, &b, &l);
    CHECK_EQ(l, size_t(0));
    plan.region(2, 0, &b, &l);
    CHECK_EQ(b, size_t(10));
    CHECK_EQ(l, size_t(4));
    plan.region(2, 1, &b, &l);
    CHECK_EQ(b, size_t(14));
    CHECK_EQ(l, size_t(3));
    CHECK_EQ(direct_inbox_bytes(plan), size_t(10));  // the largest chunk, whatever the stripes
}
