// Conversations live in this browser's IndexedDB only; nothing is ever sent to the server for storage.

const DB = "ctllm-chat";
const STORE = "conversations";

function promised(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export class Store {
  /** @param {string} owner the signed-in user: each user of a shared browser sees only their own chats */
  constructor(owner) {
    this.owner = owner;
    this.db = null;
  }

  async open() {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => {
      const store = request.result.createObjectStore(STORE, { keyPath: "id" });
      store.createIndex("owner", "owner");
    };
    this.db = await promised(request);
    return this;
  }

  tx(mode) {
    return this.db.transaction(STORE, mode).objectStore(STORE);
  }

  async list() {
    const all = await promised(this.tx("readonly").index("owner").getAll(this.owner));
    return all.sort((a, b) => b.updated - a.updated);
  }

  async get(id) {
    const found = await promised(this.tx("readonly").get(id));
    return found && found.owner === this.owner ? found : null;
  }

  async put(conversation) {
    await promised(this.tx("readwrite").put({ ...conversation, owner: this.owner, updated: Date.now() }));
  }

  async delete(id) {
    if (await this.get(id)) await promised(this.tx("readwrite").delete(id));
  }

  async rename(id, title) {
    const found = await this.get(id);
    if (!found) return null;
    found.title = title.trim().slice(0, 200) || found.title;
    await promised(this.tx("readwrite").put(found)); // a rename does not move it up the list
    return found;
  }

  /** Conversations whose title or any message contains every word of `query` (case-insensitive). */
  async search(query) {
    const words = query.toLowerCase().split(/\s+/).filter(Boolean);
    const all = await this.list();
    if (!words.length) return all;
    return all.filter((c) => {
      const text = [c.title, ...c.messages.map((m) => m.content)].join("\n").toLowerCase();
      return words.every((w) => text.includes(w));
    });
  }

  /** Add conversations from an export; an id already present gets a fresh one. Returns how many. */
  async import(conversations) {
    let added = 0;
    for (const c of conversations) {
      const clean = validConversation(c);
      if (await promised(this.tx("readonly").get(clean.id))) clean.id = crypto.randomUUID();
      await promised(this.tx("readwrite").put({ ...clean, owner: this.owner }));
      added += 1;
    }
    return added;
  }
}

export const EXPORT_FORMAT = "cloudtolocalllm-chat";
export const IMPORT_LIMIT_BYTES = 50 * 1024 * 1024;

export function newConversation(model) {
  return { id: crypto.randomUUID(), title: "New chat", model, messages: [], settings: {}, updated: Date.now() };
}

/** One conversation as it is exported: no owner (an export can be imported by anyone). */
function portable(c) {
  const messages = c.messages.map(({ role, content, images, stats, state }) => ({
    role, content, ...(images && images.length ? { images } : {}), ...(stats ? { stats } : {}), ...(state && state !== "done" ? { state } : {}),
  }));
  return { id: c.id, title: c.title, model: c.model, settings: c.settings || {}, updated: c.updated, messages };
}

export function exportJson(conversations) {
  return JSON.stringify({ format: EXPORT_FORMAT, version: 1, exported: new Date().toISOString(), conversations: conversations.map(portable) }, null, 2);
}

export function exportMarkdown(c) {
  const lines = [`# ${c.title}`, "", `Model: ${c.model || "(none)"}`];
  if (c.settings && c.settings.system) lines.push("", "System prompt:", "", ...c.settings.system.split("\n").map((l) => `> ${l}`));
  for (const m of c.messages) {
    lines.push("", m.role === "user" ? "## You" : `## ${c.model || "Assistant"}`, "", m.content);
    if (m.images && m.images.length) lines.push("", `(${m.images.length} image${m.images.length > 1 ? "s" : ""} attached)`);
  }
  return lines.join("\n") + "\n";
}

class ImportError extends Error {}
export { ImportError };

const ROLES = new Set(["user", "assistant", "system"]);

function validConversation(c) {
  if (!c || typeof c !== "object" || !Array.isArray(c.messages)) throw new ImportError("a conversation has no messages list");
  const messages = c.messages.map((m) => {
    if (!m || !ROLES.has(m.role) || typeof m.content !== "string") throw new ImportError("a message needs a role (user or assistant) and text content");
    const images = Array.isArray(m.images) ? m.images.filter((i) => typeof i === "string") : undefined;
    return { role: m.role, content: m.content, ...(images && images.length ? { images } : {}), ...(m.stats ? { stats: m.stats } : {}), state: typeof m.state === "string" ? m.state : "done" };
  });
  const id = typeof c.id === "string" && /^[\w-]{1,64}$/.test(c.id) ? c.id : crypto.randomUUID();
  const settings = c.settings && typeof c.settings === "object" ? c.settings : {};
  return { id, title: String(c.title || "Imported chat").slice(0, 200), model: String(c.model || ""), settings, messages, updated: Number(c.updated) || Date.now() };
}

/** Parse an export file: ours ({format, conversations}) or a single conversation object. */
export function parseImport(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    throw new ImportError("the file is not JSON");
  }
  if (data && data.format === EXPORT_FORMAT && Array.isArray(data.conversations)) return data.conversations.map(validConversation);
  if (data && Array.isArray(data.messages)) return [validConversation(data)];
  throw new ImportError("the file is not a CloudToLocalLLM chat export");
}
