// messages.cc — the host side of the guest message codec: HOST_ERROR replies, output
// buffer reads and ABORT text, each bound checked before use (the guest wrote it).
#include "messages.h"

#include <algorithm>
#include <cstring>

#include "../../guest/include/abi.h"

namespace airlock {

namespace {
// Cut point <= n that does not split a UTF-8 sequence of `text`.
size_t utf8Cut(const char *text, size_t n, size_t full) {
    while (n > 0 && n < full && (static_cast<uint8_t>(text[n]) & 0xc0) == 0x80) --n;
    return n;
}
} // namespace

std::vector<uint8_t> encodeHostError(const std::string &text, size_t capacity) {
    const size_t room = capacity - AIRLOCK_MSG_HEADER_SIZE; // caller: capacity >= header
    const bool withField = room >= AIRLOCK_FIELD_HEADER_SIZE;
    const size_t textLen = withField ? utf8Cut(text.data(), std::min(text.size(), room - AIRLOCK_FIELD_HEADER_SIZE), text.size()) : 0;
    airlock_msg m{};
    m.kind = AIRLOCK_MSG_HOST_RETURN;
    m.status = AIRLOCK_STATUS_HOST_ERROR;
    m.count = withField ? 1 : 0;
    m.length = withField ? static_cast<uint32_t>(AIRLOCK_FIELD_HEADER_SIZE + textLen) : 0;
    std::vector<uint8_t> out(AIRLOCK_MSG_HEADER_SIZE + m.length);
    std::memcpy(out.data(), &m, sizeof m);
    if (withField) {
        const uint32_t fieldLen = static_cast<uint32_t>(textLen);
        std::memcpy(out.data() + AIRLOCK_MSG_HEADER_SIZE, &fieldLen, sizeof fieldLen);
        std::memcpy(out.data() + AIRLOCK_MSG_HEADER_SIZE + AIRLOCK_FIELD_HEADER_SIZE, text.data(), textLen);
    }
    return out;
}

std::vector<uint8_t> encodeHostReturn(const std::string &json) {
    airlock_msg m{};
    m.kind = AIRLOCK_MSG_HOST_RETURN;
    m.status = AIRLOCK_STATUS_OK;
    m.count = 1;
    m.length = static_cast<uint32_t>(AIRLOCK_FIELD_HEADER_SIZE + json.size());
    std::vector<uint8_t> out(AIRLOCK_MSG_HEADER_SIZE + m.length);
    std::memcpy(out.data(), &m, sizeof m);
    const uint32_t fieldLen = static_cast<uint32_t>(json.size());
    std::memcpy(out.data() + AIRLOCK_MSG_HEADER_SIZE, &fieldLen, sizeof fieldLen);
    if (!json.empty()) std::memcpy(out.data() + AIRLOCK_MSG_HEADER_SIZE + AIRLOCK_FIELD_HEADER_SIZE, json.data(), json.size());
    return out;
}

bool readGuestOutput(const GuestMemory &mem, const GuestLayout &l, std::vector<uint8_t> &out, std::string &error) {
    const uint32_t len = mem.read<uint32_t>(l.header.control + AIRLOCK_CTRL_OFF_RESPONSE_LEN);
    if (len > l.outputSize) {
        error = "guest response_len " + std::to_string(len) + " exceeds the output buffer of " +
                std::to_string(l.outputSize) + " bytes";
        return false;
    }
    const uint8_t *p = mem.at(l.outputAddr, len);
    out.assign(p, p + len);
    return true;
}

std::vector<uint8_t> readStoppedOutput(const GuestMemory &mem, const GuestLayout &l) {
    const uint32_t len = mem.read<uint32_t>(l.header.control + AIRLOCK_CTRL_OFF_RESPONSE_LEN);
    // A forged length only costs the guest its console lines.
    if (len > l.outputSize) return {};
    const uint8_t *out = mem.at(l.outputAddr, len);
    // Only the leading CONSOLE messages are copied, so a guest's garbage costs no
    // allocation; every header length is checked against `len` (src/ checks fields).
    size_t off = 0;
    while (len - off >= AIRLOCK_MSG_HEADER_SIZE) {
        airlock_msg m;
        std::memcpy(&m, out + off, sizeof m);
        const size_t bodyStart = off + AIRLOCK_MSG_HEADER_SIZE;
        // Lines before a HOST_CALL went out with it, and were delivered then.
        if (m.kind == AIRLOCK_MSG_HOST_CALL) return {};
        if (m.kind != AIRLOCK_MSG_CONSOLE || m.length > len - bodyStart) break;
        off = bodyStart + m.length;
    }
    return std::vector<uint8_t>(out, out + off);
}

std::string abortText(const uint8_t *out, size_t len) {
    // Walk the messages; every header and field length is checked against `len`.
    size_t off = 0;
    while (len - off >= AIRLOCK_MSG_HEADER_SIZE) {
        airlock_msg m;
        std::memcpy(&m, out + off, sizeof m);
        const size_t bodyStart = off + AIRLOCK_MSG_HEADER_SIZE;
        if (m.length > len - bodyStart) break;
        if (m.kind == AIRLOCK_MSG_ABORT) {
            if (m.count < 1 || m.length < AIRLOCK_FIELD_HEADER_SIZE) break;
            uint32_t fieldLen;
            std::memcpy(&fieldLen, out + bodyStart, sizeof fieldLen);
            if (fieldLen > m.length - AIRLOCK_FIELD_HEADER_SIZE) break;
            const char *text = reinterpret_cast<const char *>(out + bodyStart + AIRLOCK_FIELD_HEADER_SIZE);
            const size_t n = utf8Cut(text, std::min<size_t>(fieldLen, 2048), fieldLen);
            if (!isPrintableUtf8(reinterpret_cast<const uint8_t *>(text), n)) return "";
            return std::string(text, n) + (n < fieldLen ? "..." : "");
        }
        off = bodyStart + m.length;
    }
    return "";
}

bool isPrintableUtf8(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        const uint8_t c = p[i];
        if (c < 0x80) {
            if (c < 0x20 && c != '\n' && c != '\t' && c != '\r') return false;
            if (c == 0x7f) return false;
            ++i;
            continue;
        }
        const size_t extra = (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 0;
        if (extra == 0 || c == 0xc0 || c == 0xc1 || c > 0xf4 || i + extra >= n) return false;
        for (size_t k = 1; k <= extra; ++k)
            if ((p[i + k] & 0xc0) != 0x80) return false;
        i += extra + 1;
    }
    return true;
}

} // namespace airlock
