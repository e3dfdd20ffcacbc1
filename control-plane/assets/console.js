// The console's live parts, no framework: a campaign page follows its event stream and
// refreshes its figures and chart; the campaigns and live pages refresh their numbers.
"use strict";

function setText(id, v) {
  const el = document.getElementById(id);
  if (el && el.textContent !== String(v)) el.textContent = String(v);
}

async function getJson(url) {
  const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(url + " answered " + r.status);
  return r.json();
}

function followCampaign(section) {
  const id = section.dataset.liveCampaign;
  // The chart's points since this tab first opened the campaign (kept across its reloads).
  const stored = "dialer-series-" + id;
  let series = { completed: [], failed: [] };
  try { series = JSON.parse(sessionStorage.getItem(stored)) || series; } catch (e) { /* start afresh */ }
  if (series.completed.length > 0) draw(series, Number(section.dataset.total));
  let pending = false;
  let status = (document.getElementById("status") || {}).textContent;
  async function refresh() {
    pending = false;
    const [s, c] = await Promise.all([
      getJson("/api/v1/campaigns/" + id + "/stats"),
      getJson("/api/v1/campaigns/" + id),
    ]);
    const done = s.completed_calls + s.failed_calls + s.skipped_calls;
    const pct = s.total_calls > 0 ? Math.min(100, Math.floor((done * 100) / s.total_calls)) : 0;
    document.getElementById("progress").value = pct;
    setText("progress-text", pct + " %");
    setText("live", s.queued_calls + s.in_progress_calls);
    for (const k of ["pending", "completed", "failed", "skipped"]) setText(k, s[k + "_calls"]);
    setText("attempts", s.attempts_total);
    setText("total", s.total_calls);
    if (c.status !== status) {
      // Its actions and waiting calls change with it: draw the page again.
      location.reload();
      return;
    }
    series.completed.push(s.completed_calls);
    series.failed.push(s.failed_calls);
    if (series.completed.length > 600) { series.completed.shift(); series.failed.shift(); }
    try { sessionStorage.setItem(stored, JSON.stringify(series)); } catch (e) { /* the chart still draws */ }
    draw(series, s.total_calls);
  }
  function soon() {
    if (!pending) {
      pending = true;
      setTimeout(() => refresh().catch(() => {}), 300);
    }
  }
  const events = new EventSource("/api/v1/campaigns/" + id + "/events");
  events.onmessage = soon;
  const kinds = ["call.queued", "call.started", "call.answered", "call.completed", "call.failed", "call.expired", "call.skipped",
    "campaign.status_changed", "campaign.completed", "stats"];
  for (const t of kinds) {
    events.addEventListener(t, soon);
  }
  setInterval(soon, 2000);
  soon();
}

function draw(series, total) {
  const n = series.completed.length;
  const max = Math.max(1, total);
  const pts = (vs) => vs.map((v, i) => ((n < 2 ? 0 : (i * 600) / (n - 1)).toFixed(1)) + "," + (120 - (v * 116) / max).toFixed(1)).join(" ");
  document.getElementById("line-completed").setAttribute("points", pts(series.completed));
  document.getElementById("line-failed").setAttribute("points", pts(series.failed));
}

function followCampaignRates() {
  const rows = document.querySelectorAll("tr[data-campaign]");
  if (rows.length === 0) return;
  const last = new Map();
  setInterval(async () => {
    for (const row of rows) {
      const id = row.dataset.campaign;
      try {
        const s = await getJson("/api/v1/campaigns/" + id + "/stats");
        const now = Date.now();
        const before = last.get(id);
        if (before) {
          const rate = ((s.attempts_total - before.n) * 1000) / (now - before.t);
          row.querySelector(".rate").textContent = rate.toFixed(1) + "/s";
        }
        last.set(id, { n: s.attempts_total, t: now });
      } catch (e) { /* the next tick tries again */ }
    }
  }, 3000);
}

function followLive(section) {
  const last = new Map();
  setInterval(async () => {
    try {
      const now = await getJson("/console/live?format=json");
      document.getElementById("global").value = now.calls_in_progress;
      setText("global-text", now.calls_in_progress + " / " + now.global_cap);
      for (const t of now.trunks) {
        const row = document.querySelector('tr[data-trunk="' + CSS.escape(t.trunk) + '"]');
        if (!row) continue;
        row.querySelector(".channels").textContent = t.channels;
        const before = last.get(t.trunk);
        const ms = Date.now();
        if (before) row.querySelector(".cps").textContent = (((t.attempts - before.n) * 1000) / (ms - before.t)).toFixed(1);
        last.set(t.trunk, { n: t.attempts, t: ms });
      }
    } catch (e) { /* the next tick tries again */ }
  }, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  const campaign = document.querySelector("[data-live-campaign]");
  if (campaign) followCampaign(campaign);
  followCampaignRates();
  const live = document.querySelector("[data-live-global]");
  if (live) followLive(live);
});
