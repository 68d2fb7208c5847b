// The AssemblyAI JS SDK (assemblyai, from npm) against an AssemblyAI-compatible server:
// websocketBaseUrl changed (it must be wss://), nothing else. Streams raw 16 kHz audio,
// then closes, waiting for Termination; prints what came back as JSON.
//
//   node streaming.mjs WSS_URL KEY AUDIO.raw
import { readFileSync } from "node:fs";
import { StreamingTranscriber } from "assemblyai";

const [url, key, audioPath] = process.argv.slice(2);
const transcriber = new StreamingTranscriber({
  websocketBaseUrl: url,
  apiKey: key,
  sampleRate: 16000,
  formatTurns: true,
});
const messages = [];
const errors = [];
let closeCode = null;
transcriber.on("open", (begin) => messages.push(begin));
transcriber.on("turn", (turn) => messages.push(turn));
transcriber.on("error", (error) => errors.push(String(error?.message ?? error)));
transcriber.on("close", (code) => {
  closeCode = code;
});
await transcriber.connect();
const audio = readFileSync(audioPath);
const step = 3200; // 100 ms
for (let offset = 0; offset < audio.length; offset += step) {
  transcriber.sendAudio(audio.subarray(offset, offset + step));
  await new Promise((r) => setTimeout(r, 20));
}
await transcriber.close(true);
process.stdout.write(JSON.stringify({ messages, errors, close_code: closeCode }));
process.exit(0);
