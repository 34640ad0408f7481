// A small client for the persona-runtime API: every call sends the key as X-API-Key and turns an
// error body ({"success": false, "message", "error": {"code", "field"?}}) into an ApiError.

import { readEvents } from "./sse.js";

const PERSONAS = "/api/v1/chat/personas";
const CHAT = "/api/v1/chat";
const MEMORIES = "/api/v1/memories";

export class ApiError extends Error {
  constructor(status, message, { code = null, field = null, details = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field;
    this.details = details;
  }
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not our JSON (a proxy's page, say): fall back to the status line.
  }
  const error = body && typeof body === "object" ? body.error || {} : {};
  const message = body && body.message ? body.message : `${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, message, { code: error.code, field: error.field, details: error.details });
}

export class Client {
  /** @param {() => string} getKey where the key comes from on each call */
  constructor(getKey) {
    this.getKey = getKey;
  }

  async fetch(method, path, { body, form, accept = "application/json", signal } = {}) {
    const headers = { "X-API-Key": this.getKey(), Accept: accept };
    let payload;
    if (form) {
      payload = form; // the browser writes the multipart boundary
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body: payload, signal, cache: "no-store" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, `The server could not be reached (${err.message}). Is persona-runtime running?`, {
        code: "network_error",
      });
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async json(method, path, options) {
    const response = await this.fetch(method, path, options);
    return response.json();
  }

  /** An SSE stream of events ({event, id, data}); HTTP errors before the stream throw ApiError. */
  async stream(path, body, signal) {
    const response = await this.fetch("POST", path, { body: { ...body, stream: true }, accept: "text/event-stream", signal });
    return readEvents(response);
  }

  // Personas
  listPersonas() {
    return this.json("GET", `${PERSONAS}?limit=200`);
  }
  getPersona(id) {
    return this.json("GET", `${PERSONAS}/${id}`);
  }
  createPersona(draft) {
    return this.json("POST", PERSONAS, { body: draft });
  }
  updatePersona(id, patch) {
    return this.json("PUT", `${PERSONAS}/${id}`, { body: patch });
  }
  deletePersona(id) {
    return this.json("DELETE", `${PERSONAS}/${id}`);
  }
  /** The persona's avatar image as a Blob; an ApiError 404 when it has none. */
  async avatar(id, signal) {
    const response = await this.fetch("GET", `${PERSONAS}/${id}/avatar`, { accept: "image/*", signal });
    return response.blob();
  }

  // Dry runs, previews and comparisons
  render(id, message, conversationId = null) {
    const body = conversationId ? { message, conversation_id: conversationId } : { message };
    return this.json("POST", `${PERSONAS}/${id}/render`, { body });
  }
  renderDraft(draft, message) {
    return this.json("POST", `${PERSONAS}/render`, { body: { persona: draft, message } });
  }
  /** choice is {"persona_id"} or {"persona": draft} */
  preview(choice, message, signal) {
    return this.stream(`${PERSONAS}/preview`, { ...choice, message }, signal);
  }
  compare(candidates, message, signal) {
    return this.stream(`${PERSONAS}/compare`, { candidates, message }, signal);
  }

  // Chat that keeps (and stores) a conversation
  /** turn is {"persona_id", "conversation_id"?}; without a conversation_id a new one starts */
  chat(turn, message, signal) {
    return this.stream(CHAT, { ...turn, message }, signal);
  }
  /** Stop a running answer on whichever instance runs it; what was said is stored (409: it had ended). */
  cancel(messageId) {
    return this.json("POST", `${CHAT}/messages/${messageId}/cancel`);
  }
  /** The caller's stored conversations, newest first. */
  conversations({ limit = 50, offset = 0 } = {}) {
    return this.json("GET", `${CHAT}/conversations?limit=${limit}&offset=${offset}`);
  }
  /** A stored conversation and its messages, oldest first. */
  conversation(id) {
    return this.json("GET", `${CHAT}/conversations/${id}`);
  }
  deleteConversation(id) {
    return this.json("DELETE", `${CHAT}/conversations/${id}`);
  }

  // Versions
  versions(id) {
    return this.json("GET", `${PERSONAS}/${id}/versions?limit=200`);
  }
  version(id, n) {
    return this.json("GET", `${PERSONAS}/${id}/versions/${n}`);
  }
  restore(id, n) {
    return this.json("POST", `${PERSONAS}/${id}/versions/${n}/restore`);
  }

  // Releases (contract section 16): labels, the rollout, and how the persona's turns went
  labels(id) {
    return this.json("GET", `${PERSONAS}/${id}/labels`);
  }
  /** Point `label` at saved version n; `production` pins what chats get. */
  setLabel(id, label, version) {
    return this.json("PUT", `${PERSONAS}/${id}/labels/${encodeURIComponent(label)}`, { body: { version } });
  }
  /** Remove a label; without its label production follows the latest save again. */
  deleteLabel(id, label) {
    return this.json("DELETE", `${PERSONAS}/${id}/labels/${encodeURIComponent(label)}`);
  }
  rollout(id) {
    return this.json("GET", `${PERSONAS}/${id}/rollout`);
  }
  setRollout(id, version, percent) {
    return this.json("PUT", `${PERSONAS}/${id}/rollout`, { body: { version, percent } });
  }
  endRollout(id) {
    return this.json("DELETE", `${PERSONAS}/${id}/rollout`);
  }
  /** The persona's turns from `from` to `to` (RFC 3339 times or UTC days) per version, variant, day or model. */
  stats(id, { from, to, by }) {
    const query = new URLSearchParams({ from, to, by });
    return this.json("GET", `${PERSONAS}/${id}/stats?${query}`);
  }

  // Test suites
  tests(id) {
    return this.json("GET", `${PERSONAS}/${id}/tests`);
  }
  addTest(id, test) {
    return this.json("POST", `${PERSONAS}/${id}/tests`, { body: test });
  }
  deleteTest(id, testId) {
    return this.json("DELETE", `${PERSONAS}/${id}/tests/${testId}`);
  }
  runTests(id) {
    return this.json("POST", `${PERSONAS}/${id}/tests/run`, { body: {} });
  }

  // Memories (contract section 15): the caller's own, and their switch
  /** A page of the caller's memories, newest first; personaId (optional) keeps those for that persona only. */
  memories({ personaId = null, limit = 200, offset = 0 } = {}) {
    const query = new URLSearchParams({ limit: String(limit), offset: String(offset) });
    if (personaId) query.set("persona_id", personaId);
    return this.json("GET", `${MEMORIES}?${query}`);
  }
  /** personaId null: a memory for all of the caller's personas */
  addMemory(content, personaId = null) {
    const body = personaId ? { content, persona_id: personaId } : { content };
    return this.json("POST", MEMORIES, { body });
  }
  rewriteMemory(id, content) {
    return this.json("PATCH", `${MEMORIES}/${id}`, { body: { content } });
  }
  deleteMemory(id) {
    return this.json("DELETE", `${MEMORIES}/${id}`);
  }
  /** Forget the memories for one persona, or (personaId null) every memory of the caller's */
  deleteMemories(personaId = null) {
    return this.json("DELETE", personaId ? `${MEMORIES}?persona_id=${encodeURIComponent(personaId)}` : MEMORIES);
  }
  memorySwitch() {
    return this.json("GET", `${MEMORIES}/settings`);
  }
  setMemorySwitch(enabled) {
    return this.json("PUT", `${MEMORIES}/settings`, { body: { enabled } });
  }

  // Import and export
  async exportPersona(id, format) {
    const response = await this.fetch("GET", `${PERSONAS}/${id}/export?format=${encodeURIComponent(format)}`);
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
    return { blob: await response.blob(), filename: match ? decodeURIComponent(match[1]) : null };
  }
  importFile(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    return this.json("POST", `${PERSONAS}/import`, { form });
  }
}
