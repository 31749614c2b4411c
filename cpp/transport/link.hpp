// The transport as the algorithms see it. A Conn is one pooled connection to one peer: its byte stream
// (stream.hpp), its sealing state in a run with a secret, and its place in the pool (peer, slot, index,
// direction). A LinkSource hands out an operation's connections: the TCP pool (pool.hpp) in a running peer, an
// in-memory network (memory.hpp) in tests. The ring, the state transfer and the probes see only these, the data
// link's pieces (data_link.hpp) and the one wait (wait.hpp), never a socket.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>

#include "transport/handshake.hpp"
#include "transport/stream.hpp"
#include "wire/wire.hpp"

namespace pccl {

struct Conn {
    std::unique_ptr<ByteStream> stream;
    uint64_t peer = 0;
    uint32_t slot = 0;  // concurrent operations run on different slots (the master assigns them)
    uint32_t index = 0;
    bool outgoing = false;
    std::atomic<uint64_t> bytes{0};  // bytes moved on this connection, for diagnostics
    auth::Channel channel;           // sealing state in a run with a secret (else empty)
    crypto::Sealer* tx() const { return channel.tx.get(); }
    crypto::Opener* rx() const { return channel.rx.get(); }
    Conn() = default;
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;
    // The last holder (the pool or a running stripe) closes the stream with it.
};
using ConnPtr = std::shared_ptr<Conn>;

class LinkSource {
public:
    virtual ~LinkSource() = default;
    // The outgoing connection (slot, index) to `to`, opened (and greeted) now if there is none; throws CoreError.
    virtual ConnPtr outgoing(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double connect_timeout) = 0;
    // The incoming connection (slot, index) from peer `from`, or null if it has not arrived yet; throws
    // CoreError when it cannot arrive (this peer had to dial for it, and could not).
    virtual ConnPtr incoming(uint64_t from, uint32_t slot, uint32_t index) = 0;
    // Says that the incoming connection (slot, index) from `from` will be wanted: where this peer has to dial
    // for it (the other cannot be dialed, pool.hpp), the dial starts now, before this peer blocks opening its
    // own outgoing connections, which may wait for the other's dial.
    virtual void expect(uint64_t from, uint32_t slot, uint32_t index) { (void)from, (void)slot, (void)index; }
    // Closes one connection (found stale or broken) so that a replacement can take its place.
    virtual void discard(const ConnPtr& c) = 0;
};

}  // namespace pccl
