// messages.h — the host side of the guest message codec (abi.h, "Messages"): the ONE
// place that builds the HOST_RETURN / HOST_ERROR reply and decodes guest output
// (response_len, the ABORT message text). Every input read here is guest-written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "guest_memory.h"
#include "layout.h"

namespace airlock {

// A HOST_RETURN message with status HOST_ERROR carrying `text`, cut (on a UTF-8
// boundary) so the whole message fits `capacity` bytes; with less room than a field
// header the message carries no field. capacity >= AIRLOCK_MSG_HEADER_SIZE.
std::vector<uint8_t> encodeHostError(const std::string &text, size_t capacity);

// A HOST_RETURN message with status OK carrying one field, `json`.
std::vector<uint8_t> encodeHostReturn(const std::string &json);

// Copies the guest's output buffer: response_len is read once and bounded by the
// buffer. False with `error` set when the guest claims more than the buffer holds.
bool readGuestOutput(const GuestMemory &mem, const GuestLayout &layout, std::vector<uint8_t> &out, std::string &error);

// What a guest stopped mid-request (cancelled or aborted) had published: the CONSOLE
// messages it wrote before the stop, which it keeps response_len current for (an
// ABORT message after them, or alone at the start, is not copied). response_len is read
// once and bounded by the output buffer (a larger claim gives nothing); only the
// leading messages of kind CONSOLE whose bodies lie within it are copied (none when a
// HOST_CALL follows them); their fields are decoded as hostile by
// src/engine/protocol.ts (consoleBeforeStop).
std::vector<uint8_t> readStoppedOutput(const GuestMemory &mem, const GuestLayout &layout);

// The text of the first ABORT message in `out`, at most 2 KiB (cut on a character
// boundary, "..." appended), or "" when there is none or it is not printable UTF-8.
std::string abortText(const uint8_t *out, size_t len);

bool isPrintableUtf8(const uint8_t *p, size_t n);

} // namespace airlock
