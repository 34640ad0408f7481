// The chat panel: previews of what the editor holds, or kept conversations (POST /api/v1/chat) that the list
// of stored conversations reopens. Answers show as sanitized Markdown; Stop ends an answer, Regenerate asks
// the last message again.

import { markdownView } from "./markdown.js";
import { $, el, formatTime, showError, task } from "./ui.js";

export function describeStart(data) {
  // A draft answers as version 0: it has no version of its own yet.
  const version = data.persona && data.persona.version ? `v${data.persona.version}` : "(editor draft)";
  const persona = data.persona ? `${data.persona.name} ${version}` : "";
  return [persona, `${data.provider}/${data.model}`].filter(Boolean).join(" · ");
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/**
 * One question (null: a greeting the persona opened with) and its answer in the chat log; `note` stays after
 * what the `start` event says (a regenerated answer says so).
 */
function chatTurn(message, label, note = "") {
  const meta = el("p", { class: "meta", "data-testid": "chat-meta" }, label);
  const text = el("div", { class: "answer-text markdown", "data-testid": "chat-answer" });
  const view = markdownView(text);
  const status = el("p", { class: "turn-status", "data-testid": "chat-status" }, "waiting for the provider…");
  const item = el(
    "li",
    { class: "turn streaming" },
    message === null ? null : el("p", { class: "question" }, el("span", { class: "who" }, "You: "), message),
    el("div", { class: "answer" }, meta, text, status),
  );
  $("#chat-log").append(item);
  item.scrollIntoView({ block: "end" });
  let answer = "";
  const end = (text, classes = []) => {
    view.flush();
    item.classList.remove("streaming");
    item.classList.add(...classes);
    status.textContent = text;
  };
  return {
    start(data) {
      meta.textContent = describeStart(data) + note;
      status.textContent = "streaming…";
    },
    append(piece) {
      answer += piece;
      view.set(answer);
    },
    usage(data) {
      status.dataset.usage = `${data.input_tokens} in / ${data.output_tokens} out tokens`;
    },
    finish(data) {
      end([`finished: ${data.finish_reason || "stop"}`, status.dataset.usage].filter(Boolean).join(" · "));
    },
    fail(reason) {
      end(reason, ["failed"]);
      status.setAttribute("role", "alert");
    },
    stop(reason) {
      if (item.classList.contains("streaming")) end(reason, ["stopped"]);
    },
    /** A message as stored (a reopened conversation). */
    stored(message, label) {
      meta.textContent = label;
      answer = message.content;
      const usage = message.usage ? ` · ${message.usage.input_tokens} in / ${message.usage.output_tokens} out tokens` : "";
      end(`stored: ${message.status}${usage}`, message.status === "error" ? ["failed"] : []);
      view.set(answer);
      view.flush();
    },
  };
}

/** Whether the caller owns (or, as an admin, may edit) a saved persona: only then is its system prompt shown. */
const owned = (persona) => persona !== null && persona.system_prompt !== null;

/** Feed a chat stream's events into its turn; the `start` event goes to onStart too. */
async function consume(turn, events, onStart = () => {}) {
  for await (const { event, data } of events) {
    if (event === "start") {
      turn.start(data);
      onStart(data);
    } else if (event === "content") turn.append(data.content);
    else if (event === "usage") turn.usage(data);
    else if (event === "done") turn.finish(data);
    else if (event === "error" && data.code === "cancelled") {
      turn.stop("stopped: the answer so far is stored as incomplete");
    } else if (event === "error") {
      turn.fail(`error (${data.code}): ${data.message}`);
      showError({ message: data.message, code: data.code }, `The provider failed (${data.code})`);
    }
  }
  turn.stop("the stream ended early");
}

export function chatPanel(ctx) {
  const send = $("#chat-send");
  const stop = $("#chat-stop");
  const regenerate = $("#chat-regenerate");
  const keep = $("#chat-keep");
  const history = $("#chat-history");
  let controller = null;
  let running = null; // {messageId} of the kept answer streaming now, once its `start` has come
  let conversation = null; // {id, personaId, turns} of the kept conversation, once it has started
  let lastAsked = null; // the log's last user message, which Regenerate asks again
  let notOwned = false; // the editor holds someone else's persona: preview is not for us
  let followed; // the id of the persona the log is about (null: a draft; undefined: none yet)

  function showMode() {
    ctx.onConversation(keep.checked ? conversation : null);
    const kept = keep.checked;
    $("#chat-mode-preview").hidden = kept;
    $("#chat-mode-kept").hidden = !kept;
    $("#chat-new").hidden = !kept;
    const line = $("#chat-conversation");
    line.hidden = !kept;
    if (conversation) {
      line.dataset.conversationId = conversation.id;
      line.textContent = `Conversation ${conversation.id} · ${plural(conversation.turns, "turn")} · stored`;
    } else {
      delete line.dataset.conversationId;
      line.textContent = notOwned
        ? "This persona is not yours, so it answers in a kept conversation through /api/v1/chat (with its saved version)."
        : "A new conversation starts with the next message.";
    }
    regenerate.disabled = !lastAsked || controller !== null;
    for (const button of document.querySelectorAll("#conversation-list button.conversation")) {
      button.setAttribute("aria-current", String(Boolean(conversation && button.dataset.conversationId === conversation.id)));
    }
  }

  function newConversation() {
    if (controller) controller.abort();
    conversation = null;
    lastAsked = null;
    $("#chat-log").replaceChildren();
    showMode();
  }

  /** Someone else's persona can only be chatted with in a kept conversation. */
  function mustKeep() {
    notOwned = true;
    keep.checked = true;
    keep.disabled = true;
    showMode();
  }

  /**
   * Follow what the editor holds: another persona (or a new draft) starts another conversation, so no turn
   * of the previous one stays on screen. `same`: the editor's draft was just saved, and its turns are this
   * persona's.
   */
  function follow(persona, { same = false } = {}) {
    const id = persona ? persona.id : null;
    const switched = followed !== undefined && id !== followed && !same;
    followed = id;
    const wasForced = keep.disabled;
    notOwned = persona !== null && !owned(persona);
    keep.disabled = notOwned;
    // Keeping was forced for someone else's persona; one's own goes back to previews.
    if (notOwned || wasForced) keep.checked = notOwned;
    if (switched || (conversation && (!persona || conversation.personaId !== persona.id))) newConversation();
    else showMode();
  }

  async function keptTurn(persona, message, label) {
    const turn = chatTurn(message, `${persona.name} v${persona.version} (saved) · kept conversation${label}`, label);
    const body = { persona_id: persona.id };
    if (conversation) body.conversation_id = conversation.id;
    const started = (data) => {
      running = { messageId: data.message_id };
      conversation = { id: data.conversation_id, personaId: persona.id, turns: conversation ? conversation.turns + 1 : 1 };
      showMode();
    };
    try {
      await consume(turn, await ctx.client.chat(body, message, controller.signal), started);
    } catch (err) {
      if (err.name === "AbortError") turn.stop("stopped");
      else turn.fail(`failed: ${err.message}`);
      throw err;
    } finally {
      if (history.open) listConversations({ quiet: true });
    }
  }

  async function previewTurn(choice, message, label) {
    const body = choice.persona_id ? { persona_id: choice.persona_id } : { persona: choice.persona };
    const turn = chatTurn(message, choice.label + label, label);
    try {
      await consume(turn, await ctx.client.preview(body, message, controller.signal));
    } catch (err) {
      if (err.status === 403 && choice.persona_id && ctx.state.current) {
        // Preview is for owners and admins; a persona we may see but not edit answers in a kept conversation.
        turn.fail("preview is for the persona's owner: answering in a kept conversation instead");
        mustKeep();
        return keptTurn(ctx.state.current, message, label);
      }
      if (err.name === "AbortError") turn.stop("stopped");
      else turn.fail(`failed: ${err.message}`);
      throw err;
    }
  }

  /** Send `message` as a new turn, in the mode the panel is in. */
  async function ask(message, { regenerated = false } = {}) {
    const label = regenerated ? " · regenerated" : "";
    let run;
    if (keep.checked) {
      const persona = ctx.state.current;
      if (!persona) {
        showError(new Error("Save the persona first: a kept conversation uses the saved persona."), "Cannot keep a conversation");
        return;
      }
      run = () => keptTurn(persona, message, label);
    } else {
      const choice = ctx.choice();
      if (!choice) return;
      run = () => previewTurn(choice, message, label);
    }
    lastAsked = message;
    controller = new AbortController();
    stop.disabled = false;
    showMode();
    await task("Chat failed", run, send);
    stop.disabled = true;
    controller = null;
    running = null;
    showMode();
  }

  $("#chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = $("#chat-message").value.trim();
    if (!message) return;
    $("#chat-message").value = "";
    await ask(message);
  });

  // There is no regenerate route: the last message is asked again as a new turn (in a kept conversation it
  // is stored again, after the earlier answer, which the provider sees as context).
  regenerate.addEventListener("click", () => lastAsked && !controller && ask(lastAsked, { regenerated: true }));

  // A kept answer is stopped with its cancel route, which stores what was said and ends the stream with
  // `cancelled`; a preview (nothing stored) or an answer not started yet is stopped by hanging up.
  stop.addEventListener("click", async () => {
    const current = controller;
    if (!current) return;
    stop.disabled = true;
    if (!running) return current.abort();
    try {
      await ctx.client.cancel(running.messageId);
    } catch (err) {
      if (err.status !== 409) current.abort(); // 409: it had ended already, and its stream says how
    }
  });

  keep.addEventListener("change", newConversation);
  $("#chat-new").addEventListener("click", newConversation);
  $("#chat-clear").addEventListener("click", () => {
    $("#chat-log").replaceChildren();
    lastAsked = null;
    showMode();
  });
  $("#chat-message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("#chat-form").requestSubmit();
    }
  });

  // Stored conversations ----------------------------------------------------------------------------

  const personaName = (id) => {
    const persona = ctx.state.personas.find((p) => p.id === id);
    return persona ? persona.name : "a persona no longer listed";
  };

  /** `quiet`: a refresh after a turn, which leaves the error banner (the turn's own) alone. */
  async function listConversations({ quiet = false } = {}) {
    const read = () => ctx.client.conversations();
    let body;
    if (quiet) body = await read().catch(() => null);
    else body = await task("Could not list the conversations", read);
    if (!body) return;
    $("#chat-history-count").textContent = `(${body.total})`;
    const list = $("#conversation-list");
    if (!body.conversations.length) {
      list.replaceChildren(el("li", { class: "empty" }, "No stored conversations yet: tick “Keep the conversation” to start one."));
      return;
    }
    list.replaceChildren(
      ...body.conversations.map((c) =>
        el(
          "li",
          { "data-testid": "conversation" },
          el(
            "button",
            { type: "button", class: "conversation", "data-conversation-id": c.id, onclick: () => reopen(c.id) },
            el("span", { class: "conversation-title" }, c.title || "Untitled"),
            el("span", { class: "meta" }, `${personaName(c.persona_id)} · ${formatTime(c.updated_at)}`),
          ),
          el("button", { type: "button", class: "quiet danger", "aria-label": `Delete “${c.title || "Untitled"}”`, onclick: () => remove(c) }, "Delete"),
        ),
      ),
    );
    showMode();
  }

  /** Show a stored conversation and continue it: its persona goes in the editor, the chat keeps it. */
  async function reopen(id) {
    const body = await task("Could not open the conversation", () => ctx.client.conversation(id));
    if (!body) return;
    const personaId = body.conversation.persona_id;
    if (!ctx.state.current || ctx.state.current.id !== personaId) {
      if (!(await ctx.open(personaId))) return;
    }
    if (controller) controller.abort();
    keep.checked = true;
    $("#chat-log").replaceChildren();
    let question = null;
    let turns = 0;
    lastAsked = null;
    for (const message of body.messages) {
      if (message.role === "user") {
        if (question !== null) chatTurn(question, "").stored({ content: "", status: "no answer" }, "");
        question = message.content;
        lastAsked = question;
        turns += 1;
      } else if (message.role === "assistant") {
        const label = `${personaName(message.persona_id)} v${message.persona_version} · ${message.provider}/${message.model}`;
        chatTurn(question, label).stored(message, label);
        question = null;
      }
    }
    if (question !== null) chatTurn(question, "").stored({ content: "", status: "no answer" }, "");
    conversation = { id, personaId, turns };
    showMode();
  }

  async function remove(c) {
    if (!confirm(`Delete the conversation “${c.title || "Untitled"}” and its messages?`)) return;
    const done = await task("Could not delete the conversation", () => ctx.client.deleteConversation(c.id));
    if (!done) return;
    if (conversation && conversation.id === c.id) newConversation();
    await listConversations();
  }

  history.addEventListener("toggle", () => history.open && listConversations());
  $("#chat-history-refresh").addEventListener("click", () => listConversations());

  showMode();
  return {
    follow,
    /** The key changed: another user's conversations. */
    reset() {
      newConversation();
      $("#conversation-list").replaceChildren();
      $("#chat-history-count").textContent = "";
      if (history.open) listConversations();
    },
  };
}
