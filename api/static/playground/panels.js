// The workbench panels: render, compare, tests and versions (the chat has chat.js). Each takes the page context
// (the API client and what the editor holds) and wires its own part of the page.

import { describeStart } from "./chat.js";
import { showMemoryDecisions } from "./memory.js";
import { $, el, formatJson, formatTime, notify, task } from "./ui.js";

// Render ------------------------------------------------------------------------------------------

const KINDS = {
  system: "System prompt",
  tools: "Tools",
  lore: "Lore",
  memory: "Memory",
  examples: "Example messages",
  summary: "Summary",
  history: "Earlier turns",
  message: "The message",
};
const REASONS = {
  key: "a key matched",
  constant: "constant",
  sticky: "still sticky",
  recursion: "named by activated lore",
  secondary_logic: "secondary keys did not agree",
  probability: "lost its probability roll",
  cooldown: "cooling down",
  delay: "delayed",
  group: "another entry of its group won",
  budget: "over the lore token budget",
};

const count = (n) => Number(n).toLocaleString("en");

/** How the turn's context was spent: the window, each tier's tokens, what was dropped (contract section 13). */
function showContext(context) {
  const dropped = context.dropped_turns
    ? `${context.dropped_turns} earlier turn${context.dropped_turns === 1 ? "" : "s"} dropped to fit`
    : "no turns dropped";
  $("#render-context").textContent =
    `${count(context.used)} of ${count(context.budget)} tokens used (window ${count(context.window)}, ` +
    `the rest is the answer's) · ${dropped} · counted with ${context.tokenizer}`;
  $("#render-sections tbody").replaceChildren(
    ...context.sections.map((section) =>
      el(
        "tr",
        { "data-kind": section.kind, "data-testid": "render-section" },
        el("th", { scope: "row" }, KINDS[section.kind] || section.kind),
        el("td", {}, count(section.tokens)),
        el("td", {}, count(section.items)),
      ),
    ),
  );
}

/** Each lorebook entry render looked at, and why it was given to the turn or not (contract section 14). */
function showLore(decisions) {
  if (!decisions.length) {
    $("#render-lore").replaceChildren(el("li", { class: "meta" }, "No lorebook entry was constant or had a key in the scanned messages."));
    return;
  }
  $("#render-lore").replaceChildren(
    ...decisions.map((d) =>
      el(
        "li",
        { class: d.activated ? "activated" : "skipped", "data-entry-id": d.id, "data-testid": "lore-decision" },
        el("span", { class: "badge", "data-testid": "lore-outcome" }, d.activated ? "IN" : "OUT"),
        " ",
        el("strong", {}, d.name || d.id),
        " ",
        el("span", { class: "reason", "data-testid": "lore-reason", "data-reason": d.reason }, d.reason),
        el("span", { class: "meta" }, ` (${REASONS[d.reason] || d.reason})`),
        d.matched.length ? el("span", { class: "meta" }, ` · matched ${d.matched.map((k) => `“${k}”`).join(", ")}`) : null,
        el("span", { class: "meta" }, ` · ${count(d.tokens)} tokens`),
      ),
    ),
  );
}

export function renderPanel(ctx, { onRendered = () => {} } = {}) {
  const button = $("#render");
  let kept = null; // the chat's kept conversation {id, personaId, turns}, once it has started
  $("#render-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = $("#render-message").value || "Hello!";
    const choice = ctx.choice();
    if (!choice) return;
    // The chat's kept conversation is the saved persona's: its earlier turns are rendered with the message.
    const inConversation = kept && choice.persona_id === kept.personaId && $("#render-in-conversation").checked ? kept.id : null;
    const result = await task(
      "Render failed",
      () =>
        choice.persona_id
          ? ctx.client.render(choice.persona_id, message, inConversation)
          : ctx.client.renderDraft(choice.persona, message),
      button,
    );
    // A failed render leaves no earlier result on screen under its error.
    $("#render-result").hidden = !result;
    if (!result) return;
    const where = inConversation ? ` · in conversation ${inConversation}` : "";
    $("#render-meta").textContent = `${choice.label} · ${result.provider}/${result.model}${where}`;
    $("#render-system-prompt").textContent = result.system_prompt;
    $("#render-cache").textContent =
      `Providers can cache the first ${result.cacheable_prefix_chars} of ${result.system_prompt.length} characters ` +
      "(everything before the first per-user or per-day value).";
    $("#render-warnings").replaceChildren(...result.warnings.map((text) => el("li", {}, text)));
    $("#render-request").textContent = formatJson(result.request);
    showContext(result.context);
    showLore(result.lore);
    await showMemoryDecisions(ctx.client, result.memories, choice.persona || ctx.state.current, { draft: Boolean(choice.persona) });
    onRendered(result, choice);
  });
  /** Follow the chat's kept conversation (null: none), which a render of the saved persona may use. */
  function conversation(current) {
    kept = current;
    $("#render-conversation").hidden = !current;
    if (current) {
      const turns = `${current.turns} turn${current.turns === 1 ? "" : "s"}`;
      $("#render-conversation-label").textContent = `In the chat's kept conversation (${turns}, saved persona only)`;
    }
  }
  return { reset: () => ($("#render-result").hidden = true), conversation };
}

// Compare -----------------------------------------------------------------------------------------

const MIN_CANDIDATES = 2;
const MAX_CANDIDATES = 4; // what POST /compare takes

/** One column of a comparison; it fills as that candidate's events arrive. */
function compareColumn(i, title) {
  const meta = el("p", { class: "meta" }, "waiting…");
  const text = el("div", { class: "answer-text" });
  const column = el(
    "article",
    { class: "answer streaming", id: `compare-${i}`, "data-testid": `compare-${i}` },
    el("h3", { class: "answer-title" }, title),
    meta,
    text,
  );
  return {
    column,
    handle(event, data) {
      if (event === "start") meta.textContent = describeStart(data);
      else if (event === "content") text.append(data.content);
      else if (event === "usage") meta.textContent += ` · ${data.input_tokens} in / ${data.output_tokens} out tokens`;
      else if (event === "done") column.classList.remove("streaming");
      else if (event === "error") {
        column.classList.remove("streaming");
        column.classList.add("failed");
        text.append(el("p", { class: "error-text", role: "alert" }, `error (${data.code}): ${data.message}`));
      }
    },
    /** The stream is over: a column still waiting says why it got no more. */
    end(reason) {
      if (!column.classList.contains("streaming")) return false;
      column.classList.remove("streaming");
      column.classList.add("stopped");
      meta.textContent += ` · ${reason}`;
      return true;
    },
  };
}

export function comparePanel(ctx) {
  const list = $("#compare-candidates");
  const box = $("#compare-columns");
  const add = $("#compare-add");
  const stop = $("#compare-stop");
  const status = $("#compare-status");
  let choices = [{ value: "draft", label: "Editor (unsaved draft)" }];
  let picked = ["draft", "draft"]; // what each candidate is: "draft" or "v<n>"
  let controller = null;

  /** The candidate pickers, one per entry of `picked`, with Remove beyond the first two. */
  function showPickers() {
    list.replaceChildren(
      ...picked.map((value, i) => {
        const id = `compare-pick-${i}`;
        const select = el(
          "select",
          { id, onchange: () => (picked[i] = select.value) },
          choices.map((c) => el("option", { value: c.value }, c.label)),
        );
        select.value = value;
        const remove =
          picked.length > MIN_CANDIDATES
            ? el("button", { type: "button", class: "quiet", "aria-label": `Remove candidate ${i + 1}`, onclick: () => removePicker(i) }, "Remove")
            : null;
        return el("div", { class: "field candidate" }, el("label", { for: id }, `Candidate ${i + 1}`), el("div", { class: "row" }, select, remove));
      }),
    );
    add.disabled = picked.length >= MAX_CANDIDATES;
  }

  function removePicker(i) {
    picked.splice(i, 1);
    showPickers();
  }

  add.addEventListener("click", () => {
    if (picked.length >= MAX_CANDIDATES) return;
    // The newest version nobody picked yet, else the editor's draft.
    const free = choices.find((c) => c.value !== "draft" && !picked.includes(c.value));
    picked.push(free ? free.value : "draft");
    showPickers();
  });

  function options(versions) {
    choices = [{ value: "draft", label: "Editor (unsaved draft)" }];
    versions.forEach((v, i) => {
      const note = v.change_note ? ` — ${v.change_note}` : "";
      choices.push({ value: `v${v.version}`, label: `Version ${v.version}${i === 0 ? " (current)" : ""}${note}` });
    });
    // The newest two versions by default; with a single version, it against the editor.
    picked = [
      versions[1] ? `v${versions[1].version}` : versions[0] ? `v${versions[0].version}` : "draft",
      versions[1] ? `v${versions[0].version}` : "draft",
    ];
    showPickers();
  }

  function candidate(value) {
    if (value === "draft") {
      const choice = ctx.choice({ forceDraft: true });
      return choice ? { persona: choice.persona } : null;
    }
    return { persona_id: ctx.state.current.id, version: Number(value.slice(1)) };
  }

  function clear() {
    box.replaceChildren();
    status.textContent = "";
  }

  $("#compare-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidates = picked.map(candidate);
    if (candidates.includes(null)) return;
    const message = $("#compare-message").value || "Hello!";
    const columns = picked.map((value, i) => compareColumn(i, choices.find((c) => c.value === value).label));
    box.dataset.count = String(columns.length);
    box.replaceChildren(...columns.map((c) => c.column));
    status.textContent = `${columns.length} candidates answering…`;
    controller = new AbortController();
    stop.disabled = false;
    let stopped = false;
    await task(
      "Compare failed",
      async () => {
        try {
          for await (const { event, data } of await ctx.client.compare(candidates, message, controller.signal)) {
            const column = columns[data.candidate];
            if (column) column.handle(event, data);
          }
        } catch (err) {
          stopped = err.name === "AbortError";
          throw err;
        }
      },
      $("#compare"),
    );
    stop.disabled = true;
    controller = null;
    const unfinished = columns.filter((c) => c.end(stopped ? "stopped" : "no answer")).length;
    if (stopped) status.textContent = `Stopped: ${unfinished} of ${columns.length} candidates were cut off.`;
    else status.textContent = unfinished ? `${unfinished} of ${columns.length} candidates got no answer.` : `${columns.length} candidates answered.`;
  });
  stop.addEventListener("click", () => controller && controller.abort());

  showPickers();
  return { options, clear };
}

// Tests -------------------------------------------------------------------------------------------

const phrases = (text) =>
  text
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean);

function describeExpect(expect) {
  const parts = [];
  if (expect.contains && expect.contains.length) parts.push(`contains ${expect.contains.map((p) => `“${p}”`).join(", ")}`);
  if (expect.not_contains && expect.not_contains.length) parts.push(`does not contain ${expect.not_contains.map((p) => `“${p}”`).join(", ")}`);
  if (expect.regex) parts.push(`matches /${expect.regex}/`);
  if (expect.max_chars) parts.push(`at most ${expect.max_chars} characters`);
  if (expect.judge) parts.push(`judged against “${expect.judge.rubric}” (passes at ${expect.judge.threshold})`);
  if (expect.is_json) parts.push("is JSON");
  if (expect.json_schema) parts.push("matches a JSON Schema");
  if (expect.max_latency_ms) parts.push(`answers within ${expect.max_latency_ms} ms`);
  return parts.join("; ");
}

export function testsPanel(ctx) {
  const list = $("#tests-list");

  function show(tests) {
    $("#tests-summary").textContent = tests.length ? `${tests.length} test${tests.length === 1 ? "" : "s"}` : "No tests yet.";
    list.replaceChildren(
      ...tests.map((test) =>
        el(
          "li",
          { class: "test", "data-test-id": test.id, "data-testid": "test" },
          el("div", { class: "test-head" },
            el("span", { class: "badge", "data-testid": "test-result" }, ""),
            el("strong", {}, test.name),
            el("button", { type: "button", class: "quiet", "aria-label": `Delete test ${test.name}`, onclick: () => remove(test) }, "Delete"),
          ),
          el("p", { class: "meta" }, `“${test.message}” → ${describeExpect(test.expect)}`),
          el("div", { class: "test-outcome" }),
        ),
      ),
    );
  }

  async function load() {
    if (!ctx.state.current) return show([]);
    const body = await task("Could not load the tests", () => ctx.client.tests(ctx.state.current.id));
    if (body) show(body.tests);
  }

  async function remove(test) {
    const done = await task("Could not delete the test", () => ctx.client.deleteTest(ctx.state.current.id, test.id));
    if (done) await load();
  }

  $("#test-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const expect = { contains: phrases($("#t-contains").value), not_contains: phrases($("#t-not-contains").value) };
    const regex = $("#t-regex").value.trim();
    if (regex) expect.regex = regex;
    const maxChars = $("#t-max-chars").value.trim();
    if (maxChars) expect.max_chars = Number(maxChars);
    const rubric = $("#t-rubric").value.trim();
    const threshold = $("#t-threshold").value.trim();
    if (rubric) expect.judge = threshold ? { rubric, threshold: Number(threshold) } : { rubric };
    const test = { name: $("#t-name").value.trim(), message: $("#t-message").value, expect };
    const added = await task("Could not add the test", () => ctx.client.addTest(ctx.state.current.id, test), $("#test-save"));
    if (!added) return;
    $("#test-form").reset();
    notify(`Test “${added.test.name}” added.`);
    await load();
  });

  $("#tests-run").addEventListener("click", async () => {
    const run = await task("Could not run the tests", () => ctx.client.runTests(ctx.state.current.id), $("#tests-run"));
    if (!run) return;
    $("#tests-summary").textContent = `${run.passed} passed, ${run.failed} failed on ${run.persona.name} v${run.persona.version}`;
    for (const result of run.results) {
      const item = list.querySelector(`[data-test-id="${CSS.escape(result.test_id)}"]`);
      if (!item) continue;
      item.classList.toggle("passed", result.passed);
      item.classList.toggle("failed", !result.passed);
      item.querySelector(".badge").textContent = result.passed ? "PASS" : "FAIL";
      item.querySelector(".test-outcome").replaceChildren(
        el("ul", { class: "failures" }, result.failures.map((f) => el("li", {}, f))),
        "score" in result
          ? el("p", { class: "meta", "data-testid": "test-grade" }, `Score ${result.score ?? "none"}: ${result.reason}`)
          : "",
        el("details", {}, el("summary", {}, "Answer"), el("pre", {}, result.response ?? "")),
      );
    }
  });

  return { load };
}

// Versions ----------------------------------------------------------------------------------------

export function versionsPanel(ctx, { onVersions }) {
  const list = $("#versions-list");

  async function view(n) {
    const body = await task(`Could not load version ${n}`, () => ctx.client.version(ctx.state.current.id, n));
    if (!body) return;
    $("#version-title").textContent = `Version ${n}: ${body.persona.name}`;
    $("#version-system-prompt").textContent = body.persona.system_prompt ?? "";
    $("#version-json").textContent = formatJson(body.persona);
    $("#version-view").hidden = false;
  }

  async function restore(n) {
    const body = await task(`Could not restore version ${n}`, () => ctx.client.restore(ctx.state.current.id, n));
    if (!body) return;
    notify(body.message || `Version ${n} restored as version ${body.persona.version}.`);
    await ctx.loaded(body.persona);
  }

  function show(versions) {
    list.replaceChildren(
      ...versions.map((v, i) =>
        el(
          "li",
          { "data-version": v.version, "data-testid": "version" },
          el("div", {},
            el("strong", {}, `Version ${v.version}`),
            i === 0 ? el("span", { class: "badge current" }, "current") : null,
            el("span", { class: "meta" }, ` ${formatTime(v.created_at)}`),
            v.change_note ? el("p", { class: "note" }, v.change_note) : null,
          ),
          el("div", { class: "actions" },
            el("button", { type: "button", "aria-label": `View version ${v.version}`, onclick: () => view(v.version) }, "View"),
            i === 0 ? null : el("button", { type: "button", "aria-label": `Restore version ${v.version}`, onclick: () => restore(v.version) }, "Restore"),
          ),
        ),
      ),
    );
  }

  async function load() {
    $("#version-view").hidden = true;
    if (!ctx.state.current) {
      show([]);
      onVersions([]);
      return;
    }
    const body = await task("Could not load the versions", () => ctx.client.versions(ctx.state.current.id));
    const versions = body ? body.versions : [];
    show(versions);
    onVersions(versions);
  }

  return { load };
}
