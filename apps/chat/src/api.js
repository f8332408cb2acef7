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

  /** Model details from /api/show: family, parameter size, quantisation, context length, vision. */
  async show(model) {
    const response = await this.request("/api/ollama/api/show", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model }),
    });
    return modelDetails(await response.json());
  }

  /**
   * Stream a chat answer; onDelta(text) per token. `options` are Ollama's (temperature, num_ctx,
   * num_predict). Resolves with the final (done) object plus client-side timings.
   */
  async chat(model, messages, onDelta, signal, options = {}) {
    const started = performance.now();
    const response = await this.request("/api/ollama/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages, stream: true, ...(Object.keys(options).length ? { options } : {}) }),
      signal,
    });
    let last = null;
    let firstAt = null;
    let pieces = 0;
    for await (const part of ndjsonLines(response.body)) {
      if (part.error) throw new ApiError(502, part.error);
      const text = part.message && part.message.content;
      if (text) {
        if (firstAt === null) firstAt = performance.now();
        pieces += 1;
        onDelta(text);
      }
      last = part;
      if (part.done) break;
    }
    return { ...(last || {}), stats: answerStats(last || {}, started, firstAt, performance.now(), pieces) };
  }

  // --- API keys (docs/web-app.md#api-keys): managed with the signed-in user's token only ---

  async listKeys() {
    const body = await (await this.request("/api/keys")).json();
    return body.keys || [];
  }

  async createKey(name, scopes) {
    const response = await this.request("/api/keys", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name, scopes }),
    });
    return response.json();
  }

  async revokeKey(id) {
    await this.request(`/api/keys/${encodeURIComponent(id)}`, { method: "DELETE" });
  }
}

const VISION_FAMILIES = new Set(["clip", "mllama", "llava", "gemma3", "qwen2vl", "qwen25vl", "mistral3"]);

/** The parts of an /api/show answer the app shows; missing fields are null. */
export function modelDetails(show) {
  const details = show.details || {};
  const info = show.model_info || {};
  const contextKey = Object.keys(info).find((k) => k.endsWith(".context_length"));
  const families = details.families || (details.family ? [details.family] : []);
  const capabilities = Array.isArray(show.capabilities) ? show.capabilities : null;
  return {
    family: details.family || null,
    parameterSize: details.parameter_size || null,
    quantization: details.quantization_level || null,
    context: contextKey ? info[contextKey] : null,
    capabilities,
    // Ollama >= 0.6 lists capabilities; older ones show a vision model by its projector family.
    vision: capabilities ? capabilities.includes("vision") : families.some((f) => VISION_FAMILIES.has(f)),
  };
}

/**
 * Tokens per second and time to first token. Ollama's final chunk carries eval_count and eval_duration
 * (ns): the model's own speed. Without them (an OpenAI-compatible backend), the client measures: pieces
 * of text received after the first one over the time they took.
 */
export function answerStats(final, started, firstAt, endedAt, pieces) {
  const ttft = firstAt === null ? null : (firstAt - started) / 1000;
  if (final.eval_count && final.eval_duration) {
    return { tokensPerSecond: final.eval_count / (final.eval_duration / 1e9), ttft, tokens: final.eval_count, source: "model" };
  }
  const seconds = firstAt === null ? 0 : (endedAt - firstAt) / 1000;
  const tokens = final.eval_count || pieces;
  return { tokensPerSecond: seconds > 0 && tokens > 1 ? (tokens - 1) / seconds : null, ttft, tokens, source: "client" };
}
