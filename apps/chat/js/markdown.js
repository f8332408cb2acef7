// A small, safe Markdown renderer for model output. It never parses HTML: it builds DOM nodes and puts
// every piece of text in with createTextNode, so `<script>`, `<img onerror=...>` and the like are shown
// as text. Supported: fenced code blocks, inline code, **strong**, *emphasis*, headings, lists,
// paragraphs, and links whose URL is absolute http(s) (anything else, e.g. javascript:, stays text).

const INLINE =
  /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([\s\S]+?)\*\*|__([\s\S]+?)__|\*(?=\S)([^*]*?\S)\*|\b_(?=\S)([^_]*?\S)_\b|\[([^\]\n]+)\]\(\s*([^()\s]+)\s*\)|(https?:\/\/[^\s<>()"']+[^\s<>()"'.,;:!?])/g;

/** The URL if it is absolute http(s), else null. */
export function safeUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function el(tag, parent, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.appendChild(document.createTextNode(text));
  if (parent) parent.appendChild(node);
  return node;
}

function link(parent, href, label) {
  const url = safeUrl(href);
  if (!url) {
    parent.appendChild(document.createTextNode(label === href ? href : `${label} (${href})`));
    return;
  }
  const a = el("a", parent);
  a.href = url;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  inline(a, label, false);
}

export function inline(parent, text, links = true) {
  let last = 0;
  const pattern = new RegExp(INLINE.source, "g"); // its own lastIndex: inline() recurses
  for (let m = pattern.exec(text); m; m = pattern.exec(text)) {
    if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
    last = pattern.lastIndex;
    if (m[1]) el("code", parent, m[2].trim() || m[2]);
    else if (m[3] || m[4]) inline(el("strong", parent), m[3] || m[4], links);
    else if (m[5] || m[6]) inline(el("em", parent), m[5] || m[6], links);
    else if (m[7] && links) link(parent, m[8], m[7]);
    else if (m[9] && links) link(parent, m[9], m[9]);
    else parent.appendChild(document.createTextNode(m[0]));
  }
  if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
}

const FENCE = /^\s*(`{3,}|~{3,})/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;

/** Render `source` into a fresh DocumentFragment. Unclosed fences (mid-stream) render as code. */
export function render(source) {
  const root = document.createDocumentFragment();
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  let list = null;
  const flush = () => {
    if (paragraph.length) {
      const p = el("p", root);
      paragraph.forEach((line, i) => {
        if (i) el("br", p);
        inline(p, line);
      });
    }
    paragraph = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flush();
      list = null;
      const body = [];
      const language = line.slice(fence.index + fence[0].length).trim();
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
      const code = el("code", el("pre", root), body.join("\n"));
      if (/^[\w+-]{1,20}$/.test(language)) code.dataset.language = language;
      continue;
    }
    const bullet = BULLET.exec(line);
    const numbered = !bullet && NUMBERED.exec(line);
    if (bullet || numbered) {
      flush();
      const tag = bullet ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== tag) {
        list = el(tag, root);
        if (numbered && numbered[1] !== "1") list.start = Number(numbered[1]);
      }
      inline(el("li", list), bullet ? bullet[1] : numbered[2]);
      continue;
    }
    if (!line.trim()) {
      flush();
      list = null;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      flush();
      list = null;
      inline(el(`h${Math.min(heading[1].length + 2, 6)}`, root), heading[2]);
      continue;
    }
    list = null;
    paragraph.push(line);
  }
  flush();
  return root;
}
