// The Insights panel (contract section 16): how the saved persona's turns went from one day to another, drawn
// with uPlot (served by this server from /vendor, from npm), and its release: the labels, production and the
// rollout, which its owner may change from here. Every figure is the stats API's own
// (GET /api/v1/chat/personas/{id}/stats), by version, variant and day; days are UTC, like the API's.

import uPlot from "/vendor/uplot/uPlot.esm.js?v=1.6.32";
import { $, el, notify, task } from "./ui.js";

const DAY_MS = 86_400_000;
const DEFAULT_DAYS = 7;
const MAX_DAYS = 92; // a chart per day asks once a day: a quarter at most
const PARALLEL = 6; // of those requests at once
const COLORS = ["#2f5bd3", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5c940d"];
const CHART_HEIGHT = 190;
// Steps between the day axis's lines (seconds): whole days, so no day is written twice.
const DAYS = [1, 2, 7, 14, 28, 56].map((n) => n * 86_400);
// Steps between a count axis's lines: whole numbers (turns, tokens, ratings come in ones).
const WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8, 1e9];

const count = (n) => Number(n).toLocaleString("en");
const ms = (n) => (n === null || n === undefined ? "–" : `${Number(n).toLocaleString("en", { maximumFractionDigits: 1 })} ms`);
const percent = (part, whole) => (whole ? `${Math.round((100 * part) / whole)}%` : "–");
// An unsaved draft's turns are recorded as version 0.
const versionName = (key) => (!key ? "draft" : `v${key}`);

/** A day (YYYY-MM-DD, UTC) `offset` days after `day`. */
function shift(day, offset) {
  return new Date(Date.parse(`${day}T00:00:00Z`) + offset * DAY_MS).toISOString().slice(0, 10);
}

function today() {
  return new Date().toISOString().slice(0, 10);
}

/** Every day from `first` to `last`, both included. */
function daysBetween(first, last) {
  const days = [];
  for (let day = first; day <= last; day = shift(day, 1)) days.push(day);
  return days;
}

/** Run `work` on each item, `limit` at a time, keeping their order. */
async function each(items, limit, work) {
  const results = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

const sum = (rows, field) => rows.reduce((total, row) => total + row[field], 0);

/** The feedback line of some rows: how many turns were rated, and how many of those up. */
function feedbackRate(row) {
  const rated = row.feedback_up + row.feedback_down;
  return rated ? `${percent(rated, row.turns)} rated · ${percent(row.feedback_up, rated)} up` : "none";
}

// Charts ------------------------------------------------------------------------------------------------

/** A line chart over the range's days (seconds at UTC midnight), one series per `series` entry. */
function lineChart(target, xs, series, { unit = "", whole = true } = {}) {
  const width = Math.max(280, target.clientWidth || target.parentElement.clientWidth || 480);
  const options = {
    width,
    height: CHART_HEIGHT,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, 1)] } },
    axes: [
      {
        space: 60,
        incrs: DAYS,
        values: (u, splits) => splits.map((s) => new Date(s * 1000).toISOString().slice(5, 10)),
      },
      { label: unit, size: 56, values: (u, splits) => splits.map((s) => count(s)), ...(whole ? { incrs: WHOLE } : {}) },
    ],
    series: [
      { label: "day", value: (u, ts) => (ts === null ? "–" : new Date(ts * 1000).toISOString().slice(0, 10)) },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || COLORS[i % COLORS.length],
        width: 2,
        points: { show: true, size: 6 },
        spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? "–" : count(Math.round(v * 10) / 10)),
      })),
    ],
    legend: { live: true },
  };
  target.replaceChildren();
  return new uPlot(options, [xs, ...series.map((s) => s.values)], target);
}

// The panel ---------------------------------------------------------------------------------------------

export function insightsPanel({ client }) {
  let persona = null; // the saved persona the panel shows (owner or admin only)
  let stale = true; // shown for another persona or range than the one asked for
  let charts = [];
  let loading = 0;

  const range = { from: $("#insights-from"), to: $("#insights-to") };
  range.to.value = today();
  range.from.value = shift(today(), 1 - DEFAULT_DAYS);

  const visible = () => !$("#panel-insights").hidden;

  function clear(message) {
    for (const chart of charts) chart.destroy();
    charts = [];
    $("#insights-body").hidden = true;
    $("#insights-summary").textContent = message;
    $("#release-labels").replaceChildren();
    $("#release-rollout").textContent = "";
  }

  /** The editor now holds `saved` (null: a draft or someone else's persona shown read-only). */
  function follow(saved) {
    const editable = Boolean(saved && saved.system_prompt !== null);
    const before = persona;
    persona = editable ? saved : null;
    stale = true;
    $("#insights-range").hidden = !persona;
    $("#release").hidden = !persona;
    if (!persona) {
      clear(
        saved
          ? "Only the persona’s owner or an admin sees how its turns went."
          : "A draft has no turns yet: save it, chat with it, and its figures show here.",
      );
      return;
    }
    // Another persona's figures never stand under this one's name, even for the moment a reading takes.
    if (!before || before.id !== persona.id) clear("");
    fillVersions(persona.version);
    if (visible()) load();
  }

  function fillVersions(latest) {
    for (const select of [$("#rollout-version"), $("#pin-version")]) {
      const chosen = select.value;
      select.replaceChildren(
        ...Array.from({ length: latest }, (_, i) => latest - i).map((n) => el("option", { value: String(n) }, `v${n}`)),
      );
      if (chosen && Number(chosen) <= latest) select.value = chosen;
    }
  }

  /** The range's query: `to` is the day after the last one shown (a day is its midnight, UTC). */
  function chosenRange() {
    const first = range.from.value;
    const last = range.to.value;
    if (!first || !last) return { error: { field: !first ? "from" : "to", message: "Pick both days of the range." } };
    if (first > last) return { error: { field: "from", message: "`from` is after `to`: pick a range that starts before it ends." } };
    const days = daysBetween(first, last);
    if (days.length > MAX_DAYS) return { error: { field: "from", message: `Pick at most ${MAX_DAYS} days.` } };
    return { from: first, to: shift(last, 1), days };
  }

  async function load() {
    if (!persona) return;
    const chosen = chosenRange();
    if (chosen.error) {
      const err = new Error(chosen.error.message);
      err.field = chosen.error.field;
      await task("Check the range", () => Promise.reject(err));
      return;
    }
    const shown = persona;
    const ticket = ++loading;
    const result = await task(
      "Could not read the persona’s stats",
      async () => {
        const ask = (by, from = chosen.from, to = chosen.to) => client.stats(shown.id, { from, to, by }).then((b) => b.rows);
        const [byVersion, byVariant, byDay, labels, rollout] = await Promise.all([
          ask("version"),
          ask("variant"),
          ask("day"),
          client.labels(shown.id),
          client.rollout(shown.id),
        ]);
        const rollingOut = Boolean(rollout.rollout) || byVariant.some((row) => row.key === "rollout");
        const perDay = await each(chosen.days, PARALLEL, async (day) => {
          const [versions, variants] = await Promise.all([
            ask("version", day, shift(day, 1)),
            rollingOut ? ask("variant", day, shift(day, 1)) : Promise.resolve([]),
          ]);
          return { versions, variants };
        });
        return { byVersion, byVariant, byDay, labels: labels.labels, rollout: rollout.rollout, perDay, rollingOut };
      },
      $("#insights-show"),
    );
    // A later load, or another persona in the editor, wins.
    if (!result || ticket !== loading || persona !== shown) return;
    stale = false;
    showRelease(result.labels, result.rollout);
    show(chosen, result);
  }

  // Release -------------------------------------------------------------------------------------------

  function showRelease(labels, rollout) {
    const production = labels.production;
    const items = [
      el(
        "li",
        { "data-label": "production" },
        el("strong", {}, "production"),
        ` → v${production.version}`,
        el("span", { class: "meta" }, production.pinned ? " pinned" : " follows the latest save"),
      ),
      ...Object.entries(labels)
        .filter(([name]) => name !== "production")
        .map(([name, label]) => el("li", { "data-label": name }, el("strong", {}, name), ` → v${label.version}`)),
    ];
    $("#release-labels").replaceChildren(...items);
    $("#release-rollout").textContent = rollout
      ? `Rollout: v${rollout.version} to ${rollout.percent}% of users, production (v${production.version}) to the rest.`
      : "No rollout: every user gets production.";
    $("#rollout-end").disabled = !rollout;
    $("#pin-unpin").disabled = !production.pinned;
    if (rollout) {
      $("#rollout-version").value = String(rollout.version);
      $("#rollout-percent").value = String(rollout.percent);
    }
    $("#pin-version").value = String(production.version);
  }

  async function change(action, work, button) {
    const shown = persona;
    const done = await task(action, work, button);
    if (!done) return;
    notify(done.message || "Release changed.");
    if (persona === shown) await load();
  }

  $("#rollout-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!persona) return;
    const version = Number($("#rollout-version").value);
    const share = Number($("#rollout-percent").value);
    if (!Number.isInteger(share) || share < 1 || share > 100) {
      const err = new Error("The percent is a whole number from 1 to 100.");
      err.field = "percent";
      task("Check the rollout", () => Promise.reject(err));
      return;
    }
    change("Could not set the rollout", () => client.setRollout(persona.id, version, share), $("#rollout-set"));
  });

  $("#rollout-end").addEventListener("click", () => {
    if (persona) change("Could not end the rollout", () => client.endRollout(persona.id), $("#rollout-end"));
  });

  $("#pin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!persona) return;
    const version = Number($("#pin-version").value);
    change(
      "Could not pin production",
      async () => ({ ...(await client.setLabel(persona.id, "production", version)), message: `Production is pinned to v${version}.` }),
      $("#pin-set"),
    );
  });

  $("#pin-unpin").addEventListener("click", () => {
    if (!persona) return;
    change(
      "Could not unpin production",
      async () => ({ ...(await client.deleteLabel(persona.id, "production")), message: "Production follows the latest save again." }),
      $("#pin-unpin"),
    );
  });

  $("#insights-range").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });

  // Figures -------------------------------------------------------------------------------------------

  function show(chosen, { byVersion, byVariant, byDay, perDay, rollingOut, rollout }) {
    for (const chart of charts) chart.destroy();
    charts = [];
    const turns = sum(byVersion, "turns");
    const last = chosen.days[chosen.days.length - 1];
    const span = `${chosen.days[0]} to ${last} (UTC)`;
    if (!turns) {
      $("#insights-body").hidden = true;
      $("#insights-summary").textContent = `No turns from ${span}.`;
      return;
    }
    const input = sum(byVersion, "input_tokens");
    const cached = sum(byVersion, "cached_input_tokens");
    const up = sum(byVersion, "feedback_up");
    const down = sum(byVersion, "feedback_down");
    $("#insights-summary").textContent =
      `${count(turns)} turn${turns === 1 ? "" : "s"} from ${span} · ${count(input)} input tokens (${percent(cached, input)} cached) · ` +
      `${count(sum(byVersion, "output_tokens"))} output · feedback ${count(up)} up, ${count(down)} down`;
    $("#insights-body").hidden = false;

    const xs = chosen.days.map((day) => Date.parse(`${day}T00:00:00Z`) / 1000);
    const dayRows = new Map(byDay.map((row) => [row.key, row]));
    const daily = (field) => chosen.days.map((day) => (dayRows.has(day) ? dayRows.get(day)[field] : null));

    // Turns per day, a line per version (0 on a day the version served none).
    const versions = byVersion.map((row) => row.key);
    charts.push(
      lineChart(
        $("#chart-turns"),
        xs,
        versions.map((key) => ({
          label: versionName(key),
          values: perDay.map((day) => {
            const row = day.versions.find((r) => r.key === key);
            return row ? row.turns : 0;
          }),
        })),
        { unit: "turns" },
      ),
    );
    charts.push(
      lineChart(
        $("#chart-ttft"),
        xs,
        [
          { label: "p50", values: daily("ttft_ms_p50") },
          { label: "p95", values: daily("ttft_ms_p95"), color: COLORS[1] },
        ],
        { unit: "ms", whole: false },
      ),
    );
    charts.push(
      lineChart(
        $("#chart-tokens"),
        xs,
        [
          { label: "input", values: daily("input_tokens") },
          { label: "cached input", values: daily("cached_input_tokens"), color: COLORS[2] },
          { label: "output", values: daily("output_tokens"), color: COLORS[1] },
        ],
        { unit: "tokens" },
      ),
    );
    charts.push(
      lineChart(
        $("#chart-feedback"),
        xs,
        [
          { label: "up", values: daily("feedback_up"), color: COLORS[2] },
          { label: "down", values: daily("feedback_down"), color: COLORS[6] },
        ],
        { unit: "ratings" },
      ),
    );
    versionTable(byVersion);
    variantPart(chosen, xs, { byVariant, perDay, rollingOut, rollout });
  }

  function versionTable(rows) {
    const cells = (row) => [
      el("th", { scope: "row" }, versionName(row.key)),
      el("td", { "data-field": "turns" }, count(row.turns)),
      el("td", { "data-field": "users" }, count(row.users)),
      el("td", { "data-field": "ttft_ms_p50" }, ms(row.ttft_ms_p50)),
      el("td", { "data-field": "ttft_ms_p95" }, ms(row.ttft_ms_p95)),
      el("td", { "data-field": "input_tokens" }, count(row.input_tokens)),
      el("td", { "data-field": "output_tokens" }, count(row.output_tokens)),
      el("td", { "data-field": "cached_share" }, percent(row.cached_input_tokens, row.input_tokens)),
      el("td", { "data-field": "feedback_up" }, count(row.feedback_up)),
      el("td", { "data-field": "feedback_down" }, count(row.feedback_down)),
      el("td", { "data-field": "feedback_rate" }, feedbackRate(row)),
      el("td", { "data-field": "errors" }, count(row.errors)),
    ];
    $("#insights-versions tbody").replaceChildren(
      ...rows.map((row) => el("tr", { "data-key": versionName(row.key) }, cells(row))),
    );
  }

  function variantPart(chosen, xs, { byVariant, perDay, rollingOut, rollout }) {
    const part = $("#insights-variants");
    part.hidden = !rollingOut;
    if (!rollingOut) return;
    const ordered = ["production", "rollout"];
    const shown = ordered.map((key) => byVariant.find((row) => row.key === key) || null);
    const metric = (name, field, value) =>
      el(
        "tr",
        { "data-metric": field },
        el("th", { scope: "row" }, name),
        ...shown.map((row) => el("td", {}, row ? value(row) : "–")),
      );
    $("#insights-variants thead tr").replaceChildren(
      el("th", { scope: "col" }, ""),
      el("th", { scope: "col" }, "production"),
      el("th", { scope: "col" }, rollout ? `rollout (v${rollout.version}, ${rollout.percent}%)` : "rollout (ended)"),
    );
    $("#insights-variants tbody").replaceChildren(
      metric("Turns", "turns", (r) => count(r.turns)),
      metric("Users", "users", (r) => count(r.users)),
      metric("TTFT p50", "ttft_ms_p50", (r) => ms(r.ttft_ms_p50)),
      metric("TTFT p95", "ttft_ms_p95", (r) => ms(r.ttft_ms_p95)),
      metric("Output tokens a turn", "output_per_turn", (r) => count(Math.round(r.output_tokens / r.turns))),
      metric("Cached input", "cached_share", (r) => percent(r.cached_input_tokens, r.input_tokens)),
      metric("Feedback up / down", "feedback", (r) => `${count(r.feedback_up)} / ${count(r.feedback_down)}`),
      metric("Feedback rate", "feedback_rate", feedbackRate),
      metric("Errors", "errors", (r) => `${count(r.errors)} (${percent(r.errors, r.turns)})`),
    );
    const ttft = (variant) =>
      perDay.map((day) => {
        const row = day.variants.find((r) => r.key === variant);
        return row ? row.ttft_ms_p50 : null;
      });
    charts.push(
      lineChart(
        $("#chart-variants"),
        xs,
        [
          { label: "production p50", values: ttft("production") },
          { label: "rollout p50", values: ttft("rollout"), color: COLORS[1] },
        ],
        { unit: "ms", whole: false },
      ),
    );
  }

  // Charts follow the panel's width.
  const resized = new ResizeObserver(() => {
    for (const chart of charts) {
      const width = chart.root.parentElement.clientWidth;
      if (width && Math.abs(width - chart.width) > 8) chart.setSize({ width, height: CHART_HEIGHT });
    }
  });
  resized.observe($("#panel-insights"));

  return {
    follow,
    /** The tab was opened: read the figures unless they are the current persona's and range's already. */
    opened() {
      if (persona && stale) load();
    },
    reset() {
      persona = null;
      stale = true;
      clear("Enter an API key and pick a persona.");
    },
  };
}
