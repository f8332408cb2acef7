// The conversation list: search, open, rename, export (Markdown, JSON), delete, import. The conversations
// themselves live in IndexedDB (store.js), in this browser only.
import { actionButton, download, fileName } from "./dom.js";
import { exportJson, exportMarkdown, IMPORT_LIMIT_BYTES, ImportError, parseImport } from "./store.js";

export class ConversationList {
  /**
   * @param {import("./store.js").Store} store
   * @param {{list: HTMLElement, search: HTMLInputElement, noResults: HTMLElement}} ui
   * @param {{currentId: () => string|null, open: (id: string) => void, deleted: (id: string) => void,
   *          renamed: (id: string, title: string) => void, notify: (text: string, kind: string) => void}} hooks
   */
  constructor(store, ui, hooks) {
    this.store = store;
    this.ui = ui;
    this.hooks = hooks;
  }

  async show() {
    const query = this.ui.search.value;
    const items = await this.store.search(query);
    this.ui.noResults.hidden = Boolean(items.length) || !query.trim();
    this.ui.list.replaceChildren(...items.map((c) => this.item(c)));
  }

  item(c) {
    const li = document.createElement("li");
    const open = actionButton(c.title, null, () => this.hooks.open(c.id), "open");
    open.dataset.id = c.id;
    open.setAttribute("aria-current", String(this.hooks.currentId() === c.id));
    const menu = document.createElement("details");
    menu.className = "menu";
    const summary = document.createElement("summary");
    summary.textContent = "⋯";
    summary.setAttribute("aria-label", `Actions for “${c.title}”`);
    const actions = document.createElement("div");
    actions.className = "menu-items";
    actions.append(
      actionButton("Rename", `“${c.title}”`, () => this.rename(c, li)),
      actionButton("Export as Markdown", `“${c.title}”`, () =>
        download(fileName(c.title, "md"), "text/markdown", exportMarkdown(c))),
      actionButton("Export as JSON", `“${c.title}”`, () =>
        download(fileName(c.title, "json"), "application/json", exportJson([c]))),
      actionButton("Delete", `“${c.title}”`, () => this.delete(c), "danger"),
    );
    actions.addEventListener("click", () => (menu.open = false)); // an action closes the menu
    menu.append(summary, actions);
    li.append(open, menu);
    return li;
  }

  async delete(c) {
    if (!confirm(`Delete “${c.title}”? It is stored only in this browser: this cannot be undone.`)) return;
    await this.store.delete(c.id);
    this.hooks.deleted(c.id);
    this.show();
  }

  rename(c, li) {
    const form = document.createElement("form");
    form.className = "rename";
    const input = document.createElement("input");
    input.value = c.title;
    input.maxLength = 200;
    input.setAttribute("aria-label", "New name");
    const save = actionButton("Save", null, null);
    save.type = "submit";
    form.append(input, save);
    form.onsubmit = async (event) => {
      event.preventDefault();
      const renamed = await this.store.rename(c.id, input.value);
      if (renamed) this.hooks.renamed(c.id, renamed.title);
      this.show();
    };
    input.onkeydown = (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        this.show();
      }
    };
    li.replaceChildren(form);
    input.focus();
    input.select();
  }

  async import(file) {
    try {
      if (file.size > IMPORT_LIMIT_BYTES) throw new ImportError(`the file is over ${IMPORT_LIMIT_BYTES / 1024 / 1024} MB`);
      const count = await this.store.import(parseImport(await file.text()));
      this.hooks.notify(`Imported ${count} conversation${count === 1 ? "" : "s"} into this browser.`, "info");
      this.show();
    } catch (error) {
      const why = error instanceof ImportError ? error.message : "unreadable file";
      this.hooks.notify(`Cannot import ${file.name}: ${why}.`, "error");
    }
  }
}
