// group-events.js — lazily installed global group: Event, EventTarget, AbortController, AbortSignal.
import { setWarningHandler } from 'event-target-shim';

// event-target-shim warns on the console about legal but odd uses (adding a listener
// twice); Web platforms and Node say nothing, and the guest's console is the handler's.
setWarningHandler(() => {});

export { Event, EventTarget } from 'event-target-shim';
export { AbortController, AbortSignal } from './abort.js';
