// The Deepgram JS SDK (@deepgram/sdk, from npm) against a Deepgram-compatible server:
// base URL changed, the key sent as the browser sends it (Sec-WebSocket-Protocol: token, KEY).
// Streams raw audio, then CloseStream; prints what came back, and the close code, as JSON.
//
//   node listen.mjs URL KEY AUDIO.raw QUERY_JSON
import { readFileSync } from "node:fs";
import { DeepgramClient } from "@deepgram/sdk";

const [url, key, audioPath, queryJson] = process.argv.slice(2);
const http = url.replace(/^ws/, "http");
// No API key on the client: no Authorization header; the key travels as a subprotocol pair.
const client = new DeepgramClient({
  apiKey: "",
  environment: { base: http, production: url, agent: url, agentRest: http },
});
const connection = await client.listen.v1.connect({
  ...JSON.parse(queryJson),
  protocols: ["token", key],
  reconnectAttempts: 0,
});
const messages = [];
let closeCode = null;
const closed = new Promise((resolve) => {
  connection.on("close", (event) => {
    closeCode = event?.code ?? null;
    resolve();
  });
});
connection.on("message", (message) => messages.push(message));
connection.on("error", (error) => messages.push({ type: "SocketError", message: String(error?.message ?? error) }));
connection.connect();
await connection.waitForOpen();
const audio = readFileSync(audioPath);
const step = 3200;
for (let offset = 0; offset < audio.length; offset += step) {
  connection.sendMedia(audio.subarray(offset, offset + step));
  await new Promise((r) => setTimeout(r, 5));
}
connection.sendCloseStream({ type: "CloseStream" });
await Promise.race([closed, new Promise((r) => setTimeout(r, 60000))]);
process.stdout.write(JSON.stringify({ messages, close_code: closeCode }));
process.exit(0);
