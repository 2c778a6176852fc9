// array-buffer-resizable.js — ES2024's ArrayBuffer.prototype.resizable, which this QuickJS
// lacks and webidl-conversions (under whatwg-url) reads at load: every guest buffer is
// fixed-length, so it is false, as the standard says for such buffers.
if (!Object.getOwnPropertyDescriptor(ArrayBuffer.prototype, 'resizable')) {
  Object.defineProperty(ArrayBuffer.prototype, 'resizable', {
    get() {
      return false;
    },
    configurable: true,
  });
}
