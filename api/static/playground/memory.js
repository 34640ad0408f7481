// The Memory panel (contract section 15): what personas remember about the user with the key, each memory
// edited in place or deleted, new ones added, and the user's own switch. Render's account of which memories
// a turn would use is written here too, joined with the memories for their text.

import { $, el, formatTime, notify, showError, task } from "./ui.js";

const MAX_CHARS = 1000; // a memory's content: 1 to 1,000 characters
const PAGE = 200; // the most GET /memories answers at once

const count = (n) => Number(n).toLocaleString("en");
const SOURCES = { user: "told by you", extracted: "learned from a chat" };
const REASONS = {
  fits: "all of them fit the budget",
  relevant: "among the most relevant to the latest messages",
  newest: "among the newest",
  budget: "over the memory budget",
};

/**
 * Run `work` as a task whose failure is shown in the banner and also beside `control` when it names
 * `content` (the 400 for a memory that is too long or blank).
 */
async function attempt(action, work, button, control, note) {
  let failure = null;
  const result = await task(
    action,
    async () => {
      try {
        return await work();
      } catch (err) {
        failure = err;
        throw err;
      }
    },
    button,
  );
  mark(control, note, failure && failure.field === "content" ? failure.message : null);
  return result;
}

function mark(control, note, message) {
  if (message) {
    control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-describedby", note.id);
  } else {
    control.removeAttribute("aria-invalid");
  }
  note.textContent = message || "";
  note.hidden = !message;
}

/** The caller's memories by id, read page by page until every one of `ids` is found (or none are left). */
async function memoriesById(client, ids) {
  const found = new Map();
  for (let offset = 0; ; offset += PAGE) {
    const body = await client.memories({ limit: PAGE, offset });
    for (const memory of body.memories) found.set(memory.id, memory);
    if (ids.every((id) => found.has(id)) || offset + PAGE >= body.total) return found;
  }
}

/**
 * Render's `memories`: each memory of the caller's the turn would consider, IN or OUT with its reason, and
 * its text. `persona` is what was rendered; with nothing considered, the line says why that may be.
 */
export async function showMemoryDecisions(client, decisions, persona, { draft = false } = {}) {
  const list = $("#render-memories");
  const settings = (persona && persona.model_settings && persona.model_settings.memory) || {};
  // A draft is rendered as a persona of its own, never saved: no memory is kept for it.
  const note =
    draft && settings.enabled
      ? el("li", { class: "meta", "data-testid": "memory-draft-note" }, "An unsaved draft has no memories of its own: only yours for all personas are considered. Save it to see the persona’s.")
      : null;
  if (!decisions.length) {
    const why = settings.enabled
      ? "No memory of yours was considered: you have none for this persona or for all personas, or your memory switch is off."
      : "This persona does not remember its users (Memory in its model settings is off).";
    list.replaceChildren(el("li", { class: "meta" }, why), note || "");
    return;
  }
  let memories = new Map();
  try {
    memories = await memoriesById(client, decisions.map((d) => d.id));
  } catch (err) {
    showError(err, "Could not read your memories for the render");
  }
  list.replaceChildren(
    note || "",
    ...decisions.map((d) => {
      const memory = memories.get(d.id);
      return el(
        "li",
        { class: d.used ? "activated" : "skipped", "data-memory-id": d.id, "data-testid": "memory-decision" },
        el("span", { class: "badge", "data-testid": "memory-outcome" }, d.used ? "IN" : "OUT"),
        " ",
        el("span", { class: "memory-text" }, memory ? `“${memory.content}”` : d.id),
        " ",
        el("span", { class: "reason", "data-testid": "memory-reason", "data-reason": d.reason }, d.reason),
        el("span", { class: "meta" }, ` (${REASONS[d.reason] || d.reason})`),
        el("span", { class: "meta" }, ` · ${d.persona_id ? "this persona" : "all personas"} · ${count(d.tokens)} tokens`),
      );
    }),
  );
}

export function memoryPanel(ctx) {
  const list = $("#memory-list");
  const filter = $("#memory-filter");
  const target = $("#memory-for");
  const content = $("#memory-content");
  const toggle = $("#memory-switch");
  let switchFlips = 0; // how many times the user flipped the switch
  let shown = []; // the memories on screen
  let total = 0;

  const personaName = (id) => {
    if (!id) return "all personas";
    const persona = ctx.state.personas.find((p) => p.id === id);
    return persona ? persona.name : `persona ${id}`;
  };

  /** The persona pickers follow the persona list; a choice is kept while its persona is still listed. */
  function personas(listed) {
    for (const [select, first] of [
      [filter, "Every memory"],
      [target, "All personas"],
    ]) {
      const value = select.value;
      select.replaceChildren(el("option", { value: "" }, first), ...listed.map((p) => el("option", { value: p.id }, p.name)));
      select.value = listed.some((p) => p.id === value) ? value : "";
    }
    describeClear();
  }

  function describeClear() {
    $("#memory-clear").textContent = filter.value ? `Delete all for ${personaName(filter.value)}` : "Delete all";
    $("#memory-clear").disabled = shown.length === 0;
  }

  function showSwitch(enabled) {
    toggle.checked = enabled;
    $("#memory-switch-status").textContent = enabled
      ? "On: a persona whose memory is on reads your memories for it and for all personas."
      : "Off: no persona reads your memories or learns new ones. They are kept until you delete them.";
  }

  function row(memory, n) {
    const text = el("p", { class: "memory-content", "data-testid": "memory-content" }, memory.content);
    const meta = el(
      "p",
      { class: "meta", "data-testid": "memory-meta" },
      `${memory.persona_id ? personaName(memory.persona_id) : "All personas"} · ${SOURCES[memory.source] || memory.source} · ` +
        `updated ${formatTime(memory.updated_at)}`,
    );
    const item = el("li", { class: "memory", "data-memory-id": memory.id, "data-source": memory.source, "data-testid": "memory" });
    const actions = el(
      "div",
      { class: "actions" },
      el("button", { type: "button", "aria-label": `Edit memory ${n}`, onclick: () => edit() }, "Edit"),
      el("button", { type: "button", class: "danger", "aria-label": `Delete memory ${n}`, onclick: () => remove(memory) }, "Delete"),
    );

    function edit() {
      const box = el("textarea", { rows: 3, "aria-label": `Memory ${n}` });
      box.value = memory.content;
      const note = el("p", { class: "field-error", id: `memory-${n}-error`, hidden: true });
      const update = el("button", { type: "button", class: "primary" }, "Update");
      update.setAttribute("aria-label", `Update memory ${n}`);
      update.addEventListener("click", async () => {
        const done = await attempt(
          "Could not change the memory",
          () => ctx.client.rewriteMemory(memory.id, box.value),
          update,
          box,
          note,
        );
        if (!done) return;
        notify("Memory updated.");
        await load();
      });
      const cancel = el("button", { type: "button", class: "quiet", onclick: () => show() }, "Cancel");
      item.classList.add("editing");
      item.replaceChildren(box, note, meta, el("div", { class: "actions" }, update, cancel));
      box.focus();
    }

    item.append(text, meta, actions);
    return item;
  }

  function show() {
    const where = filter.value ? ` for ${personaName(filter.value)}` : "";
    $("#memory-summary").textContent = total
      ? `${count(total)} memor${total === 1 ? "y" : "ies"}${where}${total > shown.length ? `, the newest ${count(shown.length)} shown` : ""}`
      : `No memories${where} yet.`;
    list.replaceChildren(...shown.map((memory, i) => row(memory, i + 1)));
    describeClear();
  }

  /** The list for the filter and the switch, from the server. */
  async function load() {
    const flips = switchFlips;
    const body = await task("Could not list your memories", () =>
      Promise.all([ctx.client.memories({ personaId: filter.value || null }), ctx.client.memorySwitch()]),
    );
    if (!body) return;
    const [page, setting] = body;
    shown = page.memories;
    total = page.total;
    show();
    // A switch flipped while this was read is newer than what was read.
    if (flips === switchFlips) showSwitch(setting.enabled);
  }

  async function remove(memory) {
    const done = await task("Could not delete the memory", () => ctx.client.deleteMemory(memory.id));
    if (!done) return;
    notify("Memory deleted.");
    await load();
  }

  filter.addEventListener("change", () => {
    target.value = filter.value; // a memory added now is most likely for the persona looked at
    load();
  });

  $("#memory-clear").addEventListener("click", async () => {
    const personaId = filter.value || null;
    const question = personaId
      ? `Delete every memory ${personaName(personaId)} keeps about you? Those for all personas stay.`
      : "Delete every memory of yours, for every persona? This cannot be undone.";
    if (!confirm(question)) return;
    const done = await task("Could not delete the memories", () => ctx.client.deleteMemories(personaId), $("#memory-clear"));
    if (!done) return;
    notify(`${count(done.deleted)} memor${done.deleted === 1 ? "y" : "ies"} deleted.`);
    await load();
  });

  toggle.addEventListener("change", async () => {
    switchFlips += 1;
    const wanted = toggle.checked;
    const body = await task("Could not change your memory switch", () => ctx.client.setMemorySwitch(wanted), toggle);
    showSwitch(body ? body.enabled : !wanted);
    if (body) notify(body.enabled ? "Memory is on." : "Memory is off.");
  });

  const counter = () => {
    const n = content.value.length;
    $("#memory-count").textContent = `${count(n)} of ${count(MAX_CHARS)} characters`;
    $("#memory-count").classList.toggle("over", n > MAX_CHARS);
  };
  content.addEventListener("input", counter);

  $("#memory-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const added = await attempt(
      "Could not add the memory",
      () => ctx.client.addMemory(content.value, target.value || null),
      $("#memory-add"),
      content,
      $("#memory-content-error"),
    );
    if (!added) return;
    content.value = "";
    counter();
    notify(`Memory added for ${personaName(added.memory.persona_id)}.`);
    await load();
  });

  /** The key changed: forget what the last one saw. */
  function reset() {
    shown = [];
    total = 0;
    list.replaceChildren();
    $("#memory-summary").textContent = "";
    $("#memory-switch-status").textContent = "";
    describeClear();
  }

  reset();
  return { load, personas, reset };
}
