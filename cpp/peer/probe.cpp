#include "peer/probe.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <thread>

#include "transport/data_link.hpp"
#include "transport/wait.hpp"

namespace pccl {

namespace {
constexpr size_t kPiece = 16 << 10;
constexpr size_t kSignal = 8;          // GO and the sender's answer
constexpr double kMinProbe = 0.3;      // seconds of data before a probe may stop
constexpr double kLookBack = 0.15;     // the estimate must have held this long...
constexpr double kStable = 0.03;       // ...within this fraction

// Sends one piece whole within the deadline; false when the connection failed, the deadline passed or the
// operation stopped.
bool send_piece(const ConnPtr& c, const wire::DataHeader& h, const uint8_t* data, size_t len, OpControl& ctl,
                double deadline) {
    int err = 0;
    return send_whole(*c, h, data, len, ctl, kNever, deadline, &err) == PieceResult::kSent;
}

// The sender's side of one probe: wait for GO, answer it, stream until the receiver closes the connection.
void send_probe(const wire::PeerInfo& to, uint32_t round, uint64_t opt_id, LinkSource& pool, OpControl& ctl,
                double wait_s, double probe_s) {
    ConnPtr c;
    try {
        c = pool.outgoing(to, probe_slot(opt_id), round, wait_s);
    } catch (const CoreError& e) {
        ctl.fail(ErrorKind::kPeerLost, std::string("probing peer ") + std::to_string(to.id) + ": " + e.what());
        return;
    }
    static const std::vector<uint8_t> zeros(kPiece, 0);
    uint8_t go[kSignal];
    PieceReceiver rx;
    if (recv_whole(*c, rx, go, sizeof(go), ctl, net::now_seconds() + wait_s) < 0) {
        if (!ctl.stopped())
            ctl.fail(ErrorKind::kPeerLost, "peer " + std::to_string(to.id) + " did not start its probe (round " +
                                               std::to_string(round) + ")");
        pool.discard(c);
        return;
    }
    const double end = net::now_seconds() + probe_s + wait_s;
    uint64_t offset = 0;
    if (send_piece(c, wire::DataHeader{opt_id, round, 1, 0}, go, kSignal, ctl, end)) {
        // Until the receiver closes the connection (its estimate is done) or, failing that, the deadline.
        while (send_piece(c, wire::DataHeader{opt_id, round, 0, offset}, zeros.data(), kPiece, ctl, end)) offset += kPiece;
    }
    pool.discard(c);
}

// The receiver's side of one probe: GO, the answer (the round trip), then the rate until it is stable.
bool recv_probe(uint64_t from, uint32_t round, uint64_t opt_id, LinkSource& pool, OpControl& ctl, double wait_s,
                double probe_s, wire::LinkMeasure* out) {
    const double give_up = net::now_seconds() + wait_s;
    ConnPtr c;
    try {
        while (!(c = pool.incoming(from, probe_slot(opt_id), round))) {
            if (net::now_seconds() > give_up || !wait_for(ctl, {}, 5)) return false;
        }
    } catch (const CoreError& e) {  // this peer dials for it (docs/nat.md), and could not
        ctl.fail(ErrorKind::kPeerLost, std::string("the probe from peer ") + std::to_string(from) + ": " + e.what());
        return false;
    }
    uint8_t go[kSignal] = {};
    const double t_go = net::now_seconds();
    if (!send_piece(c, wire::DataHeader{opt_id, round, 1, 0}, go, kSignal, ctl, give_up)) return false;
    PieceReceiver rx;
    std::vector<uint8_t> buf(kPiece);
    if (recv_whole(*c, rx, buf.data(), buf.size(), ctl, give_up) != int64_t(kSignal)) return false;
    const double t_first = net::now_seconds();
    out->rtt_us = uint32_t(std::min(4e9, (t_first - t_go) * 1e6));
    // The estimate is the mean rate since the first data piece; it settles as 1/t. Stop once it has moved by
    // less than kStable over the last kLookBack seconds (after kMinProbe), or at the probe time.
    std::vector<std::pair<double, double>> history;  // (time, estimate)
    double t0 = -1, rate = 0;
    uint64_t bytes = 0;
    const double end = t_first + probe_s;
    for (;;) {
        const int64_t n = recv_whole(*c, rx, buf.data(), buf.size(), ctl, end + wait_s);
        if (n < 0) return false;
        const double now = net::now_seconds();
        if (t0 < 0) {  // the first data piece starts the clock
            t0 = now;
            continue;
        }
        bytes += uint64_t(n);
        rate = bytes / std::max(now - t0, 1e-6);
        history.emplace_back(now, rate);
        if (now - t0 >= kMinProbe) {
            auto past = std::find_if(history.rbegin(), history.rend(),
                                     [&](const auto& h) { return h.first <= now - kLookBack; });
            if (past != history.rend() && std::abs(rate - past->second) <= kStable * rate) break;
        }
        if (now >= end) break;
    }
    pool.discard(c);  // the sender's signal to stop
    out->from = from;
    out->bandwidth = uint64_t(std::llround(rate));
    return true;
}
}  // namespace

std::vector<wire::LinkMeasure> run_probes(const wire::OptPlan& plan, uint64_t self, LinkSource& pool, OpControl& ctl,
                                          const ProbeSettings& settings) {
    std::vector<wire::LinkMeasure> measured;
    const double probe_s = plan.probe_ms / 1000.0;
    // A peer may start a round up to one round per earlier round behind its partner: the waits allow for it.
    const double wait_s = settings.connect_timeout + probe_s * double(plan.rounds.size() + 1);
    for (uint32_t r = 0; r < plan.rounds.size() && !ctl.stopped(); r++) {
        const auto& round = plan.rounds[r];
        std::thread sender;
        if (round.send_to.id != 0)
            sender = std::thread([&, r] { send_probe(round.send_to, r, plan.opt_id, pool, ctl, wait_s, probe_s); });
        if (round.recv_from != 0) {
            wire::LinkMeasure m;
            m.to = self;
            if (recv_probe(round.recv_from, r, plan.opt_id, pool, ctl, wait_s, probe_s, &m)) {
                measured.push_back(m);
            } else if (!ctl.stopped()) {
                ctl.fail(ErrorKind::kPeerLost, "the probe from peer " + std::to_string(round.recv_from) + " (round " +
                                                   std::to_string(r) + ") broke off or never came");
            }
        }
        if (sender.joinable()) sender.join();
    }
    return measured;
}

}  // namespace pccl
