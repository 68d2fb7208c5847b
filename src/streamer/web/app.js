// The demo page: microphone (or a file, in real time) -> AudioWorklet -> 16-bit PCM at the
// device's own rate -> the v1 protocol over a WebSocket; results shown as they come.

// The v1 protocol: one JSON `start`, binary PCM, `stop`; events back as JSON objects.
const v1 = {
  start(sampleRate) {
    return JSON.stringify({
      request: "start",
      format: { channels: 1, sample_rate: sampleRate, bit_depth: 16, encoding: "pcm" },
      interim_results: true,
    });
  },
  stop() {
    return JSON.stringify({ request: "stop" });
  },
  // A server message to the page's events: ready, segment, speech, error, done.
  parse(text) {
    const m = JSON.parse(text);
    switch (m.type) {
      case "ready": return { kind: "ready", model: m.model };
      case "segment": {
        const { type, channel, start_time, end_time, is_final, text, ...rest } = m;
        return {
          kind: "segment", channel, start: start_time, end: end_time, final: is_final,
          text: typeof text === "string" ? text : JSON.stringify(rest),
        };
      }
      case "active": return { kind: "speech", speaking: true, time: m.time };
      case "inactive": return { kind: "speech", speaking: false, time: m.time };
      case "error": return { kind: "error", code: m.code, message: m.message };
      case "done": return { kind: "done", seconds: m.audio_seconds };
      default: return null;
    }
  },
};

// The routes this page can stream to. Another front-end joins with its path and an adapter
// of the same shape as `v1` (start, stop, parse).
const ROUTES = [
  { id: "segmented", label: "v1 segmented (VAD)", path: "/api/v1/segmented", protocol: v1 },
  { id: "simple", label: "v1 simple (chunks)", path: "/api/v1/simple", protocol: v1 },
];

const $ = (id) => document.getElementById(id);
const ui = {
  route: $("route"), token: $("token"), mic: $("mic"), file: $("file"), play: $("play"),
  stop: $("stop"), state: $("state"), activity: $("activity"), rate: $("rate"),
  levelBar: $("level-bar"), segments: $("segments"), errors: $("errors"),
};

for (const route of ROUTES) ui.route.add(new Option(route.label, route.id));

// A token in the page's URL is taken and removed from the address bar (and history).
const params = new URLSearchParams(location.search);
if (params.get("route")) ui.route.value = params.get("route");
if (params.get("token")) {
  ui.token.value = params.get("token");
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
}

function setState(state, detail = "") {
  ui.state.dataset.state = state;
  ui.state.textContent = detail ? `${state}: ${detail}` : state;
}

function showError(code, message) {
  const li = document.createElement("li");
  li.dataset.code = code;
  const c = document.createElement("code");
  c.textContent = code;
  li.append(c, ` ${message}`);
  ui.errors.append(li);
}

let session = null;

class Session {
  constructor(route, token) {
    this.route = route;
    this.token = token;
    this.ctx = null;
    this.ws = null;
    this.ready = false;
    this.pending = [];
    this.samples = 0;
    this.startedAt = null; // wall clock (ms) of audio time 0
    this.interim = new Map(); // channel -> the list item of its open interim result
    this.speechStarted = 0;
    this.speechEnded = 0;
    this.stopping = false;
    this.cleanup = [];
  }

  async open(prepare, connectSource) {
    setState("connecting");
    // The microphone first: a page that captures may start audio without a click.
    const input = await prepare();
    // The device's own rate: no resampling in the page, the server does it.
    this.ctx = new AudioContext();
    if (this.ctx.state === "suspended") {
      this.ctx.resume(); // settles only once the browser lets audio start
      setState("connecting", "click the page to let audio start");
      document.addEventListener("click", () => this.ctx.resume(), { once: true });
    }
    await this.ctx.audioWorklet.addModule("/demo/capture.js");
    const node = new AudioWorkletNode(this.ctx, "pcm-capture");
    node.port.onmessage = (e) => this.captured(e.data.pcm, e.data.peak);
    node.connect(this.ctx.destination); // it writes no output; this keeps it pulled
    await connectSource(this.ctx, node, input);
    const showAudio = () => { ui.rate.textContent = `${this.ctx.sampleRate} Hz, audio ${this.ctx.state}`; };
    this.ctx.onstatechange = showAudio;
    showAudio();
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}${this.route.path}`;
    // The token rides in the subprotocol pair (token, <token>): not in the URL, so not in
    // any proxy's access log. The server accepts with `token` and never echoes it.
    this.ws = this.token ? new WebSocket(url, ["token", this.token]) : new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    let opened = false;
    this.ws.onopen = () => {
      opened = true;
      setState("open");
      this.ws.send(this.route.protocol.start(this.ctx.sampleRate));
    };
    this.ws.onmessage = (e) => {
      if (typeof e.data === "string") this.handle(this.route.protocol.parse(e.data));
    };
    this.ws.onclose = (e) => {
      if (!opened) {
        setState("error", "refused");
        showError(
          "refused",
          `the server refused the connection (close ${e.code}): HTTP 401 or 403 before ` +
            "the upgrade (a missing, expired or used token, or an origin not allowed)",
        );
      } else {
        const reason = e.reason ? ` ${e.reason}` : "";
        setState(e.code === 1000 ? "closed" : "error", `${e.code}${reason}`);
      }
      this.release();
    };
  }

  captured(pcm, peak) {
    ui.levelBar.style.width = `${Math.min(100, Math.round(peak * 100))}%`;
    if (this.stopping) return;
    const n = pcm.byteLength / 2;
    if (this.startedAt === null) this.startedAt = performance.now() - (n / this.ctx.sampleRate) * 1000;
    this.samples += n;
    ui.levelBar.parentElement.dataset.samples = String(this.samples);
    if (this.ready && this.ws.readyState === WebSocket.OPEN) this.ws.send(pcm);
    else this.pending.push(pcm);
  }

  handle(event) {
    if (event === null) return;
    if (event.kind === "ready") {
      this.ready = true;
      setState("streaming", event.model);
      for (const pcm of this.pending) this.ws.send(pcm);
      this.pending = [];
    } else if (event.kind === "segment") {
      this.segment(event);
    } else if (event.kind === "speech") {
      ui.activity.dataset.speech = String(event.speaking);
      ui.activity.textContent = event.speaking ? `speech at ${event.time.toFixed(2)} s` : "silence";
      if (event.speaking) ui.activity.dataset.started = String(++this.speechStarted);
      else ui.activity.dataset.ended = String(++this.speechEnded);
    } else if (event.kind === "error") {
      showError(event.code, event.message);
    } else if (event.kind === "done") {
      setState("done", `${event.seconds.toFixed(1)} s of audio`);
      this.ws.close(1000);
    }
  }

  segment(s) {
    let li = this.interim.get(s.channel);
    if (!li) {
      li = document.createElement("li");
      li.className = "segment";
      li.innerHTML = '<span class="text"></span><span class="times"></span>';
      ui.segments.append(li);
    }
    li.classList.toggle("interim", !s.final);
    li.classList.toggle("final", s.final);
    li.querySelector(".text").textContent = s.text;
    li.dataset.start = String(s.start);
    li.dataset.end = String(s.end);
    let times = `${s.start.toFixed(2)}–${s.end.toFixed(2)} s`;
    if (s.final && this.startedAt !== null) {
      // How long after its last sample was captured the final result arrived.
      const delay = performance.now() - (this.startedAt + s.end * 1000);
      li.dataset.delayMs = String(Math.round(delay));
      times += `, final after ${Math.round(delay)} ms`;
    }
    li.querySelector(".times").textContent = times;
    if (s.final) this.interim.delete(s.channel);
    else this.interim.set(s.channel, li);
  }

  stop() {
    if (this.stopping) return;
    this.stopping = true;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      setState("stopping");
      this.ws.send(this.route.protocol.stop());
    } else {
      this.release();
    }
  }

  release() {
    for (const undo of this.cleanup) undo();
    this.cleanup = [];
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close();
    ui.mic.disabled = false;
    ui.play.disabled = !ui.file.files.length;
    ui.stop.disabled = true;
    if (session === this) session = null;
  }
}

function begin(prepare, connectSource) {
  const route = ROUTES.find((r) => r.id === ui.route.value) || ROUTES[0];
  session = new Session(route, ui.token.value.trim());
  ui.mic.disabled = ui.play.disabled = true;
  ui.stop.disabled = false;
  ui.segments.replaceChildren();
  const current = session;
  current.open(prepare, connectSource).catch((error) => {
    setState("error", error.name || "error");
    showError(error.name || "error", error.message || String(error));
    current.release();
  });
}

function startMicrophone() {
  const current = () => session;
  begin(
    async () => {
      const media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      current().cleanup.push(() => media.getTracks().forEach((t) => t.stop()));
      return media;
    },
    async (ctx, node, media) => ctx.createMediaStreamSource(media).connect(node),
  );
}

function startFile() {
  const file = ui.file.files[0];
  if (!file) return;
  begin(async () => null, async (ctx, node) => {
    // Decoded at the context's rate, then played through the graph: real time by the
    // audio clock, as a microphone would deliver it.
    const audio = await ctx.decodeAudioData(await file.arrayBuffer());
    const source = ctx.createBufferSource();
    source.buffer = audio;
    source.connect(node);
    const current = session;
    source.onended = () => setTimeout(() => current.stop(), 300);
    source.start();
  });
}

ui.mic.addEventListener("click", startMicrophone);
ui.play.addEventListener("click", startFile);
ui.stop.addEventListener("click", () => session && session.stop());
ui.file.addEventListener("change", () => { ui.play.disabled = !ui.file.files.length || session !== null; });

if (params.get("autostart") === "1") startMicrophone();
