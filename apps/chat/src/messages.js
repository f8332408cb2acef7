// One chat message on screen: Markdown for answers, text for the user's, attached images, the error or
// "Stopped." note, tokens/s and time to first token, and the Edit / Copy / Regenerate buttons.
import { actionButton } from "./dom.js";
import { imageSrc } from "./images.js";
import { render } from "./markdown.js";

export function statsText(stats) {
  if (!stats) return "";
  const parts = [];
  if (stats.tokensPerSecond) parts.push(`${stats.tokensPerSecond.toFixed(1)} tokens/s`);
  if (stats.ttft !== null && stats.ttft !== undefined) parts.push(`first token ${stats.ttft.toFixed(2)} s`);
  if (stats.tokens) parts.push(`${stats.tokens} tokens`);
  return parts.join(" · ");
}

/** A message as a list item; `actions` gives its buttons (edit, regenerate) their behaviour. */
export function messageNode(message, index, actions) {
  const li = document.createElement("li");
  li.className = `msg ${message.role}`;
  li.dataset.index = String(index);
  const body = document.createElement("div");
  body.className = "body";
  li.append(body);
  fill(li, message, actions);
  return li;
}

/** (Re)draw a message: body, images, note, speed, and its buttons once it is complete. */
export function fill(li, message, { isLast, onEdit, onRegenerate }) {
  const index = Number(li.dataset.index);
  const body = li.querySelector(".body");
  if (message.role === "assistant") body.replaceChildren(render(message.content));
  else body.textContent = message.content;
  li.dataset.state = message.state || "done";
  for (const old of li.querySelectorAll(".note, .images, .stats, .actions, form.edit")) old.remove();
  body.hidden = false;
  if (message.images && message.images.length) {
    const images = document.createElement("div");
    images.className = "images";
    message.images.forEach((image, i) => {
      const img = document.createElement("img");
      img.src = imageSrc(image);
      img.alt = `Image ${i + 1} sent with this message`;
      images.append(img);
    });
    li.insertBefore(images, body);
  }
  if (message.note) {
    const note = document.createElement("p");
    note.className = `note${message.state === "error" ? " error" : ""}`;
    note.textContent = message.note;
    li.append(note);
  }
  if (message.role === "assistant" && message.stats && message.state === "done") {
    const stats = document.createElement("p");
    stats.className = "stats";
    stats.textContent = statsText(message.stats);
    if (stats.textContent) li.append(stats);
  }
  if (message.state === "streaming") return;
  const buttons = document.createElement("div");
  buttons.className = "actions";
  if (message.role === "user") {
    buttons.append(actionButton("Edit", "and resend this message", () => onEdit(index)));
  } else if (message.role === "assistant") {
    const copy = actionButton("Copy", "this answer", async () => {
      await navigator.clipboard.writeText(message.content).catch(() => {});
      copy.firstChild.nodeValue = "Copied";
      setTimeout(() => (copy.firstChild.nodeValue = "Copy"), 1500);
    });
    buttons.append(copy);
    if (isLast(index)) buttons.append(actionButton("Regenerate", "this answer", onRegenerate));
  }
  li.append(buttons);
}
