// The public API (docs/reference/api.md): Ollama under /api/ollama, bridge status, Ollama-shaped errors.
import { ndjsonLines } from "./ndjson.js";

export class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** A user-facing explanation of an API error: what happened and what to do. */
export function explain(error) {
  if (error.name === "AbortError") return "Stopped.";
  if (!(error instanceof ApiError)) return "Cannot reach the service. Check your connection and try again.";
  const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
  switch (error.status) {
    case 401:
      return "Your session has expired. Sign in again.";
    case 403:
      return `Not allowed: ${error.message}`;
    case 404:
      return `${error.message}. Pick another model.`;
    case 429:
      return `Too many requests at once. Slow down.${wait || " Try again in a few seconds."}`;
    case 502:
      return `Your bridge lost its connection to the model (${error.message}). Check Ollama on your computer.`;
    case 503:
      return `No bridge is ready. Start the bridge (and Ollama) on your computer.${wait}`;
    case 504:
      return "The model did not answer in time. It may still be loading; try again.";
    default:
      return `Error ${error.status}: ${error.message}`;
  }
}

export class Api {
  /** @param {string} base API origin ("" for the app's own origin) @param {() => Promise<string>} token */
  constructor(base, token) {
    this.base = base.replace(/\/$/, "");
    this.token = token;
  }

  async request(path, init = {}) {
    const headers = { ...(init.headers || {}), Authorization: `Bearer ${await this.token()}` };
    const response = await fetch(this.base + path, { ...init, headers, cache: "no-store" });
    if (!response.ok) {
      let message = response.statusText || "request failed";
      try {
        const body = await response.json();
        if (body && typeof body.error === "string") message = body.error;
      } catch {
        // not JSON: keep the status text
      }
      const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      throw new ApiError(response.status, message, Number.isFinite(retry) ? retry : null);
    }
    return response;
  }

  async models() {
    const body = await (await this.request("/api/ollama/api/tags")).json();
    return (body.models || []).map((m) => m.name || m.model).filter(Boolean);
  }

  async bridges() {
    const body = await (await this.request("/api/bridge/status")).json();
    return body.bridges || [];
  }

  /** Stream a chat answer; onDelta(text) per token. Resolves with the final (done) object. */
  async chat(model, messages, onDelta, signal) {
    const response = await this.request("/api/ollama/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages, stream: true }),
      signal,
    });
    let last = null;
    for await (const part of ndjsonLines(response.body)) {
      if (part.error) throw new ApiError(502, part.error);
      const text = part.message && part.message.content;
      if (text) onDelta(text);
      last = part;
      if (part.done) break;
    }
    return last;
  }
}
