// shared-array-buffer-absent.js — injected into bundles that probe SharedArrayBuffer, which
// the guest does not offer: every probe of a value answers "not a SharedArrayBuffer".
function notShared() {
  throw new TypeError('not a SharedArrayBuffer');
}
export class SharedArrayBuffer {
  get byteLength() {
    return notShared();
  }
  get growable() {
    return notShared();
  }
}
