/* codec.h — reading request messages and writing response messages in the framing
 * of abi.h. Readers bounds-check everything (the input buffer is host-written);
 * writers refuse to run past the output buffer and report it. */
#ifndef AIRLOCK_CODEC_H
#define AIRLOCK_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* A parsed message whose fields all lie inside its body (checked by msg_parse). */
struct msg_view {
    uint32_t kind;
    uint32_t status;
    uint32_t count;
    const uint8_t *body;
    uint32_t body_len;
};

struct field {
    const uint8_t *data;
    uint32_t len;
};

/* Validates header and every field of the message in buf[0..len). Returns 0, or -1
 * with *why set to a static description. */
int msg_parse(const uint8_t *buf, size_t len, struct msg_view *out, const char **why);

/* Walks the fields of a parsed message in order. */
struct field_iter {
    const uint8_t *pos;
    uint32_t left;
};
void field_iter_init(struct field_iter *it, const struct msg_view *m);
/* Returns 0 with the next field, or -1 when there are no more. */
int field_next(struct field_iter *it, struct field *f);
/* Field i of the message, or -1 when it has fewer fields. */
int msg_field(const struct msg_view *m, uint32_t i, struct field *f);
/* 1 when the field's bytes equal the NUL-terminated string s. */
int field_equals(const struct field *f, const char *s);

/* The output buffer and how much of it is written. */
struct out_buf {
    uint8_t *base;
    uint32_t cap;
    uint32_t len;
};

/* Builds one message at the end of an out_buf. After an overflow the writer ignores
 * further fields and msg_end returns -1, leaving out->len where it was before. */
struct msg_writer {
    struct out_buf *out;
    uint32_t start;
    uint32_t count;
    int overflow;
};

void msg_begin(struct msg_writer *w, struct out_buf *out, uint32_t kind, uint32_t status);
void msg_add(struct msg_writer *w, const void *data, size_t len);
void msg_add_str(struct msg_writer *w, const char *s);
int msg_end(struct msg_writer *w);

/* Bytes a message with fields of these lengths occupies. */
size_t msg_size(const size_t *field_lens, unsigned n);

#endif /* AIRLOCK_CODEC_H */
