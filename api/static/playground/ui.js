// Page-wide helpers: building elements (text only, never HTML), the error banner, notices and the
// busy indicator.

import { ApiError } from "./api.js";

export const $ = (selector) => document.querySelector(selector);

/** An element with attributes and children; strings become text nodes, so API data is never parsed as HTML. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function formatJson(value) {
  return JSON.stringify(value, null, 2);
}

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

// Errors ------------------------------------------------------------------------------------------

/** A mistake in the form found before anything is sent, named like the server names fields. */
export class FormError extends Error {
  constructor(field, message) {
    super(message);
    this.name = "FormError";
    this.field = field;
  }
}

let fieldMarker = () => {};

/** Who marks an editor field as wrong: the editor registers itself here. */
export function onFieldError(marker) {
  fieldMarker = marker;
}

/** Show what went wrong: the server's message, its code and status, and the field it names. */
export function showError(err, action = "Request failed") {
  if (err && err.name === "AbortError") return;
  const banner = $("#error");
  const status = err instanceof ApiError && err.status ? ` (${err.status}${err.code ? " " + err.code : ""})` : "";
  $("#error-title").textContent = `${action}${status}:`;
  $("#error-message").textContent = err && err.message ? err.message : String(err);
  const field = err && err.field ? err.field : null; // an ApiError's, or a FormError's
  const fieldLine = $("#error-field");
  fieldLine.hidden = !field;
  fieldLine.textContent = field ? `Field: ${field}` : "";
  banner.hidden = false;
  if (field) fieldMarker(field, err.message);
  if (err instanceof ApiError && err.status === 401) $("#api-key").focus();
}

export function clearError() {
  $("#error").hidden = true;
  fieldMarker(null);
}

let noticeTimer = null;

export function notify(text) {
  const notice = $("#notice");
  notice.textContent = text;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (notice.hidden = true), 6000);
}

// Busy indicator ----------------------------------------------------------------------------------

let pending = 0;

function setBusy(delta) {
  pending += delta;
  $("#busy").hidden = pending === 0;
  document.body.setAttribute("aria-busy", pending > 0 ? "true" : "false");
}

/**
 * Run `work` with the busy indicator shown and `button` disabled; an error is shown, not thrown.
 * Returns what `work` returned, or undefined after an error.
 */
export async function task(action, work, button = null) {
  clearError();
  setBusy(1);
  if (button) button.disabled = true;
  try {
    return await work();
  } catch (err) {
    showError(err, action);
    return undefined;
  } finally {
    setBusy(-1);
    if (button) button.disabled = false;
  }
}
