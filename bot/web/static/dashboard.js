"use strict";
// The owner's dashboard: status and latency, the binding table, pairing codes, the tool audit.
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function signedOut() {
  document.body.textContent = "Signed out. Run hearthbot web for a new sign-in link.";
}

async function call(method, url, body) {
  const options = {method, headers: {"X-CSRF-Token": csrf}};
  if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, options);
  if (response.status === 401) {
    signedOut();
    throw new Error("signed out");
  }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error);
  return data;
}

function cell(row, value, numeric) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "–" : value;
  if (numeric) td.className = "num";
  return td;
}

const seconds = (value) => (value === null ? null : value.toFixed(3));
const mb = (value) => (value === null ? "?" : `${Math.round(value)} MB`);

function chart(turns) {
  const svg = $("latency");
  svg.replaceChildren();
  const points = turns.filter((t) => t.total_seconds !== null);
  const top = Math.max(0.001, ...points.map((t) => t.total_seconds));
  const x = (i) => 40 + (points.length < 2 ? 270 : (i * 550) / (points.length - 1));
  const y = (v) => 145 - (v / top) * 130;
  for (const v of [0, top / 2, top]) {
    const line = document.createElementNS(SVG, "line");
    Object.entries({x1: 40, x2: 590, y1: y(v), y2: y(v)}).forEach(([k, n]) => line.setAttribute(k, n));
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", 2);
    label.setAttribute("y", y(v) + 4);
    label.textContent = v.toPrecision(2);
    svg.append(line, label);
  }
  for (const key of ["total", "first"]) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", key);
    line.setAttribute("points", points.map((t, i) =>
      `${x(i)},${y(t[`${key}_seconds`] ?? 0)}`).join(" "));
    svg.append(line);
    points.forEach((t, i) => {  // a dot per turn: one turn alone draws no line
      const dot = document.createElementNS(SVG, "circle");
      dot.setAttribute("class", key);
      dot.setAttribute("cx", x(i));
      dot.setAttribute("cy", y(t[`${key}_seconds`] ?? 0));
      dot.setAttribute("r", 3);
      svg.append(dot);
    });
  }
}

async function status() {
  const s = await call("GET", "/api/status");
  const list = $("status");
  list.replaceChildren();
  const platforms = Object.entries(s.platforms)
    .map(([name, up]) => `${name} ${up ? "connected" : "not connected"}`).join(", ");
  const last = s.turns[s.turns.length - 1];
  const facts = [
    ["Model", `${s.model.active} (${s.model.resident ? "resident" : "not resident"}` +
      (s.model.cold_start_seconds !== null ? `, warmed in ${s.model.cold_start_seconds.toFixed(2)} s)` : ")")],
    ["Last turn", last ? `first token ${seconds(last.first_token_seconds) ?? "–"} s, ` +
      `${last.tokens_per_second === null ? "–" : last.tokens_per_second.toFixed(1)} tokens/s` : "none yet"],
    ["Platforms", platforms],
    ["Inbox", `${s.inbox_depth} waiting`],
    ["Memory", `${mb(s.memory.process_mb)} used by hearthbot, ${mb(s.memory.available_mb)} of ` +
      `${mb(s.memory.total_mb)} free`],
    ["Voice", s.voice ? "on" : "off"],
  ];
  for (const [term, value] of facts) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    list.append(dt, dd);
  }
  const body = $("turns").tBodies[0];
  body.replaceChildren();
  for (const t of s.turns.slice().reverse().slice(0, 10)) {
    const row = body.insertRow();
    cell(row, t.at.replace("T", " ").replace("Z", ""));
    cell(row, t.persona);
    cell(row, t.model);
    cell(row, t.status);
    cell(row, seconds(t.first_token_seconds), true);
    cell(row, seconds(t.total_seconds), true);
    cell(row, t.tokens, true);
    cell(row, t.tokens_per_second === null ? null : t.tokens_per_second.toFixed(1), true);
  }
  chart(s.turns);
}

async function bindings() {
  const data = await call("GET", "/api/bindings");
  const body = $("bindings").tBodies[0];
  body.replaceChildren();
  for (const b of data.bindings) {
    const row = body.insertRow();
    row.dataset.id = b.id;
    for (const value of [b.id, b.platform, b.chat_kind ?? "any", b.peer ?? "anyone", b.group,
                         b.account, b.persona, b.source, b.note]) cell(row, value);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.disabled = b.source === "config";
    remove.title = b.source === "config" ? "Comes from the config file: remove it there" : "";
    remove.addEventListener("click", () => removeBinding(b.id));
    row.insertCell().append(remove);
  }
  const select = $("add-binding").elements.persona;
  if (!select.options.length) {
    for (const name of data.personas) select.add(new Option(name, name, name === "guest", name === "guest"));
  }
}

async function removeBinding(id) {
  try {
    await call("DELETE", `/api/bindings/${id}`);
    $("binding-note").textContent = `Binding ${id} removed.`;
  } catch (error) {
    $("binding-note").textContent = error.message;
  }
  await bindings();
}

$("add-binding").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const spec = Object.fromEntries(new FormData(form));
  try {
    const added = await call("POST", "/api/bindings", spec);
    $("binding-note").textContent = `Binding ${added.binding.id} added.`;
    form.reset();
  } catch (error) {
    $("binding-note").textContent = error.message;
  }
  await bindings();
});

$("pair").addEventListener("click", async () => {
  const code = await call("POST", "/api/pairing");
  $("code").textContent = `${code.display}  (valid ${code.minutes} minutes)`;
});

async function audit() {
  const data = await call("GET", "/api/audit?limit=50");
  const body = $("audit").tBodies[0];
  body.replaceChildren();
  for (const c of data.calls) {
    const row = body.insertRow();
    for (const value of [c.at.replace("T", " ").replace("Z", ""), c.persona,
                         `${c.platform}:${c.chat_id}`, c.tool, c.arguments]) cell(row, value);
    cell(row, c.outcome + (c.error ? ` (${c.error})` : "")).classList.toggle("bad", c.outcome !== "ok");
    cell(row, c.duration_ms, true);
  }
}

$("logout").addEventListener("click", async () => {
  await fetch("/logout", {method: "POST", headers: {"X-CSRF-Token": csrf}});
  signedOut();
});

Promise.all([status(), bindings(), audit()]).catch(() => {});
setInterval(() => status().catch(() => {}), 10000);
