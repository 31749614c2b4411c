// Messages and records as Python dicts, made from the one declaration of each message (wire/schema.hpp): a
// visitor walks the fields, so the dict form can never disagree with the bytes. Used by the test module's frame
// encoder and decoder, the master's state machine seam, the shared-state bindings, and the schema table the
// tests compare with docs/protocol.md.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "wire/wire.hpp"

namespace pccl::pydict {

namespace py = pybind11;

// A declared struct as a dict of its fields (lists of records as lists of dicts, Bytes32 as bytes).
template <class T> py::dict to_dict(const T& m);
// A dict as a declared struct: a missing key keeps the field's declared default; a key that is no field of the
// struct is a ValueError (a typo in a test must not pass silently).
template <class T> T from_dict(const py::dict& d);

// Frames: (type name, fields) to payload bytes and back; DATA carries its piece as "payload" bytes.
std::pair<uint16_t, std::vector<uint8_t>> frame_from_dict(const std::string& type, const py::dict& fields);
py::dict dict_from_frame(uint16_t type, const std::vector<uint8_t>& payload);
std::string type_name(uint16_t type);

// The schema: {"messages": [{code, name, payload, direction, max_payload}], "structs": {Name: [(field, type,
// limit or None)]}}, with types written as docs/protocol.md writes them (u8 ... u64, str, bytes32, list of T).
py::dict schema();

}  // namespace pccl::pydict
