// The chat app: sign-in, model picker, streaming chat, bridge status, conversations in IndexedDB.
import { Api, ApiError, explain } from "./api.js";
import { Auth } from "./auth.js";
import { render } from "./markdown.js";
import { newConversation, Store } from "./store.js";

const $ = (id) => document.getElementById(id);
const ui = {
  signedOut: $("signed-out"), app: $("app"), signIn: $("sign-in"), signOut: $("sign-out"), user: $("user-name"),
  pill: $("bridge-pill"), banner: $("banner"), bannerText: $("banner-text"), bannerAction: $("banner-action"),
  model: $("model"), messages: $("messages"), form: $("composer"), prompt: $("prompt"), send: $("send"),
  stop: $("stop"), list: $("conversations"), newChat: $("new-chat"), sidebar: $("sidebar"),
  toggle: $("toggle-sidebar"),
};

let config, auth, api, store;
let current = null; // the open conversation
let streaming = null; // AbortController of the answer in flight
let statusTimer = null;
let lastBridgeKey = "";

// --- banner: one message at a time, with an optional action ------------------------------------------

function banner(text, { kind = "warn", action = null, code = null } = {}) {
  if (!text) {
    ui.banner.hidden = true;
    ui.banner.dataset.kind = "";
    return;
  }
  ui.banner.hidden = false;
  ui.banner.dataset.kind = kind;
  ui.banner.classList.toggle("error", kind === "error");
  ui.bannerText.textContent = text;
  if (code) {
    ui.bannerText.append(" ");
    const c = document.createElement("code");
    c.textContent = code;
    ui.bannerText.append(c);
  }
  ui.bannerAction.hidden = !action;
  if (action) {
    ui.bannerAction.textContent = action.label;
    ui.bannerAction.onclick = action.run;
  }
}

const signInAgain = { label: "Sign in", run: () => auth.signIn() };

// --- bridge status ---------------------------------------------------------------------------------

function showStatus(bridges) {
  ui.pill.hidden = false;
  const reachable = bridges.filter((b) => b.backend_reachable);
  let state;
  if (!bridges.length) {
    state = "none";
    ui.pill.textContent = "No bridge";
    banner("No bridge is connected. Start the bridge on your computer, signed in as you:", {
      code: "cloudtolocalllm-bridge run",
    });
  } else if (!reachable.length) {
    state = "unreachable";
    const names = bridges.map((b) => b.name).join(", ");
    ui.pill.textContent = "Backend unreachable";
    banner(`Your bridge (${names}) is connected but cannot reach its model server. Start Ollama on that computer or check the bridge's --backend address:`, {
      code: "ollama serve",
    });
  } else {
    state = "connected";
    ui.pill.textContent = `Connected: ${reachable.map((b) => b.name).join(", ")}`;
    if (ui.banner.dataset.kind === "warn") banner(null);
  }
  ui.pill.className = `pill ${state === "connected" ? "ok" : state === "none" ? "err" : "warn"}`;
  ui.pill.dataset.state = state;
  const key = reachable.map((b) => `${b.id}:${(b.models || []).join(",")}`).join("|");
  if (key !== lastBridgeKey) {
    lastBridgeKey = key;
    if (reachable.length) loadModels();
  }
}

async function pollStatus() {
  clearTimeout(statusTimer);
  try {
    showStatus(await api.bridges());
  } catch (error) {
    handleApiError(error);
  }
  statusTimer = setTimeout(pollStatus, config.statusIntervalMs || 5000);
}

function handleApiError(error) {
  if (error instanceof ApiError && error.status === 401) {
    banner(explain(error), { kind: "error", action: signInAgain });
  } else if (!(error instanceof ApiError)) {
    ui.pill.hidden = false;
    ui.pill.textContent = "Offline";
    ui.pill.className = "pill err";
    ui.pill.dataset.state = "offline";
  }
}

// --- models ----------------------------------------------------------------------------------------

async function loadModels() {
  let models;
  try {
    models = await api.models();
  } catch (error) {
    if (error instanceof ApiError && error.status === 503) return; // the status banner already says it
    handleApiError(error);
    return;
  }
  const wanted = (current && current.model) || localStorage.getItem("ctllm.model") || ui.model.value;
  ui.model.replaceChildren(
    ...models.map((name) => {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      return option;
    }),
  );
  if (models.includes(wanted)) ui.model.value = wanted;
  ui.model.disabled = !models.length;
  updateSend();
}

// --- conversations ---------------------------------------------------------------------------------

async function showList() {
  const items = await store.list();
  ui.list.replaceChildren(
    ...items.map((c) => {
      const li = document.createElement("li");
      const open = document.createElement("button");
      open.type = "button";
      open.textContent = c.title;
      open.dataset.id = c.id;
      open.setAttribute("aria-current", String(Boolean(current && current.id === c.id)));
      open.onclick = () => openConversation(c.id);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Delete “${c.title}”`);
      remove.onclick = async () => {
        await store.delete(c.id);
        if (current && current.id === c.id) startNew();
        showList();
      };
      li.append(open, remove);
      return li;
    }),
  );
}

function messageNode(message) {
  const li = document.createElement("li");
  li.className = `msg ${message.role}`;
  const body = document.createElement("div");
  body.className = "body";
  li.append(body);
  fill(li, message);
  return li;
}

function fill(li, message) {
  const body = li.querySelector(".body");
  if (message.role === "assistant") body.replaceChildren(render(message.content));
  else body.textContent = message.content;
  li.dataset.state = message.state || "done";
  li.querySelector(".note")?.remove();
  if (message.note) {
    const note = document.createElement("p");
    note.className = `note${message.state === "error" ? " error" : ""}`;
    note.textContent = message.note;
    li.append(note);
  }
}

function showConversation() {
  ui.messages.replaceChildren(...current.messages.map(messageNode));
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

async function openConversation(id) {
  if (streaming) return;
  const found = await store.get(id);
  if (!found) return;
  current = found;
  if ([...ui.model.options].some((o) => o.value === current.model)) ui.model.value = current.model;
  sessionStorage.setItem("ctllm.open", id);
  showConversation();
  showList();
  closeSidebar();
  ui.prompt.focus();
}

function startNew() {
  if (streaming) return;
  current = newConversation(ui.model.value);
  sessionStorage.removeItem("ctllm.open");
  showConversation();
  showList();
  closeSidebar();
  ui.prompt.focus();
}

// --- chat ------------------------------------------------------------------------------------------

function updateSend() {
  ui.send.disabled = Boolean(streaming) || !ui.model.value;
  ui.send.hidden = Boolean(streaming);
  ui.stop.hidden = !streaming;
}

async function send() {
  const text = ui.prompt.value.trim();
  if (!text || streaming || !ui.model.value) return;
  const model = ui.model.value;
  current.model = model;
  if (!current.messages.length) current.title = text.length > 48 ? `${text.slice(0, 47)}…` : text;
  const history = current.messages.filter((m) => m.state !== "error").map(({ role, content }) => ({ role, content }));
  const user = { role: "user", content: text };
  const answer = { role: "assistant", content: "", state: "streaming" };
  current.messages.push(user, answer);
  ui.prompt.value = "";
  ui.messages.append(messageNode(user));
  const node = messageNode(answer);
  node.classList.add("streaming");
  ui.messages.append(node);
  ui.messages.scrollTop = ui.messages.scrollHeight;
  await store.put(current);
  sessionStorage.setItem("ctllm.open", current.id);
  showList();

  streaming = new AbortController();
  updateSend();
  let frame = 0;
  const paint = () => {
    frame = 0;
    fill(node, answer);
    ui.messages.scrollTop = ui.messages.scrollHeight;
  };
  try {
    await api.chat(model, [...history, user], (delta) => {
      answer.content += delta;
      if (!frame) frame = requestAnimationFrame(paint);
    }, streaming.signal);
    answer.state = "done";
  } catch (error) {
    answer.state = error.name === "AbortError" ? "stopped" : "error";
    answer.note = explain(error);
    if (error instanceof ApiError && error.status === 401) banner(explain(error), { kind: "error", action: signInAgain });
  } finally {
    cancelAnimationFrame(frame);
    streaming = null;
    node.classList.remove("streaming");
    fill(node, answer);
    updateSend();
    await store.put(current);
    ui.prompt.focus();
  }
}

function stop() {
  if (streaming) streaming.abort();
}

// --- layout ----------------------------------------------------------------------------------------

function closeSidebar() {
  ui.sidebar.classList.remove("open");
  ui.toggle.setAttribute("aria-expanded", "false");
}

// --- start -----------------------------------------------------------------------------------------

function wire() {
  ui.signIn.onclick = () => auth.signIn().catch((e) => banner(`Cannot start sign-in: ${e.message}`, { kind: "error" }));
  ui.signOut.onclick = () => auth.signOut();
  ui.newChat.onclick = startNew;
  ui.stop.onclick = stop;
  ui.model.onchange = () => localStorage.setItem("ctllm.model", ui.model.value);
  ui.form.onsubmit = (event) => {
    event.preventDefault();
    send();
  };
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && streaming) {
      event.preventDefault();
      stop();
    }
  });
  ui.toggle.hidden = false;
  ui.toggle.onclick = () => {
    const open = ui.sidebar.classList.toggle("open");
    ui.toggle.setAttribute("aria-expanded", String(open));
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && api) pollStatus();
  });
}

async function signedIn() {
  ui.signedOut.hidden = true;
  ui.app.hidden = false;
  ui.signOut.hidden = false;
  ui.user.hidden = false;
  ui.user.textContent = auth.user;
  api = new Api(config.apiBase || "", () => auth.accessToken());
  store = await new Store(auth.subject).open();
  const open = sessionStorage.getItem("ctllm.open");
  current = (open && (await store.get(open))) || newConversation("");
  showConversation();
  showList();
  updateSend();
  pollStatus();
  ui.prompt.focus();
}

function signedOut(message) {
  clearTimeout(statusTimer);
  ui.app.hidden = true;
  ui.signOut.hidden = true;
  ui.user.hidden = true;
  ui.pill.hidden = true;
  ui.signedOut.hidden = false;
  banner(message || null, { kind: "error" });
  ui.signIn.focus();
}

async function main() {
  wire();
  try {
    const response = await fetch("config.json", { cache: "no-cache" });
    if (!response.ok) throw new Error(`config.json: ${response.status}`);
    config = await response.json();
  } catch (error) {
    banner(`This app is not configured (${error.message}).`, { kind: "error" });
    return;
  }
  auth = new Auth(config, (message) => {
    if (!auth.session) signedOut(message);
    else ui.user.textContent = auth.user;
  });
  let ok = false;
  try {
    ok = await auth.start();
  } catch (error) {
    signedOut(`Sign-in failed: ${error.message}`);
    return;
  }
  if (ok) await signedIn();
  else signedOut();
}

main();
