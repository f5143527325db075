// The spanlake web console: a client of spanlake's REST API (the same
// routes as the SDK, the CLI's HTTP twin and pipelines), served by
// `spanlake serve` at `/`. Plain JavaScript, no build step, no library.
//
// Rules this file keeps (checked by server/src/console.rs tests):
// - Data is untrusted. Every value reaches the page through `textContent`
//   or DOM calls (`el`, `svg` below); markup is never parsed from strings.
// - The API key lives in this tab's sessionStorage and goes out only in the
//   Authorization header: never in a URL, a log or the page.
// - Every input has a label; dialogs are <dialog> opened modally (focus
//   moves in, Escape closes); status is a word and a symbol, not a colour.
"use strict";

const KEY_STORAGE = "spanlake.apiKey";
const ORG_STORAGE = "spanlake.org";

// ---------------------------------------------------------------- DOM helpers

/** An element: `attrs` are attributes (`on*` functions become listeners),
 *  children are nodes or strings (as text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element, built like `el`. */
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "value" && "value" in node && node.namespaceURI !== SVG_NS) {
      node.value = value;
    } else if (name === "checked" || name === "selected") {
      node[name] = Boolean(value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function announce(text) {
  const region = document.getElementById("announce");
  region.textContent = "";
  // A change of text is what screen readers announce.
  setTimeout(() => { region.textContent = text; }, 30);
}

let uniqueCounter = 0;
function uid(prefix) {
  uniqueCounter += 1;
  return `${prefix}-${uniqueCounter}`;
}

/** A labelled field: `control` gets an id the label points to. */
function field(labelText, control, hint) {
  if (!control.id) control.id = uid("f");
  const parts = [el("label", { for: control.id }, labelText), control];
  if (hint) {
    const hintNode = el("div", { class: "hint", id: uid("hint") }, hint);
    control.setAttribute("aria-describedby", hintNode.id);
    parts.push(hintNode);
  }
  return el("div", { class: "field" }, parts);
}

function select(options, value, attrs) {
  const node = el("select", attrs || {});
  for (const option of options) {
    const [optionValue, text] = Array.isArray(option) ? option : [option, option];
    node.append(el("option", { value: optionValue, selected: optionValue === value }, text));
  }
  return node;
}

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function formatNumber(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}

function formatTime(text) {
  if (!text) return "—";
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return text;
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function durationMs(run) {
  if (!run || !run.started || !run.finished) return null;
  const ms = new Date(run.finished).getTime() - new Date(run.started).getTime();
  return Number.isFinite(ms) ? Math.max(ms, 0) : null;
}

function formatDuration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** A cell's text: JSON values as JSON, strings as they are. */
function cellText(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// ---------------------------------------------------------------- the API

/** JSON.parse, keeping integers beyond 2^53 (cursors, `_xact_id`) exact:
 *  they become their digits as a string instead of a rounded number. */
function parseJson(text) {
  return JSON.parse(text, (key, value, context) => {
    if (typeof value === "number" && !Number.isSafeInteger(value) && context && typeof context.source === "string"
        && /^-?\d+$/.test(context.source)) {
      return context.source;
    }
    return value;
  });
}

class ApiFailure extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || `http_${status}`;
    this.details = error.details;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

/** One call of the REST API with the signed-in key; the parsed answer, or
 *  an ApiFailure with the server's code, message and details. */
async function api(method, path, body, options) {
  const headers = { Accept: "application/json" };
  const key = (options && options.key) || apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (options && options.signal) init.signal = options.signal;
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiFailure(0, { error: { code: "network", message: `cannot reach the server: ${e.message}` } });
  }
  const text = await response.text();
  let parsed = null;
  if (text) {
    try { parsed = parseJson(text); } catch (_) {
      parsed = { error: { code: `http_${response.status}`, message: text.slice(0, 500) } };
    }
  }
  if (!response.ok) {
    if (response.status === 401 && !(options && options.key)) {
      signOut("Your API key was refused (revoked or invalid); sign in again.");
    }
    throw new ApiFailure(response.status, parsed);
  }
  return parsed;
}

/** An error box for an API failure: code, message, and what its details
 *  say (a query's caret and hint, a refusal's rules). */
function errorBox(error, queryText) {
  if (!(error instanceof ApiFailure)) {
    return el("div", { class: "alert", role: "alert" }, String(error && error.message || error));
  }
  const box = el("div", { class: "alert", role: "alert" },
    el("div", {}, el("span", { class: "code" }, `${error.code}`), ` (HTTP ${error.status || "—"})`));
  if (error.code === "invalid_query" && Array.isArray(error.details)) {
    for (const d of error.details) box.append(diagnosticView(d, queryText));
  } else {
    box.append(el("pre", { class: "message" }, error.message));
    if (Array.isArray(error.details)) {
      const items = error.details
        .filter((d) => d && (d.message || d.rule))
        .map((d) => el("li", {}, d.rule ? `${d.rule}: ` : "", d.message || ""));
      if (items.length) box.append(el("ul", {}, items));
    }
  }
  return box;
}

/** One BTQL diagnostic: where (line and column), the query's line with a
 *  caret under the mistake, and the hint. */
function diagnosticView(d, queryText) {
  const where = `line ${d.line}, column ${d.column}`;
  const parts = [el("div", {}, el("strong", {}, d.code ? `${d.code}: ` : ""), d.message, ` (${where})`)];
  const lines = (queryText || "").split("\n");
  const line = lines[d.line - 1];
  if (line !== undefined) {
    // The caret spans the mistake when the server's rendering shows its
    // width; one character otherwise.
    let width = 1;
    const rendered = d.rendered || "";
    const caretLine = rendered.split("\n").find((l) => /\|\s*\^+/.test(l));
    if (caretLine) width = (caretLine.match(/\^+/) || ["^"])[0].length;
    const gutter = `${d.line} | `;
    const pad = " ".repeat(gutter.length + Math.max(d.column - 1, 0));
    parts.push(el("pre", { class: "diagnostic", "aria-label": `the query at ${where}` },
      gutter, line, "\n", pad, el("span", { class: "caret" }, "^".repeat(width))));
  } else if (d.rendered) {
    parts.push(el("pre", { class: "diagnostic" }, d.rendered));
  }
  if (d.help) parts.push(el("div", { class: "help" }, el("strong", {}, "help: "), d.help));
  return el("div", { class: "diagnostic-block" }, parts);
}

// ---------------------------------------------------------------- session

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  sessionStorage.removeItem(ORG_STORAGE);
  signInMessage = message || null;
  if (location.hash !== "#/") location.hash = "#/";
  else route();
}

let signInMessage = null;

function renderSession() {
  const box = clear(document.getElementById("session"));
  const org = sessionStorage.getItem(ORG_STORAGE);
  if (!apiKey()) return;
  box.append(el("span", {}, "org ", el("strong", { id: "org-name" }, org || "?")),
    el("button", { type: "button", id: "sign-out", onclick: () => signOut("Signed out.") }, "Sign out"));
}

function renderCrumbs(items) {
  const nav = clear(document.getElementById("crumbs"));
  items.forEach((item, i) => {
    if (i > 0) nav.append(el("span", { class: "sep", "aria-hidden": "true" }, "/"));
    nav.append(item.href ? el("a", { href: item.href }, item.text) : el("span", {}, item.text));
  });
}

function signInView(main) {
  renderCrumbs([]);
  const input = el("input", { type: "password", id: "api-key", autocomplete: "off", spellcheck: "false", required: true });
  const status = el("div", {});
  const form = el("form", { class: "panel signin", id: "sign-in-form", "aria-labelledby": "sign-in-title" },
    el("h1", { id: "sign-in-title" }, "Sign in"),
    signInMessage ? el("div", { class: "notice", role: "status" }, signInMessage) : null,
    field("API key", input, "A key from `spanlake apikey create --org NAME`. It is kept in this browser tab only (sessionStorage) and sent in the Authorization header."),
    el("button", { type: "submit", class: "primary", id: "sign-in" }, "Sign in"),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(status);
    const key = input.value.trim();
    if (!key) return;
    try {
      const answer = await api("POST", "/api/apikey/login", {}, { key });
      const org = (answer.org_info && answer.org_info[0]) || {};
      sessionStorage.setItem(KEY_STORAGE, key);
      sessionStorage.setItem(ORG_STORAGE, org.name || org.id || "");
      input.value = "";
      signInMessage = null;
      announce(`Signed in to org ${org.name || ""}`);
      route();
    } catch (e) {
      status.append(errorBox(e));
    }
  });
  main.append(form);
  input.focus();
}

// ---------------------------------------------------------------- projects

async function projectsView(main) {
  renderCrumbs([{ text: "Projects" }]);
  main.append(el("h1", {}, "Projects"));
  const list = el("div", { class: "panel" }, el("p", { class: "muted" }, "Loading projects…"));
  const nameInput = el("input", { type: "text", id: "new-project-name", autocomplete: "off" });
  const status = el("div", {});
  const form = el("form", { class: "panel row", "aria-label": "Create a project" },
    el("div", { class: "spacer" }, field("New project name", nameInput)),
    el("button", { type: "submit" }, "Create project"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(status);
    try {
      const project = await api("POST", "/v1/project", { name: nameInput.value.trim() });
      location.hash = `#/p/${encodeURIComponent(project.id)}/query`;
    } catch (e) { status.append(errorBox(e)); }
  });
  main.append(list, form);
  try {
    const answer = await api("GET", "/v1/project");
    clear(list);
    const projects = answer.objects || [];
    if (!projects.length) {
      list.append(el("p", {}, "No projects yet. Log spans with the SDK or `spanlake ingest`, or create one below."));
      return;
    }
    list.append(el("table", { class: "data", id: "projects" },
      el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Id"), el("th", {}, "Created"), el("th", {}, "Open"))),
      el("tbody", {}, projects.map((p) => el("tr", {},
        el("td", {}, el("a", { href: `#/p/${encodeURIComponent(p.id)}/query` }, p.name)),
        el("td", { class: "mono" }, p.id),
        el("td", {}, formatTime(p.created)),
        el("td", {}, el("a", { href: `#/p/${encodeURIComponent(p.id)}/query` }, "Query"), " · ",
          el("a", { href: `#/p/${encodeURIComponent(p.id)}/automations` }, "Automations")))))));
  } catch (e) {
    clear(list).append(errorBox(e));
  }
}

const projectCache = new Map();
async function loadProject(id) {
  if (!projectCache.has(id)) projectCache.set(id, await api("GET", `/v1/project/${encodeURIComponent(id)}`));
  return projectCache.get(id);
}

async function projectView(main, projectId, tab) {
  let project;
  try {
    project = await loadProject(projectId);
  } catch (e) {
    renderCrumbs([{ text: "Projects", href: "#/" }]);
    main.append(errorBox(e));
    return;
  }
  renderCrumbs([{ text: "Projects", href: "#/" }, { text: project.name }]);
  const base = `#/p/${encodeURIComponent(project.id)}`;
  main.append(el("h1", {}, project.name, " ", el("span", { class: "muted mono" }, project.id)),
    el("nav", { class: "tabs", "aria-label": "Project" },
      el("a", { href: `${base}/query`, "aria-current": tab === "query" ? "page" : false, id: "tab-query" }, "Query"),
      el("a", { href: `${base}/automations`, "aria-current": tab === "automations" ? "page" : false, id: "tab-automations" }, "Automations")));
  if (tab === "automations") await automationsView(main, project);
  else queryView(main, project);
}

// ---------------------------------------------------------------- query

function quoted(text) {
  return `'${String(text).replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

function examples(project) {
  const from = `project_logs(${quoted(project.id)})`;
  return {
    btql: `select: id, span_attributes.name as name, created, scores, metadata\n| from: ${from} spans\n| sort: created desc\n| limit: 50`,
    sql: `SELECT id, span_attributes.name AS name, created\nFROM project_logs(${quoted(project.id)}, shape => 'spans')\nORDER BY created DESC\nLIMIT 50`,
    ast: JSON.stringify({
      select: [{ expr: { op: "ident", name: ["id"] }, alias: "id" }, { expr: { op: "ident", name: ["created"] }, alias: "created" }],
      from: { op: "function", name: { op: "ident", name: ["project_logs"] }, args: [{ op: "literal", value: project.id }] },
      sort: [{ expr: { op: "ident", name: ["created"] }, dir: "desc" }],
      limit: 50,
    }, null, 2),
  };
}

/** Rows as a table; columns in order of first appearance. */
function rowsTable(rows, attrs) {
  const columns = [];
  for (const row of rows) for (const key of Object.keys(row)) if (!columns.includes(key)) columns.push(key);
  return el("table", Object.assign({ class: "data" }, attrs || {}),
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, columns.map((c) => {
      const text = cellText(row[c]);
      return text === null ? el("td", {}, el("span", { class: "null" }, "null")) : el("td", { title: text.length > 200 ? text : null }, text);
    })))));
}

function queryView(main, project) {
  const ex = examples(project);
  const saved = sessionStorage.getItem(`spanlake.query.${project.id}`);
  const editor = el("textarea", { class: "code", id: "query-text", rows: 8, spellcheck: "false", autocomplete: "off" });
  editor.value = saved || ex.btql;
  const form = select([["", "Insert an example…"], ["btql", "Pipe BTQL"], ["sql", "SQL"], ["ast", "JSON AST"]], "", { id: "query-example" });
  form.addEventListener("change", () => {
    if (form.value) { editor.value = ex[form.value]; form.value = ""; editor.focus(); }
  });
  const viewTable = el("input", { type: "radio", name: "query-view", id: "view-table", value: "table", checked: true });
  const viewJson = el("input", { type: "radio", name: "query-view", id: "view-json", value: "json" });
  const runButton = el("button", { type: "submit", class: "primary", id: "run-query" }, "Run query");
  const prevButton = el("button", { type: "button", id: "prev-page", disabled: true }, "← Previous page");
  const nextButton = el("button", { type: "button", id: "next-page", disabled: true }, "Next page →");
  const summary = el("div", { id: "query-summary", class: "muted", role: "status" });
  const results = el("div", { id: "query-results" });
  const state = { text: "", cursors: [null], page: null };

  const show = () => {
    clear(results);
    if (!state.page) return;
    const rows = state.page.data || [];
    if (viewJson.checked) results.append(el("pre", { class: "json", id: "query-json" }, JSON.stringify(rows, null, 2)));
    else if (rows.length) results.append(el("div", { class: "scroll" }, rowsTable(rows, { id: "query-table" })));
    else results.append(el("p", {}, "No rows."));
  };
  const run = async (cursor) => {
    clear(results);
    summary.textContent = "Running…";
    runButton.disabled = true;
    try {
      const body = { query: state.text, fmt: "json" };
      if (cursor) body.cursor = cursor;
      const started = performance.now();
      state.page = await api("POST", "/btql", body);
      const ms = performance.now() - started;
      const rows = state.page.data || [];
      const pageNo = state.cursors.length;
      summary.textContent = `${rows.length} row${rows.length === 1 ? "" : "s"} on page ${pageNo}${state.page.cursor ? " (more follow)" : ""} · ${formatDuration(ms)}`;
      nextButton.disabled = !state.page.cursor;
      prevButton.disabled = state.cursors.length <= 1;
      show();
      announce(summary.textContent);
    } catch (e) {
      state.page = null;
      summary.textContent = "The query failed.";
      nextButton.disabled = true;
      prevButton.disabled = state.cursors.length <= 1;
      results.append(errorBox(e, state.text));
    } finally {
      runButton.disabled = false;
    }
  };
  const queryForm = el("form", { class: "panel", id: "query-form", "aria-label": "BTQL query" },
    field("BTQL query (pipe BTQL, SQL, or a JSON AST)", editor, "Ctrl+Enter runs it. `limit:` is the page size; more rows come with Next page."),
    el("div", { class: "row" }, runButton, field("Example", form),
      el("fieldset", { class: "row" }, el("legend", {}, "Show results as"),
        el("label", { class: "inline", for: "view-table" }, viewTable, "Table"),
        el("label", { class: "inline", for: "view-json" }, viewJson, "JSON")),
      el("span", { class: "spacer" }), prevButton, nextButton));
  queryForm.addEventListener("submit", (event) => {
    event.preventDefault();
    state.text = editor.value;
    sessionStorage.setItem(`spanlake.query.${project.id}`, state.text);
    state.cursors = [null];
    run(null);
  });
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); queryForm.requestSubmit(); }
  });
  viewTable.addEventListener("change", show);
  viewJson.addEventListener("change", show);
  nextButton.addEventListener("click", () => {
    if (!state.page || !state.page.cursor) return;
    state.cursors.push(state.page.cursor);
    run(state.page.cursor);
  });
  prevButton.addEventListener("click", () => {
    if (state.cursors.length <= 1) return;
    state.cursors.pop();
    run(state.cursors[state.cursors.length - 1]);
  });
  main.append(queryForm, summary, results);
  editor.focus();
}

// ---------------------------------------------------------------- automations

const STATUS_SYMBOL = { active: "●", paused: "‖", behind: "⚠", failing: "✗", running: "…", succeeded: "✓", failed: "✗", ok: "✓", fail: "✗", notrun: "–" };

function statusBadge(word, cls, id) {
  return el("span", { class: `status ${cls || word}`, id }, el("span", { "aria-hidden": "true" }, STATUS_SYMBOL[cls || word] || "•"), word);
}

/** The one status of an automation: paused, failing (its last run failed),
 *  behind (its last run hit its row cap), or active. */
function overallStatus(automation, status) {
  if (automation.status === "paused") return "paused";
  const last = status && status.last_run;
  if (last && last.status === "failed") return "failing";
  if (last && last.status === "behind") return "behind";
  return "active";
}

function kindText(automation) {
  return automation.kind === "export" ? "S3 export" : "Data retention";
}

function dataText(automation) {
  const c = automation.config || {};
  if (automation.kind === "retention") return `project logs older than ${c.retention_days} day${c.retention_days === 1 ? "" : "s"}`;
  if (c.data === "query") return "custom BTQL";
  return c.data;
}

function intervalText(automation) {
  const c = automation.config || {};
  return c.interval || (automation.kind === "export" ? "1h" : "24h");
}

function keepingUpText(status) {
  if (!status || status.keeping_up === null || status.keeping_up === undefined) return "not run yet";
  return status.keeping_up ? "yes" : "no: behind, more data waits";
}

function lastRunText(status) {
  const last = status && status.last_run;
  if (!last) return "never";
  return `${last.status} ${formatTime(last.started)} · ${formatNumber(last.rows)} rows`;
}

async function automationsView(main, project) {
  const holder = el("div", { class: "panel", id: "automations-panel" }, el("p", { class: "muted" }, "Loading automations…"));
  const newButton = el("button", { type: "button", class: "primary", id: "new-automation", onclick: () => openAutomationDialog(project, null, reload) }, "New automation");
  const refresh = el("button", { type: "button", id: "refresh-automations", onclick: () => reload() }, "Refresh");
  main.append(el("div", { class: "row" }, el("h2", {}, "Automations"), el("span", { class: "spacer" }), refresh, newButton), holder);
  async function reload() {
    let automations;
    try {
      automations = (await api("GET", `/v1/project_automation?project_id=${encodeURIComponent(project.id)}`)).objects || [];
    } catch (e) { clear(holder).append(errorBox(e)); return; }
    const statuses = await Promise.all(automations.map((a) =>
      api("GET", `/v1/project_automation/${encodeURIComponent(a.id)}/status`).catch((e) => ({ error: e }))));
    clear(holder);
    if (!automations.length) {
      holder.append(el("p", {}, "No automations yet: export this project's logs to S3, or delete old logs with a retention automation."));
      return;
    }
    holder.append(el("table", { class: "data", id: "automations" },
      el("thead", {}, el("tr", {}, ["Name", "Kind", "Data", "Destination", "Interval", "Status", "Last run", "Keeping up", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, automations.map((a, i) => {
        const status = statuses[i];
        const overall = status.error ? "failing" : overallStatus(a, status);
        return el("tr", { "data-automation": a.name },
          el("td", {}, el("strong", {}, a.name), a.description ? el("div", { class: "muted" }, a.description) : null),
          el("td", {}, kindText(a)),
          el("td", {}, dataText(a)),
          el("td", { class: "mono" }, a.kind === "export" ? a.config.export_path : "this project's logs"),
          el("td", {}, intervalText(a)),
          el("td", { class: "cell-status" }, statusBadge(overall)),
          el("td", {}, status.error ? status.error.message : lastRunText(status)),
          el("td", {}, status.error ? "—" : keepingUpText(status)),
          el("td", {}, el("div", { class: "row" },
            el("button", { type: "button", class: "open-status", "aria-label": `Status of ${a.name}`, onclick: () => openStatusDialog(project, a, reload) }, "Status…"),
            el("button", { type: "button", class: "open-edit", "aria-label": `Edit ${a.name}`, onclick: () => openAutomationDialog(project, a, reload) }, "Edit…"))));
      }))));
  }
  await reload();
}

// ---------------------------------------------------------------- dialogs

/** A modal dialog: focus moves into it, Escape closes it, and it is
 *  removed from the page when closed. */
function modal(title, body, foot, options) {
  const titleId = uid("dialog-title");
  const closeButton = el("button", { type: "button", class: "dialog-close", "aria-label": "Close" }, "✕");
  const dialog = el("dialog", { "aria-labelledby": titleId, class: (options && options.small) ? "small" : null, id: options && options.id },
    el("div", { class: "dialog-head" }, el("h2", { id: titleId }, title), closeButton),
    el("div", { class: "dialog-body" }, body),
    foot ? el("div", { class: "dialog-foot" }, foot) : null);
  const opener = document.activeElement;
  closeButton.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (options && options.onClose) options.onClose();
    if (opener && opener.isConnected && opener.focus) opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  const first = dialog.querySelector("input:not([type=hidden]):not([readonly]), textarea, select, .dialog-body button");
  (options && options.focus ? options.focus : first || closeButton).focus();
  return dialog;
}

/** Ask before doing something that cannot be undone; resolves to true
 *  when confirmed. */
function confirmAction(title, text, actionLabel) {
  return new Promise((resolve) => {
    let answer = false;
    const yes = el("button", { type: "button", class: "danger", id: "confirm-yes" }, actionLabel);
    const no = el("button", { type: "button", id: "confirm-no" }, "Cancel");
    const dialog = modal(title, el("p", { id: "confirm-text" }, text), [yes, no],
      { small: true, focus: no, id: "confirm-dialog", onClose: () => resolve(answer) });
    yes.addEventListener("click", () => { answer = true; dialog.close(); });
    no.addEventListener("click", () => dialog.close());
  });
}

const EXPORT_STEPS = ["assume", "connect", "write", "read", "delete"];

/** The steps of an export test: each with its outcome and message (the
 *  fix of a failure is in it); steps after a failure did not run. */
function testStepsView(answer, withRole) {
  const steps = answer.steps || [];
  const expected = withRole ? EXPORT_STEPS : EXPORT_STEPS.slice(1);
  const failed = steps.find((s) => !s.ok);
  const items = expected.map((name) => {
    const step = steps.find((s) => s.step === name);
    const outcome = !step ? statusBadge("not run", "notrun") : step.ok ? statusBadge("ok") : statusBadge("FAIL", "fail");
    return el("li", { "data-step": name, "data-outcome": !step ? "notrun" : step.ok ? "ok" : "fail" },
      el("strong", {}, name === "read" ? "read back" : name), outcome,
      el("span", { class: "message" }, step ? step.message : "not run: an earlier step failed"));
  });
  return el("div", { id: "test-result" },
    el("p", { role: "status", id: "test-verdict" }, answer.ok
      ? "✓ Every step passed: spanlake can write, read back and delete under the export path."
      : `✗ The test failed at step “${failed ? failed.step : "?"}”. The message says why and what to fix.`),
    answer.external_id ? el("p", { class: "muted" }, "External id presented: ", el("code", {}, answer.external_id),
      " (an export not saved yet has no id; once saved it presents its own).") : null,
    el("ol", { class: "steps" }, items));
}

/** The preview of a retention automation and the chart of rows per day. */
function retentionPreviewView(preview, project) {
  const facts = [
    ["Cutoff", `${formatTime(preview.cutoff)} (rows created before it are deleted)`],
    ["Rows to delete", formatNumber(preview.rows)],
    ["Traces whose every span goes", preview.traces === null || preview.traces === undefined ? "unknown" : formatNumber(preview.traces)],
    ["Files to drop whole", formatNumber(preview.files_to_drop)],
    ["Files to rewrite", formatNumber(preview.files_to_rewrite)],
    ["Bytes to reclaim", formatBytes(preview.bytes_to_reclaim)],
    ["Purgeable now (past the grace period)", `${formatNumber(preview.files_purgeable_now)} files, ${formatBytes(preview.bytes_purgeable_now)}`],
  ];
  const chartHolder = el("div", { id: "retention-chart-holder" }, el("p", { class: "muted" }, "Loading rows per day…"));
  rowsPerDay(project).then((days) => {
    clear(chartHolder).append(retentionChart(days, preview.cutoff));
  }).catch((e) => clear(chartHolder).append(errorBox(e)));
  return el("div", { id: "retention-preview" },
    el("p", { role: "status" }, "Preview: nothing was deleted. A run now would do this:"),
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    chartHolder);
}

/** Rows per UTC day of `created`, from BTQL over the same API. */
async function rowsPerDay(project) {
  const query = `dimensions: day(created) as day\n| measures: count(1) as rows\n| from: project_logs(${quoted(project.id)})`;
  const days = [];
  let cursor = null;
  for (let page = 0; page < 20; page += 1) {
    const body = { query, fmt: "json" };
    if (cursor) body.cursor = cursor;
    const answer = await api("POST", "/btql", body);
    for (const row of answer.data || []) if (row.day) days.push({ day: row.day, rows: Number(row.rows) });
    cursor = answer.cursor;
    if (!cursor) break;
  }
  days.sort((a, b) => (a.day < b.day ? -1 : 1));
  return days;
}

/** An axis from 0 over `max`: a round step (1, 2 or 5 times a power of
 *  ten; whole units when `whole`) and the top, a multiple of it. */
function axis(max, whole) {
  const raw = Math.max(max, whole ? 1 : 1e-9) / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * power).find((candidate) => candidate >= raw);
  if (whole) step = Math.max(1, Math.round(step));
  return { step, top: step * Math.max(1, Math.ceil(max / step)) };
}

/** Bars of rows per day; days before the cutoff hatched (deleted), the
 *  cutoff a labelled dashed line. Every bar has a title with its figures. */
function retentionChart(days, cutoffText) {
  const width = 760; const height = 240; const left = 56; const right = 16; const top = 24; const bottom = 44;
  const cutoff = new Date(cutoffText).getTime();
  if (!days.length) return el("p", { id: "retention-chart-empty" }, "The project has no rows with a `created` time to chart.");
  const dayMs = 86400000;
  const first = new Date(days[0].day).getTime();
  const last = new Date(days[days.length - 1].day).getTime();
  const start = Math.min(first, cutoff - dayMs);
  const end = Math.max(last + dayMs, cutoff + dayMs);
  const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
  const rowsAxis = axis(Math.max(...days.map((d) => d.rows)), true);
  const maxRows = rowsAxis.top;
  const y = (n) => top + (1 - n / maxRows) * (height - top - bottom);
  const chart = svg("svg", { class: "chart", id: "retention-chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "retention-chart-title" },
    svg("title", { id: "retention-chart-title" }, `Rows per day of created (UTC); the cutoff ${formatTime(cutoffText)} is marked, earlier days are deleted`),
    svg("defs", {}, svg("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
      svg("rect", { width: 6, height: 6, fill: "#fbe3e1" }), svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "hatch-line" }))));
  for (let n = 0; n <= maxRows; n += rowsAxis.step) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(n), y2: y(n), class: "grid" }),
      svg("text", { x: left - 6, y: y(n) + 4, "text-anchor": "end" }, formatNumber(n)));
  }
  chart.append(svg("line", { x1: left, x2: left, y1: top, y2: height - bottom, class: "axis" }),
    svg("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  const barWidth = Math.max(2, x(start + dayMs) - x(start) - 2);
  const labelEvery = Math.max(1, Math.ceil(days.length / 8));
  days.forEach((d, i) => {
    const t = new Date(d.day).getTime();
    const expired = t + dayMs <= cutoff;
    const straddles = !expired && t < cutoff;
    const note = expired ? "deleted" : straddles ? "the cutoff falls in this day: rows before it are deleted" : "kept";
    chart.append(svg("rect", { x: x(t) + 1, y: y(d.rows), width: barWidth, height: Math.max(0, y(0) - y(d.rows)), class: expired ? "bar expired" : "bar", "data-day": d.day.slice(0, 10), "data-rows": d.rows },
      svg("title", {}, `${d.day.slice(0, 10)}: ${formatNumber(d.rows)} rows, ${note}`)));
    if (i % labelEvery === 0) chart.append(svg("text", { x: x(t) + barWidth / 2, y: height - bottom + 16, "text-anchor": "middle" }, d.day.slice(5, 10)));
  });
  chart.append(svg("line", { x1: x(cutoff), x2: x(cutoff), y1: top - 8, y2: height - bottom, class: "cutoff", id: "cutoff-line" }),
    svg("text", { x: x(cutoff) + 4, y: top - 10, class: "cutoff-label" }, `cutoff ${formatTime(cutoffText).slice(0, 16)}`),
    svg("text", { x: left, y: height - 8 }, "rows per day of created (UTC)"));
  return el("div", {}, chart, el("div", { class: "legend" },
    el("span", {}, el("span", { class: "swatch rows", "aria-hidden": "true" }), "rows kept"),
    el("span", {}, el("span", { class: "swatch expired", "aria-hidden": "true" }), "rows deleted (hatched, before the cutoff)"),
    el("span", {}, "- - - the cutoff")));
}

/** The role helper: the external id and the two policies to copy. */
function roleHelper(project, automation, exportPath) {
  const principal = el("input", { type: "text", id: "role-principal", placeholder: "arn:aws:iam::123456789012:user/spanlake", autocomplete: "off" });
  const out = el("div", { id: "role-policy" });
  const load = async () => {
    clear(out).append(el("p", { class: "muted" }, "Loading…"));
    try {
      const p = principal.value.trim();
      const answer = automation
        ? await api("GET", `/v1/project_automation/${encodeURIComponent(automation.id)}/role_policy${p ? `?principal=${encodeURIComponent(p)}` : ""}`)
        : await api("POST", "/v1/project_automation/role_policy", { project_id: project.id, export_path: exportPath(), principal: p || undefined });
      clear(out).append(
        el("dl", { class: "facts" },
          el("dt", {}, answer.external_id_exact ? "External id" : "External id (pattern)"), el("dd", {}, el("code", { id: "role-external-id" }, answer.external_id)),
          el("dt", {}, "Bucket"), el("dd", {}, el("code", {}, answer.bucket)),
          el("dt", {}, "Prefix"), el("dd", {}, el("code", {}, answer.prefix || "(the whole bucket)"))),
        el("ul", {}, (answer.notes || []).map((n) => el("li", {}, n))),
        copyBlock("Trust policy", answer.trust_policy, "trust-policy"),
        copyBlock("Permissions policy", answer.permissions_policy, "permissions-policy"));
    } catch (e) { clear(out).append(errorBox(e)); }
  };
  return el("div", { class: "panel", id: "role-helper" },
    el("h3", {}, "Role setup"),
    el("p", { class: "muted" }, "spanlake assumes this role with STS AssumeRole and the external id below; create the role in IAM with these two documents, then paste its ARN above. The same is printed by `spanlake automation role-policy NAME`."),
    field("Principal that assumes the role (optional: the ARN spanlake serve runs as)", principal),
    el("button", { type: "button", id: "role-policy-refresh", onclick: load }, "Show the policies"), out);
}

function copyBlock(title, value, id) {
  const text = JSON.stringify(value, null, 2);
  const pre = el("pre", { class: "json", id, tabindex: "0", "aria-label": title }, text);
  const status = el("span", { class: "muted", role: "status" });
  const copy = el("button", { type: "button", "aria-label": `Copy the ${title.toLowerCase()}` }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = "copied";
    } catch (_) {
      // No clipboard (an insecure origin): select the text for Ctrl+C.
      const range = document.createRange();
      range.selectNodeContents(pre);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      status.textContent = "selected: press Ctrl+C";
    }
  });
  return el("div", {}, el("div", { class: "row" }, el("h3", {}, title), copy, status), pre);
}

/** Validation as you type of a custom BTQL export: the query is run (its
 *  first page) after a pause in typing; its rows or its error show. */
function liveQueryCheck(editor, out) {
  let timer = null;
  let inflight = null;
  const check = async () => {
    if (inflight) inflight.abort();
    const text = editor.value;
    if (!text.trim()) { clear(out); return; }
    inflight = new AbortController();
    clear(out).append(el("p", { class: "muted" }, "Checking…"));
    try {
      const answer = await api("POST", "/btql", { query: text, fmt: "json" }, { signal: inflight.signal });
      const rows = answer.data || [];
      clear(out).append(el("p", { class: "notice", id: "btql-valid" }, `✓ The query is valid: ${rows.length} row${rows.length === 1 ? "" : "s"} on its first page${answer.cursor ? " (more follow)" : ""}. Each run exports its rows over the spans that changed since the last run.`));
      if (rows.length) out.append(el("div", { class: "scroll" }, rowsTable(rows.slice(0, 5), { id: "btql-preview" })));
    } catch (e) {
      if (e.name === "AbortError") return;
      clear(out).append(errorBox(e, text));
    }
  };
  editor.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(check, 600);
  });
  if (editor.value.trim()) check();
}

/** The create / edit dialog of an automation (`existing` null to create). */
function openAutomationDialog(project, existing, onSaved) {
  const c = (existing && existing.config) || {};
  const editing = Boolean(existing);
  const name = el("input", { type: "text", id: "a-name", value: existing ? existing.name : "", autocomplete: "off", required: true });
  const description = el("textarea", { id: "a-description", rows: 2 });
  description.value = existing ? existing.description : "";
  const kindExport = el("input", { type: "radio", name: "a-kind", id: "a-kind-export", value: "export", checked: !existing || existing.kind === "export", disabled: editing });
  const kindRetention = el("input", { type: "radio", name: "a-kind", id: "a-kind-retention", value: "retention", checked: existing && existing.kind === "retention", disabled: editing });

  // Export fields.
  const dataChoice = (value, text) => el("label", { class: "inline", for: `a-data-${value}` },
    el("input", { type: "radio", name: "a-data", id: `a-data-${value}`, value, checked: (c.data || "spans") === value }), text);
  const btql = el("textarea", { class: "code", id: "a-btql", rows: 5, spellcheck: "false" });
  btql.value = c.btql || `select: id, span_attributes.name as name, created, scores\n| from: project_logs(${quoted(project.id)})`;
  const btqlCheck = el("div", { id: "btql-check", "aria-live": "polite" });
  const btqlField = el("div", {}, field("Custom BTQL query", btql, "Validated as you type: spanlake runs its first page."), btqlCheck);
  const exportPath = el("input", { type: "text", id: "a-export-path", value: c.export_path || "", placeholder: "s3://bucket/prefix", readonly: editing, autocomplete: "off" });
  const roleArn = el("input", { type: "text", id: "a-role-arn", value: c.role_arn || "", placeholder: "arn:aws:iam::123456789012:role/spanlake-export", autocomplete: "off" });
  const format = select([["parquet", "Parquet"], ["jsonl", "JSON Lines"]], c.format || "parquet", { id: "a-format" });
  const interval = select(["5m", "30m", "1h", "4h", "12h", "24h"], c.interval || "1h", { id: "a-interval" });
  if (c.interval && !["5m", "30m", "1h", "4h", "12h", "24h"].includes(c.interval)) interval.append(el("option", { value: c.interval, selected: true }, c.interval));
  const batchSize = el("input", { type: "number", id: "a-batch-size", min: 1, value: c.batch_size ?? "", placeholder: "1000" });
  const partitioning = select([["day", "day (date=YYYY-MM-DD)"], ["hour", "hour (date=…/hour=HH)"], ["none", "none"]], c.partitioning || "day", { id: "a-partitioning" });
  const compression = el("select", { id: "a-compression" });
  const fillCompression = () => {
    const options = format.value === "jsonl" ? [["none", "none"], ["gzip", "gzip"]] : [["zstd", "zstd (level 3)"], ["snappy", "snappy"], ["none", "none"]];
    const wanted = compression.value || c.compression;
    clear(compression);
    for (const [v, t] of options) compression.append(el("option", { value: v, selected: v === wanted }, t));
  };
  fillCompression();
  format.addEventListener("change", fillCompression);
  const maxFileBytes = el("input", { type: "text", id: "a-max-file-bytes", value: c.max_file_bytes || "", placeholder: "256MiB" });
  const maxRows = el("input", { type: "number", id: "a-max-rows", min: 1, value: c.max_rows_per_run ?? "", placeholder: "100000" });
  const traceIdle = el("input", { type: "text", id: "a-trace-idle", value: c.trace_idle || "", placeholder: "0s (off)" });
  const endpoint = el("input", { type: "text", id: "a-endpoint", value: c.endpoint || "", placeholder: "https://s3.example.com (S3-compatible servers only)", autocomplete: "off" });
  const engine = el("input", { type: "text", id: "a-engine", value: c.engine || "", placeholder: "local", autocomplete: "off" });
  const roleHolder = el("div", {});
  const roleButton = el("button", { type: "button", id: "role-setup" }, "Role setup…");
  roleButton.addEventListener("click", () => {
    if (roleHolder.firstChild) { clear(roleHolder); return; }
    roleHolder.append(roleHelper(project, editing ? existing : null, () => exportPath.value.trim()));
    roleHolder.querySelector("#role-policy-refresh").click();
  });
  // An export of an experiment or dataset (made over the API or the CLI)
  // shows which, read-only: it is fixed after creation.
  const exportedObject = c.object_id
    ? field("Exports", el("input", { type: "text", id: "a-object", value: `${c.object_type} ${c.object_id}`, readonly: true }),
      "Fixed after creation: create another export for another experiment or dataset.")
    : null;
  const exportSection = el("div", { id: "export-fields" },
    el("fieldset", {}, el("legend", {}, "Data to export"),
      dataChoice("traces", "Traces (one summary row per trace)"), dataChoice("spans", "Spans (one row per span)"), dataChoice("query", "Custom BTQL")),
    btqlField,
    exportedObject,
    field("Export path", exportPath, editing ? "Fixed after creation: create another export to write elsewhere." : "Where files go: s3://bucket/prefix. Fixed after creation."),
    el("div", { class: "row" }, el("div", { class: "spacer" }, field("Role ARN", roleArn, "The IAM role spanlake assumes (with this export's external id) to write.")), roleButton),
    roleHolder,
    el("div", { class: "grid2" }, field("Format", format), field("Interval", interval, "How often it runs.")),
    el("details", { id: "a-advanced" }, el("summary", {}, "Advanced"),
      el("div", { class: "grid2" },
        field("Batch size (rows)", batchSize, "Rows read, encoded and flushed together; bounds memory. Default 1000."),
        field("Partitioning", partitioning, "Hive folders of the UTC created time."),
        field("Compression", compression),
        field("Max file size", maxFileBytes, "A file is closed past this size, e.g. 256MiB (default)."),
        field("Max rows per run", maxRows, "A run stops at the commit reaching this and reports behind. Default 100000."),
        field("Trace idle (traces only)", traceIdle, "Export a trace once its spans have been quiet this long."),
        field("S3 endpoint", endpoint, "Only for S3-compatible servers; the operator must allow it (--allow-endpoint)."),
        field("Engine", engine, "Where runs execute: local (default), or ballista://HOST:PORT, a Ballista cluster the operator allows (--allow-engine)."))));

  // Retention fields.
  const objectType = select([
    ["project_logs", "project_logs (the project's logs)"],
    ["experiment", "experiment (the rows of every experiment)"],
    ["dataset", "dataset (the records of every dataset)"],
  ], c.object_type || "project_logs", { id: "r-object-type" });
  const days = el("input", { type: "number", id: "r-days", min: 0, value: c.retention_days ?? 30 });
  const grace = el("input", { type: "text", id: "r-grace", value: c.grace || "24h" });
  const rInterval = el("input", { type: "text", id: "r-interval", value: c.interval || "24h" });
  const force = el("input", { type: "checkbox", id: "r-force", checked: Boolean(c.force) });
  const retentionSection = el("div", { id: "retention-fields" },
    el("div", { class: "grid2" },
      field("Object type", objectType),
      field("Retention days", days, "Rows created more than this many days before a run are deleted. At least 1, unless forced."),
      field("Grace period", grace, "Deleted rows' files are purged after this (e.g. 24h): a mistake can be undone within it."),
      field("Interval", rInterval, "How often it runs (e.g. 24h).")),
    el("div", { class: "field" }, el("label", { class: "inline", for: "r-force" }, force, "Force: allow 0 days (deletes every row up to now)")));

  const problems = el("div", { id: "dialog-problems", "aria-live": "assertive" });
  const testOut = el("div", { id: "dialog-test" });
  const kind = () => (kindRetention.checked ? "retention" : "export");
  const dataValue = () => (document.querySelector("input[name=a-data]:checked") || {}).value || "spans";
  const sync = () => {
    exportSection.hidden = kind() !== "export";
    retentionSection.hidden = kind() !== "retention";
    btqlField.hidden = dataValue() !== "query";
    traceIdle.disabled = dataValue() !== "traces";
  };

  /** The configuration the form describes, or a list of problems found
   *  before asking the server (which checks everything again). */
  const config = () => {
    const found = [];
    if (!name.value.trim()) found.push("Name: required.");
    if (kind() === "export") {
      const out = { data: dataValue(), export_path: exportPath.value.trim(), format: format.value, interval: interval.value };
      // What it exports (its cursor counts in that table) is fixed: kept as created.
      if (c.object_type) out.object_type = c.object_type;
      if (c.object_id) out.object_id = c.object_id;
      if (!out.export_path) found.push("Export path: required, e.g. s3://bucket/prefix.");
      if (out.data === "query") out.btql = btql.value;
      if (roleArn.value.trim()) out.role_arn = roleArn.value.trim();
      if (endpoint.value.trim()) out.endpoint = endpoint.value.trim();
      if (engine.value.trim() && engine.value.trim() !== "local") out.engine = engine.value.trim();
      if (batchSize.value) out.batch_size = Number(batchSize.value);
      out.partitioning = partitioning.value;
      out.compression = compression.value;
      if (maxFileBytes.value.trim()) out.max_file_bytes = maxFileBytes.value.trim();
      if (maxRows.value) out.max_rows_per_run = Number(maxRows.value);
      if (out.data === "traces" && traceIdle.value.trim()) out.trace_idle = traceIdle.value.trim();
      return { config: out, problems: found };
    }
    const n = Number(days.value);
    if (!Number.isInteger(n) || n < 0) found.push("Retention days: a whole number of days.");
    if (n === 0 && !force.checked) found.push("Retention days: 0 deletes every row; use at least 1, or tick Force.");
    const retention = { retention_days: n, grace: grace.value.trim(), interval: rInterval.value.trim(), force: force.checked };
    if (objectType.value !== "project_logs") retention.object_type = objectType.value;
    return { config: retention, problems: found };
  };
  const showProblems = (list) => {
    clear(problems);
    if (list.length) problems.append(el("div", { class: "alert", role: "alert" }, el("ul", {}, list.map((p) => el("li", {}, p)))));
    return list.length === 0;
  };
  const testButton = el("button", { type: "button", id: "dialog-test-button" }, "Test automation");
  const saveButton = el("button", { type: "submit", class: "primary", id: "dialog-save", form: "automation-form" }, editing ? "Save changes" : "Create automation");
  const cancel = el("button", { type: "button", id: "dialog-cancel" }, "Cancel");
  testButton.addEventListener("click", async () => {
    const { config: cfg, problems: found } = config();
    clear(testOut);
    if (!showProblems(found)) return;
    testButton.disabled = true;
    testOut.append(el("p", { class: "muted", role: "status" }, "Testing…"));
    try {
      const answer = await api("POST", "/v1/project_automation/test", { project_id: project.id, name: name.value.trim(), description: description.value, kind: kind(), config: cfg });
      clear(testOut).append(kind() === "export" ? testStepsView(answer, Boolean(cfg.role_arn && cfg.export_path.startsWith("s3"))) : retentionPreviewView(answer, project));
      testOut.scrollIntoView({ block: "start" });
      announce(kind() === "export" ? (answer.ok ? "Test passed" : "Test failed") : "Preview ready");
    } catch (e) {
      clear(testOut).append(errorBox(e));
    } finally { testButton.disabled = false; }
  });
  const form = el("form", { id: "automation-form", "aria-label": editing ? `Edit ${existing.name}` : "Create automation" },
    field("Name", name), field("Description", description),
    el("fieldset", {}, el("legend", {}, "Type"),
      el("label", { class: "inline", for: "a-kind-export" }, kindExport, "S3 export"),
      el("label", { class: "inline", for: "a-kind-retention" }, kindRetention, "Data retention"),
      editing ? el("span", { class: "muted" }, "(fixed after creation)") : null),
    exportSection, retentionSection, problems, testOut);
  form.addEventListener("change", sync);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { config: cfg, problems: found } = config();
    if (!showProblems(found)) return;
    saveButton.disabled = true;
    try {
      if (editing) {
        await api("PATCH", `/v1/project_automation/${encodeURIComponent(existing.id)}`, { name: name.value.trim(), description: description.value, config: cfg });
      } else {
        await api("POST", "/v1/project_automation", { project_id: project.id, name: name.value.trim(), description: description.value, kind: kind(), config: cfg });
      }
      announce(editing ? "Saved" : "Created");
      dialog.close();
      onSaved();
    } catch (e) {
      clear(problems).append(errorBox(e));
    } finally { saveButton.disabled = false; }
  });
  const dialog = modal(editing ? `Edit ${existing.name}` : "Create automation", form, [testButton, el("span", { class: "spacer" }), cancel, saveButton], { id: "automation-dialog", focus: name });
  cancel.addEventListener("click", () => dialog.close());
  sync();
  liveQueryCheck(btql, btqlCheck);
}

/** Rows and duration per run, oldest first: bars of rows (left axis) and
 *  a line of durations (right axis). */
function historyChart(runs) {
  const ordered = runs.slice().reverse();
  if (!ordered.length) return el("p", { id: "history-chart-empty" }, "No runs yet.");
  const width = 760; const height = 220; const left = 56; const right = 56; const top = 16; const bottom = 36;
  const rowsAxis = axis(Math.max(...ordered.map((r) => r.rows)), true);
  const maxRows = rowsAxis.top;
  const durations = ordered.map(durationMs);
  const msAxis = axis(Math.max(1, ...durations.filter((d) => d !== null)), true);
  const maxMs = msAxis.top;
  const slot = (width - left - right) / ordered.length;
  const yRows = (n) => top + (1 - n / maxRows) * (height - top - bottom);
  const yMs = (ms) => top + (1 - ms / maxMs) * (height - top - bottom);
  const chart = svg("svg", { class: "chart", id: "history-chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "history-chart-title" },
    svg("title", { id: "history-chart-title" }, `Rows (bars) and duration (line) of the last ${ordered.length} runs, oldest first`));
  for (let n = 0; n <= maxRows; n += rowsAxis.step) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: yRows(n), y2: yRows(n), class: "grid" }),
      svg("text", { x: left - 6, y: yRows(n) + 4, "text-anchor": "end" }, formatNumber(n)));
  }
  for (let ms = 0; ms <= maxMs; ms += msAxis.step) {
    chart.append(svg("text", { x: width - right + 6, y: yMs(ms) + 4 }, formatDuration(ms)));
  }
  chart.append(svg("line", { x1: left, x2: left, y1: top, y2: height - bottom, class: "axis" }),
    svg("line", { x1: width - right, x2: width - right, y1: top, y2: height - bottom, class: "axis" }),
    svg("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  const points = [];
  ordered.forEach((run, i) => {
    const cx = left + slot * i + slot / 2;
    const barWidth = Math.max(2, Math.min(40, slot * 0.6));
    chart.append(svg("rect", { x: cx - barWidth / 2, y: yRows(run.rows), width: barWidth, height: Math.max(0, yRows(0) - yRows(run.rows)), class: "bar", "data-run": run.run_id, "data-rows": run.rows },
      svg("title", {}, `run ${i + 1} (${run.trigger}, ${run.status}) at ${formatTime(run.started)}: ${formatNumber(run.rows)} rows, ${formatDuration(durations[i])}`)));
    chart.append(svg("text", { x: cx, y: height - bottom + 16, "text-anchor": "middle" }, `#${i + 1}`));
    if (durations[i] !== null) points.push([cx, yMs(durations[i]), durations[i]]);
  });
  if (points.length > 1) chart.append(svg("polyline", { points: points.map(([px, py]) => `${px},${py}`).join(" "), class: "duration" }));
  for (const [px, py, ms] of points) chart.append(svg("circle", { cx: px, cy: py, r: 4, class: "duration-dot" }, svg("title", {}, formatDuration(ms))));
  chart.append(svg("text", { x: left, y: 11 }, "rows"), svg("text", { x: width - right, y: 11, "text-anchor": "end" }, "duration"));
  return el("div", {}, chart, el("div", { class: "legend" },
    el("span", {}, el("span", { class: "swatch rows", "aria-hidden": "true" }), "rows per run (bars, left axis)"),
    el("span", {}, el("span", { class: "swatch duration", "aria-hidden": "true" }), "duration per run (line, right axis)")));
}

function historyTable(runs) {
  if (!runs.length) return el("p", { id: "history-empty" }, "The history is empty.");
  const headers = ["Started", "Trigger", "Status", "Rows", "Bytes", "Files", "Duration", "Cursor range", "Error"];
  return el("div", { class: "scroll" }, el("table", { class: "data", id: "history" },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", class: ["Rows", "Bytes", "Files", "Duration"].includes(h) ? "num" : null }, h)))),
    el("tbody", {}, runs.map((r) => el("tr", { "data-run": r.run_id },
      el("td", {}, formatTime(r.started)), el("td", {}, r.trigger), el("td", {}, statusBadge(r.status)),
      el("td", { class: "num" }, formatNumber(r.rows)), el("td", { class: "num" }, formatBytes(r.bytes)), el("td", { class: "num" }, formatNumber(r.files)),
      el("td", { class: "num" }, formatDuration(durationMs(r))),
      el("td", { class: "mono" }, r.cursor_from === null && r.cursor_to === null ? "—" : `${r.cursor_from ?? "start"} → ${r.cursor_to ?? "—"}`),
      el("td", {}, r.error || ""))))));
}

/** The status modal: last run, totals, cursor, keeping up, the actions,
 *  and the run history with its chart. */
function openStatusDialog(project, automation, onChanged) {
  const body = el("div", { id: "status-body" }, el("p", { class: "muted" }, "Loading…"));
  const actionOut = el("div", { id: "status-action", "aria-live": "polite" });
  let current = automation;
  const runButton = el("button", { type: "button", class: "primary", id: "run-now" }, "Run now");
  const testButton = el("button", { type: "button", id: "status-test" }, "Test");
  const pauseButton = el("button", { type: "button", id: "pause-resume" }, automation.status === "paused" ? "Resume" : "Pause");
  const resetButton = el("button", { type: "button", class: "danger", id: "reset" }, "Reset…");
  const deleteButton = el("button", { type: "button", class: "danger", id: "delete" }, "Delete…");
  const editButton = el("button", { type: "button", id: "status-edit" }, "Edit…");
  const refreshButton = el("button", { type: "button", id: "status-refresh" }, "Refresh");
  const buttons = [runButton, testButton, pauseButton, resetButton, deleteButton, editButton, refreshButton];
  const busy = (on) => { for (const b of buttons) b.disabled = on; };
  const refresh = async () => {
    let status; let runs;
    try {
      [current, status, runs] = await Promise.all([
        api("GET", `/v1/project_automation/${encodeURIComponent(automation.id)}`),
        api("GET", `/v1/project_automation/${encodeURIComponent(automation.id)}/status`),
        api("GET", `/v1/project_automation/${encodeURIComponent(automation.id)}/history?limit=200`).then((a) => a.objects || []),
      ]);
    } catch (e) { clear(body).append(errorBox(e)); return; }
    pauseButton.textContent = current.status === "paused" ? "Resume" : "Pause";
    const last = status.last_run;
    const totalMs = runs.reduce((sum, r) => sum + (durationMs(r) || 0), 0);
    const overall = overallStatus(current, status);
    clear(body).append(
      el("dl", { class: "facts", id: "status-facts" },
        el("dt", {}, "Status"), el("dd", { id: "status-overall" }, statusBadge(overall), current.status === "paused" ? " (scheduled runs stopped)" : ""),
        el("dt", {}, "Kind"), el("dd", {}, `${kindText(current)}: ${dataText(current)}`),
        current.kind === "export" ? [el("dt", {}, "Destination"), el("dd", { class: "mono" }, current.config.export_path)] : null,
        el("dt", {}, "Interval"), el("dd", {}, intervalText(current)),
        el("dt", {}, "Last run"), el("dd", { id: "status-last-run" }, last
          ? [statusBadge(last.status), ` ${last.trigger} · started ${formatTime(last.started)} · ${formatNumber(last.rows)} rows · ${formatBytes(last.bytes)} · ${formatNumber(last.files)} files · ${formatDuration(durationMs(last))}`, last.error ? el("div", { class: "alert" }, last.error) : null]
          : "never"),
        el("dt", {}, "Totals"), el("dd", { id: "status-totals" }, `${formatNumber(status.totals.runs)} run${status.totals.runs === 1 ? "" : "s"} · ${formatNumber(status.totals.rows)} rows · ${formatBytes(status.totals.bytes)} · ${formatNumber(status.totals.files)} files · ${formatDuration(totalMs)}`),
        current.kind === "export" ? [el("dt", {}, "Cursor (_xact_id)"), el("dd", { id: "status-cursor", class: "mono" }, status.cursor ?? "none: the next run starts from the beginning")] : null,
        el("dt", {}, "Keeping up"), el("dd", { id: "status-keeping-up" }, keepingUpText(status))),
      el("h3", {}, "Run history"), historyChart(runs), historyTable(runs));
  };
  const act = async (label, work) => {
    busy(true);
    clear(actionOut).append(el("p", { class: "muted", role: "status" }, `${label}…`));
    try {
      const result = await work();
      clear(actionOut);
      if (result) actionOut.append(result);
      await refresh();
      onChanged();
    } catch (e) {
      clear(actionOut).append(errorBox(e));
      await refresh();
    } finally { busy(false); }
  };
  const path = (suffix) => `/v1/project_automation/${encodeURIComponent(automation.id)}${suffix}`;
  runButton.addEventListener("click", () => act("Running", async () => {
    const report = await api("POST", path("/run"));
    const text = current.kind === "export"
      ? (report.manifest ? `✓ Exported ${formatNumber(report.rows)} rows in ${formatNumber(report.files)} files (${formatBytes(report.bytes)}); manifest ${report.manifest}${report.status === "behind" ? "; behind: more data waits" : ""}.` : "✓ Nothing new to export.")
      : `✓ Deleted ${formatNumber(report.rows_deleted)} rows (cutoff ${formatTime(report.cutoff)}); ${formatNumber(report.files_purged)} files purged.`;
    return el("div", { class: "notice", id: "run-result", "data-manifest": report.manifest || null }, text);
  }));
  testButton.addEventListener("click", () => act("Testing", async () => {
    const answer = await api("POST", path("/test"));
    return current.kind === "export" ? testStepsView(answer, Boolean(current.config.role_arn)) : retentionPreviewView(answer, project);
  }));
  pauseButton.addEventListener("click", () => act(current.status === "paused" ? "Resuming" : "Pausing", async () => {
    const next = current.status === "paused" ? "active" : "paused";
    await api("PATCH", path(""), { status: next });
    announce(next === "paused" ? "Paused" : "Resumed");
    return el("div", { class: "notice" }, next === "paused" ? "Paused: scheduled runs stop; Run now still works." : "Resumed: it runs at its interval again.");
  }));
  resetButton.addEventListener("click", async () => {
    const text = current.kind === "export"
      ? `Reset clears the cursor and the whole run history of “${current.name}”: the next run exports every row of the project again, from the beginning, to ${current.config.export_path}. Files already exported stay where they are.`
      : `Reset clears the run history of “${current.name}”. It deletes no logs and restores none.`;
    if (!(await confirmAction(`Reset ${current.name}?`, text, "Reset"))) return;
    act("Resetting", async () => {
      await api("POST", path("/reset"));
      return el("div", { class: "notice" }, "Reset: the cursor and the history are cleared.");
    });
  });
  deleteButton.addEventListener("click", async () => {
    const text = `Delete “${current.name}”, its cursor and its history? ${current.kind === "export" ? "Exported files stay where they are." : "Logs already deleted stay deleted."}`;
    if (!(await confirmAction(`Delete ${current.name}?`, text, "Delete"))) return;
    busy(true);
    try {
      await api("DELETE", path(""));
      dialog.close();
      onChanged();
    } catch (e) { clear(actionOut).append(errorBox(e)); busy(false); }
  });
  editButton.addEventListener("click", () => { dialog.close(); openAutomationDialog(project, current, onChanged); });
  refreshButton.addEventListener("click", () => act("Refreshing", async () => null));
  const dialog = modal(`${automation.name}`, [body, actionOut], buttons, { id: "status-dialog", focus: runButton });
  refresh();
}

// ---------------------------------------------------------------- routing

async function route() {
  const main = clear(document.getElementById("main"));
  renderSession();
  for (const open of document.querySelectorAll("dialog")) open.close();
  if (!apiKey()) { signInView(main); return; }
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "p" && parts[1]) await projectView(main, parts[1], parts[2] || "query");
  else await projectsView(main);
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", route);
