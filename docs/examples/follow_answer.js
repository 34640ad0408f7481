// Follow an answer with the browser's own EventSource, from any instance behind the load balancer.
// If the connection drops (a phone changing networks, a proxy timing out an idle connection, a
// deploy), EventSource reconnects by itself and sends the id of the last event it received as
// `Last-Event-ID`; the server answers with exactly the events after it. EventSource cannot send
// headers, so this one route takes the key as `?api_key=` (keep such URLs out of shared logs).
//
//   followAnswer("http://127.0.0.1:8666", "prk_...", messageId, (text) => render(text))
//     .then(({ text, connections }) => console.log(text));
function followAnswer(base, key, messageId, onText, after) {
  const url = new URL(`${base}/api/v1/chat/messages/${messageId}/events`);
  url.searchParams.set("api_key", key);
  if (after) url.searchParams.set("after", after); // where a fetch() stream left off, if it did
  return new Promise((resolve, reject) => {
    const source = new EventSource(url);
    let text = "";
    let connections = 0;
    source.onopen = () => connections++;
    source.addEventListener("content", (event) => {
      text += JSON.parse(event.data).content;
      if (onText) onText(text);
    });
    source.addEventListener("done", () => {
      source.close(); // the answer is whole: stop EventSource from reconnecting
      resolve({ text, connections });
    });
    source.addEventListener("error", (event) => {
      if (!event.data) {
        // The connection dropped and EventSource is reconnecting, unless the server refused it
        // (410: the stream is past its retention; the stored message is in its conversation).
        if (source.readyState === EventSource.CLOSED) reject(Object.assign(new Error("cannot resume"), { text }));
        return;
      }
      source.close();
      const error = JSON.parse(event.data);
      reject(Object.assign(new Error(error.message), { code: error.code, text }));
    });
  });
}
