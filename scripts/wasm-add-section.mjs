// wasm-add-section.mjs — appends a custom section to a WebAssembly module:
//   node scripts/wasm-add-section.mjs <module.wasm> <section name> <payload file>
// A custom section (id 0) is a LEB128 size, the name (LEB128 length + UTF-8) and the
// payload; engines ignore it, and the host reads it with WebAssembly.Module.customSections.
import { readFileSync, writeFileSync } from 'node:fs';

const [modulePath, name, payloadPath] = process.argv.slice(2);
if (!modulePath || !name || !payloadPath) {
  console.error('usage: node scripts/wasm-add-section.mjs <module.wasm> <section name> <payload file>');
  process.exit(2);
}

function leb128(n) {
  const out = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return Buffer.from(out);
}

const module = readFileSync(modulePath);
if (module.readUInt32LE(0) !== 0x6d736100) throw new Error(`${modulePath} is not a WebAssembly module`);
const nameBytes = Buffer.from(name, 'utf8');
const payload = readFileSync(payloadPath);
const body = Buffer.concat([leb128(nameBytes.length), nameBytes, payload]);
writeFileSync(modulePath, Buffer.concat([module, Buffer.from([0]), leb128(body.length), body]));
