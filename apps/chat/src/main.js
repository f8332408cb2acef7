// The chat app: sign-in, model picker with details, streaming chat with stop/regenerate/edit, per-chat
// system prompt and parameters, image input for vision models, answer speed, conversations in IndexedDB
// (search, rename, delete, export, import), bridges, API keys, a shell-only service worker.
import { Api, ApiError, explain } from "./api.js";
import { Auth } from "./auth.js";
import { showBridges } from "./bridges.js";
import { ConversationList } from "./conversations.js";
import { actionButton } from "./dom.js";
import { Attachments } from "./images.js";
import { Keys } from "./keys.js";
import { fill as fillMessage, messageNode as newMessageNode } from "./messages.js";
import { newConversation, Store } from "./store.js";

const $ = (id) => document.getElementById(id);
const ui = {
  signedOut: $("signed-out"), app: $("app"), signIn: $("sign-in"), signOut: $("sign-out"), user: $("user-name"),
  pill: $("bridge-pill"), banner: $("banner"), bannerText: $("banner-text"), bannerAction: $("banner-action"),
  model: $("model"), messages: $("messages"), form: $("composer"), prompt: $("prompt"), send: $("send"),
  stop: $("stop"), list: $("conversations"), newChat: $("new-chat"), sidebar: $("sidebar"),
  toggle: $("toggle-sidebar"), search: $("search"), noResults: $("no-results"), importButton: $("import"),
  importFile: $("import-file"), views: $("views"), modelInfo: $("model-info"), detailsToggle: $("toggle-details"),
  details: $("chat-details"), system: $("system-prompt"), temperature: $("temperature"), numCtx: $("num-ctx"),
  numPredict: $("num-predict"), attach: $("attach"), attachFile: $("attach-file"), attachments: $("attachments"),
  live: $("live"), sendPending: $("send-pending"),
};
const VIEWS = ["chat", "bridges", "settings"];

let config, auth, api, store, keys, conversations;
let current = null; // the open conversation
let streaming = null; // AbortController of the answer in flight
let sendWhenReady = false; // Enter was pressed before any model was listed: send once one is
let statusTimer = null;
let lastBridgeKey = "";
const attachments = new Attachments(ui.attachments, (text) => banner(text, { kind: "error" }));
const modelCache = new Map(); // model name -> details from /api/show

// --- banner: one message at a time, with an optional action ------------------------------------------

function banner(text, { kind = "warn", action = null, code = null, link = null } = {}) {
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
  if (link) {
    ui.bannerText.append(" ");
    const a = document.createElement("a");
    a.href = link.href;
    a.textContent = link.label;
    a.rel = "noopener";
    ui.bannerText.append(a);
  }
  ui.bannerAction.hidden = !action;
  if (action) {
    ui.bannerAction.textContent = action.label;
    ui.bannerAction.onclick = action.run;
  }
}

const signInAgain = { label: "Sign in", run: () => auth.signIn() };

/** The docs' "Get started" page: config.docsUrl, else the docs host next to this app (app. -> docs.). */
function getStartedUrl() {
  if (config.docsUrl) return config.docsUrl.replace(/\/$/, "") + "/get-started/";
  const host = location.hostname.startsWith("app.") ? `docs.${location.hostname.slice(4)}` : location.hostname;
  return `${location.protocol}//${host}${location.port ? `:${location.port}` : ""}/docs/get-started/`;
}

// --- views: chat, bridges, settings (the URL hash; the OIDC redirect keeps the query) -----------------

function showView() {
  const wanted = location.hash.slice(1);
  const view = VIEWS.includes(wanted) ? wanted : "chat";
  for (const name of VIEWS) {
    $(`view-${name}`).hidden = name !== view;
    const link = $(`nav-${name}`);
    if (name === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.body.dataset.view = view;
  if (view === "settings" && keys) keys.load();
  if (view === "bridges" && api) pollStatus();
}

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
      link: { href: getStartedUrl(), label: "Get started" },
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
  showBridges(bridges, getStartedUrl(), (config.apiBase || location.origin).replace(/\/$/, ""));
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
  if (!document.hidden) statusTimer = setTimeout(pollStatus, config.statusIntervalMs || 5000);
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
  showModel();
  if (sendWhenReady && ui.model.value) send();
}

function formatNumber(n) {
  return n >= 1024 && n % 1024 === 0 ? `${n / 1024}K` : String(n);
}

/** Family, size, quantisation and context of the picked model (from /api/show), and whether it sees. */
async function showModel() {
  const model = ui.model.value;
  if (!model) {
    ui.modelInfo.textContent = "";
    setVision(false);
    return;
  }
  let details = modelCache.get(model);
  if (!details) {
    try {
      details = await api.show(model);
      modelCache.set(model, details);
    } catch (error) {
      ui.modelInfo.textContent = `No details for ${model} (${explain(error)})`;
      ui.modelInfo.dataset.vision = "false";
      setVision(false);
      return;
    }
  }
  if (ui.model.value !== model) return;
  const parts = [
    details.family && `family ${details.family}`,
    details.parameterSize && `${details.parameterSize} parameters`,
    details.quantization && details.quantization,
    details.context && `context ${formatNumber(details.context)} tokens`,
    details.vision && "sees images",
  ].filter(Boolean);
  ui.modelInfo.textContent = parts.length ? parts.join(" · ") : "No details published for this model.";
  ui.modelInfo.dataset.vision = String(details.vision);
  setVision(details.vision);
}

function setVision(vision) {
  ui.attach.hidden = !vision;
  if (!vision && attachments.images.length) attachments.clear();
}

// --- messages and conversations --------------------------------------------------------------------

const messageActions = {
  isLast: (index) => index === current.messages.length - 1,
  onEdit: (index) => editMessage(index),
  onRegenerate: () => regenerate(),
};
const messageNode = (message, index) => newMessageNode(message, index, messageActions);
const fill = (li, message) => fillMessage(li, message, messageActions);

function showList() {
  return conversations.show();
}

// --- conversations ---------------------------------------------------------------------------------

function showConversation() {
  ui.messages.replaceChildren(...current.messages.map(messageNode));
  ui.messages.scrollTop = ui.messages.scrollHeight;
  showSettings();
}

function showSettings() {
  const settings = current.settings || {};
  ui.system.value = settings.system || "";
  ui.temperature.value = settings.temperature ?? "";
  ui.numCtx.value = settings.num_ctx ?? "";
  ui.numPredict.value = settings.num_predict ?? "";
}

function readSettings() {
  const number = (input) => (input.value === "" || !input.checkValidity() ? undefined : Number(input.value));
  const settings = {
    system: ui.system.value.trim() || undefined,
    temperature: number(ui.temperature),
    num_ctx: number(ui.numCtx),
    num_predict: number(ui.numPredict),
  };
  current.settings = Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined));
  if (current.messages.length) store.put(current);
}

function toggleDetails(open = ui.details.hidden) {
  ui.details.hidden = !open;
  ui.detailsToggle.setAttribute("aria-expanded", String(open));
  if (open) ui.system.focus();
}

async function openConversation(id) {
  if (streaming) return;
  const found = await store.get(id);
  if (!found) return;
  if (found.id !== current.id) waitToSend(false); // leaving a conversation cancels a waiting message (see waitToSend)
  current = { settings: {}, ...found };
  if ([...ui.model.options].some((o) => o.value === current.model)) {
    ui.model.value = current.model;
    showModel();
  }
  sessionStorage.setItem("ctllm.open", id);
  showConversation();
  showList();
  closeSidebar();
  ui.prompt.focus();
}

function startNew() {
  if (streaming) return;
  waitToSend(false); // leaving a conversation cancels a waiting message (see waitToSend)
  current = newConversation(ui.model.value);
  sessionStorage.removeItem("ctllm.open");
  attachments.clear();
  showConversation();
  showList();
  closeSidebar();
  if (location.hash && location.hash !== "#chat") location.hash = "#chat";
  ui.prompt.focus();
}

// --- chat ------------------------------------------------------------------------------------------

function updateSend() {
  ui.send.disabled = Boolean(streaming) || !ui.model.value;
  ui.send.hidden = Boolean(streaming);
  ui.stop.hidden = !streaming;
}

function requestMessages() {
  const history = current.messages
    .filter((m) => m.state !== "error" && (m.role !== "assistant" || m.content))
    .map(({ role, content, images }) => (images && images.length ? { role, content, images } : { role, content }));
  const system = current.settings && current.settings.system;
  return system ? [{ role: "system", content: system }, ...history] : history;
}

function requestOptions() {
  const { temperature, num_ctx, num_predict } = current.settings || {};
  return Object.fromEntries(Object.entries({ temperature, num_ctx, num_predict }).filter(([, v]) => v !== undefined));
}

/** The message box is shared by all conversations, so a waiting message is cancelled when its conversation
 * is left (the text stays in the box): a model listed later must not send it into another conversation. */
function waitToSend(waiting) {
  sendWhenReady = waiting;
  ui.sendPending.hidden = !waiting;
}

async function send() {
  const text = ui.prompt.value.trim();
  if ((!text && !attachments.images.length) || streaming) return;
  if (!ui.model.value) {
    // Right after sign-in the model list may still be on its way: keep the message and send it then.
    waitToSend(true);
    return;
  }
  waitToSend(false);
  if (!current.messages.length) {
    const title = text || "Image";
    current.title = title.length > 48 ? `${title.slice(0, 47)}…` : title;
  }
  const images = attachments.take();
  const user = { role: "user", content: text, ...(images.length ? { images } : {}) };
  current.messages.push(user);
  ui.prompt.value = "";
  ui.messages.append(messageNode(user, current.messages.length - 1));
  await answer();
}

/** Stream the model's answer to the conversation as it stands (it ends with the user's message). */
async function answer() {
  const model = ui.model.value;
  current.model = model;
  const messages = requestMessages();
  const reply = { role: "assistant", content: "", state: "streaming" };
  current.messages.push(reply);
  // The previous answer loses its Regenerate button: only the last one can be regenerated.
  const previous = [...ui.messages.querySelectorAll("li.msg.assistant")].pop();
  if (previous) fill(previous, current.messages[Number(previous.dataset.index)]);
  const node = messageNode(reply, current.messages.length - 1);
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
    fill(node, reply);
    ui.messages.scrollTop = ui.messages.scrollHeight;
  };
  try {
    const final = await api.chat(model, messages, (delta) => {
      reply.content += delta;
      if (!frame) frame = requestAnimationFrame(paint);
    }, streaming.signal, requestOptions());
    reply.state = "done";
    reply.stats = final.stats;
    ui.live.textContent = "Answer complete.";
  } catch (error) {
    reply.state = error.name === "AbortError" ? "stopped" : "error";
    reply.note = explain(error);
    if (error instanceof ApiError && error.status === 401) banner(explain(error), { kind: "error", action: signInAgain });
  } finally {
    cancelAnimationFrame(frame);
    streaming = null;
    node.classList.remove("streaming");
    fill(node, reply);
    updateSend();
    await store.put(current);
    ui.prompt.focus();
  }
}

async function regenerate() {
  if (streaming || !ui.model.value) return;
  const last = current.messages[current.messages.length - 1];
  if (!last || last.role !== "assistant") return;
  current.messages.pop();
  ui.messages.lastElementChild.remove();
  await answer();
}

function editMessage(index) {
  if (streaming) return;
  const message = current.messages[index];
  const li = ui.messages.querySelector(`li[data-index="${index}"]`);
  const form = document.createElement("form");
  form.className = "edit";
  const area = document.createElement("textarea");
  area.value = message.content;
  area.rows = Math.min(10, message.content.split("\n").length + 1);
  area.setAttribute("aria-label", "Edit your message");
  const save = actionButton("Send", null, null, "primary");
  save.type = "submit";
  const cancel = actionButton("Cancel", null, () => fill(li, message));
  form.append(area, save, cancel);
  form.onsubmit = async (event) => {
    event.preventDefault();
    const text = area.value.trim();
    if (!text || streaming) return;
    // Edit and resend: the conversation continues from the edited message; later turns are replaced.
    current.messages.splice(index);
    const edited = { role: "user", content: text, ...(message.images ? { images: message.images } : {}) };
    current.messages.push(edited);
    showConversation();
    await answer();
  };
  area.onkeydown = (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "Escape") {
      event.stopPropagation();
      fill(li, message);
    }
  };
  for (const old of li.querySelectorAll(".body, .actions")) old.hidden = true;
  li.append(form);
  area.focus();
}

function stop() {
  if (streaming) streaming.abort();
}

// --- layout ----------------------------------------------------------------------------------------

function closeSidebar() {
  ui.sidebar.classList.remove("open");
  ui.toggle.setAttribute("aria-expanded", "false");
}

// --- keyboard: desktop shortcuts (the Settings page lists them) -------------------------------------

function shortcut(event) {
  const mod = event.ctrlKey || event.metaKey;
  if (event.key === "Escape" && event.shiftKey) {
    event.preventDefault();
    location.hash = "#chat";
    ui.prompt.focus();
  } else if (event.key === "Escape" && streaming) {
    event.preventDefault();
    stop();
  } else if (mod && event.shiftKey && event.key.toLowerCase() === "o") {
    event.preventDefault();
    startNew();
  } else if (mod && !event.shiftKey && event.key.toLowerCase() === "k") {
    event.preventDefault();
    ui.sidebar.classList.add("open");
    ui.toggle.setAttribute("aria-expanded", "true");
    ui.search.focus();
  } else if (mod && event.shiftKey && event.key === "Enter") {
    event.preventDefault();
    regenerate();
  } else if (mod && event.shiftKey && event.key.toLowerCase() === "s") {
    event.preventDefault();
    location.hash = "#chat";
    toggleDetails();
  }
}

// --- start -----------------------------------------------------------------------------------------

function wire() {
  ui.signIn.onclick = () => auth.signIn().catch((e) => banner(`Cannot start sign-in: ${e.message}`, { kind: "error" }));
  ui.signOut.onclick = () => auth.signOut();
  ui.newChat.onclick = startNew;
  ui.stop.onclick = stop;
  ui.model.onchange = () => {
    localStorage.setItem("ctllm.model", ui.model.value);
    showModel();
  };
  ui.form.onsubmit = (event) => {
    event.preventDefault();
    send();
  };
  ui.prompt.addEventListener("input", () => {
    if (sendWhenReady && !ui.prompt.value.trim()) waitToSend(false); // the message was taken back
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.ctrlKey && !event.metaKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.prompt.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (files.length && !ui.attach.hidden) {
      event.preventDefault();
      attachments.add(files);
    }
  });
  document.addEventListener("keydown", shortcut);
  ui.toggle.hidden = false;
  ui.toggle.onclick = () => {
    const open = ui.sidebar.classList.toggle("open");
    ui.toggle.setAttribute("aria-expanded", String(open));
  };
  ui.search.oninput = () => showList();
  ui.importButton.onclick = () => ui.importFile.click();
  ui.importFile.onchange = () => {
    const [file] = ui.importFile.files;
    if (file) conversations.import(file);
    ui.importFile.value = "";
  };
  ui.attach.onclick = () => ui.attachFile.click();
  ui.attachFile.onchange = () => {
    attachments.add([...ui.attachFile.files]);
    ui.attachFile.value = "";
  };
  ui.detailsToggle.onclick = () => toggleDetails();
  for (const input of [ui.system, ui.temperature, ui.numCtx, ui.numPredict]) input.onchange = readSettings;
  window.addEventListener("hashchange", showView);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && api) pollStatus();
  });
}

async function signedIn() {
  ui.signedOut.hidden = true;
  ui.app.hidden = false;
  ui.signOut.hidden = false;
  ui.user.hidden = false;
  ui.views.hidden = false;
  ui.user.textContent = auth.user;
  api = new Api(config.apiBase || "", () => auth.accessToken());
  keys = new Keys(api);
  store = await new Store(auth.subject).open();
  conversations = new ConversationList(store, ui, {
    currentId: () => (current ? current.id : null),
    open: (id) => openConversation(id),
    deleted: (id) => {
      if (current && current.id === id) startNew();
    },
    renamed: (id, title) => {
      if (current && current.id === id) current.title = title;
    },
    notify: (text, kind) => banner(text, { kind }),
  });
  const open = sessionStorage.getItem("ctllm.open");
  const found = open && (await store.get(open));
  current = found ? { settings: {}, ...found } : newConversation("");
  showConversation();
  showList();
  updateSend();
  showView();
  pollStatus();
  if (document.body.dataset.view === "chat") ui.prompt.focus();
}

function signedOut(message) {
  clearTimeout(statusTimer);
  ui.app.hidden = true;
  ui.signOut.hidden = true;
  ui.user.hidden = true;
  ui.pill.hidden = true;
  ui.views.hidden = true;
  ui.signedOut.hidden = false;
  banner(message || null, { kind: "error" });
  ui.signIn.focus();
}

function registerServiceWorker() {
  // The app shell only (sw.js says what it caches); never on a page served without the built worker.
  if ("serviceWorker" in navigator && config.serviceWorker !== false) {
    navigator.serviceWorker.register("sw.js").catch(() => {});
  }
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
  registerServiceWorker();
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
