// Reading Server-Sent Events from a fetch() response body, as they arrive.

/**
 * Yield {event, id, data} for each event of the stream; `data` is parsed JSON. Comment lines
 * (heartbeats) are skipped and the stream ends at `data: [DONE]` or when the server closes it.
 * @param {Response} response
 */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      // Normalise line ends; a lone "\r" at the end may be the first half of "\r\n", so it waits.
      buffer = (buffer + value).replace(/\r\n|\r(?!$)/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = parseBlock(block);
        if (event === null) continue;
        if (event.done) return;
        yield event;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseBlock(block) {
  let event = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (data.length === 0) return null;
  const text = data.join("\n");
  if (text === "[DONE]") return { done: true };
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = { type: event, raw: text };
  }
  return { event, id, data: parsed };
}
