// The service worker caches the app shell only: index.html, the hashed bundles, the manifest and icons,
// so the app starts (and shows its own "offline" message) without the network. It never touches /api/,
// the sign-in service, config.json or any other origin: those requests go straight to the network, and
// no API answer (prompts, answers, model lists, tokens) is ever written to a cache.
// The build fills in SHELL (file list) and VERSION (a hash of the shell): a new build replaces the cache.
const SHELL = __SHELL__;
const CACHE = "ctllm-shell-__VERSION__";
const scope = new URL(self.registration.scope);
const shellUrls = new Set(SHELL.map((path) => new URL(path, scope).href));

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("ctllm-shell-") && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== scope.origin) return;
  if (request.mode === "navigate" && url.pathname === scope.pathname) {
    // The page itself: the network first (a deployment is seen at once; the sign-in redirect's
    // ?code=... reaches the page), the cached shell when offline.
    event.respondWith(fetch(request).catch(() => caches.match(new URL("./", scope).href)));
    return;
  }
  url.search = "";
  if (!shellUrls.has(url.href)) return; // /api/, config.json, anything else: not ours
  event.respondWith(caches.match(url.href).then((hit) => hit || fetch(request)));
});
