// The persona editor: the form <-> a persona body, and field errors shown beside their inputs.

import { cardControl, fillCards, readCards } from "./cards.js";
import { $, FormError, formatJson } from "./ui.js";

export { FormError };

const TEXT_FIELDS = ["name", "description", "system_prompt"];
const JSON_FIELDS = { personality_traits: "object", capabilities: "object", tools: "list" };
const MODEL_TEXT = ["provider", "model"];
const MODEL_NUMBERS = { temperature: parseFloat, top_p: parseFloat, max_tokens: Number, context_window: Number };
// model_settings.memory (contract section 15), and what the server assumes for a blank number.
const MEMORY_TOGGLES = ["enabled", "extract"];
const MEMORY_NUMBERS = { token_budget: 512, max_items: 100 };

export const NEW_DRAFT = {
  name: "",
  description: "",
  system_prompt: "You are {{persona_name}}, talking with {{user_name}}. Today is {{date}}.",
  personality_traits: {},
  capabilities: {},
  model_settings: { provider: null, model: null, temperature: null, top_p: null, max_tokens: null, context_window: null, fallbacks: [] },
  tools: [],
  visibility: "private",
  scenario: null,
  greetings: [],
  example_messages: [],
  lorebook: null,
};

// The model settings the form has no input for (prompt_cache, summaries, vision): sent back as loaded.
let loadedSettings = {};

const input = (field) => $(`#f-${field}`);

/** Fill the form from a persona (saved, a version or a new draft). */
export function fillForm(persona) {
  for (const field of TEXT_FIELDS) input(field).value = persona[field] ?? "";
  for (const field of Object.keys(JSON_FIELDS)) input(field).value = formatJson(persona[field] ?? (JSON_FIELDS[field] === "list" ? [] : {}));
  const settings = persona.model_settings || {};
  for (const field of [...MODEL_TEXT, ...Object.keys(MODEL_NUMBERS)]) input(field).value = settings[field] ?? "";
  input("fallbacks").value = formatJson(settings.fallbacks || []);
  loadedSettings = settings;
  const memory = settings.memory || {};
  for (const field of MEMORY_TOGGLES) input(`memory-${field}`).checked = Boolean(memory[field]);
  for (const [field, fallback] of Object.entries(MEMORY_NUMBERS)) input(`memory-${field}`).value = memory[field] ?? fallback;
  input("scenario").value = persona.scenario ?? "";
  fillCards(persona);
  input("visibility").value = persona.visibility || "private";
  input("change_note").value = "";
  markField(null);
}

function parseJson(field, kind) {
  const text = input(field).value.trim();
  if (text === "") return kind === "list" ? [] : {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new FormError(field, `${field} is not valid JSON: ${err.message}`);
  }
  const ok = kind === "list" ? Array.isArray(value) : value !== null && typeof value === "object" && !Array.isArray(value);
  if (!ok) throw new FormError(field, `${field} must be a JSON ${kind === "list" ? "list [...]" : "object {...}"}.`);
  return value;
}

/** The persona body the form describes (every writable field but is_default); throws FormError. */
export function readForm() {
  const draft = {};
  for (const field of TEXT_FIELDS) draft[field] = input(field).value;
  for (const [field, kind] of Object.entries(JSON_FIELDS)) draft[field] = parseJson(field, kind);
  const settings = { ...loadedSettings };
  for (const field of MODEL_TEXT) settings[field] = input(field).value.trim() || null;
  for (const [field, parse] of Object.entries(MODEL_NUMBERS)) {
    const text = input(field).value.trim();
    if (text === "") {
      settings[field] = null;
      continue;
    }
    const value = parse(text);
    if (!Number.isFinite(value)) throw new FormError(`model_settings.${field}`, `model_settings.${field} must be a number.`);
    settings[field] = value;
  }
  const fallbacks = input("fallbacks").value.trim();
  try {
    settings.fallbacks = fallbacks === "" ? [] : JSON.parse(fallbacks);
  } catch (err) {
    throw new FormError("model_settings.fallbacks", `model_settings.fallbacks is not valid JSON: ${err.message}`);
  }
  settings.memory = readMemory(settings.memory);
  draft.model_settings = settings;
  draft.visibility = input("visibility").value;
  draft.scenario = input("scenario").value.trim() ? input("scenario").value : null;
  return { ...draft, ...readCards() };
}

/** model_settings.memory from its inputs; fields the form does not show are kept as loaded. */
function readMemory(loaded) {
  const memory = { ...(loaded || {}) };
  for (const field of MEMORY_TOGGLES) memory[field] = input(`memory-${field}`).checked;
  for (const [field, fallback] of Object.entries(MEMORY_NUMBERS)) {
    const text = input(`memory-${field}`).value.trim();
    const value = text === "" ? fallback : Number(text);
    if (!Number.isInteger(value)) {
      throw new FormError(`model_settings.memory.${field}`, `model_settings.memory.${field} must be a whole number.`);
    }
    memory[field] = value;
  }
  return memory;
}

export function changeNote() {
  return input("change_note").value.trim() || null;
}

/** Everything typed in the form, to tell whether it differs from what was loaded. */
export function snapshot() {
  const value = (e) => (e.type === "checkbox" ? e.checked : e.value);
  return JSON.stringify(Array.from($("#persona-form").elements, (e) => (e.name && e.name !== "change_note" ? value(e) : null)));
}

export function setReadOnly(readOnly) {
  for (const element of $("#persona-form").elements) {
    // Buttons act on the whole persona (Save, Delete: the page decides); those marked data-edit add or remove rows.
    if (element.tagName !== "BUTTON" || element.hasAttribute("data-edit")) element.disabled = readOnly;
  }
}

/**
 * Mark the input of a field named by the server (`system_prompt`, `persona.system_prompt`,
 * `candidates[1].persona.model_settings.temperature`...) with its message; null clears every mark.
 */
export function markField(field, message = "") {
  for (const node of document.querySelectorAll("#persona-form .field-error")) {
    node.hidden = true;
    node.textContent = "";
  }
  for (const node of document.querySelectorAll("#persona-form [aria-invalid]")) node.removeAttribute("aria-invalid");
  if (!field) return;
  const path = field
    .replace(/^(candidates\[\d+\]\.)?persona\./, "")
    .split(/[.[\]]+/)
    .filter(Boolean);
  let name = path[0] === "model_settings" && path[1] ? path[1] : path[0];
  if (name === "memory" && path[0] === "model_settings") name = path[2] ? `memory-${path[2]}` : "memory-enabled";
  const target = cardControl(path) || input(name);
  if (!target) return;
  target.setAttribute("aria-invalid", "true");
  const note = target.closest(".field") && target.closest(".field").querySelector(".field-error");
  if (!note) return;
  if (note.id) target.setAttribute("aria-describedby", note.id);
  note.textContent = message;
  note.hidden = false;
}
