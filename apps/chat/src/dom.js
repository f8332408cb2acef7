// Small DOM helpers shared by the app's views.

export function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function fileName(title, ext) {
  return `${(title || "chat").replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-|-$/g, "").slice(0, 60) || "chat"}.${ext}`;
}

/** A button whose visible label starts its accessible name; `more` (screen readers only) completes it. */
export function actionButton(label, more, run, className = "") {
  const button = document.createElement("button");
  button.type = "button";
  button.append(label);
  if (more) {
    const span = document.createElement("span");
    span.className = "visually-hidden";
    span.textContent = ` ${more}`;
    button.append(span);
  }
  if (className) button.className = className;
  button.onclick = run;
  return button;
}
