"use strict";
// The event stream every page listens to: `summary` (the session's state), `frame` (a frame as it is drawn, its
// images as PNG data URLs) and `recent` (frames drawn before this page connected, oldest first). The browser reconnects by itself when the connection drops; once the session has ended the
// stream is closed. `window.hyperRt` keeps what this page received, for the operator and for tests.
window.hyperRt = {
  framesReceived: 0,
  lastFrame: null,
  summary: null,
  connected: false,
  // frame drawn -> shown in this browser, ms (the latest 1000)
  latenciesMs: [],
};

function connectEvents(handlers) {
  const state = window.hyperRt;
  const source = new EventSource("events");
  const call = (name, value) => { if (handlers[name]) handlers[name](value); };
  source.addEventListener("open", () => { state.connected = true; call("connection", true); });
  source.addEventListener("error", () => { state.connected = false; call("connection", false); });
  source.addEventListener("summary", (event) => {
    const summary = JSON.parse(event.data);
    state.summary = summary;
    call("summary", summary);
    if (summary.state === "ended") {
      source.close();
      state.connected = false;
      call("connection", "ended");
    }
  });
  source.addEventListener("frame", (event) => {
    const frame = JSON.parse(event.data);
    state.framesReceived += 1;
    state.lastFrame = { seq: frame.seq, volume: frame.volume, trial: frame.trial };
    call("frame", frame);
  });
  source.addEventListener("recent", (event) => {
    const frame = JSON.parse(event.data);
    frame.recent = true;
    call("frame", frame);
  });
  return source;
}

// Shows `src` in `img`; once decoded, records how long after it was drawn it became visible here (not for a frame
// drawn before the page connected).
function showFrameImage(img, src, frame) {
  img.hidden = false;
  img.dataset.volume = frame.volume;
  img.dataset.trial = frame.trial === null ? "" : frame.trial;
  img.dataset.seq = frame.seq;
  img.src = src;
  img.decode().then(() => {
    if (frame.recent) return;
    const latencies = window.hyperRt.latenciesMs;
    latencies.push(Date.now() - frame.drawn_unix_ms);
    if (latencies.length > 1000) latencies.shift();
  }).catch(() => {});
}

function percentile(values, p) {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}
