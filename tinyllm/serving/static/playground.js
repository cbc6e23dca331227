// The tinyllm playground: writes, chats, scores, shows attention and sets two versions of the
// model side by side through this server's own API (docs/serving.md). Sampling limits come from
// its /openapi.json, the one definition the server validates against, and the models from its
// /v1/models; nothing is fetched from anywhere else.
"use strict";

const $ = (id) => document.getElementById(id);
const LN2 = Math.log(2);
const SHOWN = { " ": "␣", "\n": "↵", "\t": "⇥" };  // characters a tooltip cannot show as is
const TOP = 5;  // alternatives listed per character
const NOT_SETTINGS = new Set(["n", "top_logprobs", "max_completion_tokens"]);  // the page's own
const SIDES = ["a", "b"];  // side by side: model A and model B
let modelId = null;
let maxStops = 0;

function shown(char) { return SHOWN[char] ?? char; }
function percent(logprob) { return `${(100 * Math.exp(logprob)).toFixed(1)}%`; }

// --- the model and the settings, from the server ---------------------------------------------

let served = {};  // the model served, as /v1/models lists it first
let reading = null;  // /v1/models being read again

function showModel() {
  const info = $("model-info");
  info.replaceChildren(`Model ${served.id} · version ${served.version}`);
  if (served.served_as !== served.version) {
    info.append(` · served as ${served.served_as}, followed to each new version`);
  }
  if (served.aliases?.length) info.append(` · aliases: ${served.aliases.join(", ")}`);
  if (!served.run_id) return;
  info.append(" · trained by run ");
  if (!served.run_page) { info.append(served.run_id); return; }
  const link = document.createElement("a");
  link.href = served.run_page;
  link.textContent = served.run_id;
  info.append(link, ` in mlflow ui${served.run_page_note ? ` (${served.run_page_note})` : ""}`);
}

// The models from /v1/models: the one served names the page's requests; any two of them can be
// set side by side, unless it is the only one.
async function loadModels() {
  const models = (await (await fetch("/v1/models")).json()).data;
  [served] = models;
  modelId = served.id;
  showModel();
  const many = models.length > 1;
  $("compare-form").hidden = !many;
  $("compare-info").textContent = many ? "The same prompt and seed to two versions of the model,"
    + " and the bits per character each gives the text."
    : `Side by side needs a registered model: this server serves ${served.served_as}, which has `
      + "no other version to compare. Serve one from the MLflow registry (tinyllm serve "
      + "--model-uri models:/NAME@ALIAS) to compare two of its versions.";
  const other = models.find((m) => m.version !== served.version) ?? models[1];
  SIDES.forEach((side, i) => {
    const picker = $(`model-${side}`);
    const chosen = picker.value || [served, other][i]?.id;
    picker.replaceChildren(...models.map((m) => new Option(`${m.id} → ${m.version}`, m.id)));
    if (models.some((m) => m.id === chosen)) picker.value = chosen;
  });
}

// A reply of the model served names the version it came from: when an alias moved, read the
// models again, as the server follows it.
function follow(model, version) {
  if (model === modelId && version !== served.version && !reading) {
    reading = loadModels().finally(() => { reading = null; });
  }
}

function numberType(prop) {
  const types = (prop.anyOf ?? [prop]).map((p) => p.type);
  return types.includes("integer") ? "integer" : types.includes("number") ? "number" : null;
}

function settingControl(name, prop) {
  const kind = numberType(prop);
  const low = prop.minimum ?? prop.exclusiveMinimum;
  const label = document.createElement("label");
  const input = document.createElement("input");
  input.type = "number";
  input.name = name;
  input.step = kind === "integer" ? "1" : "any";
  if (prop.minimum !== undefined) input.min = prop.minimum;
  if (prop.maximum !== undefined) input.max = prop.maximum;
  input.placeholder = prop.default ?? "default";
  input.title = prop.description ?? "";
  const open = prop.exclusiveMinimum !== undefined ? "(" : "[";
  const range = document.createElement("span");
  range.className = "range";
  range.textContent = ` ${open}${low ?? "…"}, ${prop.maximum ?? "…"}]`;
  label.append(name, range, input);
  return label;
}

async function loadContract() {
  const doc = await (await fetch("/openapi.json")).json();
  const schemas = doc.components.schemas;
  const chat = schemas.ChatRequest.properties;
  const box = $("sampling");
  for (const [name, prop] of Object.entries(chat)) {
    if (!NOT_SETTINGS.has(name) && numberType(prop) && ("maximum" in prop || "minimum" in prop
        || "exclusiveMinimum" in prop)) box.append(settingControl(name, prop));
  }
  const logprobs = schemas.CompletionRequest.properties.logprobs;
  box.append(settingControl("alternatives", { ...logprobs, default: TOP,
    description: "Alternatives listed per character (the request's logprobs)." }));
  const stop = (chat.stop.anyOf ?? []).find((p) => p.type === "array");
  maxStops = stop?.maxItems ?? 1;
  for (let i = 0; i < maxStops; i++) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.name = "stop";
    label.append(`stop ${i + 1}`, input);
    $("stops").append(label);
  }
  $("stops").querySelector("input").value = "\\n\\n";
  const attention = schemas.AttentionRequest.properties.text;
  $("attention-text").maxLength = attention.maxLength;
  $("attention-info").textContent = `Up to ${attention.maxLength} characters.`;
  await loadModels();
}

function settings() {
  const body = {};
  for (const input of $("sampling").querySelectorAll("input")) {
    if (input.value !== "" && input.name !== "alternatives") body[input.name] = Number(input.value);
  }
  const stops = [...$("stops").querySelectorAll("input")].map((i) => i.value)
    .filter((s) => s !== "").map((s) => s.replaceAll("\\n", "\n").replaceAll("\\t", "\t"));
  if (stops.length) body.stop = stops;
  return body;
}

function alternatives() {
  const value = $("sampling").querySelector("input[name=alternatives]").value;
  return value === "" ? TOP : Number(value);
}

// --- talking to the server --------------------------------------------------------------------

async function failure(reply) {
  const body = await reply.json().catch(() => ({}));
  return new Error(body.error?.message ?? `HTTP ${reply.status}`);
}

async function post(path, body) {
  const reply = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                    body: JSON.stringify({ model: modelId, ...body }) });
  if (!reply.ok) throw await failure(reply);
  return reply.json();
}

// Streams a generation: each chunk goes to onChunk; returns the last chunk's head (seed, model).
async function stream(path, body, onChunk) {
  const asked = { model: modelId, ...body, stream: true };
  const reply = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(asked) });
  if (!reply.ok) throw await failure(reply);
  const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let head = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return head;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (event === "[DONE]") return head;
      const chunk = JSON.parse(event);
      if (chunk.error) throw new Error(chunk.error.message);
      head = chunk;
      follow(asked.model, chunk.model);
      for (const choice of chunk.choices) onChunk(choice);
    }
  }
}

// --- characters coloured by probability, with their alternatives ------------------------------

// One character's scores: its log-probability and the alternatives, most likely first.
function entry(char, logprob, tops) {
  return { char, logprob, tops: tops.sort((a, b) => b[1] - a[1]).slice(0, alternatives()) };
}

// Probability p in [0, 1] as a light background: red (unlikely) through yellow to green.
function probabilityColour(p) { return `hsl(${Math.round(120 * p)} 75% 82%)`; }

function tipFor(span, describe) {
  const tip = $("tip");
  tip.replaceChildren(...describe());
  tip.hidden = false;
  const box = span.getBoundingClientRect();
  tip.style.left = `${window.scrollX + box.left}px`;
  tip.style.top = `${window.scrollY + box.bottom + 4}px`;
}

function hideTip() { $("tip").hidden = true; }

function line(text) {
  const p = document.createElement("div");
  p.textContent = text;
  return p;
}

function scoreLines(item) {
  if (item.logprob === null) return [line(`'${shown(item.char)}': the first character, unscored`)];
  const bits = -item.logprob / LN2;
  const list = document.createElement("ol");
  for (const [char, logprob] of item.tops) {
    const li = document.createElement("li");
    li.textContent = `${shown(char)} ${percent(logprob)}`;
    list.append(li);
  }
  return [line(`'${shown(item.char)}' ${percent(item.logprob)} · ${bits.toFixed(2)} bits`),
    line("Alternatives:"), list];
}

// A text whose characters each get a span: focusable one at a time (arrow keys move), and on
// hover or focus the tooltip describe(index) makes.
function charView(container, describe) {
  container.replaceChildren();
  container.onkeydown = (event) => {
    const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
    if (!step || !event.target.dataset.index) return;
    const spans = container.querySelectorAll("span[data-index]");
    const next = spans[Number(event.target.dataset.index) + step];
    if (next) { event.preventDefault(); event.target.tabIndex = -1; next.tabIndex = 0; next.focus(); }
  };
  container.describe = describe;
  if (!container.dataset.tips) {  // one set of listeners for all the characters, ever
    container.dataset.tips = "on";
    const show = (event) => {
      const span = event.target.closest?.("span[data-index]");
      if (span) tipFor(span, () => container.describe(Number(span.dataset.index), span));
    };
    for (const kind of ["mouseover", "focusin"]) container.addEventListener(kind, show);
    for (const kind of ["mouseout", "focusout"]) container.addEventListener(kind, hideTip);
  }
  let count = 0;
  return {
    add(char, colour) {
      const span = document.createElement("span");
      const index = count++;
      span.dataset.index = index;
      span.textContent = char;
      span.tabIndex = index === 0 ? 0 : -1;
      if (colour) span.style.backgroundColor = colour;
      container.append(span);
      return span;
    },
  };
}

// A streamed reply's characters: coloured as their scores arrive.
function scoredText(container) {
  const items = [];
  const view = charView(container, (i) => scoreLines(items[i]));
  return {
    add(char, item) {
      items.push(item ?? { char, logprob: null, tops: [] });
      view.add(char, item ? probabilityColour(Math.exp(item.logprob)) : null);
    },
  };
}

// --- write and chat ---------------------------------------------------------------------------

function replyInfo(target, head, replay) {
  target.replaceChildren(`seed ${head.seed} · ${head.model} `);
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = `Replay seed ${head.seed}`;
  button.onclick = () => replay(head.seed);
  target.append(button);
}

// A streamed completion's characters, each into view with its scores; their log-probabilities.
function completionText(view, choice) {
  const lp = choice.logprobs;
  return [...choice.text].map((char, i) => {
    const logprob = lp?.token_logprobs[i] ?? null;
    view.add(char, logprob === null ? null
      : entry(char, logprob, Object.entries(lp.top_logprobs[i])));
    return logprob;
  });
}

async function complete(seed) {
  const view = scoredText($("completion"));
  const info = $("completion-info");
  info.textContent = "Generating…";
  const body = { ...settings(), prompt: $("prompt").value, logprobs: alternatives() };
  if (seed !== undefined) body.seed = seed;
  try {
    const head = await stream("/v1/completions", body, (choice) => completionText(view, choice));
    replyInfo(info, head, complete);
  } catch (error) {
    info.textContent = error.message;
    info.className = "reply-info error";
  }
}

const conversation = [];

function chatItem(speaker, role) {
  const item = document.createElement("li");
  item.className = role;
  const who = document.createElement("div");
  who.className = "speaker";
  who.textContent = speaker;
  const text = document.createElement("div");
  text.className = "text";
  const info = document.createElement("p");
  info.className = "reply-info";
  item.append(who, text, info);
  $("chat-log").append(item);
  return { text, info };
}

async function chatReply(messages, seed, shownIn) {
  const place = shownIn ?? chatItem("ASSISTANT", "assistant");
  const view = scoredText(place.text);
  place.text.setAttribute("role", "group");
  place.text.setAttribute("aria-label", "The reply, each character coloured by its probability");
  let reply = "";
  const body = { ...settings(), messages, logprobs: true, top_logprobs: alternatives() };
  if (seed !== undefined) body.seed = seed;
  try {
    const head = await stream("/v1/chat/completions", body, (choice) => {
      const content = choice.logprobs?.content ?? [];
      [...(choice.delta.content ?? "")].forEach((char, i) => {
        const c = content[i];
        view.add(char, c ? entry(char, c.logprob,
          c.top_logprobs.map((t) => [t.token, t.logprob])) : null);
      });
      reply += choice.delta.content ?? "";
    });
    replyInfo(place.info, head, (again) => chatReply(messages, again, place));
    return reply;
  } catch (error) {
    place.info.textContent = error.message;
    place.info.className = "reply-info error";
    return null;
  }
}

async function chat() {
  const content = $("chat-message").value;
  const name = $("chat-name").value.trim();
  const message = { role: "user", content, ...(name ? { name } : {}) };
  const mine = chatItem(name || "USER", "user");
  mine.text.textContent = content;
  conversation.push(message);
  $("chat-message").value = "";
  const reply = await chatReply([...conversation]);
  if (reply !== null) conversation.push({ role: "assistant", content: reply });
}

// --- scoring ----------------------------------------------------------------------------------

// Surprisal in bits as a light background: 0 bits white-green, 8+ bits red.
function surprisalColour(bits) { return probabilityColour(Math.max(0, 1 - bits / 8)); }

// Mean bits per character of log-probabilities (nulls, the unscored first character, left out).
function bitsPerChar(logprobs) {
  const scored = logprobs.filter((lp) => lp !== null);
  return -scored.reduce((a, b) => a + b, 0) / scored.length / LN2;
}

async function score() {
  const text = $("score-text").value;
  const result = $("score-result");
  result.textContent = "Scoring…";
  result.className = "";
  try {
    const reply = await post("/v1/completions", { prompt: text, echo: true, max_tokens: 0,
                                                  logprobs: alternatives() });
    const lp = reply.choices[0].logprobs;
    const items = lp.tokens.map((char, i) => lp.token_logprobs[i] === null
      ? { char, logprob: null, tops: [] }
      : entry(char, lp.token_logprobs[i], Object.entries(lp.top_logprobs[i])));
    const count = lp.token_logprobs.length - 1;
    result.textContent = count > 0
      ? `${bitsPerChar(lp.token_logprobs).toFixed(4)} bits per character over ${count} characters`
        + ` (${reply.model})`
      : "A text needs two characters or more to be scored.";
    const view = charView($("score-map"), (i) => scoreLines(items[i]));
    const written = [...text];  // shown as written, unless the model dropped some (unknown)
    const chars = written.length === items.length ? written : items.map((item) => item.char);
    items.forEach((item, i) => view.add(chars[i],
      item.logprob === null ? null : surprisalColour(-item.logprob / LN2)));
  } catch (error) {
    result.textContent = error.message;
    result.className = "error";
  }
}

// --- attention --------------------------------------------------------------------------------

// Weight w in [0, 1] as blue on white, by its square root so that small weights still show.
function weightColour(w) {
  const strength = Math.sqrt(w);
  return `rgb(${Math.round(255 - 230 * strength)} ${Math.round(255 - 160 * strength)} 255)`;
}

function drawHead(canvas, rows) {
  const size = rows.length;
  canvas.width = canvas.height = size;
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, size, size);
  rows.forEach((row, i) => row.forEach((w, j) => {
    context.fillStyle = weightColour(w);
    context.fillRect(j, i, 1, 1);
  }));
}

async function showAttention() {
  const info = $("attention-info");
  info.className = "";
  let reply;
  try {
    reply = await post("/v1/attention", { text: $("attention-text").value });
  } catch (error) {
    info.textContent = error.message;
    info.className = "error";
    return;
  }
  const heads = $("heads");
  heads.replaceChildren();
  let chosen = reply.weights[0][0];
  const view = charView($("attention-map"), (i, span) => {
    const row = chosen[i];
    const order = row.map((w, j) => [j, w]).sort((a, b) => b[1] - a[1]).slice(0, 3);
    $("attention-map").querySelectorAll("span[data-index]").forEach((s, j) => {
      s.style.backgroundColor = j <= i ? weightColour(row[j]) : "";
    });
    span.style.outline = "2px solid #1a1a1a";
    span.addEventListener("blur", () => { span.style.outline = ""; }, { once: true });
    span.addEventListener("mouseleave", () => { span.style.outline = ""; }, { once: true });
    return [line(`'${shown(reply.tokens[i])}' looked at:`),
      ...order.map(([j, w]) => line(`${shown(reply.tokens[j])} (character ${j + 1}) ${(100 * w).toFixed(1)}%`))];
  });
  reply.tokens.forEach((char) => view.add(char));
  reply.weights.forEach((layer, l) => layer.forEach((rows, h) => {
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-pressed", String(l === 0 && h === 0));
    const canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `Layer ${l + 1}, head ${h + 1}: attention heat map`);
    drawHead(canvas, rows);
    const caption = document.createElement("span");
    caption.textContent = `Layer ${l + 1} · head ${h + 1}`;
    button.append(canvas, caption);
    button.onclick = () => {
      heads.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", "false"));
      button.setAttribute("aria-pressed", "true");
      chosen = rows;
    };
    heads.append(button);
  }));
  info.textContent = `${reply.weights.length} layers × ${reply.weights[0].length} heads over `
    + `${reply.tokens.length} characters (${reply.model}). Choose a head, then hover or focus a `
    + "character to see where it looked.";
}

// --- side by side ------------------------------------------------------------------------------

// One side: its model's reply to the prompt under the seed, and the bits per character it gives
// the text to score.
async function compareSide(side, body, text) {
  const model = $(`model-${side}`).value;
  const view = scoredText($(`reply-${side}`));
  const info = $(`info-${side}`);
  info.className = "reply-info";
  info.textContent = "Generating…";
  try {
    const logprobs = [];
    const head = await stream("/v1/completions", { ...body, model },
                              (choice) => logprobs.push(...completionText(view, choice)));
    const scored = await post("/v1/completions", { model, prompt: text, echo: true,
                                                   max_tokens: 0, logprobs: 0 });
    const bits = (lps) => (lps.some((lp) => lp !== null)
      ? `${bitsPerChar(lps).toFixed(4)} bits/char` : "nothing to score");
    info.textContent = `seed ${head.seed} · ${head.model} · its reply: ${bits(logprobs)} · `
      + `the text: ${bits(scored.choices[0].logprobs.token_logprobs)}`;
  } catch (error) {
    info.textContent = error.message;
    info.className = "reply-info error";
  }
}

async function compareModels() {
  const given = settings();
  const seed = given.seed ?? Math.floor(Math.random() * 2 ** 31);  // the same for both
  const body = { ...given, seed, prompt: $("compare-prompt").value, logprobs: alternatives() };
  await Promise.all(SIDES.map((side) => compareSide(side, body, $("compare-text").value)));
}

// --- start ------------------------------------------------------------------------------------

function on(form, action) {
  $(form).addEventListener("submit", (event) => { event.preventDefault(); action(); });
}

loadContract().then(() => {
  on("write-form", () => complete());
  on("chat-form", chat);
  on("score-form", score);
  on("attention-form", showAttention);
  on("compare-form", compareModels);
  document.body.dataset.ready = "true";
}, (error) => {
  $("model-info").textContent = `Cannot reach the server's API: ${error.message}`;
});
