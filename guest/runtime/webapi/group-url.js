// group-url.js — lazily installed global group: URL, URLSearchParams (whatwg-url). It reaches
// TextEncoder/TextDecoder through the globals, and tr46 through idna-deferred.js.
import './array-buffer-resizable.js';

export { URL, URLSearchParams } from 'whatwg-url';
export { setGroupLoader } from './idna-deferred.js';
