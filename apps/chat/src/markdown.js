// Model output as Markdown: markdown-it (CommonMark + GFM tables and strikethrough; raw HTML disabled, so
// `<script>` in an answer is text), highlight.js for code, and DOMPurify over the result as a second wall.
// Links: only absolute http(s) URLs become links (rel="noopener noreferrer nofollow", new tab); anything
// else (javascript:, data:, relative) stays text. Code blocks get a Copy button.
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import css from "highlight.js/lib/languages/css";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";
import MarkdownIt from "markdown-it";

for (const [name, language] of Object.entries({ bash, css, javascript, json, python, rust, sql, typescript, xml, yaml })) {
  hljs.registerLanguage(name, language);
}

/** The URL if it is absolute http(s), else null. */
export function safeUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function highlight(code, language) {
  const name = (language || "").toLowerCase();
  if (name && hljs.getLanguage(name)) {
    return hljs.highlight(code, { language: name, ignoreIllegals: true }).value;
  }
  return ""; // markdown-it escapes it
}

const md = new MarkdownIt({ html: false, linkify: true, typographer: false, highlight });
// Only http(s) links survive; markdown-it's own check already drops javascript:/vbscript:/file:/data:.
md.validateLink = (url) => safeUrl(url) !== null;
const defaultLinkOpen = md.renderer.rules.link_open || ((tokens, i, options, env, self) => self.renderToken(tokens, i, options));
md.renderer.rules.link_open = (tokens, i, options, env, self) => {
  tokens[i].attrSet("rel", "noopener noreferrer nofollow");
  tokens[i].attrSet("target", "_blank");
  return defaultLinkOpen(tokens, i, options, env, self);
};
// An image in model output would be a request to any host: show its text as a link instead.
md.renderer.rules.image = (tokens, i, options, env, self) => {
  const token = tokens[i];
  const alt = self.renderInlineAsText(token.children || [], options, env) || "image";
  const src = token.attrGet("src") || "";
  return safeUrl(src)
    ? `<a href="${md.utils.escapeHtml(src)}" rel="noopener noreferrer nofollow" target="_blank">${md.utils.escapeHtml(alt)}</a>`
    : md.utils.escapeHtml(alt);
};

// markdown-it aligns table cells with a style attribute, which the CSP (no inline style) would refuse:
// a class instead.
md.core.ruler.push("align_class", (state) => {
  for (const token of state.tokens) {
    const style = token.attrGet && token.attrGet("style");
    const align = style && /text-align:(left|right|center)/.exec(style);
    if (align) {
      token.attrs = token.attrs.filter(([name]) => name !== "style");
      token.attrJoin("class", `align-${align[1]}`);
    }
  }
});

const PURIFY = {
  ALLOWED_TAGS: [
    "a", "p", "br", "hr", "strong", "em", "s", "del", "code", "pre", "span", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td",
  ],
  ALLOWED_ATTR: ["href", "rel", "target", "class", "start"],
  ALLOWED_URI_REGEXP: /^https?:\/\//i,
};
// Classes: only highlight.js's, the code language and the table alignment.
DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
  if (data.attrName === "class" && !/^(hljs[\w-]*|language-[\w+-]+|align-\w+)(\s+(hljs[\w-]*|language-[\w+-]+|align-\w+))*$/.test(data.attrValue)) {
    data.keepAttr = false;
  }
});

/** Markdown source → sanitized HTML string (what `render` puts in the page). */
export function toHtml(source) {
  return DOMPurify.sanitize(md.render(source), PURIFY);
}

/** Add a Copy button to every code block under `root` (the button copies the code's text). */
export function addCopyButtons(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.parentElement && pre.parentElement.classList.contains("code-block")) continue;
    const wrap = document.createElement("div");
    wrap.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const code = pre.querySelector("code");
    const language = code && /language-([\w+-]+)/.exec(code.className);
    const label = document.createElement("span");
    label.textContent = language ? language[1] : "code";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    // The visible word leads the accessible name ("Copy python code"), so speech input finds it.
    const word = document.createTextNode("Copy");
    const what = document.createElement("span");
    what.className = "visually-hidden";
    what.textContent = ` ${label.textContent} code`;
    button.append(word, what);
    button.onclick = async () => {
      try {
        await navigator.clipboard.writeText(pre.textContent);
        word.nodeValue = "Copied";
      } catch {
        word.nodeValue = "Copy failed";
      }
      setTimeout(() => (word.nodeValue = "Copy"), 1500);
    };
    bar.append(label, button);
    pre.tabIndex = 0; // a long line scrolls sideways: reachable from the keyboard
    pre.replaceWith(wrap);
    wrap.append(bar, pre);
  }
}

/** Render `source` into a fresh DocumentFragment. Unclosed fences (mid-stream) render as code. */
export function render(source) {
  const template = document.createElement("template");
  template.innerHTML = toHtml(source); // sanitized above: no script, no handler, no non-http(s) URL
  const fragment = template.content;
  for (const link of fragment.querySelectorAll("a")) {
    link.rel = "noopener noreferrer nofollow";
    link.target = "_blank";
  }
  addCopyButtons(fragment);
  return fragment;
}
