// group-events.js — lazily installed global group: Event, EventTarget, AbortController, AbortSignal.
export { Event, EventTarget } from 'event-target-shim';
export { AbortController, AbortSignal } from './abort.js';
