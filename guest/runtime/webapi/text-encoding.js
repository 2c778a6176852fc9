// text-encoding.js — TextEncoder and TextDecoder for UTF-8 (the only encoding the guest offers),
// with the WHATWG options: fatal, ignoreBOM, and { stream: true } decoding across chunks.

function toBytes(input) {
  if (input === undefined) return new Uint8Array(0);
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  throw new TypeError('The "input" argument must be an ArrayBuffer or an ArrayBufferView');
}

export class TextEncoder {
  get encoding() {
    return 'utf-8';
  }
  encode(input = '') {
    const s = String(input);
    const out = new Uint8Array(s.length * 3);
    const n = encodeInto(s, out).written;
    return out.slice(0, n);
  }
  encodeInto(source, destination) {
    if (!(destination instanceof Uint8Array)) throw new TypeError('The "dest" argument must be an instance of Uint8Array');
    return encodeInto(String(source), destination);
  }
}
Object.defineProperty(TextEncoder.prototype, Symbol.toStringTag, { value: 'TextEncoder', configurable: true });

// Lone surrogates become U+FFFD, as the standard's USVString conversion requires; a
// character that does not fit whole is not written.
function encodeInto(s, out) {
  let read = 0;
  let written = 0;
  const cap = out.length;
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    let units = 1;
    if (c >= 0xd800 && c <= 0xdfff) {
      const next = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
        units = 2;
      } else {
        c = 0xfffd;
      }
    }
    if (c < 0x80) {
      if (written + 1 > cap) break;
      out[written++] = c;
    } else if (c < 0x800) {
      if (written + 2 > cap) break;
      out[written++] = 0xc0 | (c >> 6);
      out[written++] = 0x80 | (c & 0x3f);
    } else if (c < 0x10000) {
      if (written + 3 > cap) break;
      out[written++] = 0xe0 | (c >> 12);
      out[written++] = 0x80 | ((c >> 6) & 0x3f);
      out[written++] = 0x80 | (c & 0x3f);
    } else {
      if (written + 4 > cap) break;
      out[written++] = 0xf0 | (c >> 18);
      out[written++] = 0x80 | ((c >> 12) & 0x3f);
      out[written++] = 0x80 | ((c >> 6) & 0x3f);
      out[written++] = 0x80 | (c & 0x3f);
    }
    read += units;
    i += units - 1;
  }
  return { read, written };
}

const UTF8_LABELS = new Set(['utf-8', 'utf8', 'unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8', 'x-unicode20utf8']);

export class TextDecoder {
  #fatal;
  #ignoreBOM;
  #pending = []; // bytes of an incomplete sequence kept by { stream: true }
  #bomSeen = false;

  constructor(label = 'utf-8', options = {}) {
    const name = String(label).trim().toLowerCase();
    if (!UTF8_LABELS.has(name)) throw new RangeError(`The "${label}" encoding is not supported`);
    this.#fatal = Boolean(options?.fatal);
    this.#ignoreBOM = Boolean(options?.ignoreBOM);
  }
  get encoding() {
    return 'utf-8';
  }
  get fatal() {
    return this.#fatal;
  }
  get ignoreBOM() {
    return this.#ignoreBOM;
  }

  decode(input, options = {}) {
    const stream = Boolean(options?.stream);
    let bytes = toBytes(input);
    if (this.#pending.length) {
      const joined = new Uint8Array(this.#pending.length + bytes.length);
      joined.set(this.#pending, 0);
      joined.set(bytes, this.#pending.length);
      bytes = joined;
      this.#pending = [];
    }
    let out = '';
    let chunk = [];
    let i = 0;
    const n = bytes.length;
    const flush = () => {
      out += String.fromCharCode.apply(null, chunk);
      chunk = [];
    };
    const bad = () => {
      if (this.#fatal) {
        this.#pending = [];
        this.#bomSeen = false;
        throw new TypeError('The encoded data was not valid for encoding utf-8');
      }
      chunk.push(0xfffd);
    };
    while (i < n) {
      const b = bytes[i];
      let need = 0;
      let cp = 0;
      let lower = 0x80;
      let upper = 0xbf;
      if (b < 0x80) {
        cp = b;
      } else if (b >= 0xc2 && b <= 0xdf) {
        need = 1;
        cp = b & 0x1f;
      } else if (b >= 0xe0 && b <= 0xef) {
        need = 2;
        cp = b & 0x0f;
        if (b === 0xe0) lower = 0xa0;
        if (b === 0xed) upper = 0x9f;
      } else if (b >= 0xf0 && b <= 0xf4) {
        need = 3;
        cp = b & 0x07;
        if (b === 0xf0) lower = 0x90;
        if (b === 0xf4) upper = 0x8f;
      } else {
        bad();
        i++;
        continue;
      }
      let j = 1;
      let ok = true;
      for (; j <= need; j++) {
        if (i + j >= n) break;
        const c = bytes[i + j];
        if (c < lower || c > upper) {
          ok = false;
          break;
        }
        lower = 0x80;
        upper = 0xbf;
        cp = (cp << 6) | (c & 0x3f);
      }
      if (ok && j <= need) {
        // The input ends inside a sequence: keep it for the next chunk when streaming.
        if (stream) {
          this.#pending = Array.from(bytes.subarray(i));
          break;
        }
        bad();
        break;
      }
      if (!ok) {
        bad();
        i += j; // the maximal subpart is replaced by one U+FFFD
        continue;
      }
      i += need + 1;
      if (cp === 0xfeff && !this.#bomSeen && !this.#ignoreBOM && out.length === 0 && chunk.length === 0) {
        this.#bomSeen = true;
        continue;
      }
      this.#bomSeen = true;
      if (cp >= 0x10000) {
        cp -= 0x10000;
        chunk.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
      } else {
        chunk.push(cp);
      }
      if (chunk.length >= 8192) flush();
    }
    flush();
    if (!stream) {
      this.#pending = [];
      this.#bomSeen = false;
    }
    return out;
  }
}
Object.defineProperty(TextDecoder.prototype, Symbol.toStringTag, { value: 'TextDecoder', configurable: true });
