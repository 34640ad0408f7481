// Stream a chat answer with fetch() and print it as it arrives (Node 18+ or a browser).
//   PERSONA_RUNTIME_URL=http://127.0.0.1:8666 PERSONA_RUNTIME_KEY=prk_... node chat_stream.mjs "Hello!"
const base = process.env.PERSONA_RUNTIME_URL ?? "http://127.0.0.1:8666";
const key = process.env.PERSONA_RUNTIME_KEY;
const message = process.argv.slice(2).join(" ") || "Hello!";

const response = await fetch(`${base}/api/v1/chat`, {
  method: "POST",
  headers: { "X-API-Key": key, "Content-Type": "application/json" },
  body: JSON.stringify({ message, stream: true }),
});
if (!response.ok) {
  const error = await response.json();
  throw new Error(`${response.status}: ${error.message}`);
}

const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
let buffer = "";
for (;;) {
  const { value, done } = await reader.read();
  if (done) break;
  buffer += value;
  let end;
  // Events are separated by a blank line; comment lines (": keep-alive") carry no data.
  while ((end = buffer.indexOf("\n\n")) !== -1) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
    if (!data || data === "[DONE]") continue;
    const event = JSON.parse(data);
    if (event.type === "content") process.stdout.write(event.content);
    else if (event.type === "error") console.error(`\n[error ${event.code}: ${event.message}]`);
    else if (event.type === "done") process.stdout.write("\n");
  }
}
