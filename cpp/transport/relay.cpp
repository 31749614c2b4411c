#include "transport/relay.hpp"

#include <algorithm>
#include <poll.h>

#include "base/log.hpp"
#include "transport/greeting.hpp"

namespace pccl {

namespace {
constexpr size_t kBuffer = 256 * 1024;  // bytes in flight per direction of a pipe

// One direction of a pipe: bytes read from `src`, not yet written to `dst`.
struct Flow {
    std::vector<uint8_t> buf = std::vector<uint8_t>(kBuffer);
    size_t begin = 0, end = 0;
    bool src_done = false;  // `src` closed: pass the end on once the buffer is written out
    bool tapped = false;    // the opening side's direction (the test tap looks at it)
    uint64_t offset = 0;    // bytes read from `src` before buf
};

struct Tap {
    std::mutex mu;
    size_t record = 0;
    int64_t flip_at = -1;
    std::vector<uint8_t> kept;
} g_tap;
std::atomic<bool> g_tap_on{false};

void tap(Flow& f, size_t n) {
    std::lock_guard<std::mutex> g(g_tap.mu);
    if (f.offset < g_tap.record) {
        const size_t keep = std::min<size_t>(n, g_tap.record - f.offset);
        g_tap.kept.insert(g_tap.kept.end(), f.buf.data(), f.buf.data() + keep);
    }
    if (g_tap.flip_at >= 0 && uint64_t(g_tap.flip_at) >= f.offset && uint64_t(g_tap.flip_at) < f.offset + n) {
        f.buf[size_t(g_tap.flip_at - f.offset)] ^= 0x01;
        g_tap.flip_at = -1;
        log_warn("relay: the test tap flipped a byte");
    }
}
}  // namespace

void set_relay_tap(size_t record, int64_t flip_at) {
    std::lock_guard<std::mutex> g(g_tap.mu);
    g_tap.record = record;
    g_tap.flip_at = flip_at;
    g_tap.kept.clear();
    g_tap_on = record > 0 || flip_at >= 0;
}

std::vector<uint8_t> relay_recorded() {
    std::lock_guard<std::mutex> g(g_tap.mu);
    return g_tap.kept;
}

struct Relay::Pipe {
    ConnPtr a, b;  // a: the opening side, b: the accepting side
    Flow ab, ba;
    std::string name;
    bool dead = false;

    // Moves what can move without blocking; false once the pipe is finished: a side failed, or closed and what
    // it sent before is written out (the peers close a connection in both directions at once).
    bool pump(std::atomic<uint64_t>& bytes) {
        if (!step(*a, *b, ab, bytes) || !step(*b, *a, ba, bytes)) return false;
        return !(ab.src_done && ab.begin == ab.end) && !(ba.src_done && ba.begin == ba.end);
    }
    static bool step(Conn& src, Conn& dst, Flow& f, std::atomic<uint64_t>& bytes) {
        int err = 0;
        for (;;) {
            if (f.begin < f.end) {
                iovec part{f.buf.data() + f.begin, f.end - f.begin};
                const ssize_t n = dst.stream->write(&part, 1, &err);
                if (n < 0) return false;
                if (n == 0) return true;  // the destination is full: wait for it
                f.begin += size_t(n);
                bytes += uint64_t(n);
                if (f.begin < f.end) return true;
                f.begin = f.end = 0;
            }
            if (f.src_done) return true;
            const ssize_t n = src.stream->read(f.buf.data(), f.buf.size(), &err);
            if (n == ByteStream::kWouldBlock) return true;
            if (n < 0) {
                f.src_done = true;  // an end or a failure: either ends the pipe once written out
                return n == ByteStream::kClosed;
            }
            f.end = size_t(n);
            if (f.tapped && g_tap_on) tap(f, f.end);
            f.offset += f.end;
        }
    }
};

Relay::~Relay() { stop(); }

void Relay::offer(ConnPtr c, uint64_t from, uint64_t to, uint8_t mode, double deadline) {
    const bool opening = mode == kRelayOpen;
    const Key key = opening ? Key{from, to, c->slot, c->index} : Key{to, from, c->slot, c->index};
    std::lock_guard<std::mutex> g(mu_);
    auto other = halves_.find({key, !opening});
    if (other != halves_.end() && closed_by_peer(*other->second.conn->stream)) {
        // A half left over from an aborted attempt (its peer has closed it): never joined to a fresh one.
        halves_.erase(other);
        other = halves_.end();
        stats_.unmatched++;
    }
    if (other == halves_.end()) {
        auto& mine = halves_[{key, opening}];
        if (mine.conn) mine.conn->stream->shutdown();  // a retry replaces a half that waited in vain
        mine = Half{std::move(c), deadline};
    } else {
        auto pipe = std::make_shared<Pipe>();
        pipe->ab.tapped = true;
        pipe->a = opening ? std::move(c) : std::move(other->second.conn);
        pipe->b = opening ? std::move(other->second.conn) : std::move(c);
        pipe->name = "peer " + std::to_string(std::get<0>(key)) + " -> peer " + std::to_string(std::get<1>(key)) +
                     " (slot " + std::to_string(std::get<2>(key)) + ", connection " + std::to_string(std::get<3>(key)) + ")";
        halves_.erase(other);
        fresh_.push_back(std::move(pipe));
        stats_.pipes++;
        stats_.open++;
    }
    if (!running_.exchange(true)) thread_ = std::thread([this] { loop(); });
    wake_.signal();
}

void Relay::stop() {
    if (running_.exchange(false)) {
        wake_.signal();
        if (thread_.joinable()) thread_.join();
    }
    std::lock_guard<std::mutex> g(mu_);
    for (auto& [key, h] : halves_) h.conn->stream->shutdown();
    halves_.clear();
    for (auto& p : fresh_) {
        p->a->stream->shutdown();
        p->b->stream->shutdown();
    }
    fresh_.clear();
}

RelayStats Relay::stats() const {
    std::lock_guard<std::mutex> g(mu_);
    RelayStats s = stats_;
    s.bytes = bytes_;
    return s;
}

void Relay::loop() {
    std::vector<std::shared_ptr<Pipe>> pipes;
    std::vector<pollfd> pfds;
    while (running_) {
        {
            std::lock_guard<std::mutex> g(mu_);
            for (auto& p : fresh_) {
                log_info("relay: joined " + p->name);
                pipes.push_back(std::move(p));
            }
            fresh_.clear();
            const double now = net::now_seconds();
            for (auto it = halves_.begin(); it != halves_.end();) {
                if (it->second.deadline > now) { ++it; continue; }
                log_warn("relay: closing a half of peer " + std::to_string(it->first.second ? std::get<0>(it->first.first)
                                                                                           : std::get<1>(it->first.first)) +
                         ": its other half never came");
                it->second.conn->stream->shutdown();
                it = halves_.erase(it);
                stats_.unmatched++;
            }
        }
        for (auto& p : pipes) {
            if (p->pump(bytes_)) continue;
            p->a->stream->shutdown();
            p->b->stream->shutdown();
            p->dead = true;
        }
        const size_t before = pipes.size();
        std::erase_if(pipes, [](const std::shared_ptr<Pipe>& p) { return p->dead; });
        if (pipes.size() != before) {
            std::lock_guard<std::mutex> g(mu_);
            stats_.open -= before - pipes.size();
        }
        pfds.assign(1, pollfd{wake_.fd(), POLLIN, 0});
        for (auto& p : pipes) {
            // Read where there is room, write where there are bytes.
            auto want = [&](Conn& c, const Flow& in, const Flow& out) {
                pollfd pfd = c.stream->readiness(!in.src_done && in.end == 0, out.begin < out.end);
                if (pfd.events == 0) pfd.fd = -1;  // nothing wanted: a hung-up socket must not wake the loop
                pfds.push_back(pfd);
            };
            want(*p->a, p->ab, p->ba);
            want(*p->b, p->ba, p->ab);
        }
        ::poll(pfds.data(), pfds.size(), 100);
        if (pfds[0].revents & POLLIN) wake_.drain();
    }
    for (auto& p : pipes) {
        p->a->stream->shutdown();
        p->b->stream->shutdown();
    }
}

}  // namespace pccl
