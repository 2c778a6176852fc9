// abort.js — AbortController and AbortSignal over event-target-shim's EventTarget and Event.
// AbortSignal.timeout is left out: timers belong to the guest's event loop.
import { Event, EventTarget } from 'event-target-shim';


const CONSTRUCT = Symbol('AbortSignal.construct');
const state = new WeakMap(); // signal -> { aborted, reason }

function signalState(signal) {
  const s = state.get(signal);
  if (!s) throw new TypeError('Illegal invocation: not an AbortSignal');
  return s;
}

function abortSignal(signal, reason) {
  const s = signalState(signal);
  if (s.aborted) return;
  s.aborted = true;
  s.reason = reason === undefined ? new globalThis.DOMException('This operation was aborted', 'AbortError') : reason;
  signal.dispatchEvent(new Event('abort'));
}

export class AbortSignal extends EventTarget {
  constructor(key) {
    if (key !== CONSTRUCT) throw new TypeError('Illegal constructor');
    super();
    state.set(this, { aborted: false, reason: undefined });
  }
  get aborted() {
    return signalState(this).aborted;
  }
  get reason() {
    return signalState(this).reason;
  }
  throwIfAborted() {
    const s = signalState(this);
    if (s.aborted) throw s.reason;
  }
  get onabort() {
    return this._onabort ?? null;
  }
  set onabort(fn) {
    if (this._onabort) this.removeEventListener('abort', this._onabort);
    this._onabort = typeof fn === 'function' ? fn : null;
    if (this._onabort) this.addEventListener('abort', this._onabort);
  }
  static abort(reason) {
    const signal = new AbortSignal(CONSTRUCT);
    abortSignal(signal, reason);
    return signal;
  }
  static any(signals) {
    const combined = new AbortSignal(CONSTRUCT);
    for (const s of signals) {
      if (s.aborted) {
        abortSignal(combined, s.reason);
        return combined;
      }
    }
    for (const s of signals) s.addEventListener('abort', () => abortSignal(combined, s.reason), { once: true });
    return combined;
  }
}
Object.defineProperty(AbortSignal.prototype, Symbol.toStringTag, { value: 'AbortSignal', configurable: true });

export class AbortController {
  #signal = new AbortSignal(CONSTRUCT);
  get signal() {
    return this.#signal;
  }
  abort(reason) {
    abortSignal(this.#signal, reason);
  }
}
Object.defineProperty(AbortController.prototype, Symbol.toStringTag, { value: 'AbortController', configurable: true });
