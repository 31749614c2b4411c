#include "python/schema_dicts.hpp"

#include <pybind11/stl.h>

#include <set>

namespace pccl::pydict {

namespace {

template <class T> py::object to_py(const T& v);
template <class T> T from_py(const py::handle& o, const char* name);

struct ToDict {
    py::dict& d;
    template <class T> void operator()(const char* name, const T& value, uint64_t) { d[name] = to_py(value); }
};

struct FromDict {
    const py::dict& d;
    std::set<std::string>* seen;
    template <class T> void operator()(const char* name, T& value, uint64_t) {
        seen->insert(name);
        if (d.contains(name)) value = from_py<T>(d[name], name);
    }
};

template <class T> py::object to_py(const T& v) {
    if constexpr (std::is_integral_v<T>) return py::int_(v);
    else if constexpr (std::is_same_v<T, std::string>) return py::str(v);
    else if constexpr (std::is_same_v<T, wire::Bytes32>) return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
    else if constexpr (wire::IsVector<T>::value) {
        py::list l;
        for (const auto& e : v) l.append(to_py(e));
        return std::move(l);
    } else return to_dict(v);
}

template <class T> T from_py(const py::handle& o, const char* name) {
    if constexpr (std::is_integral_v<T> || std::is_same_v<T, std::string>) return o.cast<T>();
    else if constexpr (std::is_same_v<T, wire::Bytes32>) {
        const std::string b = o.cast<std::string>();
        wire::Bytes32 out{};
        if (b.size() != out.size()) throw py::value_error(std::string(name) + " must be 32 bytes");
        std::copy(b.begin(), b.end(), out.begin());
        return out;
    } else if constexpr (wire::IsVector<T>::value) {
        T out;
        for (auto item : o.cast<py::list>()) out.push_back(from_py<typename wire::IsVector<T>::Element>(item, name));
        return out;
    } else return from_dict<T>(o.cast<py::dict>());
}

template <class T> std::vector<uint8_t> bytes_of(const T& m) {
    wire::Writer w;
    wire::encode(w, m);
    return std::move(w.bytes());
}

// How docs/protocol.md writes a field's type.
template <class T> std::string type_text() {
    if constexpr (std::is_same_v<T, uint8_t>) return "u8";
    else if constexpr (std::is_same_v<T, uint16_t>) return "u16";
    else if constexpr (std::is_same_v<T, uint32_t>) return "u32";
    else if constexpr (std::is_same_v<T, uint64_t>) return "u64";
    else if constexpr (std::is_same_v<T, std::string>) return "str";
    else if constexpr (std::is_same_v<T, wire::Bytes32>) return "bytes32";
    else if constexpr (wire::IsVector<T>::value) return "list of " + type_text<typename wire::IsVector<T>::Element>();
    else return wire::struct_name(static_cast<const T*>(nullptr));
}

// Lists a struct's fields as (name, type, limit) under its name in `structs`, and the structs it nests.
struct Describe {
    py::dict& structs;
    py::list fields;
    template <class T> void operator()(const char* name, const T&, uint64_t limit) {
        fields.append(py::make_tuple(name, type_text<T>(), limit == wire::kAny ? py::object(py::none()) : py::int_(limit)));
        nested<T>();
    }
    template <class T> void nested() {
        if constexpr (wire::IsVector<T>::value) nested<typename wire::IsVector<T>::Element>();
        else if constexpr (wire::WireStruct<T>) describe<T>(structs);
    }
    template <class T> static void describe(py::dict& structs) {
        const char* n = wire::struct_name(static_cast<const T*>(nullptr));
        if (structs.contains(n)) return;
        Describe v{structs, py::list()};
        T m{};
        visit_fields(v, m);
        structs[n] = v.fields;
    }
};

}  // namespace

template <class T> py::dict to_dict(const T& m) {
    py::dict d;
    ToDict v{d};
    visit_fields(v, m);
    return d;
}

template <class T> T from_dict(const py::dict& d) {
    T m{};
    std::set<std::string> seen;
    FromDict v{d, &seen};
    visit_fields(v, m);
    for (auto item : d) {
        const auto key = item.first.cast<std::string>();
        if (!seen.count(key))
            throw py::value_error("'" + key + "' is not a field of " + wire::struct_name(&m));
    }
    return m;
}

// The instances the bindings use outside this file.
template py::dict to_dict(const wire::SyncPlan&);
template wire::StateEntry from_dict(const py::dict&);
template wire::SyncStart from_dict(const py::dict&);

std::string type_name(uint16_t type) {
    const auto* info = wire::message_info(type);
    return info ? info->name : "unknown_" + std::to_string(type);
}

std::pair<uint16_t, std::vector<uint8_t>> frame_from_dict(const std::string& type, const py::dict& fields) {
    for (const auto& info : wire::message_table()) {
        if (type != info.name) continue;
        const auto t = wire::MsgType(info.code);
        if (t == wire::MsgType::kData) {  // its header's fields, then the piece
            py::dict head;  // a copy without the piece (the caller's dict stays as it is)
            std::string body;
            for (auto item : fields) {
                if (py::str(item.first).equal(py::str("payload"))) body = item.second.cast<std::string>();
                else head[item.first] = item.second;
            }
            auto b = bytes_of(from_dict<wire::DataHeader>(head));
            b.insert(b.end(), body.begin(), body.end());
            return {info.code, b};
        }
        return {info.code, wire::with_payload_type(t, [&](auto tag) { return bytes_of(from_dict<decltype(tag)>(fields)); })};
    }
    throw py::value_error("unknown message type '" + type + "'");
}

py::dict dict_from_frame(uint16_t type, const std::vector<uint8_t>& p) {
    if (!wire::is_known_type(type)) wire::malformed("unknown message type " + std::to_string(type));
    const auto t = wire::MsgType(type);
    if (t == wire::MsgType::kData) {
        wire::Reader r(p.data(), p.size());
        py::dict d = to_dict(wire::decode<wire::DataHeader>(r));
        d["payload"] = py::bytes(reinterpret_cast<const char*>(p.data() + wire::kDataHeaderSize), p.size() - wire::kDataHeaderSize);
        return d;
    }
    return wire::with_payload_type(t, [&](auto tag) { return to_dict(wire::decode_payload<decltype(tag)>(p)); });
}

py::dict schema() {
    py::list messages;
    py::dict structs;
    for (const auto& info : wire::message_table()) {
        messages.append(py::dict(py::arg("code") = info.code, py::arg("name") = info.name, py::arg("payload") = info.payload,
                                 py::arg("direction") = info.direction, py::arg("max_payload") = info.max_payload));
        wire::with_payload_type(wire::MsgType(info.code), [&](auto tag) { Describe::describe<decltype(tag)>(structs); });
    }
    return py::dict(py::arg("messages") = messages, py::arg("structs") = structs);
}

}  // namespace pccl::pydict
