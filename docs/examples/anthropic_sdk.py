"""Talk to a persona with the official anthropic client, unchanged: only the base URL and key differ.

PERSONA_RUNTIME_URL=http://127.0.0.1:8666 PERSONA_RUNTIME_KEY=prk_... python anthropic_sdk.py
"""

import os
import sys

from anthropic import Anthropic

client = Anthropic(
    base_url=os.environ.get("PERSONA_RUNTIME_URL", "http://127.0.0.1:8666"),
    api_key=os.environ["PERSONA_RUNTIME_KEY"],
)

# "persona" is whichever persona applies to you; "persona/<name>" picks one by name.
raw = client.messages.with_raw_response.create(
    model="persona/Mu",
    max_tokens=300,
    messages=[{"role": "user", "content": "Say hello in five words."}],
)
reply = raw.parse()
print(reply.content[0].text)
# Which persona answered, at which version, and why.
print(
    f"[{raw.headers['x-persona-id']} v{raw.headers['x-persona-version']}, {raw.headers['x-persona-source']}]",
    file=sys.stderr,
)

with client.messages.stream(
    model="persona",
    max_tokens=300,
    system="Answer briefly.",
    messages=[{"role": "user", "content": "Count to three."}],
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
print()
