"""Stream a chat answer from persona-runtime and print it as it arrives. Standard library only.

PERSONA_RUNTIME_URL=http://127.0.0.1:8666 PERSONA_RUNTIME_KEY=prk_... python3 chat_stream.py "Hello!"
"""

import json
import os
import sys
import urllib.request

base = os.environ.get("PERSONA_RUNTIME_URL", "http://127.0.0.1:8666")
key = os.environ["PERSONA_RUNTIME_KEY"]
message = " ".join(sys.argv[1:]) or "Hello!"

request = urllib.request.Request(
    f"{base}/api/v1/chat",
    data=json.dumps({"message": message, "stream": True}).encode(),
    headers={"X-API-Key": key, "Content-Type": "application/json", "Accept": "text/event-stream"},
)
with urllib.request.urlopen(request, timeout=120) as response:
    event = None
    for raw in response:  # one line of the event stream at a time, as it arrives
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                break
            payload = json.loads(data)
            if event == "start":
                print(f"[{payload['persona']['name']} via {payload['provider']}/{payload['model']}]", file=sys.stderr)
            elif event == "content":
                print(payload["content"], end="", flush=True)
            elif event == "error":
                print(f"\n[error {payload['code']}: {payload['message']}]", file=sys.stderr)
            elif event == "done":
                print()
                print(f"[conversation {payload['message_id']} saved]", file=sys.stderr)
