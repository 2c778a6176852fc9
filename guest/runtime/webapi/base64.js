// base64.js — atob and btoa as the HTML standard defines them (forgiving base64, Latin-1 strings).
const { DOMException } = globalThis; // its own lazily installed group

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const VALUES = new Int16Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) VALUES[ALPHABET.charCodeAt(i)] = i;

function requireArgument(name, args) {
  if (args.length === 0) throw new TypeError(`The "data" argument must be specified (${name})`);
}

export function btoa(data) {
  requireArgument('btoa', arguments);
  const s = String(data);
  let out = '';
  for (let i = 0; i < s.length; i += 3) {
    const a = s.charCodeAt(i);
    const b = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
    const c = i + 2 < s.length ? s.charCodeAt(i + 2) : 0;
    if (a > 0xff || b > 0xff || c > 0xff) throw new DOMException('Invalid character', 'InvalidCharacterError');
    const n = (a << 16) | (b << 8) | c;
    out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63];
    out += i + 1 < s.length ? ALPHABET[(n >> 6) & 63] : '=';
    out += i + 2 < s.length ? ALPHABET[n & 63] : '=';
  }
  return out;
}

export function atob(data) {
  requireArgument('atob', arguments);
  // ASCII whitespace is removed first; then at most two trailing '=' when the length is a multiple of 4.
  let s = String(data).replace(/[\t\n\f\r ]/g, '');
  if (s.length % 4 === 0) s = s.replace(/={1,2}$/, '');
  if (s.length % 4 === 1) throw new DOMException('The string to be decoded is not correctly encoded.', 'InvalidCharacterError');
  let out = '';
  let bits = 0;
  let acc = 0;
  for (let i = 0; i < s.length; i++) {
    const code = s.charCodeAt(i);
    const v = code < 128 ? VALUES[code] : -1;
    if (v < 0) throw new DOMException('The string to be decoded is not correctly encoded.', 'InvalidCharacterError');
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += String.fromCharCode((acc >> bits) & 0xff);
    }
  }
  return out;
}
