// The master's server loop: accepts connections, cuts the byte streams into frames and hands them to
// MasterState, then carries out the actions it returns. It makes no decisions of its own. A reachability probe
// (a TCP connect to a newcomer's data address, bounded by handshake_timeout) runs on a thread of its own so
// that the loop never blocks; its outcome comes back to MasterState through the loop.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "master_state.hpp"
#include "net.hpp"

namespace pccl {

class MasterServer {
public:
    MasterServer(std::string listen, MasterConfig config);
    ~MasterServer();
    void start();  // binds (port 0 allowed) and starts the loop thread
    void stop();   // closes every connection; peers see the master as unreachable
    std::string address() const;
    MasterStats stats() const;
    bool running() const { return running_; }

private:
    struct Link {
        int fd = -1;
        std::string addr;
        net::FrameReader reader;
        std::vector<uint8_t> out;
        bool closing = false;
    };
    void loop();
    void apply(std::vector<MasterAction> actions);
    void flush(Link& link);
    void close_link(uint64_t id);
    void start_probe(uint64_t conn, const wire::PeerInfo& where);
    void collect_probes(double now);

    std::string listen_;
    MasterConfig config_;
    MasterState state_;
    mutable std::mutex mu_;  // guards state_ stats reads from other threads
    int listen_fd_ = -1;
    uint16_t port_ = 0;
    std::string host_;
    std::map<uint64_t, Link> links_;
    uint64_t next_conn_ = 1;
    struct ProbeResult {
        uint64_t conn;
        bool reachable;
        std::string reason;
    };
    std::mutex probe_mu_;  // guards probe_results_
    std::vector<ProbeResult> probe_results_;
    std::map<uint64_t, std::thread> probes_;  // by connection; joined when their result is collected, or at stop()
    std::atomic<bool> running_{false};
    net::Wakeup wake_;
    std::thread thread_;
};

}  // namespace pccl
