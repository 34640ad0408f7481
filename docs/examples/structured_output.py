"""Structured output with the official openai client: a pydantic model as the answer's JSON schema.

PERSONA_RUNTIME_URL=http://127.0.0.1:8666 PERSONA_RUNTIME_KEY=prk_... python structured_output.py

The schema reaches the persona's provider as `response_format` (or Anthropic's structured output), from
`/v1/chat/completions` and from `/v1/responses` alike; the echo provider answers the smallest document the
schema accepts.
"""

import os

from openai import OpenAI
from pydantic import BaseModel


class Trip(BaseModel):
    city: str
    days: int


client = OpenAI(
    base_url=os.environ.get("PERSONA_RUNTIME_URL", "http://127.0.0.1:8666") + "/v1",
    api_key=os.environ["PERSONA_RUNTIME_KEY"],
)
reply = client.chat.completions.parse(
    model="persona/Mu",
    messages=[{"role": "user", "content": "Plan a trip."}],
    response_format=Trip,
)
trip = reply.choices[0].message.parsed
print(f"{trip.city} for {trip.days} days")

# The same through the Responses API: the schema goes as `text.format`.
response = client.responses.parse(model="persona/Mu", input="Plan a trip.", text_format=Trip)
trip = response.output_parsed
print(f"{trip.city} for {trip.days} days")
