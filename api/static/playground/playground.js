// The playground page: the API key, the persona list, the editor and its actions, and the tabs.

import { Client } from "./api.js";
import { cardsPart } from "./cards.js";
import { FormError, NEW_DRAFT, changeNote, fillForm, markField, readForm, setReadOnly, snapshot } from "./editor.js";
import { insightsPanel } from "./insights.js";
import { memoryPanel } from "./memory.js";
import { chatPanel } from "./chat.js";
import { comparePanel, renderPanel, testsPanel, versionsPanel } from "./panels.js";
import { $, clearError, el, notify, onFieldError, showError, task } from "./ui.js";

// The key lives in this tab's sessionStorage only: never localStorage, never a URL.
const KEY_STORAGE = "persona-runtime.playground.key";

const state = {
  personas: [],
  current: null, // the saved persona in the editor, or null for a new draft
  loadedSnapshot: "", // the form as it was loaded, to tell unsaved edits
};

const client = new Client(() => sessionStorage.getItem(KEY_STORAGE) || "");

const dirty = () => snapshot() !== state.loadedSnapshot;

const ctx = {
  client,
  state,
  /**
   * What to run the tools on: the saved persona when the editor holds it unchanged, else the
   * editor's content as a draft. Null (with the mistake shown) when the form cannot be read.
   */
  choice({ forceDraft = false } = {}) {
    if (state.current && !forceDraft && !dirty()) {
      return { persona_id: state.current.id, label: `${state.current.name} v${state.current.version} (saved)` };
    }
    try {
      const persona = readForm();
      return { persona, label: `${persona.name || "untitled"} (editor draft)` };
    } catch (err) {
      if (!(err instanceof FormError)) throw err;
      showError(err, "Check the form");
      return null;
    }
  },
  loaded: (persona) => load(persona),
  /** Put a saved persona in the editor (after a confirm when it holds unsaved edits); false when it is not. */
  open: (id) => pick(id),
  /** The chat's kept conversation changed (null: there is none). */
  onConversation: (conversation) => render.conversation(conversation),
};

onFieldError(markField);

const render = renderPanel(ctx, { onRendered: (result, choice) => showPromptTokens(result, choice) });
const chat = chatPanel(ctx);
const compare = comparePanel(ctx);
const tests = testsPanel(ctx);
const versions = versionsPanel(ctx, { onVersions: (list) => compare.options(list) });
const memory = memoryPanel(ctx);
const insights = insightsPanel(ctx);

cardsPart();

// Key ---------------------------------------------------------------------------------------------

$("#key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("#api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  memory.reset();
  chat.reset();
  if (await refreshList() && $("#tab-memory").getAttribute("aria-selected") === "true") await memory.load();
});

$("#key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  $("#api-key").value = "";
  state.personas = [];
  showList();
  memory.reset();
  memory.personas([]);
  chat.reset();
  insights.reset();
  notify("The key is forgotten by this tab.");
});

// Persona list --------------------------------------------------------------------------------------

function showList() {
  const list = $("#persona-list");
  if (!state.personas.length) {
    list.replaceChildren(el("li", { class: "empty" }, sessionStorage.getItem(KEY_STORAGE) ? "No personas yet." : "Enter an API key to see your personas."));
    return;
  }
  list.replaceChildren(
    ...state.personas.map((p) =>
      el(
        "li",
        {},
        el(
          "button",
          {
            type: "button",
            class: "persona",
            "data-persona-id": p.id,
            "aria-current": state.current && state.current.id === p.id ? "true" : null,
            onclick: () => pick(p.id),
          },
          el("span", { class: "persona-name" }, p.name),
          el("span", { class: "meta" }, `v${p.version} · ${p.visibility}${p.is_default ? " · default" : ""}`),
        ),
      ),
    ),
  );
}

async function refreshList() {
  const body = await task("Could not list the personas", () => client.listPersonas());
  if (!body) return false;
  state.personas = body.personas;
  showList();
  memory.personas(state.personas);
  return true;
}

async function pick(id) {
  if (dirty() && !confirm("Discard the unsaved changes in the editor?")) return false;
  const body = await task("Could not load the persona", () => client.getPersona(id));
  if (!body) return false;
  await load(body.persona);
  return true;
}

// Editor --------------------------------------------------------------------------------------------

/**
 * Put a saved persona (or null: a new draft) in the editor and refresh the panels that follow it. `same`: it
 * is what the editor held, just saved, so the chat's turns stay.
 */
async function load(persona, draft = NEW_DRAFT, { same = false } = {}) {
  state.current = persona;
  const editable = !persona || persona.system_prompt !== null;
  fillForm(persona || draft);
  setReadOnly(!editable);
  state.loadedSnapshot = snapshot();
  $("#editor-readonly").hidden = editable;
  $("#save").disabled = !editable;
  $("#editor-count").disabled = !editable;
  $("#delete").disabled = !persona || !editable;
  $("#export").disabled = !persona || !editable;
  for (const hint of document.querySelectorAll(".needs-saved")) hint.hidden = Boolean(persona);
  $("#tests-run").disabled = !persona || !editable;
  $("#test-add").hidden = !persona || !editable;
  render.reset();
  $("#editor-context").textContent = NOT_COUNTED;
  showAvatar(persona);
  if (persona && editable) countQuietly(persona);
  chat.follow(persona, { same });
  insights.follow(persona);
  compare.clear();
  updateStatus();
  showList();
  if (persona && editable) {
    await Promise.all([versions.load(), tests.load()]);
  } else {
    $("#versions-list").replaceChildren();
    $("#tests-list").replaceChildren();
    $("#tests-summary").textContent = "";
    compare.options([]);
  }
}

// Prompt tokens and avatar ------------------------------------------------------------------------------

const NOT_COUNTED = "Prompt tokens and the model’s window show after a render.";
const fmt = (n) => Number(n).toLocaleString("en");

/** The editor's line: the rendered system prompt's tokens against the model's window (contract section 13). */
function showPromptTokens(result, choice) {
  const { context } = result;
  const tokens = (kind) => context.sections.filter((s) => s.kind === kind).reduce((sum, s) => sum + s.tokens, 0);
  const lore = tokens("lore");
  const line = $("#editor-context");
  line.textContent =
    `Prompt: ${fmt(tokens("system"))} tokens${lore ? ` (+ ${fmt(lore)} of lore)` : ""} · ` +
    `${result.model} window ${fmt(context.window)} (${fmt(context.budget)} for the request) · ${context.tokenizer}`;
  line.title = choice.persona_id ? "Counted on the saved persona" : "Counted on the editor's draft";
  line.dataset.systemTokens = String(tokens("system"));
  line.dataset.window = String(context.window);
}

$("#editor-count").addEventListener("click", async () => {
  const choice = ctx.choice();
  if (!choice) return;
  const message = $("#render-message").value || "Hello!";
  const result = await task(
    "Could not count the tokens",
    () => (choice.persona_id ? client.render(choice.persona_id, message) : client.renderDraft(choice.persona, message)),
    $("#editor-count"),
  );
  if (result) showPromptTokens(result, choice);
});

/** Count a saved persona's prompt as soon as it is loaded; a failure only leaves the line as it was. */
async function countQuietly(persona) {
  try {
    const result = await client.render(persona.id, $("#render-message").value || "Hello!");
    if (state.current && state.current.id === persona.id && !dirty()) {
      showPromptTokens(result, { persona_id: persona.id });
    }
  } catch {
    // Render refuses what saving would have refused: the editor's own errors say more.
  }
}

let avatarUrl = null;

/** The persona's avatar (GET /{id}/avatar, with the key), or its initial where it has none. */
async function showAvatar(persona) {
  const img = $("#editor-avatar");
  const placeholder = $("#editor-avatar-placeholder");
  const fallback = () => {
    img.hidden = true;
    img.removeAttribute("src");
    placeholder.hidden = false;
  };
  if (avatarUrl) URL.revokeObjectURL(avatarUrl);
  avatarUrl = null;
  placeholder.textContent = persona && persona.name ? persona.name.trim().charAt(0).toUpperCase() : "?";
  fallback();
  if (!persona) return;
  let blob;
  try {
    blob = await client.avatar(persona.id);
  } catch {
    return; // 404: no avatar yet
  }
  if (!state.current || state.current.id !== persona.id) return;
  avatarUrl = URL.createObjectURL(blob);
  img.onerror = fallback; // not an image the browser can show
  img.onload = () => {
    img.hidden = false;
    placeholder.hidden = true;
  };
  img.alt = `Avatar of ${persona.name}`;
  img.src = avatarUrl;
}

function updateStatus() {
  const persona = state.current;
  $("#editor-title").textContent = persona ? persona.name : "New draft";
  const saved = persona ? `saved · version ${persona.version} · ${persona.visibility}` : "not saved yet";
  $("#editor-status").textContent = dirty() ? `${saved} · unsaved changes` : saved;
  $("#editor-status").classList.toggle("dirty", dirty());
}

$("#persona-form").addEventListener("input", updateStatus);

$("#persona-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  let body;
  try {
    body = readForm();
  } catch (err) {
    if (err instanceof FormError) return showError(err, "Check the form");
    throw err;
  }
  const note = changeNote();
  if (note) body.change_note = note;
  const current = state.current;
  const saved = await task(
    "Could not save",
    () => (current ? client.updatePersona(current.id, body) : client.createPersona(body)),
    $("#save"),
  );
  if (!saved) return;
  notify(saved.message || `Saved as version ${saved.persona.version}.`);
  await load(saved.persona, NEW_DRAFT, { same: true });
  await refreshList();
});

$("#revert").addEventListener("click", () => load(state.current));

$("#new-draft").addEventListener("click", () => {
  if (dirty() && !confirm("Discard the unsaved changes in the editor?")) return;
  load(null);
});

$("#copy-draft").addEventListener("click", () => {
  let copy;
  try {
    copy = readForm();
  } catch (err) {
    return showError(err, "Check the form");
  }
  copy.name = copy.name ? `${copy.name} (copy)` : "";
  load(null, copy).then(() => {
    // A copy is an unsaved edit until it is saved.
    state.loadedSnapshot = "";
    updateStatus();
  });
});

$("#delete").addEventListener("click", async () => {
  const persona = state.current;
  if (!persona || !confirm(`Delete ${persona.name}? Its name becomes free for another persona.`)) return;
  const done = await task("Could not delete", () => client.deletePersona(persona.id), $("#delete"));
  if (!done) return;
  notify(done.message || `${persona.name} deleted.`);
  await load(null);
  await refreshList();
});

// Import / export -------------------------------------------------------------------------------------

$("#export").addEventListener("click", async () => {
  const persona = state.current;
  if (!persona) return;
  const format = $("#export-format").value;
  const file = await task("Could not export", () => client.exportPersona(persona.id, format), $("#export"));
  if (!file) return;
  const url = URL.createObjectURL(file.blob);
  const link = el("a", { href: url, download: file.filename || `${persona.name}.${format}.json` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
});

$("#import").addEventListener("click", async () => {
  const file = $("#import-file").files[0];
  if (!file) return showError(new Error("Choose a JSON or PNG file first."), "Nothing to import");
  const body = await task("Could not import", () => client.importFile(file), $("#import"));
  if (!body) return;
  $("#import-file").value = "";
  notify(body.message || `${body.persona.name} imported.`);
  await refreshList();
  await load(body.persona);
});

// Tabs ------------------------------------------------------------------------------------------------

const tabs = Array.from(document.querySelectorAll('[role="tab"]'));

function selectTab(tab) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(`#${other.getAttribute("aria-controls")}`).hidden = !selected;
  }
  // The memories are the key's own, whatever the editor holds: read afresh each time the panel opens.
  if (tab.id === "tab-memory" && sessionStorage.getItem(KEY_STORAGE)) memory.load();
  if (tab.id === "tab-insights") insights.opened();
}

tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    const next = tabs[(i + step + tabs.length) % tabs.length];
    selectTab(next);
    next.focus();
  });
});

$("#error-close").addEventListener("click", clearError);

// Start -----------------------------------------------------------------------------------------------

window.addEventListener("beforeunload", (event) => {
  if (dirty()) event.preventDefault();
});

selectTab(tabs[0]);
load(null);
const savedKey = sessionStorage.getItem(KEY_STORAGE);
if (savedKey) {
  $("#api-key").value = savedKey;
  refreshList();
}
