/* codec.c — message framing (abi.h): bounds-checked reading, overflow-checked writing. */
#include "codec.h"

#include <string.h>

#include "../include/abi.h"

static uint32_t read_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void write_u32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

int msg_parse(const uint8_t *buf, size_t len, struct msg_view *out, const char **why)
{
    if (len < AIRLOCK_MSG_HEADER_SIZE) {
        *why = "request shorter than a message header";
        return -1;
    }
    uint32_t body_len = read_u32le(buf + 8);
    uint32_t count = read_u32le(buf + 12);
    if (body_len > len - AIRLOCK_MSG_HEADER_SIZE) {
        *why = "message body overruns the request";
        return -1;
    }
    /* Each field needs its 4-byte length, which bounds `count` before the walk. */
    if (count > body_len / AIRLOCK_FIELD_HEADER_SIZE) {
        *why = "message claims more fields than its body can hold";
        return -1;
    }
    const uint8_t *body = buf + AIRLOCK_MSG_HEADER_SIZE;
    uint32_t off = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (body_len - off < AIRLOCK_FIELD_HEADER_SIZE) {
            *why = "field header overruns the message";
            return -1;
        }
        uint32_t n = read_u32le(body + off);
        off += AIRLOCK_FIELD_HEADER_SIZE;
        if (n > body_len - off) {
            *why = "field overruns the message";
            return -1;
        }
        off += n;
    }
    if (off != body_len) {
        *why = "bytes after the last field of the message";
        return -1;
    }
    out->kind = read_u32le(buf);
    out->status = read_u32le(buf + 4);
    out->count = count;
    out->body = body;
    out->body_len = body_len;
    return 0;
}

void field_iter_init(struct field_iter *it, const struct msg_view *m)
{
    it->pos = m->body;
    it->left = m->count;
}

int field_next(struct field_iter *it, struct field *f)
{
    if (it->left == 0)
        return -1;
    /* Invariant: msg_parse checked that `count` fields fit inside the body. */
    f->len = read_u32le(it->pos);
    f->data = it->pos + AIRLOCK_FIELD_HEADER_SIZE;
    it->pos = f->data + f->len;
    it->left--;
    return 0;
}

int msg_field(const struct msg_view *m, uint32_t i, struct field *f)
{
    if (i >= m->count)
        return -1;
    struct field_iter it;
    field_iter_init(&it, m);
    for (uint32_t k = 0; k <= i; k++)
        field_next(&it, f);
    return 0;
}

int field_equals(const struct field *f, const char *s)
{
    size_t n = strlen(s);
    return f->len == n && memcmp(f->data, s, n) == 0;
}

void msg_begin(struct msg_writer *w, struct out_buf *out, uint32_t kind, uint32_t status)
{
    w->out = out;
    w->start = out->len;
    w->count = 0;
    w->overflow = out->cap - out->len < AIRLOCK_MSG_HEADER_SIZE;
    if (!w->overflow) {
        write_u32le(out->base + out->len, kind);
        write_u32le(out->base + out->len + 4, status);
        out->len += AIRLOCK_MSG_HEADER_SIZE;
    }
}

void msg_add(struct msg_writer *w, const void *data, size_t len)
{
    struct out_buf *o = w->out;
    if (w->overflow)
        return;
    if (o->cap - o->len < AIRLOCK_FIELD_HEADER_SIZE || len > o->cap - o->len - AIRLOCK_FIELD_HEADER_SIZE) {
        w->overflow = 1;
        return;
    }
    write_u32le(o->base + o->len, (uint32_t)len);
    if (len)
        memcpy(o->base + o->len + AIRLOCK_FIELD_HEADER_SIZE, data, len);
    o->len += AIRLOCK_FIELD_HEADER_SIZE + (uint32_t)len;
    w->count++;
}

void msg_add_str(struct msg_writer *w, const char *s) { msg_add(w, s, strlen(s)); }

int msg_end(struct msg_writer *w)
{
    struct out_buf *o = w->out;
    if (w->overflow) {
        o->len = w->start;
        return -1;
    }
    write_u32le(o->base + w->start + 8, o->len - w->start - AIRLOCK_MSG_HEADER_SIZE);
    write_u32le(o->base + w->start + 12, w->count);
    return 0;
}

size_t msg_size(const size_t *field_lens, unsigned n)
{
    size_t total = AIRLOCK_MSG_HEADER_SIZE;
    for (unsigned i = 0; i < n; i++)
        total += AIRLOCK_FIELD_HEADER_SIZE + field_lens[i];
    return total;
}
