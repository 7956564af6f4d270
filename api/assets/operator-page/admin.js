// The operator page: reads everything from the admin API with the page's
// session cookie and sends the session's CSRF token with every change.
// Every piece of data goes into the page as text (textContent, text
// nodes, attribute values): never as markup.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const SAMPLES = 120;
  const WATCH_MS = 120000;
  const FINAL = ["succeeded", "failed", "cancelled"];

  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  const $ = (id) => document.getElementById(id);

  // An element with attributes and children; strings become text nodes.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") el.textContent = String(value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      el.setAttribute(name, String(value));
    }
    return el;
  }

  function when(iso) {
    if (!iso) return "—";
    return String(iso).replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC");
  }

  function seconds(s) {
    if (s === null || s === undefined) return "—";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function say(text, bad) {
    const m = $("message");
    m.textContent = text;
    m.className = bad ? "error" : "ok";
  }

  class ApiError extends Error {}

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      window.location.assign("/admin/login");
      throw new ApiError("signed out");
    }
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (!r.ok) {
      const detail = data && data.detail ? data.detail : r.statusText;
      throw new ApiError(detail + " (" + r.status + ")");
    }
    return data;
  }

  // ---- queues -------------------------------------------------------------

  let knownQueues = [];

  function ended(q, minutes) {
    const t = (q.throughput || []).find((w) => w.minutes === minutes);
    if (!t) return "—";
    return t.succeeded + " ok · " + t.failed + " failed · " + t.cancelled + " cancelled";
  }

  function renderQueues(queues) {
    const rows = queues.map((q) => {
      const c = q.counts;
      const button = q.paused
        ? h("button", { type: "button", "data-action": "resume", "data-queue": q.queue }, "Resume")
        : h("button", { type: "button", "data-action": "pause", "data-queue": q.queue }, "Pause");
      return h(
        "tr",
        { "data-queue": q.queue, class: q.paused ? "paused" : null },
        h("td", {}, h("code", {}, q.queue)),
        h("td", { class: "n" }, c.scheduled),
        h("td", { class: "n" }, c.available),
        h("td", { class: "n" }, c.running),
        h("td", { class: "n" }, c.retryable),
        h("td", { class: "n" + (c.failed > 0 ? " bad" : "") }, c.failed),
        h("td", { class: "n" }, seconds(q.oldest_due_age_secs)),
        h("td", {}, ended(q, 1)),
        h("td", {}, ended(q, 5)),
        h("td", {}, ended(q, 60)),
        h("td", { class: "n" }, q.concurrency_limit === null ? "none" : q.concurrency_limit),
        h("td", { "data-field": "paused" }, q.paused ? "paused" : "running"),
        h("td", {}, button)
      );
    });
    $("queues").replaceChildren(...rows);

    const names = queues.map((q) => q.queue);
    if (names.join() !== knownQueues.join()) {
      knownQueues = names;
      const select = $("filter-queue");
      const chosen = select.value;
      select.replaceChildren(
        h("option", { value: "" }, "any"),
        ...names.map((n) => h("option", { value: n, selected: n === chosen }, n))
      );
    }
  }

  async function queueAction(action, queue) {
    try {
      const s = await api("POST", "/admin/v1/queues/" + encodeURIComponent(queue) + "/" + action);
      say("queue " + s.queue + " is " + (s.paused ? "paused" : "running"));
    } catch (e) {
      say(action + " " + queue + ": " + e.message, true);
    }
    await refresh();
  }

  // ---- chart ----------------------------------------------------------------

  const samples = [];

  function sample(queues) {
    let endedLastMinute = 0;
    let wait = 0;
    for (const q of queues) {
      const t = (q.throughput || []).find((w) => w.minutes === 1);
      if (t) endedLastMinute += t.succeeded + t.failed + t.cancelled;
      if (q.oldest_due_age_secs) wait = Math.max(wait, q.oldest_due_age_secs);
    }
    samples.push({ at: new Date(), ended: endedLastMinute, wait });
    if (samples.length > SAMPLES) samples.shift();
  }

  function renderChart() {
    const W = 640;
    const H = 180;
    const pad = { l: 48, r: 56, t: 12, b: 24 };
    const root = svg("svg", {
      viewBox: "0 0 " + W + " " + H,
      width: W,
      height: H,
      role: "img",
      "aria-label": "throughput and queue wait",
    });
    const maxEnded = Math.max(1, ...samples.map((s) => s.ended));
    const maxWait = Math.max(1, ...samples.map((s) => s.wait));
    // The samples so far fill the width; at most SAMPLES are kept.
    const x = (i) => pad.l + (i * (W - pad.l - pad.r)) / Math.max(1, samples.length - 1);
    const y = (v, max) => H - pad.b - (v / max) * (H - pad.t - pad.b);
    root.append(
      svg("line", { x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b, class: "axis" }),
      svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b, class: "axis" }),
      svg("line", { x1: W - pad.r, y1: pad.t, x2: W - pad.r, y2: H - pad.b, class: "axis" })
    );
    const label = (text, attrs) => {
      const t = svg("text", attrs);
      t.textContent = text;
      root.append(t);
    };
    label(String(maxEnded), { x: pad.l - 4, y: pad.t + 8, "text-anchor": "end", class: "ended" });
    label("0", { x: pad.l - 4, y: H - pad.b, "text-anchor": "end", class: "ended" });
    label(seconds(maxWait), { x: W - pad.r + 4, y: pad.t + 8, class: "wait" });
    label("0 s", { x: W - pad.r + 4, y: H - pad.b, class: "wait" });
    label("ended / last min", { x: pad.l, y: H - 6, class: "ended" });
    label("oldest due wait", { x: W - pad.r, y: H - 6, "text-anchor": "end", class: "wait" });
    if (samples.length > 0) {
      const first = samples[0].at.toLocaleTimeString();
      const last = samples[samples.length - 1].at.toLocaleTimeString();
      label(first + " – " + last, { x: (W - pad.l - pad.r) / 2 + pad.l, y: H - 6, "text-anchor": "middle", class: "time" });
    }
    const line = (key, max, cls) =>
      svg("polyline", {
        class: cls,
        fill: "none",
        points: samples.map((s, i) => x(i) + "," + y(s[key], max)).join(" "),
      });
    if (samples.length > 0) {
      root.append(line("ended", maxEnded, "ended"), line("wait", maxWait, "wait"));
    }
    $("chart").replaceChildren(root);
  }

  // ---- jobs -----------------------------------------------------------------

  const PAGE = 50;
  let cursor = null;
  let paged = false;

  function filter() {
    const f = {};
    const state = $("filter-state").value;
    const queue = $("filter-queue").value;
    const kind = $("filter-kind").value.trim();
    if (state) f.state = state;
    if (queue) f.queue = queue;
    if (kind) f.kind = kind;
    return f;
  }

  function jobButtons(job) {
    const buttons = [];
    if (["failed", "cancelled", "scheduled", "retryable"].includes(job.state)) {
      buttons.push(h("button", { type: "button", "data-action": "retry", "data-job": job.id }, "Retry"));
    }
    if (["scheduled", "available", "retryable"].includes(job.state)) {
      buttons.push(h("button", { type: "button", "data-action": "discard", "data-job": job.id }, "Discard"));
    }
    if (!FINAL.includes(job.state)) {
      buttons.push(h("button", { type: "button", "data-action": "cancel", "data-job": job.id }, "Cancel"));
    }
    return buttons;
  }

  function jobRow(job) {
    const codes = (job.errors || []).map((e) => "#" + e.attempt + " " + e.code).join(", ");
    return h(
      "tr",
      { "data-job-id": job.id },
      h("td", {}, h("button", { type: "button", class: "link", "data-action": "open", "data-job": job.id }, job.id)),
      h("td", {}, job.kind),
      h("td", {}, job.queue),
      h("td", { "data-field": "state" }, job.state + (job.cancel_requested ? " (cancelling)" : "")),
      h("td", { class: "n" }, job.attempt + " / " + job.max_attempts),
      h("td", { "data-field": "errors" }, codes || "—"),
      h("td", {}, when(job.created_at)),
      h("td", {}, when(job.finished_at)),
      h("td", { class: "actions" }, ...jobButtons(job))
    );
  }

  async function loadJobs(append) {
    const params = new URLSearchParams(filter());
    params.set("limit", String(PAGE));
    if (append && cursor) params.set("cursor", cursor);
    const page = await api("GET", "/admin/v1/jobs?" + params.toString());
    const rows = page.jobs.map(jobRow);
    if (append) $("jobs").append(...rows);
    else $("jobs").replaceChildren(...rows);
    if (page.jobs.length === 0 && !append) {
      $("jobs").replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "empty" }, "no jobs match")));
    }
    cursor = page.next_cursor || null;
    $("more").hidden = !cursor;
  }

  async function jobAction(action, id) {
    try {
      const job = await api("POST", "/admin/v1/jobs/" + encodeURIComponent(id) + "/" + action);
      say(action + ": job " + job.id + " is " + job.state);
      if (openJob === id) watchUntil = Date.now() + WATCH_MS;
    } catch (e) {
      say(action + " " + id + ": " + e.message, true);
    }
    await refresh();
  }

  async function bulk(action) {
    const f = filter();
    const what = Object.entries(f).map(([k, v]) => k + " " + v).join(", ") || "no filter";
    if (!window.confirm(action + " every job that matches: " + what + "?")) return;
    try {
      const r = await api("POST", "/admin/v1/jobs/bulk", { action, filter: f });
      say(r.action + ": " + r.count + " jobs" + (r.cancelling ? ", " + r.cancelling + " told to stop" : ""));
    } catch (e) {
      say("bulk " + action + ": " + e.message, true);
    }
    await refresh();
  }

  // ---- one job --------------------------------------------------------------

  let openJob = null;
  let watchUntil = 0;

  function field(dl, name, value) {
    dl.append(h("dt", {}, name), h("dd", { "data-field": name }, value === null || value === undefined ? "—" : value));
  }

  function renderDetail(job) {
    $("detail-section").hidden = false;
    $("detail-id").textContent = job.id;
    const dl = h("dl", {});
    field(dl, "state", job.state);
    field(dl, "kind", job.kind);
    field(dl, "queue", job.queue);
    field(dl, "owner", job.owner);
    field(dl, "stage", job.stage);
    field(dl, "progress", job.progress);
    field(dl, "priority", job.priority);
    field(dl, "attempt", job.attempt + " / " + job.max_attempts);
    field(dl, "cancel requested", job.cancel_requested ? "yes" : "no");
    field(dl, "run at", when(job.run_at));
    field(dl, "created", when(job.created_at));
    field(dl, "started", when(job.started_at));
    field(dl, "finished", when(job.finished_at));
    field(dl, "worker", job.lease_owner);
    field(dl, "lease expires", when(job.lease_expires_at));
    field(dl, "rescues", job.rescues);
    field(dl, "idempotency key", job.idempotency_key);
    field(dl, "schema version", job.schema_version);

    const errors = h("ol", { class: "errors" });
    for (const e of job.error_messages || []) {
      errors.append(
        h(
          "li",
          {},
          h("span", { class: "error-head" }, "attempt " + e.attempt + " at " + when(e.at) + ": " + e.code + (e.permanent ? " (permanent)" : "")),
          h("pre", { class: "error-message" }, e.message)
        )
      );
    }
    const buttons = jobButtons(job);
    buttons.push(h("button", { type: "button", "data-action": "reload", "data-job": job.id }, "Reload"));
    $("detail").replaceChildren(
      h("div", { class: "actions" }, ...buttons),
      dl,
      h("h3", {}, "Errors"),
      (job.error_messages || []).length ? errors : h("p", {}, "none"),
      h("h3", {}, "Payload"),
      h("pre", { class: "json" }, JSON.stringify(job.payload, null, 2)),
      h("h3", {}, "Result"),
      h("pre", { class: "json" }, job.result === null ? "—" : JSON.stringify(job.result, null, 2))
    );
  }

  async function openDetail(id) {
    try {
      const job = await api("GET", "/admin/v1/jobs/" + encodeURIComponent(id));
      openJob = job.id;
      renderDetail(job);
      // Settled: stop reading it again.
      if (FINAL.includes(job.state)) watchUntil = 0;
    } catch (e) {
      say("job " + id + ": " + e.message, true);
    }
  }

  // ---- workers --------------------------------------------------------------

  function renderWorkers(workers) {
    const rows = workers.map((w) =>
      h(
        "tr",
        { "data-worker": w.id, class: "status-" + w.status },
        h("td", {}, h("code", {}, w.id)),
        h("td", {}, w.host),
        h("td", { class: "n" }, w.pid),
        h("td", {}, w.version),
        h("td", {}, (w.queues || []).join(", ")),
        h("td", { class: "n" }, w.jobs_running),
        h("td", { class: "n" }, w.concurrency),
        h("td", {}, when(w.started_at)),
        h("td", {}, when(w.last_heartbeat_at)),
        h("td", {}, when(w.last_claim_at)),
        h("td", { "data-field": "status" }, w.status)
      )
    );
    if (rows.length === 0) {
      rows.push(h("tr", {}, h("td", { colspan: 11, class: "empty" }, "no worker has registered")));
    }
    $("workers").replaceChildren(...rows);
  }

  // ---- the loop -------------------------------------------------------------

  let busy = false;

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const [queues, workers] = await Promise.all([
        api("GET", "/admin/v1/queues"),
        api("GET", "/admin/v1/workers"),
      ]);
      renderQueues(queues.queues);
      sample(queues.queues);
      renderChart();
      renderWorkers(workers.workers);
      if (!paged) await loadJobs(false);
      // A job acted on from its detail is read again until it settles
      // (each read is in the access log, so only while watched).
      if (openJob && Date.now() < watchUntil) await openDetail(openJob);
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) {
      $("updated").textContent = "refresh failed: " + e.message;
    } finally {
      busy = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const action = button.getAttribute("data-action");
    const job = button.getAttribute("data-job");
    const queue = button.getAttribute("data-queue");
    if (queue && (action === "pause" || action === "resume")) queueAction(action, queue);
    else if (job && action === "open") openDetail(job);
    else if (job && action === "reload") openDetail(job);
    else if (job && ["retry", "discard", "cancel"].includes(action)) jobAction(action, job);
  });

  $("filter").addEventListener("submit", (event) => {
    event.preventDefault();
    paged = false;
    loadJobs(false).catch((e) => say("jobs: " + e.message, true));
  });

  $("bulk").addEventListener("submit", (event) => {
    event.preventDefault();
    bulk($("bulk-action").value);
  });

  $("more").addEventListener("click", () => {
    paged = true;
    loadJobs(true).catch((e) => say("jobs: " + e.message, true));
  });

  refresh();
  window.setInterval(refresh, REFRESH_MS);
})();
