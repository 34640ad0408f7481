// The editor's card parts: greetings, example messages and the lorebook (contract section 14). Each is a
// list of rows inside the persona form, so typing in them marks the editor as changed like any field. A
// lorebook entry keeps the fields the form does not show (id, comment, extensions), so saving loses nothing.

import { $, FormError, el } from "./ui.js";

// What the server assumes for a field left out (personas/models.py): a blank number input means this.
const BOOK_DEFAULTS = { scan_depth: 2, token_budget: 1024, recursive: false };
const ENTRY_DEFAULTS = {
  name: null,
  keys: [],
  secondary_keys: [],
  selective_logic: "and_any",
  content: "",
  enabled: true,
  constant: false,
  case_sensitive: false,
  whole_words: true,
  use_regex: false,
  insertion_order: 100,
  position: "system",
  depth: 4,
  role: "system",
  probability: 100,
  group: null,
  sticky: 0,
  cooldown: 0,
  delay: 0,
};
const TOGGLES = { enabled: "Enabled", constant: "Constant", case_sensitive: "Case sensitive", whole_words: "Whole words", use_regex: "Keys are regexes" };
const ENTRY_NUMBERS = {
  insertion_order: "Insertion order",
  probability: "Probability (%)",
  depth: "Depth",
  sticky: "Sticky (turns)",
  cooldown: "Cooldown (turns)",
  delay: "Delay (turns)",
};
const LOGICS = { and_any: "and any", and_all: "and all", not_any: "not any", not_all: "not all" };
const ROLES = ["system", "user", "assistant"];

let serial = 0;
const loadedEntry = new WeakMap(); // an entry's row -> the entry as loaded, for the fields the form leaves alone

/** Adding or removing a row is an edit: the editor hears it as one. */
function changed() {
  $("#persona-form").dispatchEvent(new Event("input", { bubbles: true }));
}

/** A labelled control (given an id of its own) with the line its error goes in. */
function field(label, control, { hint = null, wide = false } = {}) {
  control.id = `c-${++serial}`;
  return el(
    "div",
    { class: wide ? "field wide" : "field" },
    el("label", { for: control.id }, label),
    control,
    hint ? el("p", { class: "hint" }, hint) : null,
    el("p", { class: "field-error", id: `${control.id}-error`, hidden: true }),
  );
}

function choose(name, options, value) {
  const select = el(
    "select",
    { name, "data-field": name },
    Object.entries(options).map(([v, text]) => el("option", { value: v }, text)),
  );
  select.value = value;
  return select;
}

function text(name, value, attributes = {}) {
  const input = el(attributes.rows ? "textarea" : "input", { name, "data-field": name, ...attributes });
  input.value = value ?? "";
  return input;
}

const list = (items) => Object.fromEntries(items.map((v) => [v, v]));
const splitKeys = (value) => value.split(",").map((k) => k.trim()).filter(Boolean);

function integer(control, path, fallback) {
  const value = control.value.trim();
  if (value === "") return fallback;
  if (!/^-?\d+$/.test(value)) throw new FormError(path, `${path} must be a whole number.`);
  return Number(value);
}

/** Renumber a list's rows after one left: labels and button names say the row's place. */
function renumber(container) {
  Array.from(container.children).forEach((row, i) => row.dispatchEvent(new CustomEvent("renumber", { detail: i + 1 })));
}

function removeButton(label, onclick) {
  return el("button", { type: "button", class: "quiet danger", "data-edit": true, "aria-label": label, onclick }, "Remove");
}

// Greetings ---------------------------------------------------------------------------------------

function greetingRow(value) {
  const area = text("greeting", value, { rows: 3 });
  const box = field("Greeting", area);
  const remove = removeButton("Remove greeting", () => {
    row.remove();
    renumber($("#greetings"));
    changed();
  });
  const row = el("li", { class: "list-row", "data-testid": "greeting" }, box, remove);
  row.addEventListener("renumber", ({ detail: n }) => {
    box.querySelector("label").textContent = n === 1 ? "Greeting 1 (opens a conversation)" : `Greeting ${n}`;
    remove.setAttribute("aria-label", `Remove greeting ${n}`);
  });
  return row;
}

// Example messages ----------------------------------------------------------------------------------

function exampleRow(message) {
  const role = choose("role", list(ROLES), message.role || "user");
  const content = text("content", message.content, { rows: 2 });
  const roleBox = field("Role", role);
  const contentBox = field("Example message", content, { wide: true });
  const remove = removeButton("Remove example message", () => {
    row.remove();
    renumber($("#examples"));
    changed();
  });
  const row = el("li", { class: "list-row example", "data-testid": "example-message" }, roleBox, contentBox, remove);
  row.addEventListener("renumber", ({ detail: n }) => {
    roleBox.querySelector("label").textContent = `Role ${n}`;
    contentBox.querySelector("label").textContent = `Example message ${n}`;
    remove.setAttribute("aria-label", `Remove example message ${n}`);
  });
  return row;
}

// Lorebook entries ------------------------------------------------------------------------------------

function entryTitle(row) {
  const name = row.querySelector('[data-field="name"]').value.trim();
  const keys = splitKeys(row.querySelector('[data-field="keys"]').value);
  const constant = row.querySelector('[data-field="constant"]').checked;
  const enabled = row.querySelector('[data-field="enabled"]').checked;
  const what = name || (keys.length ? keys.join(", ") : constant ? "(constant)" : "(no keys yet)");
  return `${what}${enabled ? "" : " · disabled"}${constant ? " · constant" : ""}`;
}

function entryRow(entry, { open = false } = {}) {
  const e = { ...ENTRY_DEFAULTS, ...entry };
  const toggles = el(
    "div",
    { class: "field checks" },
    Object.entries(TOGGLES).map(([name, label]) => {
      const box = el("input", { type: "checkbox", name, "data-field": name });
      box.checked = Boolean(e[name]);
      return el("label", { class: "check" }, box, label);
    }),
    el("p", { class: "field-error", hidden: true }),
  );
  const number = (name) => field(ENTRY_NUMBERS[name], text(name, String(e[name]), { inputmode: "numeric" }));
  const summary = el("summary", {}, el("span", { class: "entry-number" }), el("span", { class: "entry-title" }));
  const remove = removeButton("Remove entry", () => {
    row.remove();
    renumber($("#lore-entries"));
    changed();
  });
  const row = el(
    "details",
    { class: "lore-entry", "data-testid": "lore-entry", open },
    summary,
    el("div", { class: "pair" }, field("Entry name", text("name", e.name)), field("Group", text("group", e.group))),
    field("Keys (comma separated)", text("keys", e.keys.join(", "), { class: "mono" })),
    el(
      "div",
      { class: "pair" },
      field("Secondary keys (comma separated)", text("secondary_keys", e.secondary_keys.join(", "), { class: "mono" })),
      field("Secondary logic", choose("selective_logic", LOGICS, e.selective_logic)),
    ),
    field("Content", text("content", e.content, { rows: 3 })),
    toggles,
    el(
      "div",
      { class: "grid" },
      field("Position", choose("position", { system: "system", at_depth: "at depth" }, e.position)),
      number("depth"),
      field("Role", choose("role", list(ROLES), e.role)),
      number("insertion_order"),
      number("probability"),
      number("sticky"),
      number("cooldown"),
      number("delay"),
    ),
    el("div", { class: "actions" }, remove),
  );
  loadedEntry.set(row, entry);
  const retitle = () => (summary.querySelector(".entry-title").textContent = entryTitle(row));
  row.addEventListener("input", retitle);
  row.addEventListener("renumber", ({ detail: n }) => {
    summary.querySelector(".entry-number").textContent = `Entry ${n}: `;
    remove.setAttribute("aria-label", `Remove entry ${n}`);
  });
  retitle();
  return row;
}

function readEntry(row, index) {
  const path = (name) => `lorebook.entries[${index}].${name}`;
  const control = (name) => row.querySelector(`[data-field="${name}"]`);
  const optional = (name) => control(name).value.trim() || null;
  const entry = {
    ...loadedEntry.get(row),
    name: optional("name"),
    keys: splitKeys(control("keys").value),
    secondary_keys: splitKeys(control("secondary_keys").value),
    selective_logic: control("selective_logic").value,
    content: control("content").value,
    position: control("position").value,
    role: control("role").value,
    group: optional("group"),
  };
  for (const name of Object.keys(TOGGLES)) entry[name] = control(name).checked;
  for (const name of Object.keys(ENTRY_NUMBERS)) entry[name] = integer(control(name), path(name), ENTRY_DEFAULTS[name]);
  return entry;
}

// The form's part -------------------------------------------------------------------------------------

function fill(container, rows) {
  container.replaceChildren(...rows);
  renumber(container);
}

/** Put a persona's greetings, example messages and lorebook in the form. */
export function fillCards(persona) {
  fill($("#greetings"), (persona.greetings || []).map(greetingRow));
  fill($("#examples"), (persona.example_messages || []).map(exampleRow));
  const book = persona.lorebook || BOOK_DEFAULTS;
  for (const name of ["scan_depth", "token_budget"]) $(`#f-lore-${name}`).value = book[name] ?? BOOK_DEFAULTS[name];
  $("#f-lore-recursive").checked = Boolean(book.recursive);
  fill($("#lore-entries"), ((persona.lorebook && persona.lorebook.entries) || []).map((entry) => entryRow(entry)));
  $("#lore-count").textContent = countText();
}

function countText() {
  const n = $("#lore-entries").children.length;
  return n ? `${n} entr${n === 1 ? "y" : "ies"}` : "no entries";
}

/** The form's greetings, example messages and lorebook (null when it has no entries and default settings). */
export function readCards() {
  const greetings = Array.from($("#greetings").querySelectorAll('[data-field="greeting"]'), (area) => area.value);
  const examples = Array.from($("#examples").children, (row) => ({
    role: row.querySelector('[data-field="role"]').value,
    content: row.querySelector('[data-field="content"]').value,
  }));
  const book = {
    scan_depth: integer($("#f-lore-scan_depth"), "lorebook.scan_depth", BOOK_DEFAULTS.scan_depth),
    token_budget: integer($("#f-lore-token_budget"), "lorebook.token_budget", BOOK_DEFAULTS.token_budget),
    recursive: $("#f-lore-recursive").checked,
    entries: Array.from($("#lore-entries").children, readEntry),
  };
  const plain = !book.entries.length && Object.entries(BOOK_DEFAULTS).every(([name, value]) => book[name] === value);
  return { greetings, example_messages: examples, lorebook: plain ? null : book };
}

/**
 * The control a server field inside the card parts names, split into its parts (`lorebook`, `entries`,
 * `0`, `keys`, `1`), or null. A collapsed lorebook entry it is in is opened.
 */
export function cardControl(parts) {
  const [top, second, third, fourth] = parts;
  if (top === "greetings") {
    const row = $("#greetings").children[Number(second)];
    return row ? row.querySelector("[data-field]") : $("#greeting-add");
  }
  if (top === "example_messages") {
    const row = $("#examples").children[Number(second)];
    return row ? row.querySelector(`[data-field="${third || "content"}"]`) || row.querySelector("[data-field]") : $("#example-add");
  }
  if (top !== "lorebook") return null;
  if (second !== "entries") return $(`#f-lore-${second}`) || $("#lore-add");
  const row = $("#lore-entries").children[Number(third)];
  if (!row) return $("#lore-add");
  row.open = true;
  return row.querySelector(`[data-field="${fourth}"]`) || row.querySelector('[data-field="keys"]');
}

/** Wire the Add buttons and the entry count. */
export function cardsPart() {
  $("#greeting-add").addEventListener("click", () => {
    $("#greetings").append(greetingRow(""));
    renumber($("#greetings"));
    $("#greetings").lastElementChild.querySelector("textarea").focus();
    changed();
  });
  $("#example-add").addEventListener("click", () => {
    const last = $("#examples").lastElementChild;
    // Examples alternate: after the user's line comes the persona's.
    const role = last && last.querySelector('[data-field="role"]').value === "user" ? "assistant" : "user";
    $("#examples").append(exampleRow({ role, content: "" }));
    renumber($("#examples"));
    $("#examples").lastElementChild.querySelector("textarea").focus();
    changed();
  });
  $("#lore-add").addEventListener("click", () => {
    $("#lore-entries").append(entryRow({}, { open: true }));
    renumber($("#lore-entries"));
    $("#lore-entries").lastElementChild.querySelector('[data-field="keys"]').focus();
    changed();
  });
  $("#persona-form").addEventListener("input", () => ($("#lore-count").textContent = countText()));
}
