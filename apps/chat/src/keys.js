// Settings → API keys (POST/GET/DELETE /api/keys): create a key with a name and scopes (shown once, with
// a Copy button), list keys by name, prefix, scopes, creation and last use, and revoke one.
import { ApiError, explain } from "./api.js";

const $ = (id) => document.getElementById(id);

function date(value) {
  if (!value) return "never";
  const parsed = new Date(typeof value === "number" ? value * 1000 : value);
  return Number.isNaN(parsed.getTime()) ? String(value) : parsed.toLocaleString();
}

function keyError(error) {
  if (error instanceof ApiError && error.status === 404 && !error.message.includes("key")) {
    return "This cloud does not offer API keys yet.";
  }
  return explain(error);
}

export class Keys {
  constructor(api) {
    this.api = api;
    this.form = $("key-form");
    this.form.onsubmit = (event) => {
      event.preventDefault();
      this.create();
    };
    $("copy-key").onclick = async () => {
      const button = $("copy-key");
      try {
        await navigator.clipboard.writeText($("new-key-value").textContent);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Select and copy it by hand";
      }
    };
    $("hide-key").onclick = () => {
      $("new-key").hidden = true;
      $("new-key-value").textContent = ""; // the only copy the page had
    };
  }

  error(text) {
    $("keys-error").hidden = !text;
    $("keys-error").textContent = text || "";
  }

  async load() {
    let keys;
    try {
      keys = await this.api.listKeys();
    } catch (error) {
      this.error(`Cannot list your API keys: ${keyError(error)}`);
      return;
    }
    this.error(null);
    $("keys-empty").hidden = keys.length > 0;
    $("keys-table").hidden = !keys.length;
    $("keys").replaceChildren(...keys.map((key) => this.row(key)));
  }

  row(key) {
    const tr = document.createElement("tr");
    tr.dataset.id = key.id;
    const cells = [key.name, `${key.prefix}…`, (key.scopes || []).join(", "), date(key.created_at), date(key.last_used_at)];
    for (const [i, text] of cells.entries()) {
      const td = document.createElement("td");
      if (i === 1) {
        const code = document.createElement("code");
        code.textContent = text;
        td.append(code);
      } else td.textContent = text;
      tr.append(td);
    }
    const td = document.createElement("td");
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.className = "danger";
    revoke.textContent = "Revoke";
    revoke.setAttribute("aria-label", `Revoke the key “${key.name}”`);
    revoke.onclick = async () => {
      if (!confirm(`Revoke “${key.name}”? Anything using it stops working at once.`)) return;
      try {
        await this.api.revokeKey(key.id);
      } catch (error) {
        this.error(`Cannot revoke “${key.name}”: ${keyError(error)}`);
        return;
      }
      this.load();
    };
    td.append(revoke);
    tr.append(td);
    return tr;
  }

  async create() {
    const name = $("key-name").value.trim();
    const scopes = [...this.form.querySelectorAll("input[name=scope]:checked")].map((box) => box.value);
    if (!name) return this.error("Give the key a name, so you know later what uses it.");
    if (!scopes.length) return this.error("Pick at least one scope.");
    let created;
    try {
      created = await this.api.createKey(name, scopes);
    } catch (error) {
      this.error(`Cannot create the key: ${keyError(error)}`);
      return;
    }
    this.error(null);
    $("new-key-value").textContent = created.key;
    $("copy-key").textContent = "Copy";
    $("new-key").hidden = false;
    $("key-name").value = "";
    $("copy-key").focus();
    this.load();
  }
}
