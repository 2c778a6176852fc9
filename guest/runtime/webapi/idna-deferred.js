// idna-deferred.js — stands in for tr46 inside the URL group: whatwg-url lowercases ASCII
// domains itself and calls tr46 only for international ones, so tr46 and its Unicode tables
// (~240 KB, most of URL's load time) are loaded, as the internal group "idna", on that call.
let loadGroup;
let tr46;

/** Called by webapi.c once the URL group is loaded: loadGroup(name) evaluates an internal group. */
export function setGroupLoader(loader) {
  loadGroup = loader;
}

function real() {
  tr46 ??= loadGroup('idna');
  return tr46;
}

export function toASCII(domain, options) {
  return real().toASCII(domain, options);
}

export function toUnicode(domain, options) {
  return real().toUnicode(domain, options);
}
