// The Vercel AI SDK's default OpenAI provider (the Responses API) against persona-runtime, as an app would use it:
// generateText, streamText, and a function tool the SDK runs itself. Prints one JSON object for the test to check.
import { createOpenAI } from "@ai-sdk/openai";
import { generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [baseURL, apiKey, model] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey });

const generated = await generateText({ model: openai(model), prompt: "Hello from generateText" });
// A chat app's next turn: the history so far, with the SDK's own record of the answer (which it sends back as a
// reference to the stored response's item), then the new message.
const followUp = await generateText({
  model: openai(model),
  messages: [
    { role: "user", content: "Hello from generateText" },
    ...generated.response.messages,
    { role: "user", content: "And a second turn" },
  ],
});

const streamed = streamText({ model: openai(model), prompt: "Hello from streamText" });
const pieces = [];
for await (const piece of streamed.textStream) pieces.push(piece);

// Structured output: the SDK asks for text.format json_schema and checks the answer against the schema.
const trip = await generateObject({
  model: openai(model),
  schema: z.object({ city: z.string(), days: z.number().int().min(1) }),
  prompt: "Plan a trip.",
});

const ran = [];
const getWeather = tool({
  description: "The weather in a city.",
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => {
    ran.push(city);
    return `sunny in ${city}`;
  },
});
const withTool = await generateText({
  model: openai(model),
  prompt: '/tool get_weather {"city": "Oslo"}',
  tools: { get_weather: getWeather },
  stopWhen: stepCountIs(3),
});

const streamedTool = streamText({
  model: openai(model),
  prompt: '/tool get_weather {"city": "Lima"}',
  tools: { get_weather: getWeather },
  stopWhen: stepCountIs(3),
});
const toolPieces = [];
for await (const piece of streamedTool.textStream) toolPieces.push(piece);

console.log(
  JSON.stringify({
    generated: generated.text,
    generatedFinish: generated.finishReason,
    generatedUsage: generated.usage,
    followUp: followUp.text,
    streamed: pieces.join(""),
    streamedPieces: pieces.length,
    streamedFinish: await streamed.finishReason,
    trip: trip.object,
    ran,
    toolText: withTool.text,
    toolSteps: withTool.steps.map((step) => step.finishReason),
    streamedToolText: toolPieces.join(""),
    streamedToolSteps: (await streamedTool.steps).map((step) => step.finishReason),
  }),
);
