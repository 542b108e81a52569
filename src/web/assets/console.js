"use strict";
// The operator console: the newest reconstruction beside the true stimulus, the counters, the head-motion trace,
// the attribute scores, per-stage latency, the pipeline's state and a strip of the latest reconstructions. Charts
// are drawn on canvases, sized to the screen's pixels.
(function () {
  const $ = (id) => document.getElementById(id);
  const STRIP_LENGTH = 8;
  const FD_LIMIT_MM = 0.5;
  let lastFrame = null;
  let lastSummary = null;

  function formatDuration(secs) {
    if (!Number.isFinite(secs)) return "–";
    const s = Math.floor(secs);
    const pad = (n) => String(n).padStart(2, "0");
    return Math.floor(s / 3600) > 0
      ? `${Math.floor(s / 3600)}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}`
      : `${pad(Math.floor(s / 60))}:${pad(s % 60)}`;
  }

  // a canvas sized to its box in device pixels; returns its 2-D context in CSS pixels, with width and height
  function fitCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const box = canvas.getBoundingClientRect();
    const width = Math.max(1, Math.round(box.width));
    const height = Math.max(1, Math.round(box.height));
    if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
      canvas.width = width * ratio;
      canvas.height = height * ratio;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx, width, height };
  }

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function drawFd(fd, firstVolume) {
    const { ctx, width, height } = fitCanvas($("fd"));
    const left = 34, bottom = 18, top = 6, right = 8;
    const plotW = width - left - right, plotH = height - top - bottom;
    const top_mm = Math.max(1.0, ...fd.map((v) => (Number.isFinite(v) ? v : 0))) * 1.1;
    const y = (v) => top + plotH - (Math.min(v, top_mm) / top_mm) * plotH;
    ctx.strokeStyle = css("--line");
    ctx.fillStyle = css("--muted");
    ctx.lineWidth = 1;
    for (const tick of [0, top_mm / 2, top_mm]) {
      ctx.beginPath(); ctx.moveTo(left, y(tick)); ctx.lineTo(width - right, y(tick)); ctx.stroke();
      ctx.fillText(tick.toFixed(1), 4, y(tick) + 4);
    }
    // the motion limit
    ctx.strokeStyle = css("--warn");
    ctx.setLineDash([4, 4]);
    ctx.beginPath(); ctx.moveTo(left, y(FD_LIMIT_MM)); ctx.lineTo(width - right, y(FD_LIMIT_MM)); ctx.stroke();
    ctx.setLineDash([]);
    if (fd.length === 0) {
      ctx.fillText("no volumes yet", left + 8, top + 14);
      return;
    }
    const x = (i) => left + (fd.length === 1 ? plotW : (i / (fd.length - 1)) * plotW);
    ctx.strokeStyle = css("--accent");
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    fd.forEach((v, i) => (i === 0 ? ctx.moveTo(x(i), y(v)) : ctx.lineTo(x(i), y(v))));
    ctx.stroke();
    ctx.fillStyle = css("--bad");
    fd.forEach((v, i) => { if (v > FD_LIMIT_MM) ctx.fillRect(x(i) - 2, y(v) - 2, 4, 4); });
    ctx.fillStyle = css("--muted");
    ctx.fillText(`vol ${firstVolume}`, left, height - 4);
    const last = `vol ${firstVolume + fd.length - 1}`;
    ctx.fillText(last, width - right - ctx.measureText(last).width, height - 4);
  }

  function drawAttributes(attributes, feedbackName) {
    const { ctx, width, height } = fitCanvas($("attributes"));
    if (!attributes || attributes.length === 0) {
      ctx.fillStyle = css("--muted");
      ctx.fillText("no trial decoded yet", 8, 18);
      return;
    }
    const labelW = 96, right = 44;
    const rowH = Math.min(26, height / attributes.length);
    const limit = Math.max(3, ...attributes.map(([, s]) => Math.abs(s)));
    const mid = labelW + (width - labelW - right) / 2;
    const scale = (width - labelW - right) / 2 / limit;
    ctx.strokeStyle = css("--line");
    ctx.beginPath(); ctx.moveTo(mid, 0); ctx.lineTo(mid, rowH * attributes.length); ctx.stroke();
    attributes.forEach(([name, score], i) => {
      const yMid = i * rowH + rowH / 2;
      ctx.fillStyle = name === feedbackName ? css("--text") : css("--muted");
      ctx.fillText(name, 4, yMid + 4);
      ctx.fillStyle = score >= 0 ? css("--ok") : css("--accent");
      const w = score * scale;
      ctx.fillRect(Math.min(mid, mid + w), yMid - rowH * 0.3, Math.abs(w), rowH * 0.6);
      ctx.fillStyle = css("--text");
      ctx.fillText(score.toFixed(2), width - right + 6, yMid + 4);
    });
  }

  function fillLatency(latency) {
    const body = $("latency").querySelector("tbody");
    body.replaceChildren();
    for (const p of latency || []) {
      const row = document.createElement("tr");
      const cells = [p.stage, p.p50, p.p95, p.max, p.n].map((v, i) => {
        const cell = document.createElement("td");
        cell.textContent = i === 0 || i === 4 ? String(v) : (v === null ? "–" : v.toFixed(1));
        return cell;
      });
      row.append(...cells);
      body.append(row);
    }
  }

  function fillPipeline(s) {
    const items = [
      ["state", s.state, s.state === "receiving" ? "" : "warn"],
      ["volumes rejected", s.volumes_rejected_by_preprocessing, s.volumes_rejected_by_preprocessing ? "warn" : ""],
      ["latents skipped by the generator", s.latents_skipped_by_generator, ""],
      ["frames failed", s.generator_errors, s.generator_errors ? "bad" : ""],
      ["generator", s.generator_fell_back_to_cpu ? "moved to the CPU" : "as started", s.generator_fell_back_to_cpu ? "bad" : ""],
      ["browsers connected", s.web ? s.web.clients_connected : "–", ""],
    ];
    for (const failure of s.stage_failures || []) items.push(["stopped", failure, "bad"]);
    if (s.end_reason) items.push(["end", s.end_reason, ""]);
    const list = $("pipeline");
    list.replaceChildren(...items.map(([name, value, level]) => {
      const item = document.createElement("li");
      if (level) item.className = level;
      const a = document.createElement("span"); a.textContent = name;
      const b = document.createElement("span"); b.textContent = String(value);
      item.append(a, b);
      return item;
    }));
  }

  function setState(s) {
    const pill = $("state");
    let text = s.state, level = "pill-ok";
    if (s.state === "ended") level = "pill-ended";
    else if (s.state !== "receiving") level = "pill-waiting";
    if ((s.stage_failures && s.stage_failures.length) || s.generator_fell_back_to_cpu) {
      level = "pill-bad";
      text = s.generator_fell_back_to_cpu && s.state !== "ended" ? `${s.state} · GPU failed, on CPU` : `${s.state} · failures`;
    }
    pill.textContent = text;
    pill.className = `pill ${level}`;
  }

  function onSummary(s) {
    lastSummary = s;
    setState(s);
    $("run-time").textContent = formatDuration(s.session_secs);
    $("volume").textContent = s.last_volume === null ? "–" : String(s.last_volume);
    $("trials").textContent = String(s.patterns_decoded);
    $("generator").textContent = s.generator || "–";
    $("generator").title = s.generator || "";
    drawFd(s.fd_mm || [], s.fd_first_volume || 0);
    fillLatency(s.latency_ms);
    fillPipeline(s);
    if (!lastFrame) drawAttributes([], null);
  }

  function addToStrip(frame) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = frame.reconstruction;
    img.alt = `reconstruction, volume ${frame.volume}`;
    const caption = document.createElement("figcaption");
    caption.textContent = frame.trial === null ? `vol ${frame.volume}` : `trial ${frame.trial} · vol ${frame.volume}`;
    figure.append(img, caption);
    const strip = $("strip");
    strip.prepend(figure);
    while (strip.children.length > STRIP_LENGTH) strip.lastChild.remove();
  }

  function onFrame(frame) {
    lastFrame = frame;
    $("no-recon").hidden = true;
    showFrameImage($("recon"), frame.reconstruction, frame);
    const where = frame.trial === null ? `volume ${frame.volume}` : `trial ${frame.trial} · volume ${frame.volume}`;
    $("recon-caption").textContent = where;
    if (frame.stimulus) {
      $("stimulus").hidden = false;
      $("stimulus").src = frame.stimulus;
      $("no-stimulus").hidden = true;
      $("stimulus-caption").textContent = where;
    } else {
      $("stimulus").hidden = true;
      $("no-stimulus").hidden = false;
      $("stimulus-caption").textContent = "";
    }
    $("frames").textContent = String(window.hyperRt.framesReceived);
    drawAttributes(frame.attributes, lastSummary && lastSummary.feedback_attribute);
    addToStrip(frame);
    const latencies = window.hyperRt.latenciesMs;
    if (latencies.length > 0) {
      $("browser-latency").textContent =
        `drawn → shown here: p50 ${percentile(latencies, 50).toFixed(0)} ms, p95 ${percentile(latencies, 95).toFixed(0)} ms`;
    }
  }

  function onConnection(up) {
    const label = $("connection");
    label.classList.toggle("lost", up === false);
    label.textContent = up === "ended" ? "session ended" : up ? "live" : "connection lost: retrying…";
  }

  window.addEventListener("resize", () => {
    if (lastSummary) drawFd(lastSummary.fd_mm || [], lastSummary.fd_first_volume || 0);
    if (lastFrame) drawAttributes(lastFrame.attributes, lastSummary && lastSummary.feedback_attribute);
  });
  connectEvents({ summary: onSummary, frame: onFrame, connection: onConnection });
})();
