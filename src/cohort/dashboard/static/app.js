// cohort dashboard: polls the JSON endpoints and redraws; no libraries.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token");
  const headers = token ? {"X-Cohort-Token": token} : {};
  if (token && history.replaceState) history.replaceState(null, "", location.pathname);  // the cookie carries it now
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
    (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const fmtInt = (n) => n == null ? "–" : Number(n).toLocaleString("en-US");
  const fmtMem = (b) => b == null ? "—" : b >= 1 << 30 ? (b / (1 << 30)).toFixed(2) + " GiB"
    : (b / (1 << 20)).toFixed(1) + " MiB";
  const fmtDur = (s) => { s = Math.floor(s); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
    return (h ? h + "h" : "") + String(m).padStart(h ? 2 : 1, "0") + "m" + String(s % 60).padStart(2, "0") + "s"; };
  let state = null, tasks = [], tasksNow = 0, period = 1000, lastFailures = 0;

  async function get(path) {
    const r = await fetch(path, {headers, credentials: "same-origin", cache: "no-store"});
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  function setConn(ok, text) {
    const b = $("conn");
    b.textContent = text;
    b.className = "badge " + (ok ? "live" : "down");
  }

  function renderState(s) {
    const c = s.controller || {};
    $("cluster").textContent = "cluster " + (s.cluster_id || "");
    $("controller").textContent = c.connected
      ? `controller pid ${c.pid} on ${c.host}, up ${fmtDur(c.uptime)}, ${c.clients} other client(s)`
      : "controller: " + (c.error || "not answering");
    setConn(c.connected, c.connected ? "live" : "controller not answering");
    const live = s.engines.filter((e) => e.state !== "dead" && e.state !== "restarting");
    $("n-engines").textContent = live.length;
    $("n-pending").textContent = c.connected ? fmtInt(c.tasks_pending) : "–";
    const last = s.series.length ? s.series[s.series.length - 1] : null;
    $("n-rate").textContent = last ? last[2].toFixed(1) : "–";
    const counts = s.counts || {};
    $("count-total").textContent = fmtInt(s.total);
    for (const k of ["done", "failed", "running", "queued"]) $("count-" + k).textContent = fmtInt(counts[k] || 0);
    $("count-cancelled").textContent = fmtInt((counts.cancelled || 0) + (counts.aborted || 0));

    $("engines").tBodies[0].innerHTML = s.engines.map((e) => {
      const gone = e.state === "dead" || e.state === "restarting";
      const rank = e.mpi ? ` (rank ${e.mpi.rank})` : "";
      return `<tr data-engine="${e.id}" class="${gone ? "gone" : ""}">` +
        `<td>${e.id}${rank}</td><td>${esc(e.host)}</td><td>${esc(e.pid)}</td>` +
        `<td class="engine-state"><span class="state ${esc(e.state)}">${esc(e.state)}</span></td>` +
        `<td class="task">${esc(e.current || "")}</td>` +
        `<td class="num">${fmtInt(e.queue)}</td><td class="num">${fmtInt(e.completed)}</td>` +
        `<td class="num">${fmtInt(e.failed)}</td>` +
        `<td class="num">${e.cpu == null ? "—" : e.cpu.toFixed(0) + "%"}</td>` +
        `<td class="num">${fmtMem(e.mem)}</td><td class="note">${esc(e.why || "")}</td></tr>`;
    }).join("") || `<tr><td colspan="11" class="muted">no engines connected</td></tr>`;

    const jobs = s.jobs || [];
    $("jobs").tBodies[0].innerHTML = jobs.length ? jobs.map((j) =>
      `<tr data-job="${esc(j.job || "")}"><td>${esc(j.kind)}</td><td class="num">${esc(j.n)}</td>` +
      `<td>${esc(j.service || "")}</td><td>${esc(j.state)}</td></tr>`).join("")
      : `<tr><td colspan="4" class="muted">none launched</td></tr>`;

    drawSeries($("queue-chart"), s.series, 1, s.now);
    drawSeries($("rate-chart"), s.series, 2, s.now);
  }

  function drawSeries(svg, series, col, now) {
    const first = series.length ? series[0][0] : now;
    const span = Math.min(300, Math.max(60, Math.ceil((now - first) / 30) * 30));  // grows to 5 min
    const w = svg.clientWidth || 400, h = svg.clientHeight || 120, pad = 28;
    const pts = series.filter((p) => p[0] >= now - span);
    const max = Math.max(1, ...pts.map((p) => p[col]));
    const x = (t) => pad + (w - pad - 4) * (1 - (now - t) / span);
    const y = (v) => h - 16 - (h - 24) * v / max;
    let out = `<line class="grid" x1="${pad}" x2="${w}" y1="${y(0)}" y2="${y(0)}"/>` +
      `<line class="grid" x1="${pad}" x2="${w}" y1="${y(max)}" y2="${y(max)}"/>` +
      `<text x="2" y="${y(max) + 4}">${max >= 100 ? Math.round(max) : +max.toFixed(1)}</text>` +
      `<text x="2" y="${y(0) + 4}">0</text><text x="${pad}" y="${h - 2}">-${span >= 120 ? span / 60 + " min" : span + " s"}</text>` +
      `<text x="${w - 30}" y="${h - 2}">now</text>`;
    if (pts.length > 1) {
      const d = pts.map((p, i) => (i ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[col]).toFixed(1)).join("");
      out += `<path class="area" d="${d}L${x(pts[pts.length - 1][0]).toFixed(1)},${y(0)}L${x(pts[0][0]).toFixed(1)},${y(0)}Z"/>`;
      out += `<path class="line" d="${d}"/>`;
    }
    svg.innerHTML = out;
  }

  function drawStream() {
    const svg = $("stream");
    if (!state) return;
    const win = Number($("window").value), now = tasksNow || state.now;
    const ids = state.engines.map((e) => e.id).sort((a, b) => a - b);
    const extra = [...new Set(tasks.map((t) => t.engine).filter((e) => e != null && !ids.includes(e)))];
    const rows = ids.concat(extra.sort((a, b) => a - b));
    const rowH = 18, top = 4, left = 34, w = svg.clientWidth || 800;
    const h = top + Math.max(1, rows.length) * rowH + 18;
    svg.setAttribute("height", h);
    const x = (t) => left + (w - left - 6) * (1 - (now - t) / win);
    const rowOf = new Map(rows.map((e, i) => [e, i]));
    let out = "";
    rows.forEach((e, i) => {
      out += `<text x="2" y="${top + i * rowH + 13}">e${e}</text>` +
        `<line class="grid" x1="${left}" x2="${w}" y1="${top + (i + 1) * rowH}" y2="${top + (i + 1) * rowH}"/>`;
    });
    for (let k = 0; k <= 4; k++) {
      const t = now - win * k / 4;
      out += `<text x="${Math.max(left, x(t) - 14)}" y="${h - 3}">${k ? "-" + Math.round(win * k / 4) + "s" : "now"}</text>`;
    }
    let shown = 0;
    for (const t of tasks) {
      const r = rowOf.get(t.engine);
      if (r === undefined) continue;
      const t0 = t.started || t.submitted, t1 = t.completed || now;
      if (t1 < now - win) continue;
      const x0 = Math.max(left, x(t0)), x1 = Math.max(x0 + 2, x(t1));
      out += `<rect class="bar ${t.outcome}" data-task="${esc(t.id)}" data-outcome="${t.outcome}" ` +
        `x="${x0.toFixed(1)}" y="${top + r * rowH + 3}" width="${(x1 - x0).toFixed(1)}" height="${rowH - 6}" rx="1"/>`;
      shown++;
    }
    svg.innerHTML = out;
    $("stream-note").textContent = `${shown} task(s) in view` + (tasks.length >= 2000 ? " (the newest 2,000)" : "");
  }

  function renderFailures(list) {
    const box = $("failures");
    if (!list.length) { box.innerHTML = `<p class="muted">none</p>`; return; }
    const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.dataset.task));
    box.innerHTML = list.map((f) => {
      const when = f.completed ? new Date(f.completed * 1000).toLocaleTimeString() : "";
      return `<details class="failure ${f.outcome}" data-task="${esc(f.id)}"${open.has(f.id) ? " open" : ""}>` +
        `<summary><b>${esc(f.ename)}</b>: ${esc((f.evalue || "").slice(0, 160))} ` +
        `<span class="muted">engine ${esc(f.engine)} · ${when} · ${esc(f.id)}</span></summary>` +
        `<pre>${esc(f.traceback || f.evalue || "(no traceback recorded)")}</pre></details>`;
    }).join("");
  }

  async function tick() {
    try {
      state = await get("/api/state");
      period = Math.max(250, (state.period || 1) * 1000);
      renderState(state);
      const win = $("window").value;
      const tr = await get(`/api/tasks?window=${win}&limit=2000`);
      tasks = tr.tasks; tasksNow = tr.now;
      drawStream();
      const failed = (state.counts || {}).failed || 0;
      if (failed !== lastFailures || !document.querySelector("#failures details")) {
        lastFailures = failed;
        renderFailures((await get("/api/failures?limit=20")).failures);
      }
      document.body.dataset.updated = String(state.now);
    } catch (err) {
      setConn(false, "dashboard not answering");
    }
    setTimeout(tick, period);
  }

  const tip = $("tip");
  $("stream").addEventListener("mousemove", (ev) => {
    const id = ev.target.dataset && ev.target.dataset.task;
    const t = id && tasks.find((t) => t.id === id);
    if (!t) { tip.hidden = true; return; }
    const took = t.completed && t.started ? (t.completed - t.started).toFixed(3) + " s" : t.state;
    tip.textContent = `${t.id}\n${t.outcome} on engine ${t.engine}, ${took}` +
      (t.attempts > 1 ? `, ${t.attempts} attempts` : "") + (t.ename ? `\n${t.ename}` : "");
    tip.style.left = ev.clientX + 12 + "px"; tip.style.top = ev.clientY + 12 + "px"; tip.hidden = false;
  });
  $("stream").addEventListener("mouseleave", () => { tip.hidden = true; });
  $("window").addEventListener("change", drawStream);
  window.addEventListener("resize", drawStream);
  tick();
})();
