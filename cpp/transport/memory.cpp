#include "transport/memory.hpp"

#include <algorithm>
#include <cerrno>
#include <deque>

#include "transport/net.hpp"

namespace pccl {

namespace {

// One direction of a pipe: the bytes in flight and what its fault has done so far.
struct Lane {
    std::deque<uint8_t> bytes;
    uint64_t carried = 0;  // bytes written into this lane since the connection opened
    Fault fault;
    bool broken = false;   // kFail reached: the reader sees the end, the writer an error
};

struct Pipe {
    std::mutex mu;
    size_t capacity;
    Lane lanes[2];  // lanes[s]: written by side s, read by side 1 - s
    bool shut = false;
    net::Wakeup wake[2];  // wake[s]: something changed that side s may be waiting for
    explicit Pipe(size_t cap) : capacity(cap) {}
};

class MemoryStream final : public ByteStream {
public:
    MemoryStream(std::shared_ptr<Pipe> pipe, int side) : pipe_(std::move(pipe)), side_(side) {}
    ~MemoryStream() override { shutdown(); }

    ssize_t write(const iovec* parts, int count, int* err) override {
        std::lock_guard<std::mutex> g(pipe_->mu);
        pipe_->wake[side_].drain();
        Lane& lane = pipe_->lanes[side_];
        if (pipe_->shut || lane.broken) {
            *err = EPIPE;
            return kError;
        }
        size_t room = pipe_->capacity - std::min(pipe_->capacity, lane.bytes.size());
        if (lane.fault.kind == Fault::kStall || lane.fault.kind == Fault::kFail)  // nothing past the fault's byte
            room = std::min<uint64_t>(room, lane.fault.at - std::min(lane.fault.at, lane.carried));
        size_t moved = 0;
        for (int i = 0; i < count && moved < room; i++) {
            const auto* p = static_cast<const uint8_t*>(parts[i].iov_base);
            const size_t n = std::min(parts[i].iov_len, room - moved);
            for (size_t k = 0; k < n; k++) {
                uint8_t b = p[k];
                if (lane.fault.kind == Fault::kCorrupt && lane.carried == lane.fault.at) b ^= 0x5A;
                lane.bytes.push_back(b);
                lane.carried++;
            }
            moved += n;
        }
        if (lane.fault.kind == Fault::kFail && lane.carried >= lane.fault.at) lane.broken = true;
        pipe_->wake[1 - side_].signal();
        if (moved == 0) {
            if (lane.broken) {
                *err = ECONNRESET;
                return kError;
            }
            return kWouldBlock;
        }
        return ssize_t(moved);
    }

    ssize_t read(uint8_t* out, size_t n, int* err) override {
        std::lock_guard<std::mutex> g(pipe_->mu);
        pipe_->wake[side_].drain();
        Lane& lane = pipe_->lanes[1 - side_];
        const size_t got = std::min(n, lane.bytes.size());
        std::copy_n(lane.bytes.begin(), got, out);
        lane.bytes.erase(lane.bytes.begin(), lane.bytes.begin() + ptrdiff_t(got));
        if (got) {
            pipe_->wake[1 - side_].signal();  // room for the writer
            return ssize_t(got);
        }
        if (pipe_->shut || lane.broken) return kClosed;
        (void)err;
        return kWouldBlock;
    }

    pollfd readiness(bool, bool) const override { return {pipe_->wake[side_].fd(), POLLIN, 0}; }

    void shutdown() override {
        std::lock_guard<std::mutex> g(pipe_->mu);
        pipe_->shut = true;
        pipe_->wake[0].signal();
        pipe_->wake[1].signal();
    }

private:
    std::shared_ptr<Pipe> pipe_;
    int side_;
};

}  // namespace

class MemoryEndpoint final : public LinkSource {
public:
    MemoryEndpoint(std::shared_ptr<MemoryNetwork> net, uint64_t self) : net_(std::move(net)), self_(self) {}
    ConnPtr outgoing(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double) override {
        return net_->dial(self_, to, slot, index);
    }
    ConnPtr incoming(uint64_t from, uint32_t slot, uint32_t index) override {
        return net_->accepted(self_, from, slot, index);
    }
    void discard(const ConnPtr& c) override { net_->forget(self_, c); }

private:
    std::shared_ptr<MemoryNetwork> net_;
    uint64_t self_;
};

std::shared_ptr<MemoryNetwork> MemoryNetwork::create(size_t queue_bytes, std::optional<crypto::Key> key, bool encrypt) {
    return std::shared_ptr<MemoryNetwork>(new MemoryNetwork(queue_bytes, key, encrypt));
}

std::unique_ptr<LinkSource> MemoryNetwork::endpoint(uint64_t self) {
    return std::make_unique<MemoryEndpoint>(shared_from_this(), self);
}

void MemoryNetwork::inject(uint64_t from, uint64_t to, uint32_t index, Fault fault) {
    std::lock_guard<std::mutex> g(mu_);
    faults_[{from, to, index}] = fault;
}

ConnPtr MemoryNetwork::dial(uint64_t from, const wire::PeerInfo& to, uint32_t slot, uint32_t index) {
    std::lock_guard<std::mutex> g(mu_);
    auto& mine = conns_[{from, to.id, slot, index, true}];
    if (mine) return mine;
    auto pipe = std::make_shared<Pipe>(queue_bytes_);
    if (auto f = faults_.find({from, to.id, index}); f != faults_.end()) {
        pipe->lanes[0].fault = f->second;
        faults_.erase(f);
    }
    auto make = [&](int side, uint64_t peer, bool outgoing) {
        auto c = std::make_shared<Conn>();
        c->stream = std::make_unique<MemoryStream>(pipe, side);
        c->peer = peer;
        c->slot = slot;
        c->index = index;
        c->outgoing = outgoing;
        return c;
    };
    mine = make(0, to.id, true);
    auto& theirs = conns_[{to.id, from, slot, index, false}];
    if (theirs) theirs->stream->shutdown();
    theirs = make(1, from, false);
    if (key_) {  // the handshake of a data connection, both ends here (transport/handshake.hpp)
        auth::Client client(*key_, auth::kDataLink);
        auth::Server server(*key_, auth::kDataLink, encrypt_);
        server.verify(client.answer(server.challenge(client.hello()), encrypt_, "peer " + std::to_string(to.id)));
        mine->channel = client.channel();
        theirs->channel = server.channel();
    }
    return mine;
}

ConnPtr MemoryNetwork::accepted(uint64_t self, uint64_t from, uint32_t slot, uint32_t index) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = conns_.find({self, from, slot, index, false});
    return it == conns_.end() ? nullptr : it->second;
}

void MemoryNetwork::forget(uint64_t self, const ConnPtr& c) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = conns_.find({self, c->peer, c->slot, c->index, c->outgoing});
    if (it != conns_.end() && it->second == c) conns_.erase(it);
    c->stream->shutdown();
}

}  // namespace pccl
