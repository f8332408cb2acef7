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
}

export function newConversation(model) {
  return { id: crypto.randomUUID(), title: "New chat", model, messages: [], updated: Date.now() };
}
