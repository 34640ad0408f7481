"""Stream a chat answer from persona-runtime and print it as it arrives.

PERSONA_RUNTIME_URL=http://127.0.0.1:8666 PERSONA_RUNTIME_KEY=prk_... python chat_stream.py "Hello!"
"""

import json
import os
import sys

import httpx

base = os.environ.get("PERSONA_RUNTIME_URL", "http://127.0.0.1:8666")
key = os.environ["PERSONA_RUNTIME_KEY"]
message = " ".join(sys.argv[1:]) or "Hello!"

with httpx.stream(
    "POST",
    f"{base}/api/v1/chat",
    headers={"X-API-Key": key},
    json={"message": message, "stream": True},
    timeout=120,
) as response:
    response.raise_for_status()
    event = None
    for line in response.iter_lines():
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
