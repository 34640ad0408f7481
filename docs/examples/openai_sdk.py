"""Talk to a persona with the official openai client, unchanged: only the base URL and key differ.

PERSONA_RUNTIME_URL=http://127.0.0.1:8666 PERSONA_RUNTIME_KEY=prk_... python openai_sdk.py
"""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("PERSONA_RUNTIME_URL", "http://127.0.0.1:8666") + "/v1",
    api_key=os.environ["PERSONA_RUNTIME_KEY"],
)

# "persona" is whichever persona applies to you; "persona/<name>" picks one by name.
print([model.id for model in client.models.list()])

reply = client.chat.completions.create(
    model="persona/Mu",
    messages=[{"role": "user", "content": "Say hello in five words."}],
)
print(reply.choices[0].message.content)

stream = client.chat.completions.create(
    model="persona",
    messages=[{"role": "user", "content": "Count to three."}],
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
